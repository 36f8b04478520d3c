"""The SASFT loss inside transformers / TRL trainers.

- `SASFTTrainer(..., penalty=SASFTPenalty(...))`, a transformers.Trainer;
- `SASFTSFTTrainer(..., penalty=...)`, TRL's SFTTrainer (needs `trl`; `sasft_trainer(Base)`
  adds the penalty to any other Trainer subclass). TRL puts -100 outside the completion
  (`completion_only_loss`) or the assistant turns (`assistant_only_loss`); a collator that adds
  a `penalty_mask` column restricts the penalty to responses that must be free of L.
"""

from __future__ import annotations

import functools
import warnings

from ...errors import QScopeError
from .penalty import SASFTPenalty, model_inputs, penalty_mask

try:  # transformers is a hard dependency, but keep import errors readable
    from transformers import Trainer as _Trainer
except Exception:  # pragma: no cover
    _Trainer = object


class SASFTLossMixin:
    """The SASFT loss override for any transformers.Trainer subclass (put it first in the bases).

    Adds `penalty=SASFTPenalty(model, ...)` to the constructor; the last penalty value (before
    any gradient-accumulation scaling) is kept in `self.last_penalty`. Works for full
    fine-tuning and for a peft (LoRA) model, also one the trainer wraps itself (TRL's
    `peft_config`): the hooks sit on the decoder blocks, which peft wraps in place.
    """

    def __init__(self, *args, penalty: SASFTPenalty | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalty = penalty
        self.last_penalty = 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.penalty is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        mask = penalty_mask(inputs)  # before the parent pops `labels` (label smoothing)
        inputs = model_inputs(inputs)
        with self.penalty.capture():
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        reg = self.penalty.value(mask)
        self.last_penalty = float(reg.detach())
        if loss.requires_grad and not any(h.requires_grad for h in self.penalty._hidden.values()):
            warnings.warn("SASFT penalty has no gradient: the residuals at the penalised layers carry no graph "
                          "(no trainable weight at or below them?)", stacklevel=2)
        # Trainer leaves gradient accumulation to a loss normalised by `num_items_in_batch`; the
        # penalty is a per-micro-batch mean, so it is averaged over the accumulation steps here.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = self.model_accepts_loss_kwargs or self.compute_loss_func is not None
        if scaled and num_items_in_batch is not None:
            reg = reg / getattr(self, "current_gradient_accumulation_steps", 1)
        loss = loss + reg
        return (loss, *result[1:]) if return_outputs else loss


class SASFTTrainer(SASFTLossMixin, _Trainer):
    """transformers.Trainer whose loss is the causal-LM loss plus the SASFT penalty:
    `SASFTTrainer(model=..., args=..., train_dataset=..., penalty=SASFTPenalty(model, ...))`."""


def sasft_trainer(base: type | None = None) -> type:
    """`base` (a Trainer subclass; default `trl.SFTTrainer`) with the SASFT loss mixed in, named
    `SASFT<base name>`; one class per base, so `sasft_trainer()` is `SASFTSFTTrainer`."""
    if base is None:
        try:
            from trl import SFTTrainer as base
        except ImportError as e:
            raise QScopeError("SASFTSFTTrainer needs TRL: pip install trl") from e
    return SASFTTrainer if base is _Trainer else _with_penalty(base)


@functools.lru_cache(maxsize=None)
def _with_penalty(base: type) -> type:
    return type(f"SASFT{base.__name__}", (SASFTLossMixin, base),
                {"__module__": __name__, "__doc__": f"{base.__name__} + the SASFT penalty (`penalty=`)."})


def __getattr__(name: str):
    if name == "SASFTSFTTrainer":  # built on first use, so trl stays optional
        return sasft_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
