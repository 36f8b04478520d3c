"""Steering the residual stream with SAE decoder directions.

Modes (per feature):
- `add`: h + alpha * d (Qwen-Scope; alpha in raw residual units, or x ||h|| with `relative`);
- `clamp`: h + (c - f(h)) * d, setting the feature's activation to c wherever it is applied;
- any mode can be gated: applied only at positions where a gating feature fires
  (feature-selective steering).
Positions: the prompt, the generated tokens, or all. With the KV cache, the first forward of a
`generate` call holds the prompt and each later one holds one new token; the hook tells them
apart by counting, so steering reaches every generated token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..errors import QScopeError

if TYPE_CHECKING:
    from ..model.lm import LM
    from ..sae import SAE

Mode = Literal["add", "clamp"]
Positions = Literal["all", "prompt", "generated"]


def check_positions(positions: str) -> None:
    if positions not in ("all", "prompt", "generated"):
        raise QScopeError(f"positions must be all, prompt or generated, not {positions!r}")


def position_mask(h: torch.Tensor, state: dict, positions: Positions) -> torch.Tensor:
    """(batch, seq) bool: which positions of this forward are edited.

    `state` is a fresh `{"prompt_len": None}` per `edits()` call (one generate call): the first
    forward holds the prompt, each later one-token forward a generated token (KV cache), and a
    longer later forward the whole sequence again (no cache)."""
    batch, seq = h.shape[:2]
    if state["prompt_len"] is None:  # first forward of this generate call: the prompt
        state["prompt_len"] = seq
        is_prompt = torch.ones(batch, seq, dtype=torch.bool, device=h.device)
    elif seq == 1:  # KV cache: one new (generated) token
        is_prompt = torch.zeros(batch, seq, dtype=torch.bool, device=h.device)
    else:  # no cache: the whole sequence again
        is_prompt = (torch.arange(seq, device=h.device) < state["prompt_len"]).expand(batch, seq)
    if positions == "all":
        return torch.ones_like(is_prompt)
    return is_prompt if positions == "prompt" else ~is_prompt


@dataclass
class FeatureEdit:
    feature: int
    strength: float
    mode: Mode = "add"
    relative: bool = False  # add mode: alpha is a multiple of the residual norm ||h|| at each position
    gate: int | None = None  # only where this feature's activation exceeds gate_threshold
    gate_threshold: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Steering:
    """Edits of one SAE's features at the SAE's layer; pass to `lm.generate(steer=...)`."""

    sae: SAE
    edits_: list[FeatureEdit] = field(default_factory=list)
    positions: Positions = "all"
    layer: int | None = None

    def __post_init__(self) -> None:
        check_positions(self.positions)
        d_sae = self.sae.cfg.d_sae
        for edit in self.edits_:
            for f in (edit.feature, edit.gate):
                if f is not None and not 0 <= f < d_sae:
                    raise QScopeError(f"feature {f} out of range: this SAE has features 0..{d_sae - 1}")
            if edit.mode not in ("add", "clamp"):
                raise QScopeError(f"steering mode must be add or clamp, not {edit.mode!r}")
            if not math.isfinite(edit.strength):
                raise QScopeError(f"feature {edit.feature}: strength must be a finite number, not {edit.strength}")

    @classmethod
    def add(cls, sae: SAE, features: dict[int, float], positions: Positions = "all", relative: bool = False) -> "Steering":
        """Shortcut: add `strength * direction` for each {feature: strength}."""
        return cls(sae, [FeatureEdit(f, s, "add", relative) for f, s in features.items()], positions)

    def to_dict(self) -> dict:
        return {"layer": self.layer if self.layer is not None else self.sae.cfg.layer, "positions": self.positions,
                "edits": [e.to_dict() for e in self.edits_]}

    @torch.no_grad()
    def edit_vector(self) -> torch.Tensor | None:
        """(d_model,) the fixed vector this steering adds where it applies (sum of strength x
        decoder direction), or None when the edit depends on the residual (clamp, relative).
        Its norm is what the random-direction control matches."""
        if any(e.mode != "add" or e.relative for e in self.edits_):
            return None
        vec = torch.zeros(self.sae.W_dec.shape[1], dtype=torch.float32, device=self.sae.W_dec.device)
        for e in self.edits_:
            vec += e.strength * self.sae.W_dec[e.feature].float()
        return vec

    # ---------------------------------------------------------------- hook
    def edits(self, lm: LM) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
        """{layer: fn(h) -> h} for `qscope.model.hooks.edit`; fresh position state per call."""
        layer = lm.check_sae(self.sae, self.layer)
        active = [e for e in self.edits_ if not (e.mode == "add" and e.strength == 0)]  # 0 = exactly no edit
        needs_codes = any(e.mode == "clamp" or e.gate is not None for e in active)
        state = {"prompt_len": None}

        def fn(h: torch.Tensor) -> torch.Tensor:
            where = position_mask(h, state, self.positions)
            if not active or not where.any():
                return h
            codes = self.sae.encode(h) if needs_codes else None
            delta = torch.zeros_like(h)
            for e in active:
                direction = self.sae.W_dec[e.feature].to(h.dtype)
                if e.mode == "add":
                    scale = e.strength * (h.norm(dim=-1, keepdim=True) / direction.norm()) if e.relative else e.strength
                    step = scale * direction
                else:
                    step = (e.strength - codes[..., e.feature]).unsqueeze(-1).to(h.dtype) * direction
                step = step.expand_as(h)
                if e.gate is not None:
                    step = step * (codes[..., e.gate] > e.gate_threshold).unsqueeze(-1).to(h.dtype)
                delta = delta + step
            return h + delta * where.unsqueeze(-1).to(h.dtype)

        return {layer: fn}
