"""The SASFT penalty: `L = CE + lam * L_reduce` (Qwen-Scope, Application 4; spec section 6).

    L_reduce = mean over penalised tokens t of  sum_{layer} sum_{s in S_layer} ReLU(pre_s(h_t) - alpha_s)

where `h_t` is the residual stream after a decoder block (with gradient), `pre_s` the frozen
SAE's PRE-activation of feature s (`W_enc[:, s] . h + b_enc[s]`, not the TopK output, so the
penalty has a gradient even where the feature is not in the top k) and `alpha_s` its mean
pre-activation on clean text outside the unwanted language L (`language.estimate_alphas`).
Only the part of a feature's pre-activation above its usual level is pushed down.

Penalised tokens: the tokens of responses that must be free of L (the paper's expectation is
over x not in L), never tokens the cross-entropy teaches to be L - the two terms would fight.
`penalty_mask(batch)` is the batch's `penalty_mask` where the data supplies one
(`data.build_sft_batch` sets it from each example's flag), else every response token
(`labels != -100`, which is right only when no response is in L).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import QScopeError
from ...model import hooks

if TYPE_CHECKING:
    from ...sae import SAE


def _decoder_layers(lm_or_model) -> nn.ModuleList:
    if hasattr(lm_or_model, "layers") and isinstance(lm_or_model.layers, nn.ModuleList):
        return lm_or_model.layers
    from ...model.layers import find_decoder_layers

    return find_decoder_layers(lm_or_model)[1]


class SASFTPenalty:
    """`lam * mean_{penalised tokens} sum_s ReLU(pre_s(h) - alpha_s)` over one or more layers.

    saes: {layer: SAE} (frozen here: requires_grad is switched off); features: {layer: [ids]};
    alphas: {layer: tensor (n_features,)} or a float per layer. Gradient flows into the model
    through the residual `h`, never into the SAEs.
    """

    def __init__(self, lm_or_model, saes: Mapping[int, SAE], features: Mapping[int, Sequence[int]],
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

    def reduce(self, hidden: Mapping[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """L_reduce (without lam) from residuals {layer: (batch, seq, d)} and a bool (batch, seq)
        mask of penalised tokens. Zero (with a graph) when the mask is empty."""
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
        return (total * mask.to(total.dtype)).sum() / n

    def from_hidden(self, hidden: Mapping[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The penalty `lam * L_reduce` (see `reduce`)."""
        return self.lam * self.reduce(hidden, mask)

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def capture(self) -> Iterator["SASFTPenalty"]:
        """Keep each chosen layer's output, with its graph, while the context is open (an output
        without graph never replaces one with: trainers run extra no-grad forwards)."""
        with hooks.record(self.layers, list(self.saes), stop=False, keep_graph=True) as kept:
            self._hidden = kept
            yield self

    def value(self, mask: torch.Tensor) -> torch.Tensor:
        """The penalty for the last forward run under `capture()`, over the bool (batch, seq) `mask`."""
        return self.from_hidden(self._hidden, mask)

    def last_reduce(self, mask: torch.Tensor) -> torch.Tensor:
        """L_reduce (without lam) for the last forward run under `capture()`."""
        return self.reduce(self._hidden, mask)

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Run the model on `batch` and return (ce_loss, penalty over `penalty_mask(batch)`, outputs)."""
        with self.capture():
            out = model(**model_inputs(batch))
        return out.loss, self.value(penalty_mask(batch)), out

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


def penalty_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Bool (batch, seq): the tokens L_reduce covers. The batch's own `penalty_mask` (responses
    that must be free of L) where present, else every response token; always within
    `response_mask`."""
    mask = response_mask(batch)
    if batch.get("penalty_mask") is not None:
        mask = mask & batch["penalty_mask"].to(mask.device).bool()
    return mask


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the keys only the losses read (the model's forward rejects them)."""
    return {k: v for k, v in batch.items() if k != "penalty_mask"}


def unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Output-level baseline: mean over labelled positions of -log(1 - P(next token in `token_ids`)).

    `logits` (batch, seq, vocab) predict position t+1 from t, as in the causal-LM loss. Pass
    labels that are -100 outside the responses that must be free of L (`run.sft_step` does)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    mask = (labels[:, 1:] != -100)
    logp = logits[:, :-1].float().log_softmax(-1)
    p_bad = logp.index_select(-1, ids).exp().sum(-1).clamp(max=1 - 1e-6)
    per = -torch.log1p(-p_bad)
    n = mask.sum()
    return (per * mask).sum() / n.clamp(min=1)
