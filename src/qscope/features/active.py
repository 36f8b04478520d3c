"""Which features fire on a text, token by token."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


@dataclass
class TokenFeatures:
    position: int
    token: str
    features: list[tuple[int, float]]  # (feature id, activation), strongest first


@dataclass
class EncodedText:
    text: str
    layer: int
    tokens: list[TokenFeatures]

    def to_dict(self) -> dict:
        return asdict(self)

    def strongest(self, n: int = 10, skip_first: bool = True) -> list[tuple[int, float]]:
        """Features ranked by their maximum activation over the text (position 0 skipped:
        attention-sink tokens carry "register" features that say nothing about the text)."""
        best: dict[int, float] = {}
        for tok in self.tokens[1:] if skip_first and len(self.tokens) > 1 else self.tokens:
            for feature, value in tok.features:
                best[feature] = max(best.get(feature, 0.0), value)
        return sorted(best.items(), key=lambda item: -item[1])[:n]


@torch.no_grad()
def encode_text(lm: LM, sae: SAE, text: str, top: int = 5, layer: int | None = None,
                max_length: int = 512) -> EncodedText:
    """Per-token top-`top` features of `sae` on `text` at the SAE's layer."""
    layer = lm.check_sae(sae, layer)
    cap = lm.capture([text], [layer], max_length=max_length)
    values, indices = sae.encode_topk(cap.valid(layer))
    order = values.argsort(dim=-1, descending=True)[:, :top]
    values, indices = values.gather(-1, order), indices.gather(-1, order)
    rows = []
    for pos, token in enumerate(cap.tokens[0]):
        feats = [(int(i), round(float(v), 4)) for v, i in zip(values[pos], indices[pos]) if v > 0]
        rows.append(TokenFeatures(pos, token, feats))
    return EncodedText(text=text, layer=layer, tokens=rows)
