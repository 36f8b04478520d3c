"""Finding features: contrast two text sets, or ask which features promote given tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import QScopeError
from .codes import iter_text_codes
from .logits import unembedding

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


class FeatureStats:
    """Running per-feature statistics over tokens (position 0 excluded) and over texts."""

    def __init__(self, d_sae: int):
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.text_fires = torch.zeros(d_sae, dtype=torch.float64)
        self.tokens = 0
        self.texts = 0

    def update(self, codes) -> None:
        start = 1 if len(codes.tokens) > 1 else 0
        values, indices = codes.values[start:].reshape(-1), codes.indices[start:].reshape(-1)
        on = values > 0
        self.sum.index_add_(0, indices[on], values[on].double())
        self.fires.index_add_(0, indices[on], torch.ones(int(on.sum()), dtype=torch.float64))
        self.text_fires[indices[on].unique()] += 1
        self.tokens += len(codes.tokens) - start
        self.texts += 1

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)

    @property
    def rate(self) -> torch.Tensor:
        return self.fires / max(self.tokens, 1)

    @property
    def text_rate(self) -> torch.Tensor:
        return self.text_fires / max(self.texts, 1)


def collect_stats(lm: LM, sae: SAE, texts: Sequence[str], layer: int | None = None, batch_size: int = 8,
                  max_length: int = 256, progress=None) -> FeatureStats:
    stats = FeatureStats(sae.cfg.d_sae)
    for codes in iter_text_codes(lm, sae, texts, layer, batch_size, max_length):
        stats.update(codes)
        if progress:
            progress()
    return stats


@dataclass
class FeatureScore:
    feature: int
    score: float
    mean_pos: float
    mean_neg: float
    rate_pos: float
    rate_neg: float


@dataclass
class ContrastResult:
    layer: int
    by: str
    n_pos: int
    n_neg: int
    tokens_pos: int
    tokens_neg: int
    features: list[FeatureScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ids(self) -> list[int]:
        return [f.feature for f in self.features]


def contrast(lm: LM, sae: SAE, positive: Sequence[str], negative: Sequence[str], layer: int | None = None,
             top: int = 20, by: str = "mean", batch_size: int = 8, max_length: int = 256,
             progress=None) -> ContrastResult:
    """Features ranked by how much more they fire on `positive` than on `negative` texts:
    difference of mean activation per token (`by="mean"`) or of firing rate (`by="rate"`)."""
    if not positive or not negative:
        raise QScopeError("contrast needs at least one positive and one negative text")
    if by not in ("mean", "rate"):
        raise QScopeError(f"rank by 'mean' or 'rate', not {by!r}")
    layer = lm.check_sae(sae, layer)
    pos = collect_stats(lm, sae, positive, layer, batch_size, max_length, progress)
    neg = collect_stats(lm, sae, negative, layer, batch_size, max_length, progress)
    score = pos.mean - neg.mean if by == "mean" else pos.rate - neg.rate
    order = score.argsort(descending=True)[:top]
    feats = [FeatureScore(int(f), float(score[f]), float(pos.mean[f]), float(neg.mean[f]), float(pos.rate[f]),
                          float(neg.rate[f])) for f in order]
    return ContrastResult(layer, by, pos.texts, neg.texts, pos.tokens, neg.tokens, feats)


@torch.no_grad()
def features_for_tokens(lm: LM, sae: SAE, tokens: Sequence[str], top: int = 20,
                        suppress: bool = False) -> list[tuple[int, float]]:
    """Features whose decoder direction most promotes (or suppresses) the given tokens' logits."""
    ids = []
    for token in tokens:
        enc = lm.tokenizer.encode(token, add_special_tokens=False)
        if len(enc) != 1:
            raise QScopeError(f"{token!r} is {len(enc)} tokens for this tokenizer; give single tokens (e.g. ' Paris')")
        ids.append(enc[0])
    W_U = unembedding(lm)[ids].to(sae.W_dec.dtype)
    score = (sae.W_dec @ W_U.T).mean(-1)
    score = -score if suppress else score
    values, order = score.topk(top)
    return [(int(f), float(v)) for f, v in zip(order, values)]


@dataclass
class OutputFeature:
    feature: int
    score: float  # z-score of the mean logit-lens effect on the target tokens
    target_tokens: int


@torch.no_grad()
def output_features(lm: LM, sae: SAE, positive: Sequence[str], negative: Sequence[str], top: int = 20,
                    n_tokens: int = 100, min_count: int = 3, chunk: int = 1024) -> list[OutputFeature]:
    """Features chosen by what they do to the output, not by where they fire (output features,
    Arad et al. 2025; AxBench's finding that input-side features steer poorly).

    Target tokens: the `n_tokens` tokens most over-represented in `positive` vs `negative`
    texts (add-one smoothed log frequency ratio, at least `min_count` uses). Each feature's
    decoder direction is read through the unembedding (logit lens, as `token_effects`); its
    score is the mean logit on the target tokens minus its mean logit over the vocabulary, in
    units of its standard deviation over the vocabulary."""
    from collections import Counter

    if not positive or not negative:
        raise QScopeError("output features need positive and negative texts")
    count = lambda texts: Counter(t for text in texts for t in lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    pos, neg = count(positive), count(negative)
    n_pos, n_neg = sum(pos.values()), sum(neg.values())
    ratio = {t: torch.log(torch.tensor((c + 1) / n_pos)) - torch.log(torch.tensor((neg[t] + 1) / n_neg))
             for t, c in pos.items() if c >= min_count}
    targets = sorted(ratio, key=lambda t: -float(ratio[t]))[:n_tokens]
    if not targets:
        raise QScopeError(f"no token occurs {min_count}+ times in the positive texts; give more text")
    W_U = unembedding(lm).to(sae.W_dec.dtype)
    target_ids = torch.tensor(targets, device=W_U.device)
    scores = []
    for start in range(0, sae.cfg.d_sae, chunk):
        logits = sae.W_dec[start:start + chunk].to(W_U.device) @ W_U.T  # (chunk, vocab)
        scores.append(((logits[:, target_ids].mean(1) - logits.mean(1)) / logits.std(1)).float().cpu())
    score = torch.cat(scores)
    order = score.argsort(descending=True)[:top]
    return [OutputFeature(int(f), float(score[f]), len(targets)) for f in order]
