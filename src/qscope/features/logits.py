"""What a feature's decoder direction does to the next-token logits (the "logit table").

The direction is pushed through the unembedding only (no final norm), as SAE dashboards do:
a cheap, model-agnostic read of which tokens a feature promotes or suppresses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


@dataclass
class TokenEffect:
    feature: int
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return asdict(self)


def unembedding(lm: LM) -> torch.Tensor:
    """(vocab, d_model) output embedding matrix."""
    return lm.model.get_output_embeddings().weight


@torch.no_grad()
def token_effects(lm: LM, sae: SAE, features: list[int], n: int = 8) -> list[TokenEffect]:
    """Top `n` promoted and suppressed tokens for each feature's decoder direction."""
    W_U = unembedding(lm).to(sae.W_dec.dtype)
    logits = sae.W_dec[features].to(W_U.device) @ W_U.T  # (n_features, vocab)
    top = logits.topk(n, dim=-1)
    bottom = (-logits).topk(n, dim=-1)
    decode = lambda ids: [lm.tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    return [
        TokenEffect(f, list(zip(decode(top.indices[i]), top.values[i].tolist())),
                    list(zip(decode(bottom.indices[i]), (-bottom.values[i]).tolist())))
        for i, f in enumerate(features)
    ]
