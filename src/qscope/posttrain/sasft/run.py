"""SASFT as one call: `run_sasft(lm, saes, data, SASFTConfig(...)) -> SASFTResult`.

Like `train_grpo` beside it: a config dataclass, a typed result with `to_dict()`, progress via
a callback (`on_step(stats)`), no console output. The same loop is plain SFT (no features), SASFT
(features + alphas + lam) or SFT + an unlikelihood term on L tokens (the output-level baseline);
the penalty and the unlikelihood term cover only responses that must be free of L.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import torch

from ...errors import QScopeError
from .data import ExampleLike, build_sft_batch, resolve_examples
from .penalty import SASFTPenalty, model_inputs, penalty_mask, unlikelihood_loss

if TYPE_CHECKING:
    from ...model import LM
    from ...sae import SAE

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


@dataclass
class SASFTConfig:
    """One SASFT run. `features`/`alphas`: {layer: [ids]} / {layer: [alpha per feature]}
    (`language.choose_language_features`; the paper: top-2 features on two adjacent late layers);
    no features = plain SFT. `lam`: penalty weight (paper 5e-4 .. 1e-3). `lang`: the unwanted
    language, used to decide which responses must be free of it (`data.resolve_examples`).
    `unlikelihood_weight` with `unlikelihood_ids` (`language.script_token_ids`): the baseline
    term -log(1 - P(next token is an L token)) on the same responses. `lora_rank` 0 = full
    fine-tuning; LoRA is added only if the model has no adapters yet. `seed` fixes the LoRA
    initialisation and the batch order."""

    lam: float = 1e-3
    features: dict[int, list[int]] = field(default_factory=dict)
    alphas: dict[int, list[float]] = field(default_factory=dict)
    lang: Optional[str] = None
    unlikelihood_weight: float = 0.0
    unlikelihood_ids: list[int] = field(default_factory=list)
    lr: float = 1e-3
    steps: int = 100
    batch: int = 4
    seed: int = 0
    max_length: int = 128
    chat: bool = True
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        self.features = {int(k): [int(f) for f in v] for k, v in self.features.items()}
        self.alphas = {int(k): [float(a) for a in v] for k, v in self.alphas.items()}
        if set(self.features) != set(self.alphas):
            raise QScopeError(f"SASFTConfig: features for layers {sorted(self.features)} but alphas for {sorted(self.alphas)}")
        if self.unlikelihood_weight and not self.unlikelihood_ids:
            raise QScopeError("SASFTConfig: unlikelihood_weight needs unlikelihood_ids (language.script_token_ids)")
        if self.steps < 1 or self.batch < 1:
            raise QScopeError(f"SASFTConfig: steps and batch must be >= 1 (got {self.steps}, {self.batch})")

    @property
    def layers(self) -> list[int]:
        return sorted(self.features)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = {str(k): v for k, v in self.features.items()}
        d["alphas"] = {str(k): [round(a, 5) for a in v] for k, v in self.alphas.items()}
        d["unlikelihood_ids"] = len(self.unlikelihood_ids)  # the count; the ids follow from the tokenizer
        d["lora_targets"] = list(self.lora_targets)
        return d


@dataclass
class SASFTResult:
    """The run's config, per-step statistics (loss, ce, penalty = lam * l_reduce, l_reduce,
    unlikelihood, penalised_tokens), data counts and wall time."""

    config: SASFTConfig
    history: list[dict]
    n_examples: int
    n_penalised: int
    seconds: float

    @property
    def final(self) -> dict:
        return self.history[-1]

    def mean_last(self, key: str, n: int = 10) -> float:
        """Mean of a statistic over the last `n` steps (a less noisy 'final' value)."""
        tail = self.history[-n:]
        return sum(s[key] for s in tail) / len(tail)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "n_examples": self.n_examples, "n_penalised": self.n_penalised,
                "seconds": round(self.seconds, 1), "final": self.final, "mean_ce_last10": self.mean_last("ce"),
                "history": self.history}


def sft_step(model, batch: Mapping[str, torch.Tensor], optimizer, penalty: SASFTPenalty | None = None,
             unlikelihood_ids: Sequence[int] | None = None, ul_weight: float = 1.0) -> dict:
    """One optimiser step of CE (+ the SASFT penalty) (+ the unlikelihood term), both extra terms
    over `penalty_mask(batch)` only; returns the step's statistics."""
    model.train()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = penalty_mask(batch)
    if penalty is not None:
        with penalty.capture():
            out = model(**model_inputs(batch))
        l_reduce = penalty.last_reduce(mask)
    else:
        out = model(**model_inputs(batch))
        l_reduce = out.loss.new_zeros(())
    ce = out.loss
    reg = (penalty.lam if penalty is not None else 0.0) * l_reduce
    ul = ce.new_zeros(())
    if unlikelihood_ids is not None and ul_weight:
        ul = ul_weight * unlikelihood_loss(out.logits, batch["labels"].masked_fill(~mask, -100), unlikelihood_ids)
    loss = ce + reg + ul
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "ce": float(ce.detach()), "penalty": float(reg.detach()),
            "l_reduce": float(l_reduce.detach()), "unlikelihood": float(ul.detach()), "penalised_tokens": int(mask.sum())}


def run_sasft(lm: LM, saes: Mapping[int, SAE], data: Sequence[ExampleLike], config: SASFTConfig,
              on_step: Callable[[dict], None] | None = None) -> SASFTResult:
    """Fine-tune `lm` in place (LoRA adapters unless `config.lora_rank` is 0) for `config.steps`
    steps of `config.batch` examples drawn without replacement within a step (seeded).
    saes: {layer: SAE} for `config.layers` (frozen). With lam = 0 the run equals plain SFT."""
    from ..grpo import add_lora

    missing = [layer for layer in config.layers if layer not in saes]
    if missing:
        raise QScopeError(f"run_sasft: no SAE given for layer(s) {missing}")
    examples = resolve_examples(data, config.lang)
    if not examples:
        raise QScopeError("run_sasft: no training examples")
    t0 = time.time()
    torch.manual_seed(config.seed)
    if config.lora_rank and not hasattr(lm.model, "peft_config"):
        add_lora(lm, r=config.lora_rank, alpha=2 * config.lora_rank, target_modules=config.lora_targets)
    penalty = (SASFTPenalty(lm, {layer: saes[layer] for layer in config.layers}, config.features,
                            {layer: torch.tensor(a) for layer, a in config.alphas.items()}, lam=config.lam)
               if config.features else None)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    if not params:
        raise QScopeError("run_sasft: no trainable parameters (lora_rank=0 on a frozen model?)")
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    ul_ids = config.unlikelihood_ids if config.unlikelihood_weight else None
    rng = random.Random(config.seed)
    history = []
    for step in range(config.steps):
        chosen = rng.sample(examples, min(config.batch, len(examples)))
        batch = build_sft_batch(lm.tokenizer, chosen, config.max_length, chat=config.chat)
        stats = {"step": step, **sft_step(lm.model, batch, optimizer, penalty, ul_ids, config.unlikelihood_weight)}
        history.append(stats)
        if on_step:
            on_step(stats)
    lm.model.eval()
    return SASFTResult(config, history, len(examples), sum(ex.penalise for ex in examples), time.time() - t0)
