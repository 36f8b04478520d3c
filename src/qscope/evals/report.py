"""Pictures and files of evaluation analyses: overlap heatmap, coverage and tau curves, JSON.

matplotlib runs headless (Agg); every figure is written atomically next to its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..io import save_png, write_json
from .overlap import OverlapMatrix, OverlapResult
from .redundancy import CoverageCurve, PerformanceRedundancy, RedundancyResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(i: int):
    return _plt().cm.tab10(i % 10)


def _style(i: int) -> str:
    return ("-", "--", ":")[(i // 10) % 3]  # more than ten lines: colours repeat, dashes tell them apart


def _save(fig, path: str | Path) -> Path:
    return save_png(fig, path, dpi=130, bbox_inches="tight")


def overlap_heatmap(result: OverlapMatrix, path: str | Path, kind: str = "overlap", title: str | None = None) -> Path:
    """Heatmap of overlap[i][j] = |F_i n F_j| / |F_i| (row benchmark -> column benchmark)."""
    plt = _plt()
    matrix = getattr(result, kind)
    n = len(result.benchmarks)
    fig, ax = plt.subplots(figsize=(1.2 + 0.62 * n, 0.9 + 0.55 * n))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    labels = [f"{b} ({s})" for b, s in zip(result.benchmarks, result.sizes)]
    ax.set_xticks(range(n), result.benchmarks, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            v = matrix[i][j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5, color="black" if v > 0.6 else "white")
    ax.set_xlabel("B")
    ax.set_ylabel("A (|F(A)|)")
    default = "|F(A) ∩ F(B)| / |F(A)|" if kind == "overlap" else "|F(A) ∩ F(B)| / min(|F(A)|, |F(B)|)"
    ax.set_title(title or default, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _subset_curves(lines: list[tuple[str, int, Sequence[float]]], path: str | Path, ylabel: str,
                   ylim: tuple[float, float], title: str) -> Path:
    """One curve per benchmark against the subset fraction n/|D|; `lines`: (label, |D|, values), legend order."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (label, n_items, values) in enumerate(lines):
        x = [n / n_items for n in range(1, n_items + 1)]
        ax.plot(x, values, lw=1.4, color=_color(i), ls=_style(i), label=label)
    ax.set_xlabel("subset size n / |D|")
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def coverage_plot(curves: Sequence[CoverageCurve], path: str | Path, title: str | None = None) -> Path:
    """Coverage c_n against the fraction n/|D| of items, one line per benchmark, R_hat in the legend."""
    lines = [(f"{c.benchmark}  R̂={c.r_hat:.3f}", c.n_items, c.coverage)
             for c in sorted(curves, key=lambda c: -c.r_hat)]
    return _subset_curves(lines, path, "c_n = E|F(S)| / |F(D)|", (0, 1.01),
                          title or "feature coverage of random subsets")


def tau_plot(results: Sequence[PerformanceRedundancy], path: str | Path, title: str | None = None) -> Path:
    """tau_n against n/|D| per benchmark (how well n items rank the models as all items do)."""
    lines = [(f"{r.benchmark}  R={r.r:.3f}", r.n_items, r.tau) for r in sorted(results, key=lambda r: -r.r)]
    n_models = results[0].n_models if results else 0
    return _subset_curves(lines, path, "tau_n = E Kendall tau(acc_S, acc_D)", (-1.01, 1.01),
                          title or f"performance redundancy over {n_models} models")


def scatter_plot(r_hat: dict[str, float], r: dict[str, float], path: str | Path, title: str = "") -> Path:
    """R_hat (features) against R (performance), one point per benchmark."""
    plt = _plt()
    names = [b for b in r_hat if b in r]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r_hat[b] for b in names], [r[b] for b in names])
    for b in names:
        ax.annotate(b, (r_hat[b], r[b]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("R̂ (feature coverage)")
    ax.set_ylabel("R (Kendall tau of model ranking)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def write_result(path: str | Path, obj, provenance: dict | None = None) -> Path:
    """JSON of a result object (anything with `.to_dict()`) or a plain dict, atomically, with its provenance."""
    write_json(path, obj.to_dict() if hasattr(obj, "to_dict") else obj, provenance=provenance)
    return Path(path)


def items_each(n: int | None) -> str:
    """How many items each benchmark was cut to, for titles."""
    return f"{n} items each" if n else "all loaded items"


def write_redundancy(result: RedundancyResult, out: str | Path, provenance: dict | None = None) -> list[Path]:
    """`redundancy.json` and `coverage.png` in `out`; with performance results also `tau.png`
    and `r_vs_rhat.png`."""
    out = Path(out)
    curves, perf = result.feature_based, result.performance_based or []
    paths = [write_result(out / "redundancy.json", result, provenance=provenance),
             coverage_plot(curves, out / "coverage.png",
                           title=f"feature coverage, layer {result.layer}, {items_each(result.items_per_benchmark)}")]
    if perf:
        paths.append(tau_plot(perf, out / "tau.png"))
        paths.append(scatter_plot({c.benchmark: c.r_hat for c in curves}, {p.benchmark: p.r for p in perf},
                                  out / "r_vs_rhat.png", title=f"{perf[0].n_models} models"))
    return paths


def write_overlap(result: OverlapResult, out: str | Path, provenance: dict | None = None) -> list[Path]:
    """`overlap.json`, `overlap.png` (|F(A) n F(B)| / |F(A)|) and `overlap_min.png` in `out`."""
    out = Path(out)
    title = f"|F(A) ∩ F(B)| / |F(A)|, layer {result.layer}, {items_each(result.items_per_benchmark)}"
    return [write_result(out / "overlap.json", result, provenance=provenance),
            overlap_heatmap(result.matrix, out / "overlap.png", title=title),
            overlap_heatmap(result.matrix, out / "overlap_min.png", kind="overlap_min")]
