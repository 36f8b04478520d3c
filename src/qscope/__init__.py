"""qscope: sparse-autoencoder features as development tools for language models."""

from .errors import QScopeError
from .model import LM, Loaded, load, load_model
from .sae import SAE, SAEConfig

__version__ = "0.1.0"
__all__ = ["SAE", "SAEConfig", "LM", "Loaded", "load", "load_model", "QScopeError", "__version__"]
