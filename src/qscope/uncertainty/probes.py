"""Learned correctness predictors: a linear probe on raw residuals (per layer) and a sparse L1
probe on SAE codes, both scored out-of-fold so their AUROC is comparable to the fixed scores.

The SAE probe is the interpretable one: refit on all items, its few nonzero weights name the
features that carry the signal (positive weight = fires when the model is right).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ..errors import QScopeError
from .dataset import LabelledSet

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

RESID_CS = (0.001, 0.01, 0.1, 1.0)
L1_CS = (0.03, 0.1, 0.3, 1.0, 3.0)


def _folds(y: np.ndarray, folds: int) -> int:
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise QScopeError(f"a probe needs both right and wrong answers (at least 2 each); got {counts[1]} right, "
                          f"{counts[0]} wrong")
    return int(min(folds, counts.min()))


def cross_val_predict_proba(model, X, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(y=1) with stratified folds (fixed seed, so every probe sees the same splits)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=int)
    out = np.zeros(len(y))
    for train, test in StratifiedKFold(_folds(y, folds), shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        fitted = clone(model).fit(X[train], y[train])
        out[test] = fitted.predict_proba(X[test])[:, 1]
    return out


def _grid(estimator, cs, inner: int, seed: int):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    return GridSearchCV(estimator, {"logisticregression__C": list(cs)}, scoring="roc_auc",
                        cv=StratifiedKFold(inner, shuffle=True, random_state=seed))


def residual_probe(data: LabelledSet, layer: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(correct) of an L2 logistic regression on standardised residuals at the last
    prompt token of `layer` (C picked by an inner 3-fold search on AUROC)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = _grid(make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear", max_iter=2000)), RESID_CS, 3, seed)
    return cross_val_predict_proba(model, data.resid(layer), data.labels, folds, seed)


@dataclass
class SignalFeature:
    feature: int
    weight: float  # on max-abs scaled activations; > 0: fires when the model is right
    rate_correct: float  # fraction of right-answer items where it is active
    rate_wrong: float
    promotes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("weight", "rate_correct", "rate_wrong"):
            d[key] = round(float(d[key]), 4)
        return d


@dataclass
class SAEProbe:
    scores: np.ndarray  # out-of-fold P(correct)
    n_nonzero: int  # features with a nonzero weight in the refit on all items
    C: float
    features: list[SignalFeature]


def code_matrix(data: LabelledSet, sae: SAE, layer: int) -> sparse.csr_matrix:
    """(n_items, d_sae) sparse SAE codes at the last prompt token."""
    from .scores import sae_codes

    values, indices = sae_codes(data, sae, layer)
    n, k = values.shape
    mat = sparse.csr_matrix((values.reshape(-1).numpy().astype(np.float64), indices.reshape(-1).numpy(),
                             np.arange(0, n * k + 1, k)), shape=(n, sae.cfg.d_sae))
    mat.eliminate_zeros()
    return mat


def sae_probe(data: LabelledSet, sae: SAE, layer: int, folds: int = 5, seed: int = 0, top: int = 10,
              lm: LM | None = None) -> SAEProbe:
    """Sparse L1 logistic regression on SAE codes: out-of-fold scores, then a refit on all items
    whose strongest weights are reported (with promoted tokens when `lm` is given)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    X, y = code_matrix(data, sae, layer), data.labels
    base = make_pipeline(MaxAbsScaler(), LogisticRegression(l1_ratio=1.0, solver="liblinear", max_iter=5000))
    scores = cross_val_predict_proba(_grid(base, L1_CS, 3, seed), X, y, folds, seed)
    full = _grid(base, L1_CS, _folds(y, 3), seed).fit(X, y)
    coef = full.best_estimator_[-1].coef_.ravel()
    nonzero = np.flatnonzero(coef)
    order = nonzero[np.argsort(-np.abs(coef[nonzero]))][:top]
    active = (X > 0).toarray() if order.size else None
    feats = []
    for f in order.tolist():
        col = active[:, f]
        feats.append(SignalFeature(f, float(coef[f]), float(col[y == 1].mean()), float(col[y == 0].mean())))
    if lm is not None and feats:
        from ..features.logits import token_effects

        effects = {e.feature: e for e in token_effects(lm, sae, [s.feature for s in feats], n=5)}
        for s in feats:
            s.promotes = [t for t, _ in effects[s.feature].promoted]
    return SAEProbe(scores, int(nonzero.size), float(full.best_params_["logisticregression__C"]), feats)
