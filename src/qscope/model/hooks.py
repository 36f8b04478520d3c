"""Forward hooks on decoder blocks: read the residual stream, stop early, or edit it.

A block may return a tensor or a tuple whose first item is the hidden state (this differs
across transformers versions); every hook here handles both.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


class StopForward(Exception):
    """Raised by the hook of the last requested layer: nothing after it needs computing."""


def hidden_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def record(layers: nn.ModuleList, wanted: list[int], stop: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Collect block outputs for `wanted` layers into the yielded dict; with `stop`, the forward
    is cut after the deepest one (the caller catches StopForward)."""
    out: dict[int, torch.Tensor] = {}
    last = max(wanted)

    def make(index: int):
        def hook(_module, _inputs, output):
            out[index] = hidden_of(output)
            if stop and index == last:
                raise StopForward

        return hook

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
