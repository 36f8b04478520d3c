"""SASFT: SAE-guided supervised fine-tuning (Qwen-Scope, Application 4).

The loss is `L = CE + lam * L_reduce` with

    L_reduce = mean over response tokens t of  sum_{layer} sum_{s in S_layer} ReLU(pre_s(h_t) - alpha_s)

where `h_t` is the residual stream after a decoder block (with gradient), `pre_s` the frozen
SAE's PRE-activation of feature s (`W_enc[:, s] . h + b_enc[s]`, not the TopK output, so the
penalty has a gradient even where the feature is not in the top k) and `alpha_s` its mean
pre-activation on text outside the unwanted language (`language.estimate_alphas`). Only the
part of a feature's pre-activation above its usual level is pushed down.

"Response tokens" are the positions whose label is not -100 (the tokens of the response
itself: their residuals carry the language the model is writing in), intersected with the
attention mask.

Use it three ways:
- `SASFTTrainer(..., penalty=SASFTPenalty(...))`, a transformers.Trainer;
- `SASFTSFTTrainer(..., penalty=...)`, TRL's SFTTrainer (needs `trl`; `sasft_trainer(Base)`
  adds the penalty to any other Trainer subclass). TRL already puts -100 outside the
  completion (`completion_only_loss`, the default for prompt/completion data) or outside the
  assistant turns (`assistant_only_loss`), so the penalty covers the same tokens as the CE;
- inside your own `compute_loss` / training loop: `with penalty.capture(): out = model(**batch)`
  then `loss = out.loss + penalty.value(batch["labels"] != -100)`.
"""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QScopeError
from ..model import hooks


def _decoder_layers(lm_or_model) -> nn.ModuleList:
    if hasattr(lm_or_model, "layers") and isinstance(lm_or_model.layers, nn.ModuleList):
        return lm_or_model.layers
    from ..model.layers import find_decoder_layers

    return find_decoder_layers(lm_or_model)[1]


class SASFTPenalty:
    """`lam * mean_{response tokens} sum_s ReLU(pre_s(h) - alpha_s)` over one or more layers.

    saes: {layer: SAE} (frozen here: requires_grad is switched off); features: {layer: [ids]};
    alphas: {layer: tensor (n_features,)} or a float per layer. Gradient flows into the model
    through the residual `h`, never into the SAEs.
    """

    def __init__(self, lm_or_model, saes: Mapping[int, nn.Module], features: Mapping[int, Sequence[int]],
                 alphas: Mapping[int, torch.Tensor | float | Sequence[float]], lam: float = 1e-3):
        self.layers = _decoder_layers(lm_or_model)
        if not saes:
            raise QScopeError("SASFT needs at least one (layer, SAE) pair")
        self.lam = float(lam)
        self.saes, self._w, self._b, self.alphas, self.features = {}, {}, {}, {}, {}
        for layer, sae in saes.items():
            layer = int(layer)
            if not 0 <= layer < len(self.layers):
                raise QScopeError(f"layer {layer} out of range: the model has layers 0..{len(self.layers) - 1}")
            feats = [int(f) for f in features.get(layer, features.get(str(layer), []))]
            if not feats:
                raise QScopeError(f"no features given for layer {layer}")
            bad = [f for f in feats if not 0 <= f < sae.cfg.d_sae]
            if bad:
                raise QScopeError(f"feature {bad[0]} out of range: the layer-{layer} SAE has features 0..{sae.cfg.d_sae - 1}")
            for p in sae.parameters():
                p.requires_grad_(False)
            idx = torch.tensor(feats)
            self.saes[layer] = sae
            self.features[layer] = feats
            self._w[layer] = sae.W_enc.detach()[:, idx].clone()  # (d_model, n)
            self._b[layer] = sae.b_enc.detach()[idx].clone()
            alpha = alphas.get(layer, alphas.get(str(layer))) if isinstance(alphas, Mapping) else alphas
            if alpha is None:
                raise QScopeError(f"no alpha given for layer {layer}")
            alpha = torch.as_tensor(alpha, dtype=torch.float32).flatten()
            if alpha.numel() == 1:
                alpha = alpha.expand(len(feats)).clone()
            if alpha.numel() != len(feats):
                raise QScopeError(f"layer {layer}: {alpha.numel()} alphas for {len(feats)} features")
            self.alphas[layer] = alpha
        self._hidden: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ pieces
    def pre_acts(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Pre-activations of the chosen features at `layer`: (..., n_features), differentiable in h."""
        sae = self.saes[layer]
        w, b = self._w[layer].to(h.device), self._b[layer].to(h.device)
        x = h.to(w.dtype)
        if sae.cfg.apply_b_dec_to_input:
            x = x - sae.b_dec.detach().to(x)
        return x @ w + b

    def excess(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Per-token `sum_s ReLU(pre_s(h) - alpha_s)`: (...,)."""
        return F.relu(self.pre_acts(layer, h) - self.alphas[layer].to(h.device)).sum(-1)

    def from_hidden(self, hidden: Mapping[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The penalty (already times lam) from residuals {layer: (batch, seq, d)} and a bool
        (batch, seq) response mask. Zero (with a graph) when the mask is empty."""
        mask = mask.bool()
        total = None
        for layer in self.saes:
            if layer not in hidden:
                raise QScopeError(f"no residual captured at layer {layer}: run the forward inside `penalty.capture()`")
            per_token = self.excess(layer, hidden[layer])
            total = per_token if total is None else total + per_token
        n = mask.sum()
        if n == 0:
            return total.sum() * 0.0
        return self.lam * (total * mask.to(total.dtype)).sum() / n

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def capture(self) -> Iterator["SASFTPenalty"]:
        """Forward hooks (non-stopping) that keep each chosen layer's output, with its graph.

        An output without graph never replaces one with: TRL's SFTTrainer runs extra no-grad
        forwards (metrics, logits) after the training one, which must not blank the gradient."""
        self._hidden = kept = {}

        def make(layer: int):
            def hook(_module, _inputs, output):
                h = hooks.hidden_of(output)
                if h.requires_grad or layer not in kept or not kept[layer].requires_grad:
                    kept[layer] = h

            return hook

        handles = [self.layers[i].register_forward_hook(make(i)) for i in self.saes]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def value(self, response_mask: torch.Tensor) -> torch.Tensor:
        """The penalty for the last forward run under `capture()`."""
        return self.from_hidden(self._hidden, response_mask)

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Run `model(**batch)` and return (ce_loss, penalty, outputs); the response mask is
        `labels != -100` (and the attention mask)."""
        with self.capture():
            out = model(**batch)
        return out.loss, self.value(response_mask(batch)), out

    def to_dict(self) -> dict:
        return {"lam": self.lam, "features": {str(k): v for k, v in self.features.items()},
                "alphas": {str(k): [round(float(a), 5) for a in v] for k, v in self.alphas.items()}}


def response_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Bool (batch, seq): label != -100, and attention_mask where present."""
    if "labels" not in batch:
        raise QScopeError("SASFT needs `labels` in the batch (-100 on prompt and padding tokens)")
    mask = batch["labels"] != -100
    if batch.get("attention_mask") is not None:
        mask = mask & batch["attention_mask"].bool()
    return mask


def unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Output-level baseline: mean over response positions of -log(1 - P(next token in `token_ids`)).

    `logits` (batch, seq, vocab) predict position t+1 from t, as in the causal-LM loss."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    mask = (labels[:, 1:] != -100)
    logp = logits[:, :-1].float().log_softmax(-1)
    p_bad = logp.index_select(-1, ids).exp().sum(-1).clamp(max=1 - 1e-6)
    per = -torch.log1p(-p_bad)
    n = mask.sum()
    return (per * mask).sum() / n.clamp(min=1)


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
        mask = response_mask(inputs)  # before the parent pops `labels` (label smoothing)
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


# ---------------------------------------------------------------------- data + a plain loop
def build_sft_batch(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 128, chat: bool = True) -> dict:
    """Tokenise (prompt, response) pairs: labels are -100 on the prompt and on padding.

    With `chat`, the prompt is wrapped in the tokenizer's chat template (if it has one) and
    the response ends with the EOS token."""
    ids_list, lab_list = [], []
    for prompt, resp in pairs:
        if chat and getattr(tokenizer, "chat_template", None):
            p = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        else:
            p = prompt
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(resp, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        ids = (p_ids + r_ids)[:max_length]
        labels = ([-100] * len(p_ids) + r_ids)[:max_length]
        ids_list.append(ids)
        lab_list.append(labels)
    width = max(len(x) for x in ids_list)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(ids_list, lab_list)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels}


def sft_step(model, batch: Mapping[str, torch.Tensor], optimizer, penalty: SASFTPenalty | None = None,
             unlikelihood_ids=None, ul_weight: float = 1.0) -> dict:
    """One optimiser step of SFT (+ SASFT penalty, or + an unlikelihood term); returns the losses."""
    model.train()
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    if penalty is not None:
        ce, reg, out = penalty(model, batch)
    else:
        out = model(**batch)
        ce, reg = out.loss, out.loss.new_zeros(())
    ul = unlikelihood_loss(out.logits, batch["labels"], unlikelihood_ids) * ul_weight if unlikelihood_ids is not None else ce.new_zeros(())
    loss = ce + reg + ul
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "ce": float(ce.detach()), "penalty": float(reg.detach()), "unlikelihood": float(ul.detach())}
