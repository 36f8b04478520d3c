"""qscope: sparse-autoencoder features as development tools for language models."""

from .errors import QScopeError
from .model import LM, Loaded, load, load_model
from .provenance import VERSION as __version__
from .sae import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig", "LM", "Loaded", "load", "load_model", "QScopeError", "__version__"]
