"""Result types of an SAE comparison and their outputs: JSON, a PNG of histograms, table rows.

Per-feature arrays ride along on the result (`arrays`) for plots and follow-up analysis but
stay out of the JSON unless asked for: 9216 features x 10 arrays would drown the summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io import save_png, write_json


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


@dataclass
class DirectionResult:
    """Decoder- or encoder-direction comparison: MMCS both ways and a one-to-one matching."""

    mmcs_ab: float  # mean over A features of the max cosine to any B feature
    mmcs_ba: float
    matched_mean_cos: float  # mean cosine of the Hungarian pairs
    shared: dict[str, float]  # threshold -> fraction of min(d_a, d_b) pairs with cos > threshold
    method: str
    seconds: float

    def to_dict(self) -> dict:
        return {**asdict(self), "mmcs_ab": _r(self.mmcs_ab), "mmcs_ba": _r(self.mmcs_ba),
                "matched_mean_cos": _r(self.matched_mean_cos), "seconds": _r(self.seconds, 2)}


@dataclass
class ActivationResult:
    """Best Pearson-correlated partner of each feature on the same tokens, both directions."""

    n_tokens: int
    n_texts: int
    dead_a: int  # features that never fired on these tokens
    dead_b: int
    rare_a: int  # features firing on fewer than min_fires tokens (dead included): excluded from means and fractions
    rare_b: int
    min_fires: int
    mean_best_ab: float
    mean_best_ba: float
    shared_ab: dict[str, float]  # threshold -> fraction of judged (not rare) A features with best corr > threshold
    shared_ba: dict[str, float]
    agrees_with_decoder: float  # judged A features whose best-correlated partner is their decoder match

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_best_ab": _r(self.mean_best_ab), "mean_best_ba": _r(self.mean_best_ba),
                "agrees_with_decoder": _r(self.agrees_with_decoder)}


@dataclass
class FeatureExample:
    """One feature with its match in the other SAE (or none) and what both promote.

    `decoder_cos` is the matched pair's cosine, or for an orphan its best cosine to any feature."""

    feature: int
    partner: int | None
    decoder_cos: float
    encoder_cos: float | None = None
    act_corr: float | None = None
    frequency: float | None = None
    promotes: list[str] = field(default_factory=list)
    partner_promotes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("decoder_cos", "encoder_cos", "act_corr"):
            d[key] = _r(d[key])
        d["frequency"] = _r(self.frequency, 6)
        return d


@dataclass
class SAEComparison:
    """Everything `compare_saes` measured; `arrays` holds the per-feature vectors behind it."""

    a: dict
    b: dict
    thresholds: list[float]
    decoder: DirectionResult
    encoder: DirectionResult
    shared_both: dict[str, float]  # same partner in both matchings, both cosines > threshold
    activation: ActivationResult | None = None
    matched: list[FeatureExample] = field(default_factory=list)
    orphans_a: list[FeatureExample] = field(default_factory=list)
    orphans_b: list[FeatureExample] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def shared_fraction(self) -> float:
        """The headline number: decoder and encoder matched to the same partner at cos > 0.7
        (the criterion of Paulo & Belrose 2025, as we read it)."""
        return self.shared_both.get("0.7", float("nan"))

    def to_dict(self, per_feature: bool = False) -> dict:
        out = {
            "a": self.a, "b": self.b, "thresholds": self.thresholds,
            "shared_fraction": _r(self.shared_fraction),
            "decoder": self.decoder.to_dict(), "encoder": self.encoder.to_dict(),
            "shared_both": self.shared_both,
            "activation": self.activation.to_dict() if self.activation else None,
            "matched": [e.to_dict() for e in self.matched],
            "orphans_a": [e.to_dict() for e in self.orphans_a],
            "orphans_b": [e.to_dict() for e in self.orphans_b],
        }
        if per_feature:
            out["per_feature"] = {k: [None if isinstance(x, float) and not np.isfinite(x) else x for x in v.tolist()]
                                  for k, v in self.arrays.items()}
        return out


def summary_rows(result: SAEComparison) -> list[tuple[str, str]]:
    """(metric, value) pairs for a console table."""
    rows = [("A", _describe(result.a)), ("B", _describe(result.b))]
    for name, d in (("decoder", result.decoder), ("encoder", result.encoder)):
        rows.append((f"{name} MMCS A->B / B->A", f"{d.mmcs_ab:.3f} / {d.mmcs_ba:.3f}"))
        rows.append((f"{name} Hungarian mean cos", f"{d.matched_mean_cos:.3f} ({d.method}, {d.seconds:.1f}s)"))
        rows.append((f"{name} shared at cos >", _fractions(d.shared)))
    rows.append(("both (same partner) shared at cos >", _fractions(result.shared_both)))
    act = result.activation
    if act:
        rows.append(("tokens (texts)", f"{act.n_tokens} ({act.n_texts})"))
        rows.append(("dead A / B", f"{act.dead_a} / {act.dead_b}"))
        rows.append((f"rare A / B (< {act.min_fires} firings, not judged)", f"{act.rare_a} / {act.rare_b}"))
        rows.append(("best activation corr A->B / B->A", f"{act.mean_best_ab:.3f} / {act.mean_best_ba:.3f}"))
        rows.append(("activation-shared A (corr >)", _fractions(act.shared_ab)))
        rows.append(("best-corr partner = decoder match", f"{act.agrees_with_decoder:.1%}"))
    return rows


def _describe(side: dict) -> str:
    return f"{side.get('source')} (d_sae {side.get('d_sae')}, k {side.get('k')}, layer {side.get('layer')})"


def _fractions(d: dict[str, float]) -> str:
    return "  ".join(f"{t}: {v:.1%}" for t, v in d.items())


def plot_comparison(result: SAEComparison, path: str | Path) -> Path:
    """Four panels: max cosines (MMCS), Hungarian cosines, activation correlations, and the
    shared fraction as a function of the threshold. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = result.arrays
    bins = np.linspace(-0.2, 1.0, 61)
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    _hist(ax[0, 0], bins, [("A -> B", arr.get("dec_max_ab")), ("B -> A", arr.get("dec_max_ba"))],
          "decoder: max cosine to the other SAE (MMCS)")
    _hist(ax[0, 1], bins, [("decoder", arr.get("dec_match_cos")), ("encoder", arr.get("enc_match_cos"))],
          "Hungarian-matched pairs: cosine")
    _hist(ax[1, 0], bins, [("A -> B", arr.get("act_best_ab")), ("B -> A", arr.get("act_best_ba"))],
          "activation: best Pearson correlation (judged features)")
    grid = np.linspace(0, 1, 101)
    # Unmatched (NaN) counts as not shared for the matchings; rare features are left out for activations.
    curves = [("decoder", arr.get("dec_match_cos"), True), ("encoder", arr.get("enc_match_cos"), True),
              ("both", arr.get("both_cos"), True), ("activation A", arr.get("act_best_ab"), False)]
    n = min(result.a.get("d_sae") or 0, result.b.get("d_sae") or 0)
    for label, values, over_all in curves:
        if values is not None and np.isfinite(values).any():
            v = values[np.isfinite(values)]
            total = n if over_all and n else len(v)
            ax[1, 1].plot(grid, [(v > t).sum() / total for t in grid], label=label)
    ax[1, 1].set(title="fraction shared above threshold", xlabel="threshold", ylabel="fraction")
    ax[1, 1].legend()
    fig.suptitle(f"A: {result.a.get('source')}   vs   B: {result.b.get('source')}", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def _hist(ax, bins, series, title):
    drawn = False
    for label, values in series:
        if values is not None and np.isfinite(values).any():
            ax.hist(np.clip(values[np.isfinite(values)], bins[0], bins[-1]), bins=bins, alpha=0.55, label=label)
            drawn = True
    ax.set(title=title, xlabel="value", ylabel="features")
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def write_report(result: SAEComparison, out: str | Path, name: str = "compare", per_feature: bool = False,
                 provenance: dict | None = None) -> list[Path]:
    """`<out>/<name>.json` and `<out>/<name>.png` (JSON with `provenance` if given); returns the paths written."""
    out = Path(out)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    write_json(json_path, result.to_dict(per_feature=per_feature), provenance=provenance)
    plot_comparison(result, png_path)
    return [json_path, png_path]
