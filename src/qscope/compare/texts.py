"""Text vs text: which features fire more on one text than on another, layer by layer.

Firing rate = share of a text's tokens (position 0 skipped) where the feature fires, so texts of
different lengths compare; features whose rates are equal are left out of both lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


def _rows(a, b, order) -> list[dict]:
    diff = a.rate - b.rate
    return [{"feature": int(f), "rate_a": round(float(a.rate[f]), 4), "rate_b": round(float(b.rate[f]), 4),
             "diff": round(float(diff[f]), 4), "mean_a": round(float(a.mean[f]), 4),
             "mean_b": round(float(b.mean[f]), 4)} for f in order if diff[f] != 0]


def firing_rate_differences(lm: LM, saes: dict[int, SAE], text_a: str, text_b: str, layers: Sequence[int],
                            top: int = 10, max_length: int = 256) -> list[dict]:
    """Per layer: {layer, tokens_a, tokens_b, more_in_a, more_in_b}, each list the `top` features
    by rate difference (rows: feature, rate_a, rate_b, diff, mean_a, mean_b)."""
    from ..features.search import collect_stats

    out = []
    for layer in layers:
        a = collect_stats(lm, saes[layer], [text_a], layer, max_length=max_length)
        b = collect_stats(lm, saes[layer], [text_b], layer, max_length=max_length)
        diff = a.rate - b.rate
        out.append({"layer": layer, "tokens_a": a.tokens, "tokens_b": b.tokens,
                    "more_in_a": _rows(a, b, diff.argsort(descending=True)[:top]),
                    "more_in_b": _rows(a, b, diff.argsort()[:top])})
    return out
