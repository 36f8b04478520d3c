"""Matching the features of two SAEs: by direction (decoder / encoder cosines) and by activation.

Geometry: max cosine per feature (MMCS) and a one-to-one Hungarian matching on `1 - cos`.
Dense `linear_sum_assignment` takes ~10 s for 9216 x 9216 on 2 cores (measured), so it is the
default up to `DENSE_LIMIT` cells; wider SAEs (Qwen-Scope's 65k-131k) fall back to an exact
matching restricted to each feature's top cosine neighbours (sparse min-weight matching).

Activation: Pearson correlation of feature activations on the same tokens, computed from
sparse co-firing counts only (two features that never co-fire have correlation <= 0, so the
best match of a live feature is always among its co-firing partners).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from ..errors import QScopeError

# Largest cost matrix solved densely (cells); 9216^2 = 85M cells = 680 MB in float64.
DENSE_LIMIT = 100_000_000
CHUNK = 2048


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in fp32 (zero rows stay zero: a dead direction matches nothing)."""
    w = w.detach().float().cpu()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def max_cosine(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For each (unit) row of `a`: the largest cosine to any row of `b`, and which row."""
    values, indices = [], []
    for start in range(0, a.shape[0], chunk):
        best = (a[start:start + chunk] @ b.T).max(dim=1)
        values.append(best.values)
        indices.append(best.indices)
    return torch.cat(values).numpy(), torch.cat(indices).numpy()


@dataclass
class Matching:
    """A one-to-one matching: `rows[i]` of A is paired with `cols[i]` of B at cosine `cos[i]`."""

    rows: np.ndarray
    cols: np.ndarray
    cos: np.ndarray
    method: str

    def partner_of_a(self, n_a: int) -> np.ndarray:
        """(n_a,) partner in B of each A feature, -1 where unmatched (A wider than B)."""
        out = np.full(n_a, -1, dtype=np.int64)
        out[self.rows] = self.cols
        return out

    def cos_of_a(self, n_a: int) -> np.ndarray:
        """(n_a,) matched cosine of each A feature, NaN where unmatched."""
        out = np.full(n_a, np.nan)
        out[self.rows] = self.cos
        return out


def hungarian(a: torch.Tensor, b: torch.Tensor, method: str = "auto", neighbours: int = 32) -> Matching:
    """Minimum total `1 - cos` one-to-one matching between the unit rows of `a` and `b`.

    `method`: "dense" (exact), "sparse" (exact over candidate pairs: each row's and column's
    `neighbours` nearest plus a feasibility diagonal), or "auto" (dense up to DENSE_LIMIT cells).
    """
    if method not in ("auto", "dense", "sparse"):
        raise QScopeError(f"matching method {method!r} is not one of auto, dense, sparse")
    if method == "auto":
        method = "dense" if a.shape[0] * b.shape[0] <= DENSE_LIMIT else "sparse"
    if method == "dense":
        cost = 1.0 - (a @ b.T).double().numpy()
        rows, cols = linear_sum_assignment(cost)
    else:
        rows, cols = _sparse_assignment(a, b, neighbours)
    cos = (a[torch.as_tensor(rows)] * b[torch.as_tensor(cols)]).sum(-1).numpy()
    return Matching(np.asarray(rows), np.asarray(cols), cos.astype(np.float64), method)


def _sparse_assignment(a: torch.Tensor, b: torch.Tensor, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimum over candidate edges: top-`neighbours` per row and per column, plus pairs
    (i, i) so that a full matching always exists. Costs are shifted to `2 - cos` >= 1 because
    the sparse solver cannot tell an explicit zero from a missing edge."""
    n_a, n_b = a.shape[0], b.shape[0]
    kr, kc = min(neighbours, n_b), min(neighbours, n_a)
    r_parts, c_parts = [], []
    for start in range(0, n_a, CHUNK):  # row neighbours
        idx = (a[start:start + CHUNK] @ b.T).topk(kr, dim=1).indices
        r_parts.append(np.repeat(np.arange(start, start + idx.shape[0]), kr))
        c_parts.append(idx.reshape(-1).numpy())
    for start in range(0, n_b, CHUNK):  # column neighbours
        idx = (b[start:start + CHUNK] @ a.T).topk(kc, dim=1).indices
        c_parts.append(np.repeat(np.arange(start, start + idx.shape[0]), kc))
        r_parts.append(idx.reshape(-1).numpy())
    diag = np.arange(min(n_a, n_b))
    r = np.concatenate(r_parts + [diag])
    c = np.concatenate(c_parts + [diag])
    pairs = np.unique(r.astype(np.int64) * n_b + c)
    r, c = pairs // n_b, pairs % n_b
    cos = np.empty(len(r))
    for start in range(0, len(r), 1 << 20):
        sl = slice(start, start + (1 << 20))
        cos[sl] = (a[torch.as_tensor(r[sl])] * b[torch.as_tensor(c[sl])]).sum(-1).double().numpy()
    graph = sparse.csr_matrix((2.0 - cos, (r, c)), shape=(n_a, n_b))
    rows, cols = min_weight_full_bipartite_matching(graph)
    return np.asarray(rows), np.asarray(cols)


# --------------------------------------------------------------------------- activations
def sparse_codes(values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> sparse.csr_matrix:
    """(n_tokens, d_sae) CSR matrix from TopK codes (values, indices), zeros dropped."""
    n, k = values.shape
    mat = sparse.csr_matrix((values.detach().reshape(-1).double().cpu().numpy(), indices.reshape(-1).cpu().numpy(),
                             np.arange(0, n * k + 1, k)), shape=(n, d_sae))
    mat.eliminate_zeros()
    return mat


@dataclass
class BestCorrelation:
    """Per feature of one SAE: its best-correlated feature of the other SAE (NaN/-1 if dead)."""

    corr: np.ndarray  # (d,) Pearson correlation with the best partner
    partner: np.ndarray  # (d,) index in the other SAE, -1 when dead or never co-firing
    frequency: np.ndarray  # (d,) fraction of tokens the feature fires on
    dead: np.ndarray  # (d,) bool: never fired on these tokens
    rare: np.ndarray  # (d,) bool: fired on fewer than `min_fires` tokens (dead included): not judged


def activation_correlation(codes_a: sparse.csr_matrix, codes_b: sparse.csr_matrix,
                           min_fires: int = 1) -> tuple[BestCorrelation, BestCorrelation]:
    """Best Pearson-correlated partner of every feature, in both directions, on the same tokens.

    Only co-firing pairs are computed (sparse A^T B): a pair that never co-fires has
    correlation -mean_a mean_b / (sd_a sd_b) <= 0, never the best match of a live feature.
    Features firing on fewer than `min_fires` tokens are left out on both sides (NaN, -1): two
    features that each fired on the same 3 tokens correlate perfectly by coincidence.
    """
    if codes_a.shape[0] != codes_b.shape[0]:
        raise QScopeError(f"activation codes cover different tokens: {codes_a.shape[0]} vs {codes_b.shape[0]}")
    n = codes_a.shape[0]
    if n < 2:
        raise QScopeError("activation matching needs at least 2 tokens")
    stats = []
    for codes in (codes_a, codes_b):
        mean = np.asarray(codes.sum(0)).ravel() / n
        var = np.asarray(codes.multiply(codes).sum(0)).ravel() / n - mean**2
        fires = np.diff(codes.tocsc().indptr)
        sd = np.sqrt(np.clip(var, 0, None))
        stats.append((mean, sd, fires / n, (fires < max(1, min_fires)) | (sd <= 1e-12)))
    (mean_a, sd_a, freq_a, rare_a), (mean_b, sd_b, freq_b, rare_b) = stats
    cross = (codes_a.T.tocsr() @ codes_b).tocoo()
    rows, cols = cross.row, cross.col
    ok = ~rare_a[rows] & ~rare_b[cols]
    rows, cols = rows[ok], cols[ok]
    cov = cross.data[ok] / n - mean_a[rows] * mean_b[cols]
    corr = sparse.coo_matrix((cov / (sd_a[rows] * sd_b[cols]), (rows, cols)), shape=cross.shape).tocsr()
    best_a = _row_best(corr, freq_a, sd_a, rare_a)
    best_b = _row_best(corr.T.tocsr(), freq_b, sd_b, rare_b)
    return best_a, best_b


def _row_best(corr: sparse.csr_matrix, freq: np.ndarray, sd: np.ndarray, rare: np.ndarray) -> BestCorrelation:
    """Row-wise max and argmax of a sparse correlation matrix (empty rows: NaN, -1)."""
    n_rows = corr.shape[0]
    best = np.full(n_rows, np.nan)
    partner = np.full(n_rows, -1, dtype=np.int64)
    counts = np.diff(corr.indptr)
    nonempty = counts > 0
    if corr.nnz:  # O(nnz): segment max, then the first entry of each row equal to it
        best[nonempty] = np.maximum.reduceat(corr.data, corr.indptr[:-1][nonempty])
        row_ids = np.repeat(np.arange(n_rows), counts)
        hits = np.flatnonzero(corr.data == best[row_ids])
        rows_hit, first = np.unique(row_ids[hits], return_index=True)
        partner[rows_hit] = corr.indices[hits[first]]
    best[rare] = np.nan
    partner[rare] = -1
    return BestCorrelation(best, partner, freq, sd <= 1e-12, rare)
