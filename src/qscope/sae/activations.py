"""Activation functions of an SAE, applied to pre-activations `pre = x @ W_enc + b_enc`."""

from __future__ import annotations

import torch


def topk_sparse(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen-Scope TopK: keep the k largest pre-activations, ReLU the kept values.

    Returns (values, indices), each (..., k). A kept value that is negative becomes 0.
    """
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """JumpReLU: pass a pre-activation through only where it exceeds its feature's threshold."""
    return pre * (pre > threshold)


def relu(pre: torch.Tensor) -> torch.Tensor:
    return pre.relu()


def scatter_dense(values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Turn (values, indices) of shape (..., k) into dense (..., d_sae) codes."""
    dense = values.new_zeros(*values.shape[:-1], d_sae)
    return dense.scatter_(-1, indices, values)
