"""Load a model together with its SAEs: the one way every command gets both.

Each SAE lands on the device of the layer it reads (under a multi-GPU device map the layers sit
on different GPUs) and stays float32 whatever the model's dtype: `SAE.encode` casts its input up.
The SAEs are read before the model, so a bad SAE source fails in a second, not after a model load.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import QScopeError
from ..sae import SAE
from ..sae.registry import default_layers
from .lm import LM
from .loading import load_model


@dataclass(frozen=True)
class Loaded:
    """A model and {layer: SAE}; unpacks as `lm, saes = qscope.load(...)`."""

    lm: LM
    saes: dict[int, SAE]
    source: str  # where the SAEs came from, for messages

    def __iter__(self) -> Iterator:
        return iter((self.lm, self.saes))

    @property
    def sae(self) -> SAE:
        """The SAE, when exactly one was loaded."""
        if len(self.saes) != 1:
            raise QScopeError(f"SAE {self.source!r}: loaded layers {sorted(self.saes)}; pick one layer (--layer)")
        return next(iter(self.saes.values()))


def load(model: str | None = None, sae: str | None = None, layers: int | Sequence[int] | None = None,
         device: str | None = None, dtype: str | torch.dtype | None = "auto") -> Loaded:
    """The model and its SAEs, each SAE on the device of its layer.

    `model`, `sae`: as `load_model` and `SAE.load` take them (default: the shipped model and SAEs).
    `layers`: one layer, several, or None - every shipped layer for the default SAEs, else the
    layer the SAE source names (a source holding several then needs `layers`).
    `device`: cpu, cuda, cuda:1, or "multi" (the layers spread over every GPU); `dtype`: the LM's.
    """
    model, sae = model or "default", sae or "default"
    wanted = _layers(sae, layers)
    read = [SAE.load(sae, layer=layer) for layer in wanted]
    lm = load_model(model, device=device, dtype=dtype)
    saes: dict[int, SAE] = {}
    for layer, sae_ in zip(wanted, read):
        where = lm.check_sae(sae_, layer)
        sae_.cfg.layer = where
        saes[where] = sae_.to(lm.layer_device(where))
    return Loaded(lm, saes, sae)


def _layers(sae: str, layers: int | Sequence[int] | None) -> list[int | None]:
    """The layers to read; None stands for the one the SAE source names."""
    if isinstance(layers, int):
        return [layers]
    if layers is not None:
        if not layers:
            raise QScopeError(f"SAE {sae!r}: no layers given")
        return list(dict.fromkeys(layers))
    return (default_layers() or [None]) if sae == "default" else [None]
