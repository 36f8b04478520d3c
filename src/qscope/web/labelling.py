"""Labels and densities for every feature id the API returns, so no list shows bare ids.

With a feature store a label is the newest explanation, else the automatic label built with
the store. A layer without a store gets an automatic label from the tokens the feature's
decoder direction promotes (computed on first request, under the model lock, then cached).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..features.labels import AUTO, auto_label

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


class Labeller:
    def __init__(self, lm: LM, saes: dict[int, SAE], stores, gate) -> None:
        self.lm, self.saes, self.stores, self.gate = lm, saes, stores, gate
        self.effect_labels: dict[int, dict[int, str]] = {layer: {} for layer in saes}
        self.lock = threading.Lock()

    def _from_effects(self, layer: int, features: list[int], locked: bool) -> dict[int, str]:
        from ..features.logits import token_effects

        cache = self.effect_labels[layer]
        missing = sorted({f for f in features if f not in cache})
        if missing:
            run = (lambda fn, *a, **k: fn(*a, **k)) if locked else self.gate.run
            effects = run(token_effects, self.lm, self.saes[layer], missing, n=8)
            with self.lock:
                cache.update({e.feature: auto_label([], [t for t, _ in e.promoted]) for e in effects})
        return {f: cache[f] for f in features}

    def info(self, layer: int, features: Iterable[int], locked: bool = False) -> dict[int, dict]:
        """{feature: {label, label_source, density}}; density (firings per token) is None without a store.
        `locked`: the caller already holds the model lock."""
        features = [int(f) for f in features]
        store = self.stores.get(layer)
        if store is None:
            return {f: {"label": text, "label_source": AUTO, "density": None}
                    for f, text in self._from_effects(layer, features, locked).items()}
        labels = store.labels(features)
        density = store.feature_table()["density"] if features else None
        return {f: {**labels[f].to_dict(), "density": round(float(density[f]), 6)} for f in features}

    def rows(self, layer: int, rows: list[dict], locked: bool = False) -> list[dict]:
        """`rows` (dicts with a 'feature') with label, label_source and density added."""
        info = self.info(layer, [r["feature"] for r in rows], locked)
        return [{**r, **info[r["feature"]]} for r in rows]
