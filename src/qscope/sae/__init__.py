"""Sparse autoencoders: the module, its activations, file formats and known releases."""

from .config import SAEConfig
from .registry import DEFAULT_RELEASE, QWEN_SCOPE, Release, find_release
from .sae import SAE

__all__ = ["SAE", "SAEConfig", "Release", "QWEN_SCOPE", "DEFAULT_RELEASE", "find_release"]
