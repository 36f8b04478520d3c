"""How benchmarks overlap in what they test, and what a new one would add to a suite.

Asymmetric overlap(A -> B) = |F(A) n F(B)| / |F(A)|: the share of A's features that B also
exercises (paper: GSM8K -> MATH 0.63 but MATH -> GSM8K 0.10: MATH covers GSM8K, not the
reverse). overlap_min = |F(A) n F(B)| / min(|F(A)|, |F(B)|) is the symmetric version.
Footprints grow with the number of items: compare benchmarks at equal item counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import QScopeError
from .footprint import Footprint, equalise

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


def _check(footprints: Sequence[Footprint]) -> None:
    if not footprints:
        raise QScopeError("no benchmarks given")
    if len({f.d_sae for f in footprints}) > 1:
        raise QScopeError("footprints come from SAEs of different widths; compare footprints of one SAE")
    names = [f.benchmark for f in footprints]
    if len(set(names)) < len(names):
        raise QScopeError(f"benchmark names must be distinct, got {names}")


@dataclass
class OverlapMatrix:
    benchmarks: list[str]
    sizes: list[int]
    n_items: list[int]
    overlap: list[list[float]]  # overlap[i][j] = |F_i n F_j| / |F_i|  ("i -> j")
    overlap_min: list[list[float]]
    intersection: list[list[int]]

    def get(self, a: str, b: str, kind: str = "overlap") -> float:
        i, j = self.benchmarks.index(a), self.benchmarks.index(b)
        return getattr(self, kind)[i][j]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overlap"] = [[round(x, 4) for x in row] for row in self.overlap]
        d["overlap_min"] = [[round(x, 4) for x in row] for row in self.overlap_min]
        return d


def overlap_matrix(footprints: Sequence[Footprint]) -> OverlapMatrix:
    """Asymmetric and min-normalised overlap between every pair of benchmark footprints."""
    _check(footprints)
    d_sae = footprints[0].d_sae
    masks = np.zeros((len(footprints), d_sae), dtype=np.float64)
    for i, f in enumerate(footprints):
        masks[i, f.union] = 1
    inter = masks @ masks.T
    sizes = masks.sum(1)
    safe = np.maximum(sizes, 1)
    over = inter / safe[:, None]
    over_min = inter / np.maximum(np.minimum(sizes[:, None], sizes[None, :]), 1)
    return OverlapMatrix([f.benchmark for f in footprints], sizes.astype(int).tolist(),
                         [len(f.items) for f in footprints], over.tolist(), over_min.tolist(),
                         inter.astype(int).tolist())


@dataclass
class CandidateScore:
    benchmark: str
    footprint_size: int
    new_features: int  # features of the candidate that no suite benchmark has
    novelty: float  # new_features / footprint_size: high = out of distribution for the suite
    covered_by_suite: float  # 1 - novelty = overlap(candidate -> suite union)

    def to_dict(self) -> dict:
        return asdict(self)


def rank_candidates(suite: Sequence[Footprint], candidates: Sequence[Footprint]) -> list[CandidateScore]:
    """Candidates sorted by how much of their footprint the suite's union does not cover (most novel first)."""
    _check(list(suite) + list(candidates))
    covered = np.unique(np.concatenate([f.union for f in suite])) if suite else np.zeros(0, dtype=np.int64)
    out = []
    for c in candidates:
        u = c.union
        new = int((~np.isin(u, covered)).sum())
        novelty = new / len(u) if len(u) else 0.0
        out.append(CandidateScore(c.benchmark, len(u), new, novelty, 1 - novelty))
    return sorted(out, key=lambda s: -s.novelty)


@dataclass
class UniqueFeature:
    feature: int
    item_fraction: float  # share of the benchmark's items on which it is active
    promoted: list[str] = field(default_factory=list)


@dataclass
class UniqueFeatures:
    benchmark: str
    others: list[str]
    n_unique: int
    footprint_size: int
    features: list[UniqueFeature]

    def to_dict(self) -> dict:
        return asdict(self)


def unique_features(target: Footprint, others: Sequence[Footprint], top: int = 20, lm: LM | None = None,
                    sae: SAE | None = None, n_tokens: int = 6) -> UniqueFeatures:
    """Features of `target` that none of `others` activates, most frequent first; with `lm` and
    `sae`, each comes with the tokens its decoder direction promotes (a quick label)."""
    _check([target, *others])
    seen = np.unique(np.concatenate([f.union for f in others])) if others else np.zeros(0, dtype=np.int64)
    counts = target.counts()
    mine = target.union
    uniq = mine[~np.isin(mine, seen)]
    order = uniq[np.argsort(-counts[uniq], kind="stable")][:top]
    feats = [UniqueFeature(int(f), round(counts[f] / max(len(target.items), 1), 4)) for f in order]
    if lm is not None and sae is not None and feats:
        from ..features.logits import token_effects

        for uf, eff in zip(feats, token_effects(lm, sae, [u.feature for u in feats], n=n_tokens)):
            uf.promoted = [t for t, _ in eff.promoted]
    return UniqueFeatures(target.benchmark, [f.benchmark for f in others], len(uniq), len(mine), feats)


# ---------------------------------------------------------------------------- the jobs
@dataclass(frozen=True)
class OverlapConfig:
    items: int | None = None  # items per benchmark: None = the smallest count, 0 = keep all
    pairs: tuple[tuple[str, str], ...] = ()  # (A, B) pairs reported both ways


@dataclass
class OverlapResult:
    items_per_benchmark: int | None
    layer: int | None
    position: str
    matrix: OverlapMatrix
    pairs: list[dict] = field(default_factory=list)  # a, b, a_to_b, b_to_a, overlap_min

    def to_dict(self) -> dict:
        return {"items_per_benchmark": self.items_per_benchmark, "layer": self.layer, "position": self.position,
                **self.matrix.to_dict(), "pairs": self.pairs}


def run_overlap(footprints: Sequence[Footprint], config: OverlapConfig | None = None) -> OverlapResult:
    """Overlap between every pair of benchmarks at equal item counts, and the asked pairs both ways."""
    config = config or OverlapConfig()
    fps, n = equalise(footprints, config.items)
    res = overlap_matrix(fps)
    pairs = []
    for a, b in config.pairs:
        if a not in res.benchmarks or b not in res.benchmarks:
            raise QScopeError(f"pair {a},{b}: both must be among {', '.join(res.benchmarks)}")
        pairs.append({"a": a, "b": b, "a_to_b": round(res.get(a, b), 4), "b_to_a": round(res.get(b, a), 4),
                      "overlap_min": round(res.get(a, b, "overlap_min"), 4)})
    return OverlapResult(n, fps[0].layer, fps[0].position, res, pairs)


@dataclass(frozen=True)
class RankConfig:
    suite: tuple[str, ...]  # benchmarks of the current suite (names or specs, see `data.benchmarks.spec_name`)
    candidates: tuple[str, ...]
    unique: int = 8  # unique features listed per candidate (0: none)
    items: int | None = None  # items per benchmark: None = the smallest count, 0 = keep all


@dataclass
class RankResult:
    items_per_benchmark: int | None
    suite: list[str]
    ranking: list[CandidateScore]
    unique_features: dict[str, UniqueFeatures] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"items_per_benchmark": self.items_per_benchmark, "suite": self.suite,
                "ranking": [r.to_dict() for r in self.ranking],
                "unique_features": {k: v.to_dict() for k, v in self.unique_features.items()}}


def run_rank(footprints: Sequence[Footprint], config: RankConfig, lm: LM | None = None,
             sae: SAE | None = None) -> RankResult:
    """Candidates ranked by the share of their footprint the suite does not cover, each with its
    unique features (named by promoted tokens when `lm` and `sae` are given)."""
    from ..data.benchmarks import spec_name

    fps, n = equalise(footprints, config.items)
    by = {f.benchmark: f for f in fps}
    missing = [s for s in (*config.suite, *config.candidates) if spec_name(s) not in by]
    if missing:
        raise QScopeError(f"no footprint for {', '.join(missing)} (have {', '.join(by)})")
    suite = [by[spec_name(s)] for s in config.suite]
    candidates = [by[spec_name(c)] for c in config.candidates]
    ranking = rank_candidates(suite, candidates)
    unique = {c.benchmark: unique_features(c, suite, top=config.unique, lm=lm, sae=sae)
              for c in candidates} if config.unique else {}
    return RankResult(n, list(config.suite), ranking, unique)
