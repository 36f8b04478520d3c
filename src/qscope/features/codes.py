"""Stream SAE codes of many texts: the one pass every feature statistic is built on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


@dataclass
class TextCodes:
    """Sparse codes of one text: per token, the k strongest features (values, indices)."""

    index: int
    tokens: list[str]
    values: torch.Tensor  # (T, k), float32
    indices: torch.Tensor  # (T, k), int64

    def dense_max(self, d_sae: int, skip_first: bool = True) -> torch.Tensor:
        """(d_sae,) maximum activation of each feature over the text's tokens."""
        start = 1 if skip_first and len(self.tokens) > 1 else 0
        out = torch.zeros(d_sae)
        return out.scatter_reduce(0, self.indices[start:].reshape(-1), self.values[start:].reshape(-1), "amax")


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def iter_text_codes(lm: LM, sae: SAE, texts: Iterable[str], layer: int | None = None, batch_size: int = 8,
                    max_length: int = 256, k: int | None = None) -> Iterator[TextCodes]:
    """Yield each text's sparse codes in order, batched through the model (forward stopped at
    the SAE's layer). `k` defaults to the SAE's k (TopK) and must be given for other SAEs."""
    layer = lm.check_sae(sae, layer)
    k = k or sae.cfg.k or 64
    index = 0
    for batch in _batches(texts, batch_size):
        cap = lm.capture(batch, [layer], max_length=max_length, batch_size=batch_size)
        for row in range(len(batch)):
            h = cap.acts[layer][row][cap.mask[row]]
            values, indices = sae.encode_topk(h, k)
            yield TextCodes(index, cap.tokens[row], values.float().cpu(), indices.cpu())
            index += 1
