"""`LM`: a Hugging Face causal LM plus tokenizer, with residual-stream capture and edits."""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ..errors import QScopeError
from . import hooks
from .layers import find_decoder_layers, text_config

if TYPE_CHECKING:
    from ..sae import SAE

log = logging.getLogger(__name__)


@dataclass
class Capture:
    """Residual activations of a batch of texts.

    `acts[layer]` is (batch, seq, d_model), right-padded; `mask` is True on real tokens and
    False on padding, which `valid()` drops.
    """

    acts: dict[int, torch.Tensor]
    mask: torch.Tensor
    input_ids: torch.Tensor
    tokens: list[list[str]] = field(default_factory=list)

    @property
    def n_pad(self) -> int:
        return int((~self.mask).sum())

    def valid(self, layer: int, skip_first: bool = False) -> torch.Tensor:
        """(n_tokens, d_model) activations of real tokens, optionally without position 0."""
        mask = self.mask.clone()
        if skip_first:
            mask[:, 0] = False
        acts = self.acts[layer]
        return acts[mask.to(acts.device)]  # under a device map, layers live on different GPUs


class LM:
    """A causal LM with its tokenizer; layer n = output of decoder block n (`hidden_states[n+1]`)."""

    def __init__(self, model, tokenizer, name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "name_or_path", None) or type(model).__name__
        self.layer_path, self.layers = find_decoder_layers(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(text_config(self.model).hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layer_device(self, layer: int) -> torch.device:
        """Device of decoder block `layer` (differs from `device` under a multi-GPU device map):
        where that layer's residuals appear and its SAE belongs."""
        self.check_layers([layer])
        return next(self.layers[layer].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def context_length(self) -> int | None:
        """Positions the model was trained on (`max_position_embeddings`), if it says."""
        value = getattr(text_config(self.model), "max_position_embeddings", None)
        return int(value) if value else None

    def __repr__(self) -> str:
        return f"LM({self.name}, layers={self.n_layers}, d_model={self.d_model}, device={self.device})"

    # ------------------------------------------------------------------ inputs
    def check_layers(self, layers: Sequence[int]) -> list[int]:
        layers = list(layers)
        if not layers:
            raise QScopeError("no layer given")
        bad = [layer for layer in layers if not 0 <= int(layer) < self.n_layers]
        if bad:
            raise QScopeError(f"layer {bad[0]} out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return [int(layer) for layer in layers]

    def check_sae(self, sae: SAE, layer: int | None = None) -> int:
        """The layer `sae` reads from this model, after checking shape and layer range."""
        cfg = sae.cfg
        layer = cfg.layer if layer is None else layer
        if layer is None:
            raise QScopeError("the SAE does not say which layer it reads; pass a layer")
        self.check_layers([layer])
        if cfg.d_model != self.d_model:
            raise QScopeError(f"SAE d_model={cfg.d_model} does not match {self.name} (d_model={self.d_model}): "
                              f"this SAE belongs to another model{f' ({cfg.model_name})' if cfg.model_name else ''}")
        return int(layer)

    @contextmanager
    def left_truncation(self) -> Iterator[None]:
        """Inside: over-long prompts lose their beginning, not the question and cue at their end."""
        old = getattr(self.tokenizer, "truncation_side", "right")
        self.tokenizer.truncation_side = "left"
        try:
            yield
        finally:
            self.tokenizer.truncation_side = old

    def tokenize(self, texts: Sequence[str], max_length: int | None = 512, padding_side: str = "right"):
        """Batch-tokenise with padding; no special tokens are added beyond the tokenizer's own."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise QScopeError("empty text: every text must contain at least one non-space character")
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=max_length is not None,
                             max_length=max_length)
        if max_length is not None:
            self._report_cuts(texts, enc["attention_mask"].sum(1), max_length)
        return enc.to(self.device)

    def _report_cuts(self, texts: Sequence[str], lengths: torch.Tensor, max_length: int) -> None:
        """Say (once per limit and model) that texts were cut: a silent cut changes results unseen."""
        reported = self.__dict__.setdefault("_cuts_reported", set())
        if max_length in reported:
            return
        full = [i for i, n in enumerate(lengths.tolist()) if n >= max_length]
        if not full:
            return
        longest = max(len(ids) for ids in self.tokenizer([texts[i] for i in full])["input_ids"])
        if longest > max_length:
            reported.add(max_length)
            log.warning("texts longer than %s tokens are cut to their first %s (one had %s tokens); further cuts "
                        "at this limit are not reported", f"{max_length:,}", f"{max_length:,}", f"{longest:,}")

    def token_strings(self, input_ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Per-token strings that join back into the text.

        Decoding one token at a time gives a '\ufffd' for each piece of a character that a
        byte-level tokenizer split over several tokens (common in Chinese); such a character is
        shown on the token that completes it instead, its other pieces as ''. For those tokens a
        short window before the token is decoded with and without it, and the token gets what it
        adds."""
        ids = [int(t) for t in input_ids]
        single = [self.tokenizer.decode([t]) for t in ids]
        out = []
        for i, one in enumerate(single):
            if "\ufffd" not in one and i + 1 < len(ids) and "\ufffd" not in single[i + 1]:
                out.append(one)  # the common case: a whole token, and the next one does not complete it
                continue
            j = max(0, i - 6)
            before = self.tokenizer.decode(ids[j:i]).rstrip("\ufffd")
            after = self.tokenizer.decode(ids[j:i + 1])
            after = after.rstrip("\ufffd") if i + 1 < len(ids) else after
            out.append(after[len(before):] if after.startswith(before) else one)
        return out

    # ------------------------------------------------------------------ capture
    @torch.no_grad()
    def run_to_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Residuals after each requested block; the forward stops after the deepest one."""
        layers = self.check_layers(layers)
        with hooks.record(self.layers, layers) as out:
            try:
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except hooks.StopForward:
                pass
        return {layer: out[layer] for layer in layers}

    @torch.no_grad()
    def capture(self, texts: Sequence[str] | str, layers: Sequence[int] | int, max_length: int | None = 512,
                batch_size: int = 8) -> Capture:
        """Residual stream after each of `layers` for `texts` (batched, right-padded, masked)."""
        if isinstance(layers, int):
            layers = [layers]
        layers = self.check_layers(layers)
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenize(texts, max_length=max_length)
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            width = int(mask[chunk].sum(1).max())  # trim this batch's own padding
            out = self.run_to_layers(ids[chunk, :width], mask[chunk, :width].long(), layers)
            for layer in layers:
                parts[layer].append(torch.nn.functional.pad(out[layer], (0, 0, 0, ids.shape[1] - width)))
        acts = {layer: torch.cat(parts[layer]) for layer in layers}
        tokens = [self.token_strings(row[m]) for row, m in zip(ids, mask)]
        return Capture(acts=acts, mask=mask, input_ids=ids, tokens=tokens)

    # ------------------------------------------------------------------ generation
    def chat_prompt(self, prompt: str) -> str:
        """Wrap a user message in the model's chat template (if it has one)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def _edits(self, steer) -> dict[int, hooks.EditFn]:
        """Merge the edits of one or several steering objects; edits on one layer compose."""
        merged: dict[int, hooks.EditFn] = {}
        for item in steer if isinstance(steer, (list, tuple)) else [steer]:
            for layer, fn in item.edits(self).items():
                prev = merged.get(layer)
                merged[layer] = fn if prev is None else (lambda h, f=fn, g=prev: f(g(h)))
        return merged

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 64, steer=None, chat: bool = False,
                 do_sample: bool = False, temperature: float = 1.0, seed: int | None = None, **kwargs) -> str | list[str]:
        """Generate continuations; `steer` is a steering object (or a list of them) with
        `.edits(lm)` -> {layer: fn(h) -> h} (see qscope.steer), applied on every forward, KV
        cache included."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if chat:
            prompts = [self.chat_prompt(p) for p in prompts]
        enc = self.tokenize(prompts, max_length=None, padding_side="left")
        max_new_tokens = self._fit_context(enc["input_ids"].shape[1], max_new_tokens)
        if seed is not None:
            torch.manual_seed(seed)
        context = hooks.edit(self.layers, self._edits(steer)) if steer is not None else nullcontext()
        sampling = dict(do_sample=True, temperature=temperature) if do_sample else dict(do_sample=False)
        with context:
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      **sampling, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return texts[0] if single else texts

    def _fit_context(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """New tokens that fit in the context after the prompt; a prompt that fills it is an error
        (past its context a model's output is meaningless, and memory grows with the length)."""
        if max_new_tokens < 1:
            raise QScopeError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        context = self.context_length
        if context is None:
            return max_new_tokens
        if prompt_tokens >= context:
            raise QScopeError(f"prompt of {prompt_tokens:,} tokens: {self.name} reads at most {context:,} tokens "
                              "(its context length); shorten the prompt")
        if prompt_tokens + max_new_tokens > context:
            log.warning("generation cut to %s new tokens: the prompt (%s tokens) and %s new tokens would pass the "
                        "model's context of %s", context - prompt_tokens, f"{prompt_tokens:,}", max_new_tokens,
                        f"{context:,}")
            return context - prompt_tokens
        return max_new_tokens
