"""Models: loading (hub id, folder, GGUF, default), decoder-layer location, capture and edits."""

from .lm import LM, Capture
from .loading import load_model, pull_default

__all__ = ["LM", "Capture", "load_model", "pull_default"]
