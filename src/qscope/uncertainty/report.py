"""How well each confidence score predicts correctness: AUROC with paired bootstrap CIs, the
difference to a reference baseline, selective-prediction curves, JSON and PNG.

All scores are judged on the same items and the same bootstrap resamples, so a score's CI and
its difference to the baseline are paired: "beats max-prob" means the difference's CI is > 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..errors import QScopeError
from ..io import save_png, write_json

COVERAGES = np.round(np.linspace(0.1, 1.0, 19), 3)


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """P(score of a right answer > score of a wrong one), ties counted half (Mann-Whitney)."""
    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_aurocs(y: np.ndarray, scores: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """AUROC of every score on the same `n_boot` resamples of the items (one-class resamples skipped)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=int)
    out: dict[str, list[float]] = {name: [] for name in scores}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        for name, s in scores.items():
            out[name].append(auroc(y[idx], s[idx]))
    return {name: np.asarray(v) for name, v in out.items()}


def ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if samples.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    return float(np.percentile(samples, a)), float(np.percentile(samples, 100 - a))


def selective_curve(y: np.ndarray, score: np.ndarray, coverages=COVERAGES) -> list[tuple[float, float]]:
    """(coverage, accuracy on the most confident `coverage` fraction of items)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    y = np.asarray(y, dtype=float)[order]
    return [(float(c), float(y[:max(1, round(c * len(y)))].mean())) for c in coverages]


@dataclass
class ScoreResult:
    name: str
    family: str  # logit, trace, feature, probe
    layer: int | None
    auroc: float
    ci: tuple[float, float]
    delta: float | None = None  # AUROC minus the reference's, paired bootstrap CI below
    delta_ci: tuple[float, float] | None = None
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["auroc"] = round(self.auroc, 4)
        d["ci"] = [round(x, 4) for x in self.ci]
        if self.delta is not None:
            d["delta"] = round(self.delta, 4)
            d["delta_ci"] = [round(x, 4) for x in self.delta_ci]
        return d


@dataclass
class UncertaintyReport:
    benchmark: str
    model: str
    n_items: int
    n_correct: int
    label_method: str
    reference: str  # the baseline every delta is taken against
    scores: list[ScoreResult]
    sae_probes: dict[int, dict] = field(default_factory=dict)
    selective: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_items if self.n_items else float("nan")

    def best(self, family: str | None = None) -> ScoreResult:
        rows = [s for s in self.scores if family is None or s.family == family]
        return max(rows, key=lambda s: s.auroc)

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "model": self.model, "n_items": self.n_items, "n_correct": self.n_correct,
                "accuracy": round(self.accuracy, 4), "label_method": self.label_method, "reference": self.reference,
                "scores": [s.to_dict() for s in self.scores],
                "sae_probes": {str(k): v for k, v in self.sae_probes.items()},
                "selective": {k: [[c, round(a, 4)] for c, a in v] for k, v in self.selective.items()},
                "config": self.config}


Score = tuple[str, str, "int | None", np.ndarray]  # (name, family, layer, values)


def score_key(name: str, layer: int | None) -> str:
    return name if layer is None else f"{name}@L{layer}"


def judge(y: np.ndarray, scores: list[Score], reference: str, n_boot: int = 1000, seed: int = 0) -> list[ScoreResult]:
    """AUROC, CI and paired delta to the `reference` score for every (name, family, layer, values)."""
    if len(set(np.asarray(y).tolist())) < 2:
        raise QScopeError("AUROC needs both right and wrong answers among the items")
    arrays = {score_key(n, layer): np.asarray(v, dtype=float) for n, _, layer, v in scores}
    if reference not in arrays:
        raise QScopeError(f"reference score {reference!r} was not computed")
    for key, a in arrays.items():
        if a.shape != (len(y),) or not np.isfinite(a).all():
            raise QScopeError(f"score {key!r}: expected {len(y)} finite values")
    boots = bootstrap_aurocs(y, arrays, n_boot, seed)
    ref_point = auroc(y, arrays[reference])
    out = []
    for name, family, layer, _ in scores:
        key = score_key(name, layer)
        row = ScoreResult(name, family, layer, auroc(y, arrays[key]), ci(boots[key]))
        if key != reference:
            row.delta = row.auroc - ref_point
            row.delta_ci = ci(boots[key] - boots[reference])
        out.append(row)
    return out


# ---------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_selective(report: UncertaintyReport, path: str | Path) -> Path:
    """Accuracy vs coverage for each curve in the report, with the base accuracy as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, curve in report.selective.items():
        c, a = zip(*curve)
        ax.plot(c, a, marker=".", label=name)
    ax.axhline(report.accuracy, color="grey", ls="--", lw=1, label=f"no abstention ({report.accuracy:.2f})")
    ax.set(xlabel="coverage (fraction of items answered, most confident first)", ylabel="accuracy",
           title=f"{report.benchmark}: selective prediction ({report.n_items} items)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_layers(report: UncertaintyReport, path: str | Path) -> Path:
    """AUROC +- CI per layer for the layered scores, the best logit baseline as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    layered: dict[str, list[ScoreResult]] = {}
    for s in report.scores:
        if s.layer is not None:
            layered.setdefault(s.name, []).append(s)
    for name, rows in layered.items():
        rows.sort(key=lambda s: s.layer)
        x = [s.layer for s in rows]
        yv = [s.auroc for s in rows]
        err = np.array([[s.auroc - s.ci[0] for s in rows], [s.ci[1] - s.auroc for s in rows]])
        ax.errorbar(x, yv, yerr=err, marker="o", capsize=3, label=name)
    base = report.best("logit")
    ax.axhspan(base.ci[0], base.ci[1], color="grey", alpha=0.2)
    ax.axhline(base.auroc, color="grey", lw=1, label=f"best logit baseline: {base.name}")
    ax.axhline(0.5, color="black", lw=0.5, ls=":")
    ax.set(xlabel="layer", ylabel="AUROC (predicting a right answer)", title=f"{report.benchmark}: AUROC per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def write_report(report: UncertaintyReport, out: str | Path, name: str | None = None,
                 provenance: dict | None = None) -> list[Path]:
    """`<out>/<name>.json` (with `provenance` if given), `<name>-selective.png`, `<name>-layers.png`."""
    out = Path(out)
    name = name or report.benchmark.replace(":", "-")
    paths = [out / f"{name}.json", out / f"{name}-selective.png", out / f"{name}-layers.png"]
    write_json(paths[0], report.to_dict(), provenance=provenance)
    plot_selective(report, paths[1])
    plot_layers(report, paths[2])
    return paths


def summary_rows(report: UncertaintyReport, all_layers: bool = False) -> list[tuple[str, str, str, str, str]]:
    """(score, family, layer, AUROC [CI], delta to reference [CI]) rows, best first. Unless
    `all_layers`, a per-layer score shows only at the SAE layers and at its best layer."""
    keep = set(report.config.get("sae_layers", []))
    best_layer = {}
    for s in report.scores:
        if s.layer is not None and (s.name not in best_layer or s.auroc > best_layer[s.name].auroc):
            best_layer[s.name] = s
    rows = []
    for s in sorted(report.scores, key=lambda s: -s.auroc):
        if not all_layers and s.layer is not None and s.layer not in keep and best_layer[s.name] is not s:
            continue
        delta = "" if s.delta is None else f"{s.delta:+.3f} [{s.delta_ci[0]:+.3f}, {s.delta_ci[1]:+.3f}]"
        rows.append((score_key(s.name, None), s.family, "" if s.layer is None else str(s.layer),
                     f"{s.auroc:.3f} [{s.ci[0]:.3f}, {s.ci[1]:.3f}]", delta))
    return rows
