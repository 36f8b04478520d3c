"""Models: loading (hub id, folder, GGUF, default; with their SAEs), decoder-layer location, capture and edits."""

from .lm import LM, Capture
from .loading import load_model, pull_default
from .with_saes import Loaded, load

__all__ = ["LM", "Capture", "Loaded", "load", "load_model", "pull_default"]
