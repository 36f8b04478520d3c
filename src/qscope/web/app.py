"""The FastAPI app: a thin JSON/SSE shell over `qscope.features`, `qscope.steer` and `qscope.compare`.

The routes live in `routes/` by job; this module checks what is served, installs the guard and
the error handlers, and includes them. Endpoints are plain `def` (FastAPI runs them in its
thread pool) so waiting on the model lock (`served.Gate`) never blocks the event loop; the
generations watch for a client going away (`generation`). No endpoint takes a filesystem path:
stores are chosen at start-up. Requests another site could make are refused first (`guard`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import QScopeError
from .docs import add_offline_docs
from .guard import LOCAL_HOSTS, guard
from .messages import error_response, validation_message
from .routes import ROUTERS
from .routes.pages import STATIC
from .served import Served

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

NOT_FOUND_PAGE = ("<!doctype html><meta charset=utf-8><title>Not found · qscope</title><link rel=icon "
                  "href=/static/favicon.svg><body style='font-family:system-ui;margin:2em'><h2>Page not found</h2>"
                  "<p>qscope has no page at this address. <a href='/'>Go to the feature browser</a>.</p>")


def create_app(lm: LM, saes: dict[int, SAE], stores: dict | None = None, allowed_hosts: list[str] | None = None,
               judge=None) -> FastAPI:
    """App serving `lm` with one SAE per layer (`saes`) and optional feature stores per layer
    (`stores`: FeatureStore, a store path chosen by the operator, or None). `allowed_hosts`: the
    Host names requests may carry (default: loopback names; '*' accepts any). `judge`: scores
    explanations by detection (`features.detection.LLMJudge`); without one the page says so."""
    served = Served.create(lm, saes, stores, judge)
    app = FastAPI(title="qscope", version="1", description="SAE features as development tools: browse, inspect, "
                  "steer, compare. Model calls are serialised; limits are in /api/info.", docs_url=None, redoc_url=None)
    app.state.served = served

    guard(app, allowed_hosts or LOCAL_HOSTS)
    add_offline_docs(app)

    @app.exception_handler(QScopeError)
    async def _user_error(request: Request, exc: QScopeError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and not request.url.path.startswith("/api/") and \
                "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(NOT_FOUND_PAGE, status_code=404)
        return error_response(exc.status_code, str(exc.detail))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app
