"""How redundant a benchmark is: feature-based (coverage curve) and performance-based (Kendall tau).

Feature-based: c_n = E_S[|F(S)| / |F(D)|] over random subsets S of n items; R_hat(D) is the
normalised area under that curve, (1/|D|) sum_{n=1..|D|} c_n, in (0, 1]. (The spec writes
the normaliser as |F(D)|; c_n is already a fraction of |F(D)|, so the area is normalised by the
number of subset sizes, |D|, which makes R_hat = 1 exactly when one item covers everything.)
R_hat depends on |D|: compare benchmarks at equal item counts.

Performance-based (needs accuracy of several models/checkpoints on the same items):
tau_n = E_S[Kendall tau(acc on S, acc on D)], R(D) = mean_n tau_n: how well n items already
rank the models as the whole benchmark does. The paper finds Spearman(R, R_hat) ~ 0.85.

Expectations over subsets use random permutations: the first n items of a uniformly random
permutation are a uniformly random n-subset, so one permutation gives a sample for every n.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import QScopeError
from .accuracy import AccuracyResult, accuracy_matrix
from .footprint import Footprint, equalise


@dataclass
class CoverageCurve:
    benchmark: str
    n_items: int
    footprint_size: int
    coverage: list[float]  # c_n for n = 1..n_items
    coverage_std: list[float]
    r_hat: float
    n_samples: int
    seed: int

    def at(self, n: int) -> float:
        return self.coverage[n - 1]

    def to_dict(self, curve: bool = True) -> dict:
        d = asdict(self)
        d["r_hat"] = round(self.r_hat, 4)
        d["items_for_half"] = self.items_for(0.5)
        d["items_for_90pct"] = self.items_for(0.9)
        if curve:
            d["coverage"] = [round(c, 4) for c in self.coverage]
            d["coverage_std"] = [round(c, 4) for c in self.coverage_std]
        else:
            del d["coverage"], d["coverage_std"]
        return d

    def items_for(self, fraction: float) -> int | None:
        """Smallest n whose expected coverage reaches `fraction` of the footprint."""
        return next((n for n, c in enumerate(self.coverage, 1) if c >= fraction), None)


def coverage_curve(fp: Footprint, n_samples: int = 200, seed: int = 0) -> CoverageCurve:
    """c_n for every n (Monte-Carlo over `n_samples` seeded permutations) and R_hat."""
    n = len(fp.items)
    if n == 0:
        raise QScopeError(f"{fp.benchmark}: no items")
    union = fp.union
    if len(union) == 0:
        raise QScopeError(f"{fp.benchmark}: no feature is active on any item (empty footprint)")
    # Item/feature incidence as pairs, features renumbered 0..|F(D)|-1.
    item_of = np.concatenate([np.full(len(f), i) for i, f in enumerate(fp.items)])
    feat_of = np.searchsorted(union, np.concatenate(fp.items))
    rng = np.random.default_rng(seed)
    counts = np.empty((n_samples, n))
    for s in range(n_samples):
        rank = np.empty(n, dtype=np.int64)
        rank[rng.permutation(n)] = np.arange(n)
        first = np.full(len(union), n, dtype=np.int64)  # position at which each feature first appears
        np.minimum.at(first, feat_of, rank[item_of])
        counts[s] = np.cumsum(np.bincount(first, minlength=n + 1)[:n])
    frac = counts / len(union)
    cov = frac.mean(0)
    return CoverageCurve(fp.benchmark, n, len(union), cov.tolist(), frac.std(0).tolist(), float(cov.mean()),
                         n_samples, seed)


# ---------------------------------------------------------------------------- performance-based
def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_a - x_b) over all model pairs a < b, on the last axis."""
    a, b = np.triu_indices(x.shape[-1], 1)
    return np.sign(x[..., a] - x[..., b])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row of `x` (..., M) against `y` (M,); NaN where either is constant."""
    sx, sy = _pair_signs(np.asarray(x, float)), _pair_signs(np.asarray(y, float))
    denom = np.sqrt((sx != 0).sum(-1) * (sy != 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum(-1) / np.where(denom > 0, denom, 1), np.nan)


@dataclass
class PerformanceRedundancy:
    benchmark: str
    n_items: int
    n_models: int
    models: list[str]
    accuracy: list[float]  # per model, on all items
    tau: list[float]  # tau_n for n = 1..n_items
    r: float
    undefined_fraction: float  # subsets that scored every model the same (tau counted as 0)
    n_samples: int
    seed: int

    def to_dict(self, curve: bool = True) -> dict:
        d = asdict(self)
        d["r"] = round(self.r, 4)
        d["accuracy"] = [round(a, 4) for a in self.accuracy]
        if curve:
            d["tau"] = [round(t, 4) for t in self.tau]
        else:
            del d["tau"]
        return d


def performance_redundancy(acc: np.ndarray, models: Sequence[str] | None = None, benchmark: str = "",
                           n_samples: int = 200, seed: int = 0) -> PerformanceRedundancy:
    """tau_n and R(D) from an (items x models) matrix of per-item scores (0/1 or graded).

    A subset that gives every model the same score has no ranking; its tau counts as 0 (it does
    not reproduce the full ranking), and the share of such subsets is reported."""
    acc = np.asarray(acc, dtype=float)
    if acc.ndim != 2 or acc.shape[0] == 0:
        raise QScopeError(f"{benchmark}: accuracy must be an (items x models) matrix, got shape {acc.shape}")
    n, m = acc.shape
    if m < 2:
        raise QScopeError(f"{benchmark}: a ranking needs at least 2 models/checkpoints, got {m}")
    models = list(models) if models is not None else [f"model{j}" for j in range(m)]
    full = acc.mean(0)
    if np.all(full == full[0]):
        raise QScopeError(f"{benchmark}: all {m} models have the same accuracy ({full[0]:.3f}); no ranking to keep")
    rng = np.random.default_rng(seed)
    taus = np.empty((n_samples, n))
    for s in range(n_samples):
        prefix = np.cumsum(acc[rng.permutation(n)], 0) / np.arange(1, n + 1)[:, None]
        taus[s] = kendall_tau_b(prefix, full)
    undefined = float(np.isnan(taus).mean())
    tau = np.nan_to_num(taus, nan=0.0).mean(0)
    return PerformanceRedundancy(benchmark, n, m, models, full.tolist(), tau.tolist(), float(tau.mean()), undefined,
                                 n_samples, seed)


def spearman_agreement(r_hat: dict[str, float], r: dict[str, float]) -> dict:
    """Spearman correlation of feature-based and performance-based redundancy across benchmarks."""
    from scipy.stats import spearmanr

    names = [b for b in r_hat if b in r]
    if len(names) < 3:
        raise QScopeError(f"Spearman over benchmarks needs at least 3 with both R and R_hat, got {len(names)}")
    rho, p = spearmanr([r_hat[b] for b in names], [r[b] for b in names])
    return {"spearman": float(rho), "p_value": float(p), "n_benchmarks": len(names), "benchmarks": names}


# ---------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class RedundancyConfig:
    items: int | None = None  # items per benchmark: None = the smallest count, 0 = keep all
    samples: int = 200  # Monte-Carlo permutations per benchmark
    seed: int = 0


@dataclass
class RedundancyResult:
    items_per_benchmark: int | None
    layer: int | None
    position: str
    feature_based: list[CoverageCurve]
    performance_based: list[PerformanceRedundancy] | None = None  # None: no accuracy given
    agreement: dict | None = None  # Spearman(R, R_hat), with 3 or more benchmarks having both
    notes: list[str] = field(default_factory=list)  # benchmarks left out of tau, and why

    def to_dict(self) -> dict:
        d = {"items_per_benchmark": self.items_per_benchmark, "layer": self.layer, "position": self.position,
             "feature_based": [c.to_dict() for c in self.feature_based]}
        if self.performance_based is not None:
            d["performance_based"] = [p.to_dict() for p in self.performance_based]
            if self.performance_based:
                d["models"] = self.performance_based[0].models
                d["n_models"] = self.performance_based[0].n_models
        if self.agreement is not None:
            d["agreement"] = self.agreement
        return d


def run_redundancy(footprints: Sequence[Footprint], config: RedundancyConfig | None = None,
                   accuracy: Mapping[str, Sequence[AccuracyResult]] | None = None) -> RedundancyResult:
    """Coverage curves and R_hat of each benchmark at equal item counts; with `accuracy`
    ({benchmark: one result per model}) also tau_n, R and, over 3+ benchmarks, Spearman(R, R_hat).
    Benchmarks with fewer than 2 models, or no ranking, are left out of tau (see `notes`)."""
    config = config or RedundancyConfig()
    fps, n = equalise(footprints, config.items)
    curves = [coverage_curve(f, config.samples, config.seed) for f in fps]
    result = RedundancyResult(n, fps[0].layer, fps[0].position, curves)
    if accuracy is None:
        return result
    result.performance_based = []
    for f in fps:
        results = list(accuracy.get(f.benchmark, []))
        if len(results) < 2:
            result.notes.append(f"{f.benchmark}: accuracy of {len(results)} model(s); tau needs 2 or more")
            continue
        matrix, _, models = accuracy_matrix(results)
        try:
            result.performance_based.append(
                performance_redundancy(matrix, models, f.benchmark, config.samples, config.seed))
        except QScopeError as exc:
            result.notes.append(str(exc))
    r_hat = {c.benchmark: c.r_hat for c in curves}
    r = {p.benchmark: p.r for p in result.performance_based}
    if len([b for b in r_hat if b in r]) >= 3:
        result.agreement = spearman_agreement(r_hat, r)
    return result
