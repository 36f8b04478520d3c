"""TopK SAE training math: sparse forward/backward, FVU + AuxK loss, unit-norm decoder, lr schedule.

Why custom autograd: with plain autograd, the backward of `pre.topk(k)` scatters the k
gradients into a dense (N, d_sae) tensor and the encoder/decoder weight gradients become dense
(N x d_model x d_sae) matmuls, i.e. as costly as the forward encoder. On CPU everything after
the encoder's forward matmul touches only the k (plus k_aux) active latents of each token,
O(N k D): the weight gradients are per-latent sums of token rows (`scatter_rows`), the
gradient of the active values is one dot product per (token, latent) pair (`sampled_dots`),
and the decoder is `F.embedding_bag`. The forward matmul runs ENCODE_CHUNK rows at a time, so
each chunk of pre-activations is still in cache for the top-k (`qscope.sae.activations.top_k`)
and the (N, d_sae) matrix is never built. On CUDA the decoder stays O(N k D) (embedding_bag's
own kernels), but the encoder's weight gradient is one dense tensor-core matmul of the
scattered gradients: on a GPU that beats cuSPARSE's sparse product by 5-10x.

`matmul` sets the precision of the encoder's forward matmul, the one dense product ("fp32",
"tf32" on CUDA, "bf16"). With "bf16" on CPU that matmul only chooses the active latents; their
values, and every gradient, are computed in the weights' dtype (fp32 master weights, fp32 Adam).

Encode semantics are Qwen-Scope's (see `qscope.sae`): `pre = x @ W_enc + b_enc` (no `b_dec`
subtraction), keep the top k, ReLU the kept values; decode = sum of the k active decoder rows
+ `b_dec`.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sae import SAE
from ..sae.activations import top_k
from ..sae.sae import ENCODE_CHUNK

# --------------------------------------------------------------------------- sparse kernels


class LatentGroups(NamedTuple):
    """The (token, slot) pairs of an (N, k) latent-index tensor grouped by latent (CSR by latent):
    latent s owns the sorted pairs `starts[s]:starts[s + 1]`; `order` maps them back to their
    flat (token * k + slot) positions and `tokens` names their tokens.

    Both sparse backward products run over this order: each latent's weight row (or its sum of
    token rows) is then touched in one go rather than once per token, which on CPU makes them
    2-3x faster than the token-major order (one argsort of N k indices, ~1% of a step, pays it).
    """

    order: Tensor
    tokens: Tensor
    starts: Tensor
    shape: tuple[int, int]


def group_by_latent(idx: Tensor, n_latents: int) -> LatentGroups:
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)  # stable: tokens ascending within a latent, as CSR wants
    starts = flat.new_zeros(n_latents + 1)
    torch.cumsum(torch.bincount(flat, minlength=n_latents), 0, out=starts[1:])
    return LatentGroups(order, order // max(idx.shape[1], 1), starts, tuple(idx.shape))


def scatter_rows(groups: LatentGroups, coeff: Tensor, rows: Tensor) -> Tensor:
    """`out[s] = sum over (n, j) with idx[n, j] == s of coeff[n, j] * rows[n]`, (n_latents, D).

    The weight gradient of both sparse products (encoder columns, decoder rows): each latent's
    bag of weighted token rows summed by `F.embedding_bag`, O(N k D) work and no (N, k, D)
    temporary. Repeated (s, n) pairs (a latent in both the main and the AuxK top-k) add up.
    """
    n_latents = groups.starts.shape[0] - 1
    if groups.order.numel() == 0:
        return rows.new_zeros(n_latents, rows.shape[1])
    return F.embedding_bag(groups.tokens, rows, groups.starts[:-1], mode="sum",
                           per_sample_weights=coeff.reshape(-1)[groups.order].to(rows.dtype))


def sampled_dots(groups: LatentGroups, table: Tensor, rows: Tensor) -> Tensor:
    """`out[n, j] = table[idx[n, j]] @ rows[n]`, shape (N, k): the entries of `rows @ table.T`
    at each token's k latents, without the dense product (`torch.sparse.sampled_addmm` over
    the latent-major CSR pattern; the latents of one token must be distinct, as a top-k's are)."""
    n_latents = groups.starts.shape[0] - 1
    out = rows.new_empty(groups.shape)
    if out.numel() == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta state"
        pattern = torch.sparse_csr_tensor(groups.starts, groups.tokens, rows.new_zeros(groups.tokens.shape[0]),
                                          (n_latents, rows.shape[0]))
    out.view(-1)[groups.order] = torch.sparse.sampled_addmm(pattern, table, rows.t(), beta=0).values()
    return out


MATMULS = ("auto", "fp32", "tf32", "bf16")


def resolve_matmul(matmul: str, device: torch.device) -> str:
    """"auto" = TF32 on CUDA (what PyTorch's "high" precision means), exact fp32 elsewhere."""
    if matmul not in MATMULS:
        raise ValueError(f"matmul must be one of {MATMULS}, got {matmul!r}")
    if matmul == "auto":
        return "tf32" if device.type == "cuda" else "fp32"
    return matmul


def dense_backward(t: Tensor) -> bool:
    """Whether the GPU-style backward is used for tensors like `t` (CUDA ones; tests flip it)."""
    return t.is_cuda


@contextmanager
def _tf32(enabled: bool):
    """Allow TF32 for CUDA matmuls inside the block only (the global setting is restored)."""
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _encoder_matmul(x: Tensor, W_enc: Tensor, b_enc: Tensor, matmul: str) -> Tensor:
    if matmul == "bf16":
        return torch.addmm(b_enc.bfloat16(), x.bfloat16(), W_enc.bfloat16()).to(W_enc.dtype)
    with _tf32(matmul == "tf32" and x.is_cuda):
        return torch.addmm(b_enc, x, W_enc)


def _select_cpu(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor | None, k_aux: int, matmul: str):
    """Main and AuxK top-k of `x @ W_enc + b_enc`, ENCODE_CHUNK rows at a time into one reused
    buffer: each chunk's pre-activations are still in cache for the top-k, and the (N, d_sae)
    matrix is never built. With "bf16" the matmul only chooses the latents: their values are
    then recomputed exactly in the weights' dtype (`sampled_dots`)."""
    low = matmul == "bf16"
    xs, W, b = (x.bfloat16(), W_enc.bfloat16(), b_enc.bfloat16()) if low else (x, W_enc, b_enc)
    n = x.shape[0]
    n_aux = min(k_aux, dead.numel()) if dead is not None and k_aux > 0 else 0
    vals, aux_vals = x.new_empty(n, k), x.new_empty(n, n_aux)
    idx = torch.empty(n, k, dtype=torch.long, device=x.device)
    aux_idx = torch.empty(n, n_aux, dtype=torch.long, device=x.device)
    buf = xs.new_empty(min(n, ENCODE_CHUNK), W.shape[1])
    for start in range(0, n, ENCODE_CHUNK):
        stop = min(start + ENCODE_CHUNK, n)
        pre = torch.addmm(b, xs[start:stop], W, out=buf[: stop - start])
        vals[start:stop], idx[start:stop] = top_k(pre, k)
        if n_aux:
            aux_vals[start:stop], local = top_k(pre.index_select(1, dead), n_aux)
            aux_idx[start:stop] = dead[local]
    if low:
        d_sae = W_enc.shape[1]
        vals = sampled_dots(group_by_latent(idx, d_sae), W_enc.t(), x) + b_enc[idx]
        aux_vals = sampled_dots(group_by_latent(aux_idx, d_sae), W_enc.t(), x) + b_enc[aux_idx]
    return vals.relu(), idx, aux_vals.relu(), aux_idx


def _select_dense(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor | None, k_aux: int, matmul: str):
    """The same selection from the full (N, d_sae) pre-activations (the CUDA path)."""
    pre = _encoder_matmul(x, W_enc, b_enc, matmul)
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    if dead is not None and dead.numel() and k_aux > 0:
        aux_vals, local = pre.index_select(1, dead).topk(min(k_aux, dead.numel()), dim=-1, sorted=False)
        aux_idx = dead[local]
    else:
        aux_vals, aux_idx = x.new_zeros(x.shape[0], 0), idx.new_zeros(x.shape[0], 0)
    return vals.relu(), idx, aux_vals.relu(), aux_idx


class TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc) -> (values, indices, aux_values, aux_indices).

    The main top-k is over all latents; the AuxK top-k_aux is over `dead` latents only (a
    1-D index tensor, possibly empty). Both are ReLU'd. The dense pre-activations live only
    inside the forward: the backward needs x and the chosen (index, value) pairs alone.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor | None, k_aux: int,
                matmul: str = "fp32"):
        select = _select_dense if dense_backward(x) else _select_cpu
        vals, idx, aux_vals, aux_idx = select(x, W_enc, b_enc, k, dead, k_aux, matmul)
        ctx.save_for_backward(x, W_enc, vals, idx, aux_vals, aux_idx)
        ctx.matmul = matmul
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):
        x, W_enc, vals, idx, aux_vals, aux_idx = ctx.saved_tensors
        g = torch.cat([g_vals * (vals > 0), g_aux * (aux_vals > 0)], dim=1)  # ReLU' on kept values
        all_idx = torch.cat([idx, aux_idx], dim=1)
        d_sae = W_enc.shape[1]
        grad_x = grad_W = grad_b = None
        if dense_backward(x):  # dense scattered gradient: tensor cores beat cuSPARSE here
            dense = g.new_zeros(x.shape[0], d_sae).scatter_add_(1, all_idx, g)
            with _tf32(ctx.matmul in ("tf32", "bf16")):
                grad_x = dense @ W_enc.t() if ctx.needs_input_grad[0] else None
                grad_W = x.t() @ dense if ctx.needs_input_grad[1] else None
            grad_b = dense.sum(0) if ctx.needs_input_grad[2] else None
            return grad_x, grad_W, grad_b, None, None, None, None
        if ctx.needs_input_grad[0]:  # not needed for training (x is data); kept for completeness
            grad_x = F.embedding_bag(all_idx, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_W = scatter_rows(group_by_latent(all_idx, d_sae), g, x).t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = g.new_zeros(d_sae).index_add_(0, all_idx.reshape(-1), g.reshape(-1))
        return grad_x, grad_W, grad_b, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """(values, indices, W_dec) -> sum_j values[:, j] * W_dec[indices[:, j]]  (no bias).

    Forward is `F.embedding_bag` (O(N k D)). Backward: values' gradient is one dot product per
    (token, latent) pair (`sampled_dots`, 2x faster on CPU than embedding_bag's per-sample-weight
    backward), W_dec's is `scatter_rows` (embedding_bag's own weight backward is as slow as a
    dense matmul on CPU).
    """

    @staticmethod
    def forward(ctx, vals: Tensor, idx: Tensor, W_dec: Tensor):
        ctx.save_for_backward(vals, idx, W_dec)
        if idx.shape[1] == 0:
            return W_dec.new_zeros(idx.shape[0], W_dec.shape[1])
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx, gy):
        vals, idx, W_dec = ctx.saved_tensors
        grad_vals = grad_W = None
        if idx.shape[1] == 0:
            return (vals.new_zeros(vals.shape) if ctx.needs_input_grad[0] else None), None, (
                torch.zeros_like(W_dec) if ctx.needs_input_grad[2] else None)
        gy = gy.contiguous()
        groups = group_by_latent(idx, W_dec.shape[0])
        if ctx.needs_input_grad[0]:
            grad_vals = sampled_dots(groups, W_dec, gy).to(vals.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = scatter_rows(groups, vals, gy)
        return grad_vals, None, grad_W


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor | None = None, k_aux: int = 0,
                  matmul: str = "fp32"):
    """Differentiable TopK encode (+ AuxK top-k over `dead` latents): (vals, idx, aux_vals, aux_idx)."""
    return TopKEncode.apply(x, W_enc, b_enc, k, dead, k_aux, resolve_matmul(matmul, x.device))


def sparse_decode(vals: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
    """Differentiable sparse decode without bias: O(N k D) forward and backward."""
    if dense_backward(W_dec) and idx.shape[1] > 0:  # embedding_bag's CUDA backward: sort-based, O(N k D)
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum")
    return SparseDecode.apply(vals, idx, W_dec)


# --------------------------------------------------------------------------- losses


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: ||x - x_hat||^2 / ||x - mean(x)||^2 over the batch.

    Normalising the MSE this way makes the loss scale-free across layers and models, so one lr
    rule serves all (sparsify trains on the same quantity)."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(residual: Tensor, residual_hat: Tensor) -> Tensor:
    """AuxK (Gao et al. 2024): dead latents reconstruct the main reconstruction's error
    e = x - x_hat; loss = ||e - e_hat||^2 / ||e - mean(e)||^2 (e is a fixed target)."""
    e = residual.detach()
    return (e - residual_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)


# --------------------------------------------------------------------------- schedule


def default_lr(d_sae: int) -> float:
    """sparsify's rule: 2e-4 at 2**14 latents, scaled by 1/sqrt(width)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def lr_at(step: int, base: float, total_steps: int, warmup_steps: int, decay_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, constant, then (optionally) linear decay to 0 over the
    last `decay_frac` of the run."""
    scale = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        scale = (step + 1) / warmup_steps
    decay_steps = round(total_steps * decay_frac)
    if decay_steps > 0 and step >= total_steps - decay_steps:
        scale = min(scale, (total_steps - step) / decay_steps)
    return base * scale


# --------------------------------------------------------------------------- one SAE's trainer


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_(tensors: list[Tensor], average: bool) -> None:
    """Sum (or average) a list of tensors over ranks in one flat all-reduce."""
    import torch.distributed as dist

    world = _world()
    if world == 1:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    if average:
        flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


class TopKTrainer:
    """Trains one TopK SAE: Adam, FVU + AuxK loss, unit-norm decoder rows, dead-latent counters.

    Under torch.distributed every rank calls `step` on its own slice of the batch; gradients,
    firing counts and the b_dec initialisation are all-reduced, so every rank applies the same
    update and the weights stay identical without DDP wrappers (which cannot see the custom
    sparse backward's structure anyway).
    """

    def __init__(self, sae: SAE, k: int, lr: float, auxk_alpha: float = 1 / 32, k_aux: int | None = None,
                 dead_after_tokens: int = 10_000_000, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 matmul: str = "auto"):
        self.sae = sae
        self.matmul = resolve_matmul(matmul, sae.W_enc.device)
        self.k = int(k)
        self.lr = float(lr)
        self.auxk_alpha = float(auxk_alpha)
        self.k_aux = int(k_aux if k_aux is not None else sae.cfg.d_model // 2)
        self.dead_after_tokens = int(dead_after_tokens)
        params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
        self.opt = _adam(params, lr, betas, eps)
        # Tokens since each latent last fired (value > 0 in the top-k), counted over all ranks.
        self.since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_from_batch(self, x: Tensor) -> None:
        """b_dec = mean of the first batch (over all ranks); b_enc = -b_dec @ W_enc, so the
        pre-activations start centred (what encoding `x - b_dec` gives sparsify-style SAEs,
        kept within Qwen-Scope's `x @ W_enc + b_enc`); decoder rows unit norm; every rank
        starts from the same weights."""
        mean = x.float().mean(0)
        _all_reduce_([mean], average=True)
        self.sae.b_dec.copy_(mean.to(self.sae.b_dec.dtype))
        self.sae.b_enc.copy_(-(self.sae.b_dec @ self.sae.W_enc))
        normalize_decoder_(self.sae.W_dec)
        import torch.distributed as dist

        if _world() > 1:
            for p in (self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec):
                dist.broadcast(p.data, src=0)

    # ------------------------------------------------------------------ step
    def dead_latents(self) -> Tensor:
        return torch.nonzero(self.since_fired >= self.dead_after_tokens).reshape(-1)

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss (FVU + alpha * AuxK) and detached stats for batch `x` (N, d_model)."""
        sae = self.sae
        x = x.to(sae.W_enc.dtype)
        dead = self.dead_latents() if self.auxk_alpha > 0 else None
        vals, idx, aux_vals, aux_idx = sparse_encode(x, sae.W_enc, sae.b_enc, self.k, dead, self.k_aux, self.matmul)
        x_hat = sparse_decode(vals, idx, sae.W_dec) + sae.b_dec
        main = fvu(x, x_hat)
        if aux_idx.shape[1] > 0:
            aux = auxk_loss(x - x_hat, sparse_decode(aux_vals, aux_idx, sae.W_dec))
        else:
            aux = main.new_zeros(())
        total = main + self.auxk_alpha * aux
        fired = (vals > 0)
        stats = {"loss": total.detach(), "fvu": main.detach(), "auxk": aux.detach(),
                 "l0": fired.sum(1, dtype=torch.float32).mean(), "n_dead": x.new_tensor(float(0 if dead is None else dead.numel())),
                 "_idx": idx, "_fired": fired}
        return total, stats

    def step(self, x: Tensor, lr: float | None = None) -> dict[str, Tensor]:
        """One optimisation step on batch `x`; returns detached stats (tensors, no host sync)."""
        sae = self.sae
        total, stats = self.loss(x)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
        _all_reduce_(grads, average=True)
        remove_parallel_grad_(sae.W_dec, sae.W_dec.grad)
        for group in self.opt.param_groups:
            group["lr"] = self.lr if lr is None else lr
        self.opt.step()
        normalize_decoder_(sae.W_dec)
        self._count_firing(stats.pop("_idx"), stats.pop("_fired"), x.shape[0])
        return stats

    @torch.no_grad()
    def _count_firing(self, idx: Tensor, fired: Tensor, n_tokens: int) -> None:
        counts = torch.zeros(self.since_fired.shape[0], device=idx.device).index_add_(
            0, idx.reshape(-1), fired.reshape(-1).float())
        _all_reduce_([counts], average=False)
        self.since_fired += n_tokens * _world()
        self.since_fired[counts > 0] = 0

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.dead_after_tokens).float().mean())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"sae": {k: v.detach().cpu().clone() for k, v in self.sae.state_dict().items()},
                "opt": _to_cpu(self.opt.state_dict()), "since_fired": self.since_fired.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["opt"])
        self.since_fired.copy_(state["since_fired"].to(self.since_fired.device))


# --------------------------------------------------------------------------- decoder constraint


@torch.no_grad()
def normalize_decoder_(W_dec: Tensor) -> None:
    """Rescale every decoder row to unit norm (in place)."""
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def remove_parallel_grad_(W_dec: Tensor, grad: Tensor | None) -> None:
    """Drop each row's gradient component along the row itself: with unit rows, that component
    only changes the norm, which the renormalisation undoes anyway (and Adam would otherwise
    waste its step size on it)."""
    if grad is None:
        return
    grad.sub_((grad * W_dec).sum(-1, keepdim=True) * W_dec)


def _adam(params, lr, betas, eps):
    """Fused Adam where the build supports it (4-10x faster than the foreach one on CPU)."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
