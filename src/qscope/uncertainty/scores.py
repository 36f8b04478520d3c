"""Confidence scores for correctness prediction, every one oriented "higher = more likely right".

Logit baselines read the next-token distribution after the prompt (for multiple choice also
the distribution renormalised over the choice letters). Feature Rivalry (arXiv 2605.08149)
reads the geometry of the features active at the last prompt token: rivalry = -(5th
percentile of pairwise decoder cosines among the top-50), large when some active features
point against each other; its confidence is minus that. Tracing uncertainty summarises the
per-token p(1-p) and entropy of the generated answer (mean, thirds, slope) into a
cross-validated logistic regression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import QScopeError
from .dataset import LabelledSet

if TYPE_CHECKING:
    from ..sae import SAE

TOP = 50
PERCENTILE = 5.0


# ---------------------------------------------------------------------------- logit baselines
def logit_scores(data: LabelledSet) -> dict[str, np.ndarray]:
    """Max probability, negative entropy and top-1 minus top-2 margin of the token after the
    prompt (full vocabulary); for multiple choice the same over the choices, plus the top-1
    minus top-2 margin of the scores the decision maximised."""
    items = data.items
    out = {
        "max_prob": np.array([it.next_stats["maxp"] for it in items]),
        "neg_entropy": -np.array([it.next_stats["entropy"] for it in items]),
        "margin_prob": np.array([it.next_stats["margin_p"] for it in items]),
        "margin_logit": np.array([it.next_stats["margin_logit"] for it in items]),
    }
    if items and all(it.choice_probs for it in items):
        probs = [np.sort(np.asarray(it.choice_probs))[::-1] for it in items]
        out["choice_max_prob"] = np.array([p[0] for p in probs])
        out["choice_neg_entropy"] = np.array([float((p * np.log(np.clip(p, 1e-12, None))).sum()) for p in probs])
        out["choice_margin"] = np.array([p[0] - (p[1] if len(p) > 1 else 0.0) for p in probs])
    if items and all(len(it.choice_scores) > 1 for it in items):  # margin of the decision rule itself
        top2 = [np.sort(np.asarray(it.choice_scores))[::-1][:2] for it in items]
        out["choice_score_margin"] = np.array([t[0] - t[1] for t in top2])
    return out


# ---------------------------------------------------------------------------- feature rivalry
def _weighted_percentile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cw, q / 100.0 * cw[-1])])


def rivalry(values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor, top: int = TOP,
            q: float = PERCENTILE) -> tuple[float, float]:
    """(rivalry, activation-weighted rivalry) of ONE token's active features.

    Paper version: -(q-th percentile of the cosines between the unit decoder vectors of the
    `top` strongest active features, upper triangle). Weighted variant: the same percentile
    with each pair weighted by the product of its activations (weak features count less).
    Fewer than two active features: no rivals, 0.
    """
    values, indices = values.reshape(-1), indices.reshape(-1)
    keep = values > 0
    values, indices = values[keep], indices[keep]
    if values.numel() < 2:
        return 0.0, 0.0
    order = values.argsort(descending=True)[:top]
    values, indices = values[order].double(), indices[order]
    d = w_dec[indices].double()
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = d @ d.T
    iu = torch.triu_indices(len(values), len(values), offset=1)
    pairs = cos[iu[0], iu[1]].numpy()
    weights = (values[iu[0]] * values[iu[1]]).numpy()
    return -float(np.percentile(pairs, q)), -_weighted_percentile(pairs, weights, q)


@torch.no_grad()
def rivalry_scores(data: LabelledSet, sae: SAE, layer: int, top: int = TOP, q: float = PERCENTILE) -> dict[str,
                   np.ndarray]:
    """Confidence = -rivalry (paper) and -weighted rivalry, per item, at the last prompt token."""
    if sae.cfg.d_model != data.items[0].resid.shape[-1]:
        raise QScopeError(f"SAE d_model={sae.cfg.d_model} does not match the residuals ({data.items[0].resid.shape[-1]})")
    values, indices = sae_codes(data, sae, layer, k=top)
    w_dec = sae.W_dec.detach().float().cpu()
    riv = np.array([rivalry(v, i, w_dec, top, q) for v, i in zip(values, indices)])
    return {"rivalry": -riv[:, 0], "rivalry_weighted": -riv[:, 1]}


@torch.no_grad()
def sae_codes(data: LabelledSet, sae: SAE, layer: int, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), each (n_items, k): the SAE's strongest features at the last prompt token."""
    x = torch.from_numpy(data.resid(layer)).to(sae.W_enc.device)
    k = k if sae.cfg.activation != "topk" else (sae.cfg.k if k is None else min(k, sae.cfg.k))
    if sae.cfg.activation == "topk" and k == sae.cfg.k:
        v, i = sae.encode_topk(x)
    else:
        v, i = sae.encode(x).topk(k or TOP, dim=-1)
    return v.float().cpu(), i.cpu()


# ---------------------------------------------------------------------------- tracing
TRACE_FEATURES = [f"{s}_{t}" for s in ("pq", "h") for t in ("mean", "early", "mid", "late", "slope", "max")] + [
    "log_len", "first_p"]


def _summarise(series: np.ndarray) -> list[float]:
    """mean, means of the early/mid/late thirds, least-squares slope over relative position, max."""
    if series.size == 0:
        return [0.0] * 6
    thirds = np.array_split(series, 3) if series.size >= 3 else [series] * 3
    slope = float(np.polyfit(np.linspace(0, 1, series.size), series, 1)[0]) if series.size > 1 else 0.0
    return [float(series.mean()), *(float(t.mean()) for t in thirds), slope, float(series.max())]


def trace_features(data: LabelledSet) -> np.ndarray:
    """(n_items, len(TRACE_FEATURES)) summaries of p(1-p) and entropy along each answer."""
    rows = []
    for it in data.items:
        p, h = np.asarray(it.trace_p, dtype=float), np.asarray(it.trace_h, dtype=float)
        rows.append(_summarise(p * (1 - p)) + _summarise(h) + [float(np.log1p(p.size)), float(p[0]) if p.size else 0.0])
    return np.array(rows)


def trace_score(data: LabelledSet, folds: int = 5, seed: int = 0) -> np.ndarray | None:
    """Out-of-fold P(correct) from a logistic regression on the trace summaries (None when the
    set has no traces, e.g. multiple choice labelled without generation)."""
    if not any(it.trace_p for it in data.items):
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .probes import cross_val_predict_proba

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, solver="liblinear", max_iter=2000))
    return cross_val_predict_proba(model, trace_features(data), data.labels, folds, seed)
