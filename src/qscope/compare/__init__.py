"""SAE vs SAE: how many features two SAEs of one model and layer share (seeds, widths, formats).

`compare_saes(a, b)` compares decoder and encoder directions (MMCS both ways, Hungarian
matching, fraction shared at cosine thresholds); given a model and texts it also matches
features by activation correlation on the same tokens and names matched and orphan features
by the tokens they promote. `firing_rate_differences` (in `texts`) compares two texts instead:
the features of one SAE per layer that fire more on one than on the other.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import QScopeError
from .match import BestCorrelation, Matching, activation_correlation, hungarian, max_cosine, sparse_codes, unit_rows
from .report import (
    ActivationResult,
    DirectionResult,
    FeatureExample,
    SAEComparison,
    plot_comparison,
    summary_rows,
    write_report,
)
from .texts import firing_rate_differences

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

__all__ = ["compare_saes", "SAEComparison", "DirectionResult", "ActivationResult", "FeatureExample",
           "hungarian", "max_cosine", "activation_correlation", "write_report", "plot_comparison", "summary_rows",
           "firing_rate_differences"]

THRESHOLDS = (0.5, 0.7, 0.9)
SHARED_AT = 0.7  # the headline criterion (report.SAEComparison.shared_fraction); also picks the matched examples
Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _side(sae: SAE, source: str | None, layer: int | None) -> dict:
    c = sae.cfg
    return {"source": source or c.model_name or "sae", "d_sae": c.d_sae, "k": c.k, "activation": c.activation,
            "layer": c.layer if layer is None else layer, "model": c.model_name}


def _shared(cos: np.ndarray, n: int, thresholds: Sequence[float]) -> dict[str, float]:
    return {str(t): round(float((cos > t).sum()) / n, 4) for t in thresholds}


def compare_directions(wa: torch.Tensor, wb: torch.Tensor, thresholds: Sequence[float] = THRESHOLDS,
                       method: str = "auto") -> tuple[DirectionResult, Matching, np.ndarray, np.ndarray]:
    """MMCS both ways and a Hungarian matching between the rows of two direction matrices."""
    start = time.perf_counter()
    a, b = unit_rows(wa), unit_rows(wb)
    max_ab, _ = max_cosine(a, b)
    max_ba, _ = max_cosine(b, a)
    match = hungarian(a, b, method=method)
    n = min(a.shape[0], b.shape[0])
    result = DirectionResult(float(max_ab.mean()), float(max_ba.mean()), float(match.cos.mean()),
                             _shared(match.cos, n, thresholds), match.method, time.perf_counter() - start)
    return result, match, max_ab, max_ba


@torch.no_grad()
def shared_token_codes(lm: LM, sae_a: SAE, sae_b: SAE, texts: Iterable[str], layers: tuple[int, int],
                       max_tokens: int = 20000, batch_size: int = 8, max_length: int = 256,
                       progress: Progress | None = None):
    """Sparse codes of both SAEs on the same tokens (position 0 skipped: its huge-norm
    attention-sink residual is not text). Returns (codes_a, codes_b, n_texts)."""
    texts = list(texts)
    parts_a, parts_b, n_tokens, n_texts = [], [], 0, 0
    wanted = sorted(set(layers))
    for start in range(0, len(texts), batch_size):
        if n_tokens >= max_tokens:
            break
        cap = lm.capture(texts[start:start + batch_size], wanted, max_length=max_length, batch_size=batch_size)
        ha, hb = cap.valid(layers[0], skip_first=True), cap.valid(layers[1], skip_first=True)
        take = min(ha.shape[0], max_tokens - n_tokens)
        parts_a.append(_codes(sae_a, ha[:take]))
        parts_b.append(_codes(sae_b, hb[:take]))
        n_tokens += take
        n_texts += min(batch_size, len(texts) - start)
        if progress:
            progress("encoding tokens", n_tokens, max_tokens)
    if n_tokens < 2:
        raise QScopeError("activation matching needs texts with at least 2 tokens after the first")
    from scipy import sparse

    return sparse.vstack(parts_a).tocsr(), sparse.vstack(parts_b).tocsr(), n_texts


def _codes(sae: SAE, h: torch.Tensor):
    """CSR codes of one SAE: its TopK pairs, or the nonzeros of the dense code."""
    from scipy import sparse

    if sae.cfg.activation == "topk":
        values, indices = sae.encode_topk(h)
        return sparse_codes(values.float().cpu(), indices.cpu(), sae.d_sae)
    return sparse.csr_matrix(sae.encode(h).detach().float().cpu().numpy())


def _activation_result(best_a: BestCorrelation, best_b: BestCorrelation, dec_partner: np.ndarray, n_tokens: int,
                       n_texts: int, thresholds: Sequence[float], min_fires: int) -> ActivationResult:
    live_a, live_b = ~best_a.rare, ~best_b.rare
    if not live_a.any() or not live_b.any():
        raise QScopeError(f"activation matching: one SAE has no feature firing {min_fires}+ times on these tokens; "
                          "give more tokens")
    ca, cb = best_a.corr[live_a], best_b.corr[live_b]
    ca, cb = np.nan_to_num(ca, nan=0.0), np.nan_to_num(cb, nan=0.0)
    agree = float((best_a.partner[live_a] == dec_partner[live_a]).mean())
    return ActivationResult(n_tokens, n_texts, int(best_a.dead.sum()), int(best_b.dead.sum()), int(best_a.rare.sum()),
                            int(best_b.rare.sum()), min_fires, float(ca.mean()), float(cb.mean()),
                            _shared(ca, len(ca), thresholds), _shared(cb, len(cb), thresholds), agree)


def compare_saes(sae_a: SAE, sae_b: SAE, lm: LM | None = None, texts: Iterable[str] | None = None, *,
                 layers: tuple[int | None, int | None] = (None, None),
                 names: tuple[str | None, str | None] = (None, None), thresholds: Sequence[float] = THRESHOLDS,
                 method: str = "auto", max_tokens: int = 20000, batch_size: int = 8, max_length: int = 256,
                 min_fires: int = 10, examples: int = 10, seed: int = 0, progress: Progress | None = None) -> SAEComparison:
    """Compare two SAEs reading the same residual stream (widths and file formats may differ).

    Without `lm`/`texts` only weights are compared; with them, activation correlation on up to
    `max_tokens` shared tokens (features firing fewer than `min_fires` times there are not
    judged) and promoted tokens of example matched and orphan features too.
    """
    if sae_a.cfg.d_model != sae_b.cfg.d_model:
        raise QScopeError(f"the SAEs read different spaces: d_model {sae_a.cfg.d_model} vs {sae_b.cfg.d_model}")
    thresholds = sorted(float(t) for t in thresholds)
    if not thresholds or not all(-1 <= t <= 1 for t in thresholds):
        raise QScopeError(f"thresholds must be cosines in [-1, 1], got {thresholds}")
    say = progress or (lambda *_: None)
    say("decoder matching", 0, 2)
    dec, dec_match, dec_ab, dec_ba = compare_directions(sae_a.W_dec, sae_b.W_dec, thresholds, method)
    say("encoder matching", 1, 2)
    enc, enc_match, enc_ab, enc_ba = compare_directions(sae_a.W_enc.T, sae_b.W_enc.T, thresholds, method)
    n_a, n = sae_a.d_sae, min(sae_a.d_sae, sae_b.d_sae)
    dec_partner, enc_partner = dec_match.partner_of_a(n_a), enc_match.partner_of_a(n_a)
    dec_cos, enc_cos = dec_match.cos_of_a(n_a), enc_match.cos_of_a(n_a)
    both_cos = np.where((dec_partner == enc_partner) & (dec_partner >= 0), np.fmin(dec_cos, enc_cos), np.nan)
    shared_both = _shared(np.nan_to_num(both_cos, nan=-2.0), n, thresholds)
    layer_a = layers[0] if layers[0] is not None else sae_a.cfg.layer
    layer_b = layers[1] if layers[1] is not None else sae_b.cfg.layer
    result = SAEComparison(_side(sae_a, names[0], layer_a), _side(sae_b, names[1], layer_b), thresholds, dec, enc,
                           shared_both)
    result.arrays = {"dec_max_ab": dec_ab, "dec_max_ba": dec_ba, "enc_max_ab": enc_ab, "enc_max_ba": enc_ba,
                     "dec_partner": dec_partner, "dec_match_cos": dec_cos, "enc_partner": enc_partner,
                     "enc_match_cos": enc_cos, "both_cos": both_cos}
    best_a = best_b = None
    if lm is not None and texts is not None:
        if layer_a is None or layer_b is None:
            raise QScopeError("activation matching needs each SAE's layer: pass layers=(a, b)")
        layer_a, layer_b = lm.check_sae(sae_a, layer_a), lm.check_sae(sae_b, layer_b)
        codes_a, codes_b, n_texts = shared_token_codes(lm, sae_a, sae_b, texts, (layer_a, layer_b), max_tokens,
                                                       batch_size, max_length, progress)
        say("activation correlation", 0, 1)
        best_a, best_b = activation_correlation(codes_a, codes_b, min_fires)
        result.activation = _activation_result(best_a, best_b, dec_partner, codes_a.shape[0], n_texts, thresholds,
                                               min_fires)
        result.arrays.update(act_best_ab=best_a.corr, act_best_ba=best_b.corr, act_partner_ab=best_a.partner,
                             freq_a=best_a.frequency, freq_b=best_b.frequency)
    if examples > 0:
        _examples(result, lm, sae_a, sae_b, dec_match, examples, seed, best_a, best_b, orphan_below=thresholds[0])
    return result


def _examples(result: SAEComparison, lm: LM, sae_a: SAE, sae_b: SAE, dec_match: Matching, n: int, seed: int,
              best_a: BestCorrelation | None, best_b: BestCorrelation | None, orphan_below: float) -> None:
    """Example shared pairs and orphans (no match above the lowest threshold), most frequent
    first when activation statistics exist (a frequent orphan matters more), else random."""
    arr = result.arrays
    rng = np.random.default_rng(seed)
    b_cos = np.full(sae_b.d_sae, np.nan)
    b_cos[dec_match.cols] = dec_match.cos

    def pick(candidates: np.ndarray, freq: np.ndarray | None, dead: np.ndarray | None) -> list[int]:
        if dead is not None:
            candidates = candidates[~dead[candidates]]
        if freq is not None:
            return candidates[np.argsort(-freq[candidates], kind="stable")][:n].tolist()
        return sorted(rng.permutation(candidates)[:n].tolist())

    keep = np.nan_to_num(arr["both_cos"], nan=-2.0) > SHARED_AT
    fa = best_a.frequency if best_a else None
    fb = best_b.frequency if best_b else None
    matched = pick(np.flatnonzero(keep), fa, best_a.dead if best_a else None)
    orphan_a = pick(np.flatnonzero(np.nan_to_num(arr["dec_match_cos"], nan=-2.0) < orphan_below), fa,
                    best_a.rare if best_a else None)
    orphan_b = pick(np.flatnonzero(np.nan_to_num(b_cos, nan=-2.0) < orphan_below), fb, best_b.rare if best_b else None)
    promo_a = _promoted(lm, sae_a, matched + orphan_a)
    promo_b = _promoted(lm, sae_b, [int(arr["dec_partner"][f]) for f in matched] + orphan_b)

    def example(f: int, partner: int | None, cos: float, side: str) -> FeatureExample:
        if side == "a":
            enc = float(arr["enc_match_cos"][f]) if arr["enc_partner"][f] == partner else None
            corr = float(best_a.corr[f]) if best_a is not None else None
            freq = float(best_a.frequency[f]) if best_a is not None else None
            return FeatureExample(f, partner, cos, enc, corr, freq, promo_a.get(f, []),
                                  promo_b.get(partner, []) if partner is not None else [])
        corr = float(best_b.corr[f]) if best_b is not None else None
        freq = float(best_b.frequency[f]) if best_b is not None else None
        return FeatureExample(f, partner, cos, None, corr, freq, promo_b.get(f, []), [])

    result.matched = [example(f, int(arr["dec_partner"][f]), float(arr["dec_match_cos"][f]), "a") for f in matched]
    result.orphans_a = [example(f, None, float(arr["dec_max_ab"][f]), "a") for f in orphan_a]
    result.orphans_b = [example(f, None, float(arr["dec_max_ba"][f]), "b") for f in orphan_b]


def _promoted(lm: LM, sae: SAE, features: list[int], n: int = 5) -> dict[int, list[str]]:
    if lm is None or not features:
        return {}
    from ..features.logits import token_effects

    feats = sorted({int(f) for f in features if f >= 0})
    return {e.feature: [t for t, _ in e.promoted] for e in token_effects(lm, sae, feats, n=n)}
