"""Steering along one residual direction: the full-layer baselines SAE steering must beat.

A feature edit is worth its SAE only if it does better than the simple directions found
without one. Three such directions, each added as `h + strength * u` (u a unit vector, the
strength in raw residual units so it can be matched to an SAE edit's norm):

- `diffmean_direction`: the difference of the mean residuals of a positive and a negative text
  set (position 0, the attention sink, excluded) - ActAdd (Turner et al. 2023) / AxBench's
  DiffMean (Wu et al. 2025);
- `repe_direction`: Representation Engineering's reading vector (Zou et al. 2023, "LAT" with a
  PCA reader): per-text mean residuals are paired positive/negative, each pair's difference
  is taken in a random order, the differences are centred, and the first principal component
  is the direction, its sign chosen so that positive texts project higher than negative ones;
- `random_direction`: a seeded random unit vector (the control for "any push of this size").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import QScopeError
from .steering import Positions, check_positions, position_mask

if TYPE_CHECKING:
    from ..model.lm import LM


@dataclass
class DirectionSteering:
    """Add `strength * direction` (direction of unit norm) at `layer`; `lm.generate(steer=...)`
    accepts it like a `Steering`."""

    direction: torch.Tensor
    layer: int
    strength: float = 0.0
    positions: Positions = "all"
    method: str = "direction"

    def __post_init__(self) -> None:
        check_positions(self.positions)
        norm = float(self.direction.norm())
        if not norm > 0 or not torch.isfinite(self.direction).all():
            raise QScopeError(f"{self.method}: the steering direction is zero or not finite")
        self.direction = (self.direction / norm).detach()

    def at(self, strength: float) -> "DirectionSteering":
        """The same direction at another strength."""
        return DirectionSteering(self.direction, self.layer, float(strength), self.positions, self.method)

    def edit_vector(self) -> torch.Tensor:
        return self.strength * self.direction.float()

    def to_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer, "strength": self.strength, "positions": self.positions,
                "direction_head": [round(float(x), 5) for x in self.direction[:4]]}

    def edits(self, lm: LM) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
        """{layer: fn(h) -> h}: one broadcast add per forward."""
        lm.check_layers([self.layer])
        state = {"prompt_len": None}
        strength = self.strength

        def fn(h: torch.Tensor) -> torch.Tensor:
            if strength == 0:
                return h
            step = (strength * self.direction).to(device=h.device, dtype=h.dtype)
            if self.positions == "all":
                return h + step
            where = position_mask(h, state, self.positions).unsqueeze(-1).to(h.dtype)
            return h + where * step

        return {self.layer: fn}


# ------------------------------------------------------------------ finding directions
@torch.no_grad()
def text_means(lm: LM, layer: int, texts: Sequence[str], batch_size: int = 8, max_length: int = 128) -> torch.Tensor:
    """(n_texts, d_model) mean residual of each text at `layer`, position 0 left out (fp32)."""
    if not texts:
        raise QScopeError("no texts to read residuals from")
    rows = []
    for start in range(0, len(texts), batch_size):
        cap = lm.capture(list(texts[start:start + batch_size]), [layer], max_length=max_length, batch_size=batch_size)
        mask = cap.mask.clone()
        if mask.shape[1] > 1:
            mask[:, 0] = False
        for row in range(mask.shape[0]):
            m = mask[row] if mask[row].any() else cap.mask[row]  # a one-token text keeps position 0
            rows.append(cap.acts[layer][row][m].float().mean(0).cpu())
    return torch.stack(rows)


def _check_sets(positive: Sequence[str], negative: Sequence[str], method: str) -> None:
    if not positive or not negative:
        raise QScopeError(f"{method} needs at least one positive and one negative text")
    if sorted(positive) == sorted(negative):
        raise QScopeError(f"{method}: the positive and negative texts are the same set, so there is no direction "
                          "between them; give two different sets")


def diffmean_direction(lm: LM, layer: int, positive: Sequence[str], negative: Sequence[str],
                       max_length: int = 128) -> torch.Tensor:
    """Unit vector mean(positive residuals) - mean(negative residuals) at `layer` (token means
    per text, then the mean over texts, so long texts do not dominate)."""
    _check_sets(positive, negative, "diffmean")
    diff = text_means(lm, layer, positive, max_length=max_length).mean(0) - \
        text_means(lm, layer, negative, max_length=max_length).mean(0)
    if not float(diff.norm()) > 1e-8:
        raise QScopeError("diffmean: the two text sets have the same mean residual; give sets that differ")
    return diff / diff.norm()


def repe_direction(lm: LM, layer: int, positive: Sequence[str], negative: Sequence[str], seed: int = 0,
                   max_length: int = 128) -> torch.Tensor:
    """Unit RepE reading vector (first principal component of randomly ordered paired
    differences, sign-aligned with positive - negative); pairs are formed in order, the longer
    set is cut to the shorter."""
    _check_sets(positive, negative, "repe")
    n = min(len(positive), len(negative))
    if n < 2:
        raise QScopeError("repe needs at least two positive and two negative texts (one pair gives no variance)")
    pos = text_means(lm, layer, positive[:n], max_length=max_length)
    neg = text_means(lm, layer, negative[:n], max_length=max_length)
    gen = torch.Generator().manual_seed(seed)
    flip = (torch.rand(n, generator=gen) < 0.5).float().unsqueeze(1) * 2 - 1  # random pair order
    diffs = (pos - neg) * flip
    diffs = diffs - diffs.mean(0)
    _, _, vh = torch.linalg.svd(diffs.double(), full_matrices=False)
    direction = vh[0].float()
    if float(((pos - neg) @ direction).mean()) < 0:
        direction = -direction
    return direction / direction.norm()


def random_direction(d_model: int, seed: int = 0) -> torch.Tensor:
    """A seeded uniformly random unit vector in R^d_model."""
    gen = torch.Generator().manual_seed(seed)
    vec = torch.randn(d_model, generator=gen)
    return vec / vec.norm()


@torch.no_grad()
def mean_residual_norm(lm: LM, layer: int, texts: Sequence[str], max_length: int = 128) -> float:
    """Mean ||h|| over the tokens of `texts` at `layer` (position 0 left out): the unit in which
    edit sizes of different methods are compared (`edit_norm / mean_residual_norm`)."""
    cap = lm.capture(list(texts), [layer], max_length=max_length)
    h = cap.valid(layer, skip_first=cap.mask.shape[1] > 1)
    return float(h.float().norm(dim=-1).mean())
