"""Forward hooks on decoder blocks: read the residual stream, stop early, or edit it.

A block may return a tensor or a tuple whose first item is the hidden state (this differs
across transformers versions); every hook here handles both.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import torch
from torch import nn


class StopForward(Exception):
    """Raised by the hook of the last requested layer: nothing after it needs computing."""


def hidden_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


Positions = Union[torch.Tensor, str, None]


@contextmanager
def record(layers: nn.ModuleList, wanted: Sequence[int], stop: bool = True, first_call_only: bool = False,
           positions: Positions = None, keep_graph: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Collect block outputs for `wanted` layers into the yielded dict; the one recorder of qscope.

    stop: the forward is cut after the deepest wanted block (the caller catches StopForward).
    first_call_only: keep only a block's first output (the prompt prefill of `generate`).
    positions: None keeps every position; "last" the last one of each row; a (batch,) tensor one
        position per row. Picked rows have shape (batch, d).
    keep_graph: keep the autograd graph (a loss on the recorded residual trains the model), and
        never let an output without graph replace one with (trainers run extra no-grad forwards
        for metrics after the training forward); otherwise the output is detached.
    """
    out: dict[int, torch.Tensor] = {}
    last = max(wanted)

    def pick(h: torch.Tensor) -> torch.Tensor:
        if positions is None:
            return h
        rows = torch.arange(h.shape[0], device=h.device)
        pos = torch.full((h.shape[0],), h.shape[1] - 1) if isinstance(positions, str) else positions
        return h[rows, pos.to(h.device)]

    def make(index: int):
        def hook(_module, _inputs, output):
            if first_call_only and index in out:
                return
            h = pick(hidden_of(output))
            if not keep_graph:
                out[index] = h.detach()
            elif h.requires_grad or index not in out or not out[index].requires_grad:
                out[index] = h
            if stop and index == last:
                raise StopForward

        return hook

    if isinstance(positions, str) and positions != "last":
        raise ValueError(f"positions must be None, 'last' or a tensor, not {positions!r}")
    handles = [layers[i].register_forward_hook(make(i)) for i in sorted(set(wanted))]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


EditFn = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def edit(layers: nn.ModuleList, edits: dict[int, EditFn]) -> Iterator[None]:
    """Replace block n's output hidden state h by `edits[n](h)` on every forward (prompt and
    each generated token alike, KV cache or not) while the context is open."""

    def make(fn: EditFn):
        def hook(_module, _inputs, output):
            return with_hidden(output, fn(hidden_of(output)))

        return hook

    handles = [layers[i].register_forward_hook(make(fn)) for i, fn in edits.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
