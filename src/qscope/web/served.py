"""What the app serves, shared by every route: the model, one SAE per layer, the feature stores,
the lock every model call holds (`Gate`) and the labeller; routes get it as a dependency.

Why one lock: a model (and its hooks, which steering installs on it) is shared state; two
requests interleaving forwards would mix steered and plain outputs. Every model call holds
`Gate.lock`, so concurrent requests queue and each gets exactly what it would get alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from fastapi import HTTPException, Request

from ..errors import QScopeError
from . import schemas as S
from .labelling import Labeller

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


class Cancelled(Exception):
    """The client went away before its turn at the model came."""


class Gate:
    """Serialises model access (a plain lock: requests are short and bounded by the limits)."""

    def __init__(self):
        self.lock = threading.Lock()

    def run(self, fn, *args, cancel: threading.Event | None = None, **kwargs):
        """`fn(*args, **kwargs)` under the lock; with `cancel`, give up waiting once it is set."""
        while not self.lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise Cancelled
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            with torch.inference_mode():
                return fn(*args, **kwargs)
        finally:
            self.lock.release()


class Stores:
    """Feature stores by layer, one SQLite connection per thread (sqlite3 objects may not cross threads)."""

    def __init__(self, stores: dict):
        self.paths = {int(layer): Path(s.path if hasattr(s, "path") else s) for layer, s in stores.items() if s}
        self.local = threading.local()

    def get(self, layer: int):
        from ..features.store import FeatureStore

        if layer not in self.paths:
            return None
        cache = self.local.__dict__.setdefault("stores", {})
        if layer not in cache:
            cache[layer] = FeatureStore(self.paths[layer])
        return cache[layer]


@dataclass
class Served:
    """The served model, SAEs by layer, stores, model lock and labeller, with the checks of
    request values that depend on them (which layers, how many features)."""

    lm: LM
    saes: dict[int, SAE]
    stores: Stores
    gate: Gate
    labeller: Labeller
    judge: object = None  # scores explanations by detection (`features.detection`); None: no LLM configured

    @classmethod
    def create(cls, lm: LM, saes: dict[int, SAE], stores: dict | None, judge=None) -> "Served":
        """Check that every SAE fits `lm` and every store its layer's SAE (at start-up, not per request)."""
        if not saes:
            raise QScopeError("serve at least one SAE")
        saes = {int(layer): sae for layer, sae in saes.items()}
        for layer, sae in saes.items():
            lm.check_sae(sae, layer)
        stores_ = Stores(stores or {})
        for layer, path in stores_.paths.items():
            if layer not in saes:
                raise QScopeError(f"{path}: store for layer {layer}, which is not served")
            store = stores_.get(layer).check(layer)
            if store.d_sae != saes[layer].cfg.d_sae:
                raise QScopeError(f"{path}: store has {store.d_sae} features, the layer-{layer} SAE {saes[layer].cfg.d_sae}")
        gate = Gate()
        for layer in stores_.paths:  # older stores compute their automatic labels once, here, not in a request
            stores_.get(layer).auto_labels()
        return cls(lm, saes, stores_, gate, Labeller(lm, saes, stores_, gate), judge)

    def sae_for(self, layer: int, status: int = 400):
        if layer not in self.saes:
            raise HTTPException(status, f"layer {layer} is not served; served layers: "
                                        f"{', '.join(map(str, sorted(self.saes)))}")
        return self.saes[layer]

    def check_feature(self, layer: int, feature: int, status: int = 400) -> int:
        d_sae = self.sae_for(layer, status).cfg.d_sae
        if not 0 <= feature < d_sae:
            raise HTTPException(status, f"feature {feature} out of range: layer {layer} has features 0..{d_sae - 1}")
        return feature

    def store_for(self, layer: int):
        """The layer's store, or 404 saying how to build one."""
        self.sae_for(layer, 404)
        store = self.stores.get(layer)
        if store is None:
            raise HTTPException(404, f"no feature store for layer {layer}; build one with `qscope features build`")
        return store

    def cut_note(self, text: str) -> dict:
        """Whether `text` is longer than the tokens the server reads (it is cut; the page says so)."""
        n = len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        return {"n_tokens_in": n, "truncated": n > S.MAX_TOKENS, "max_tokens": S.MAX_TOKENS}


def served(request: Request) -> Served:
    """FastAPI dependency: the app's `Served`."""
    return request.app.state.served
