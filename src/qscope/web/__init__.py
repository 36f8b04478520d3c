"""Local web front end: feature browser, text inspector, steering playground, text comparison.

`create_app(lm, saes, stores)` builds the FastAPI app; `qscope serve` runs it with uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
