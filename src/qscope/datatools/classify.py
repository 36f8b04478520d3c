"""The paper's feature classifier: example-level firing, delta ranking, top-K OR rule.

h_{i,f} = 1[max_t a_{i,t,f} > 0]; delta_f = P(h=1 | pos) - P(h=1 | neg); keep the top K
features; an example is positive if ANY of them fires. No trained head, so the classifier is a
list of (layer, feature) pairs a person can read. The layer is chosen without test labels by
"top1-diff" d(l) = max_f delta_f; the multi-layer variant ORs the best feature of the top-m
layers. Logistic probes on raw residuals and on SAE codes are the baselines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import QScopeError
from ..io import save_png, write_json
from .cache import Codes

KS = (1, 2, 5, 10)
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class SelectedFeature:
    layer: int
    feature: int
    delta: float
    p_pos: float
    p_neg: float


@dataclass
class FeatureClassifier:
    """OR rule over selected features: positive when any of them fires (max activation > 0)."""

    features: list[SelectedFeature]
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted({f.layer for f in self.features})

    def fired(self, codes: Codes) -> np.ndarray:
        """(n, n_features) bool: which selected feature fires on which example."""
        missing = [l for l in self.layers if l not in codes.max_acts]
        if missing:
            raise QScopeError(f"the classifier reads layer {missing[0]}, but codes hold layers {codes.layers}")
        cols = [codes.max_acts[f.layer][:, f.feature].toarray().ravel() > 0 for f in self.features]
        return np.stack(cols, 1) if cols else np.zeros((len(codes), 0), dtype=bool)

    def predict(self, codes: Codes) -> np.ndarray:
        return self.fired(codes).any(1)

    def to_dict(self) -> dict:
        return {"rule": "or", "features": [asdict(f) for f in self.features], "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureClassifier":
        try:
            return cls([SelectedFeature(**f) for f in data["features"]], data.get("meta", {}))
        except (KeyError, TypeError) as exc:
            raise QScopeError(
                f"not a qscope feature classifier (expected 'features' with layer/feature/delta): {exc}"
            ) from None

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureClassifier":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise QScopeError(f"{path}: cannot read classifier JSON ({exc})") from None


# ------------------------------------------------------------------------- discovery
def _labels(y: Sequence[int]) -> np.ndarray:
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise QScopeError("discovery needs both positive and negative examples")
    return y


def firing_rates(codes: Codes, y: Sequence[int], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """P(fire | pos), P(fire | neg) per feature of `layer`."""
    y = _labels(y)
    fires = codes.fires(layer)
    return np.asarray(fires[y].mean(0)).ravel(), np.asarray(fires[~y].mean(0)).ravel()


def delta_scores(codes: Codes, y: Sequence[int], layer: int) -> np.ndarray:
    """delta_f = P(fire | pos) - P(fire | neg)."""
    pos, neg = firing_rates(codes, y, layer)
    return pos - neg


def top_features(codes: Codes, y: Sequence[int], layer: int, k: int) -> list[SelectedFeature]:
    """The k features with the largest delta (ties broken by lower feature id)."""
    if k < 1:
        raise QScopeError(f"K must be at least 1, got {k}")
    pos, neg = firing_rates(codes, y, layer)
    delta = pos - neg
    order = np.lexsort((np.arange(len(delta)), -delta))[:k]
    return [SelectedFeature(layer, int(f), float(delta[f]), float(pos[f]), float(neg[f])) for f in order]


def discover(codes: Codes, y: Sequence[int], layer: int, k: int, meta: dict | None = None) -> FeatureClassifier:
    """Top-K OR classifier on one layer."""
    return FeatureClassifier(top_features(codes, y, layer, k), dict(meta or {}))


def top1_diff(codes: Codes, y: Sequence[int]) -> dict[int, SelectedFeature]:
    """d(l) = max_f delta_f per layer, with the feature attaining it."""
    return {layer: top_features(codes, y, layer, 1)[0] for layer in codes.layers}


def choose_layer(codes: Codes, y: Sequence[int]) -> int:
    """The layer with the largest top1-diff (ties: the shallower layer)."""
    d = top1_diff(codes, y)
    return max(d, key=lambda l: (d[l].delta, -l))


def multi_layer(codes: Codes, y: Sequence[int], m: int, meta: dict | None = None) -> FeatureClassifier:
    """OR of the best feature of each of the top-m layers by top1-diff."""
    d = top1_diff(codes, y)
    best = sorted(d.values(), key=lambda f: (-f.delta, f.layer))[:m]
    return FeatureClassifier(best, dict(meta or {}, rule=f"multi-layer m={m}"))


# ------------------------------------------------------------------------- scoring
def binary_scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    """F1 / precision / recall / accuracy of the positive class."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": float((y == p).mean()) if len(y) else 0.0}


def fit_probe(kind: str, train: Codes, y: Sequence[int], layer: int, seed: int = 0) -> Callable[[Codes], np.ndarray]:
    """Baseline: logistic regression (C=1, features scaled) on mean-pooled raw residuals
    (`raw`) or on SAE max-activation codes (`sae`); returns codes -> predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    if kind not in ("raw", "sae"):
        raise QScopeError(f"probe kind must be raw or sae, not {kind!r}")
    pick = (lambda c: c.means[layer]) if kind == "raw" else (lambda c: c.max_acts[layer])
    scaler = StandardScaler() if kind == "raw" else MaxAbsScaler()
    model = LogisticRegression(C=1.0, max_iter=3000, random_state=seed)
    model.fit(scaler.fit_transform(pick(train)), _labels(y))
    return lambda codes: model.predict(scaler.transform(pick(codes)))


# ------------------------------------------------------------------------- the report
@dataclass
class TaskReport:
    """Everything measured on one task; `grid` rows are (split, layer, K) -> scores."""

    task: str
    n_discovery: int
    n_test: dict[str, int]
    layers: list[int]
    ks: list[int]
    top1_diff: dict[int, dict]
    chosen_layer: int
    chosen_k: int  # picked by discovery-set F1 at the chosen layer (no test labels)
    grid: list[dict] = field(default_factory=list)
    multi_layer: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    efficiency: list[dict] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)  # the chosen classifier's features

    def f1(self, split: str, layer: int | None = None, k: int | None = None) -> float:
        layer = self.chosen_layer if layer is None else layer
        k = self.chosen_k if k is None else k
        return next(r["f1"] for r in self.grid if r["split"] == split and r["layer"] == layer and r["k"] == k)

    def headline(self) -> dict:
        """Per test split: chosen (layer, K), best grid cell, and the best baseline of each kind."""
        out = {}
        for split in self.n_test:
            rows = [r for r in self.grid if r["split"] == split]
            best = max(rows, key=lambda r: r["f1"])
            base = {
                kind: max((b["f1"] for b in self.baselines if b["split"] == split and b["kind"] == kind), default=None)
                for kind in ("raw-probe", "sae-probe")
            }
            out[split] = {
                "chosen_f1": self.f1(split),
                "best_f1": best["f1"],
                "best_layer": best["layer"],
                "best_k": best["k"],
                **{f"{k}_best_f1": v for k, v in base.items()},
            }
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top1_diff"] = {str(k): v for k, v in self.top1_diff.items()}
        d["headline"] = self.headline()
        return d


def _subsample(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified row sample: `fraction` of each class, at least one of each."""
    rows = []
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        rows.append(rng.choice(idx, max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(rows))


def evaluate(
    task: str,
    disc: Codes,
    y_disc: Sequence[int],
    tests: dict[str, tuple[Codes, Sequence[int]]],
    ks: Sequence[int] = KS,
    fractions: Sequence[float] = FRACTIONS,
    seeds: int = 5,
    ms: Sequence[int] = (1, 2, 3),
    baselines: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TaskReport:
    """Discover on `disc`, score every (layer, K), the top1-diff choice, multi-layer ORs,
    probes and the data-efficiency curve on each test split."""
    say = progress or (lambda _m: None)
    y = _labels(y_disc)
    ks = sorted(set(int(k) for k in ks))
    d = top1_diff(disc, y)
    layer = choose_layer(disc, y)
    by_disc = {k: binary_scores(y, discover(disc, y, layer, k).predict(disc))["f1"] for k in ks}
    chosen_k = max(ks, key=lambda k: (by_disc[k], -k))
    report = TaskReport(
        task,
        len(y),
        {s: len(v[1]) for s, v in tests.items()},
        disc.layers,
        ks,
        {l: asdict(f) for l, f in d.items()},
        layer,
        chosen_k,
    )
    say("feature classifiers")
    for l in disc.layers:
        for k in ks:
            clf = discover(disc, y, l, k)
            for split, (codes, y_test) in tests.items():
                report.grid.append({"split": split, "layer": l, "k": k, **binary_scores(y_test, clf.predict(codes))})
    report.features = [asdict(f) for f in discover(disc, y, layer, chosen_k).features]
    for m in ms:
        if m <= len(disc.layers):
            clf = multi_layer(disc, y, m)
            for split, (codes, y_test) in tests.items():
                report.multi_layer.append(
                    {
                        "split": split,
                        "m": m,
                        "features": [[f.layer, f.feature] for f in clf.features],
                        **binary_scores(y_test, clf.predict(codes)),
                    }
                )
    if baselines:
        say("baseline probes")
        for l in disc.layers:
            for kind in ("raw", "sae"):
                predict = fit_probe(kind, disc, y, l)
                for split, (codes, y_test) in tests.items():
                    pred = predict(codes)
                    report.baselines.append(
                        {"kind": f"{kind}-probe", "split": split, "layer": l, **binary_scores(y_test, pred)}
                    )
    say("data efficiency")
    first, (codes0, y0) = next(iter(tests.items()))
    for fraction in fractions:
        for k in ks:
            f1s, layers = [], []
            for seed in range(seeds if fraction < 1 else 1):
                rows = _subsample(y, fraction, np.random.default_rng(seed))
                sub, y_sub = disc.subset(rows), y[rows]
                l = choose_layer(sub, y_sub)
                f1s.append(binary_scores(y0, discover(sub, y_sub, l, k).predict(codes0))["f1"])
                layers.append(l)
            report.efficiency.append(
                {
                    "split": first,
                    "fraction": fraction,
                    "k": k,
                    "n_per_class": int(max(1, round(fraction * y.sum()))),
                    "f1_mean": float(np.mean(f1s)),
                    "f1_std": float(np.std(f1s)),
                    "layers": layers,
                }
            )
    return report


def plot_efficiency(
    reports: Sequence[TaskReport], path: str | Path, k: int | None = None, provenance: dict | None = None
) -> None:
    """Test F1 vs fraction of discovery data, one line per task (+ the macro mean), at one K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    curves = []
    for rep in reports:
        kk = k or rep.chosen_k
        rows = sorted((r for r in rep.efficiency if r["k"] == kk), key=lambda r: r["fraction"])
        if not rows:
            continue
        xs, ys = [r["fraction"] for r in rows], [r["f1_mean"] for r in rows]
        curves.append(ys)
        ax.plot(xs, ys, marker="o", alpha=0.5, lw=1, label=f"{rep.task} (K={kk})")
    if len(curves) > 1 and len({len(c) for c in curves}) == 1:
        ax.plot(xs, np.mean(curves, 0), color="black", lw=2.5, marker="s", label="macro mean")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of discovery data")
    ax.set_ylabel("test F1 (top1-diff layer, OR rule)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=120, provenance=provenance)


def evaluate_task(
    task, cache, progress: Callable[[str], None] | None = None, encoded: Callable[[int], None] | None = None, **kw
) -> TaskReport:
    """`evaluate` on a `labelled.Task`, with codes from a `CodeCache` (encoded once, reused)."""
    cache.ensure(task.all_texts(), encoded)
    disc = cache.codes(task.discovery.texts)
    tests = {name: (cache.codes(split.texts), split.labels) for name, split in task.tests.items()}
    return evaluate(task.name, disc, task.discovery.labels, tests, progress=progress, **kw)
