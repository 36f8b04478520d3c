"""The SAE module: encode residual activations into sparse features and decode them back.

Weights follow SAELens' orientation: `W_enc` (d_model, d_sae), `W_dec` (d_sae, d_model).
Encode is Qwen-Scope's: `pre = x @ W_enc + b_enc` (no `b_dec` subtraction unless the config
says so), then TopK / JumpReLU / ReLU. TopK SAEs decode sparsely from the k active rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import activations as act
from .config import SAEConfig

# Rows per chunk of the CPU inference encode path (SAE._topk_chunked): 512 x d_sae fp32 is
# 19 MB for d_sae 9216, small enough to stay in cache between the GEMM and topk.
ENCODE_CHUNK = 512


class SAE(nn.Module):
    """A sparse autoencoder on one hook point (a layer's residual stream)."""

    def __init__(self, cfg: SAEConfig, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        shape = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_sae, **shape))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **shape))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_model, **shape))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_model, **shape))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **shape))

    # ----------------------------------------------------------------- construction
    @classmethod
    def random(cls, cfg: SAEConfig, seed: int = 0, device: str | torch.device = "cpu") -> "SAE":
        """Unit-norm random decoder, encoder = decoder transpose: the usual TopK initialisation."""
        sae = cls(cfg, device=device)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.d_model, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
        return sae

    @classmethod
    def load(cls, source: str | Path, layer: int | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, k: int | None = None) -> "SAE":
        """Load from a Qwen-Scope file/repo/folder (+ layer), a SAELens, sparsify or qscope folder,
        or `"default"` (qscope's shipped SAEs for the default model)."""
        from .formats import load_sae

        return load_sae(source, layer=layer, device=device, dtype=dtype, k=k)

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write a qscope folder (= SAELens layout: cfg.json + sae_weights.safetensors), atomically."""
        from .formats import save_sae

        return save_sae(self, folder, dtype=dtype)

    def fingerprint(self) -> str:
        """A short stable id of the weights (SHA-1 of every (d_sae // 64)-th decoder row): random
        SAEs have no name, so caches and feature stores are keyed by, and checked against, this."""
        w = self.W_dec.detach()[:: max(1, self.cfg.d_sae // 64)].float().cpu().contiguous()
        return hashlib.sha1(w.numpy().tobytes()).hexdigest()[:16]

    # ----------------------------------------------------------------- math
    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations `x @ W_enc + b_enc`, (..., d_sae): what SASFT penalises."""
        x = self._input(x)
        # addmm adds the bias inside the GEMM (beta=1): one pass over the (n, d_sae) output
        # instead of matmul + a second full read/write for `+ b_enc` (~15% of encode time on CPU).
        pre = torch.addmm(self.b_enc, x.reshape(-1, x.shape[-1]), self.W_enc)
        return pre.reshape(*x.shape[:-1], self.d_sae)

    def _topk_chunked(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`act.topk_sparse(self.pre_acts(x), k)` computed ENCODE_CHUNK rows at a time into one
        reused buffer (inference on CPU only: `out=` has no autograd).

        Same numbers as the plain path (each row's pre-activations, top-k and ReLU are computed
        identically); it is faster because the (n, d_sae) pre-activation matrix is never built:
        a 512-row chunk stays in cache for topk, where the full matrix (151 MB for 4096 x 9216)
        is read back from memory, and one small buffer is reused instead of a big fresh
        allocation whose page faults are paid on every call. Peak memory drops likewise.
        """
        x = self._input(x)
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        values = x.new_empty(n, k)
        indices = torch.empty(n, k, dtype=torch.long, device=x.device)
        buf = x.new_empty(min(n, ENCODE_CHUNK), self.d_sae)
        for start in range(0, n, ENCODE_CHUNK):
            stop = min(start + ENCODE_CHUNK, n)
            pre = buf[: stop - start]
            torch.addmm(self.b_enc, x[start:stop], self.W_enc, out=pre)
            values[start:stop], indices[start:stop] = act.top_k(pre, k)
        return values.relu_().reshape(*lead, k), indices.reshape(*lead, k)

    def _chunkable(self, x: torch.Tensor) -> bool:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.W_enc.requires_grad or self.b_enc.requires_grad)
        return x.device.type == "cpu" and not needs_grad

    def encode_topk(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k strongest features as (values, indices), each (..., k).

        For a TopK SAE this is the encoding itself (k defaults to the SAE's k); for other
        activations it is the k largest of the dense code.
        """
        k = k or self.cfg.k
        if k is None:
            raise ValueError("k is required for a non-TopK SAE")
        if self.cfg.activation == "topk" and k == self.cfg.k:
            if self._chunkable(x):
                return self._topk_chunked(x, k)
            return act.topk_sparse(self.pre_acts(x), k)
        return self.encode(x).topk(k, dim=-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations (..., d_sae); zero where a feature is off."""
        if self.cfg.activation == "topk":
            values, indices = self.encode_topk(x)
            return act.scatter_dense(values, indices, self.cfg.d_sae)
        pre = self.pre_acts(x)
        if self.cfg.activation == "jumprelu":
            return act.jumprelu(pre, self.threshold)
        return act.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction `f @ W_dec + b_dec` from dense codes."""
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Reconstruction from (values, indices): touches only the k active decoder rows."""
        lead = values.shape[:-1]
        k = values.shape[-1]
        out = F.embedding_bag(indices.reshape(-1, k), self.W_dec, per_sample_weights=values.reshape(-1, k).to(self.W_dec.dtype),
                              mode="sum")
        return out.reshape(*lead, -1) + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode then decode (sparsely for TopK)."""
        if self.cfg.activation == "topk":
            return self.decode_sparse(*self.encode_topk(x))
        return self.decode(self.encode(x))

    def __repr__(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k else ""
        return f"SAE({c.activation}, d_model={c.d_model}, d_sae={c.d_sae}{k}, layer={c.layer}, model={c.model_name})"
