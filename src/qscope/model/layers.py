"""Locate a causal LM's list of decoder blocks, whatever the architecture.

Known attribute paths are tried first (llama, qwen2/3, qwen3_moe, qwen3_5 incl. its
vision-language wrapper, qwen3_next, gemma3, gpt2, gpt-neox); otherwise the ModuleList whose
length equals the text config's `num_hidden_layers` (the sparsify rule), vision towers excluded.
"""

from __future__ import annotations

from torch import nn

from ..errors import QScopeError

KNOWN_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)


def text_config(model: nn.Module):
    """The language part of the config (VL models nest it as `text_config`)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the decoder blocks; block n's output is the residual at layer n."""
    n = getattr(text_config(model), "num_hidden_layers", None)
    for path in KNOWN_PATHS:
        module = _get(model, path)
        if isinstance(module, nn.ModuleList) and (n is None or len(module) == n):
            return path, module
    candidates = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) == n and "vision" not in name and "visual" not in name]
    if not candidates:
        raise QScopeError(f"cannot find the decoder layers of {type(model).__name__}: no ModuleList of length {n}")
    return min(candidates, key=lambda item: item[0].count("."))


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
