"""Two SAE groups of one model over several layers: per-layer shared fractions, plus how the
features that matter for a task (e.g. the ones an uncertainty probe weights most) fare in the
other group.

A feature of A "survives" in B when its decoder partner from the Hungarian matching has cosine
above the threshold (0.7, the headline criterion of `SAEComparison.shared_fraction`). The focus
features are handed in as ids per layer, so this module needs no other application.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from ..errors import QScopeError
from ..io import save_png, write_json
from .report import SAEComparison

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

SURVIVES_AT = 0.7


@dataclass
class FocusMatch:
    """One focus feature of A and its partner in B."""

    feature: int
    partner: int | None
    decoder_cos: float
    encoder_cos: float | None
    act_corr: float | None
    frequency: float | None

    @property
    def survives(self) -> bool:
        """By direction: its Hungarian decoder partner has cosine > SURVIVES_AT."""
        return self.partner is not None and self.decoder_cos > SURVIVES_AT

    @property
    def fires_alike(self) -> bool | None:
        """By function: some B feature's activations correlate > SURVIVES_AT with it (None untested)."""
        return None if self.act_corr is None else self.act_corr > SURVIVES_AT

    def to_dict(self) -> dict:
        return {"feature": self.feature, "partner": self.partner, "decoder_cos": round(self.decoder_cos, 4),
                "encoder_cos": None if self.encoder_cos is None else round(self.encoder_cos, 4),
                "act_corr": None if self.act_corr is None else round(self.act_corr, 4),
                "frequency": None if self.frequency is None else round(self.frequency, 6),
                "survives": self.survives, "fires_alike": self.fires_alike}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def focus_matches(result: SAEComparison, features: Sequence[int]) -> list[FocusMatch]:
    """The partner in B of each given feature of A, with its decoder/encoder cosines and (when
    activations were compared) its best activation correlation and firing frequency."""
    arr = result.arrays
    n_a = len(arr["dec_partner"])
    out = []
    for f in features:
        if not 0 <= int(f) < n_a:
            raise QScopeError(f"focus feature {f} is out of range for SAE A (d_sae {n_a})")
        partner = int(arr["dec_partner"][f])
        enc_same = int(arr["enc_partner"][f]) == partner
        act = arr.get("act_best_ab")
        freq = arr.get("freq_a")
        out.append(FocusMatch(int(f), partner if partner >= 0 else None, float(arr["dec_match_cos"][f]),
                              _finite(arr["enc_match_cos"][f]) if enc_same else None,
                              None if act is None else _finite(act[f]), None if freq is None else _finite(freq[f])))
    return out


@dataclass
class GroupComparison:
    """Per-layer `SAEComparison`s of two SAE groups, and the focus features' fate in B."""

    layers: list[int]
    results: dict[int, SAEComparison]
    focus: dict[int, list[FocusMatch]] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)  # layer -> why it was not compared

    def focus_survival(self, layer: int, by: str = "direction") -> float | None:
        """Fraction of the layer's focus features that survive in B, by "direction" or "function"."""
        rows = self.focus.get(layer) or []
        flags = [m.survives if by == "direction" else m.fires_alike for m in rows]
        flags = [f for f in flags if f is not None]
        return sum(flags) / len(flags) if flags else None

    def to_dict(self, per_feature: bool = False) -> dict:
        return {
            "layers": self.layers,
            "survives_at": SURVIVES_AT,
            "per_layer": {str(l): {"shared_fraction": r.to_dict()["shared_fraction"],
                                   "focus_survival": self.focus_survival(l),
                                   "focus_fires_alike": self.focus_survival(l, by="function"),
                                   "focus": [m.to_dict() for m in self.focus.get(l, [])],
                                   "comparison": r.to_dict(per_feature=per_feature)}
                          for l, r in self.results.items()},
            "missing": {str(l): why for l, why in self.missing.items()},
        }

    def summary_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(layer, shared fraction, focus surviving by direction, by function, note) for a console table."""
        rows = []
        for l in self.layers:
            if l in self.missing:
                rows.append((str(l), "-", "-", "-", self.missing[l]))
                continue
            n = len(self.focus.get(l, []))
            cells = [_share(self.focus_survival(l, by), n) for by in ("direction", "function")]
            rows.append((str(l), f"{self.results[l].shared_fraction:.1%}", *cells, ""))
        return rows


def _share(x: float | None, n: int) -> str:
    return "-" if x is None else f"{x:.0%} of {n}"


def compare_groups(saes_a: dict[int, "SAE"], saes_b: dict[int, "SAE"], lm: "LM | None" = None,
                   texts: Iterable[str] | None = None, *, focus: dict[int, Sequence[int]] | None = None,
                   names: tuple[str | None, str | None] = (None, None),
                   on_layer: Callable[[int, int, int], None] | None = None, **compare_kw) -> GroupComparison:
    """Compare A and B layer by layer (`compare_saes` keywords pass through). Layers present in
    only one group are listed in `missing` rather than failing the whole run."""
    from . import compare_saes

    layers = sorted(set(saes_a) | set(saes_b))
    if not layers:
        raise QScopeError("no layers to compare: both SAE groups are empty")
    text_list = list(texts) if texts is not None else None
    out = GroupComparison(layers, {})
    for i, layer in enumerate(layers):
        if on_layer:
            on_layer(layer, i, len(layers))
        if layer not in saes_a or layer not in saes_b:
            out.missing[layer] = f"no SAE at layer {layer} in {'A' if layer not in saes_a else 'B'}"
            continue
        result = compare_saes(saes_a[layer], saes_b[layer], lm, text_list, layers=(layer, layer), names=names,
                              **compare_kw)
        out.results[layer] = result
        if focus and focus.get(layer):
            out.focus[layer] = focus_matches(result, focus[layer])
    return out


def plot_groups(result: GroupComparison, path: str | Path, provenance: dict | None = None) -> Path:
    """Bars per layer: shared fraction of all features vs surviving fraction of the focus ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [l for l in result.layers if l in result.results]
    x = np.arange(len(layers))
    shared = [result.results[l].shared_fraction for l in layers]
    fig, ax = plt.subplots(figsize=(1.6 * max(len(layers), 2) + 3, 3.6))
    bars = [("all features (dec & enc cos > 0.7)", shared),
            (f"focus features, decoder cos > {SURVIVES_AT}", [result.focus_survival(l) for l in layers]),
            (f"focus features, activation corr > {SURVIVES_AT}", [result.focus_survival(l, "function") for l in layers])]
    for i, (label, values) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, [np.nan if v is None else v for v in values], 0.27, label=label)
    ax.set_xticks(x, [f"layer {l}" for l in layers])
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction shared with B")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, provenance=provenance)


def write_group_report(result: GroupComparison, out: str | Path, name: str = "compare-group",
                       per_feature: bool = False, provenance: dict | None = None) -> list[Path]:
    """`<out>/<name>.json` and `<out>/<name>.png`; returns the paths written."""
    out = Path(out)
    json_path = out / f"{name}.json"
    write_json(json_path, result.to_dict(per_feature=per_feature), provenance=provenance)
    return [json_path, plot_groups(result, out / f"{name}.png", provenance)]
