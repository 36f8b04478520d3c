"""Generations that stop when nobody waits for them any more.

Generations (the long calls) run in a worker thread watched by the event loop: a client that
disconnects sets a flag that generation polls after every token, so an abandoned request gives
the model back within one token.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import AsyncIterator

import torch
from fastapi import Request
from transformers import StoppingCriteria, StoppingCriteriaList

from ..errors import QScopeError
from .served import Cancelled, Served

Sides = list[tuple[str, object]]  # (side name, steering or None) per generation, in order


class StopWhenSet(StoppingCriteria):
    """Ends `generate` at the next token once `event` is set (checked after every token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client disconnects (the body has been read: the next message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


async def generate_all(s: Served, req, sides: Sides, request: Request) -> list[str] | None:
    """Every side's text, generated in turn under the gate; None when the client left first
    (the worker then stops at its next token)."""
    cancel = threading.Event()
    kw = dict(max_new_tokens=req.max_new_tokens, chat=req.chat,
              stopping_criteria=StoppingCriteriaList([StopWhenSet(cancel)]))

    def run():
        out = []
        for _, steer in sides:
            out.append(s.lm.generate(req.prompt, steer=steer, **kw))
            if cancel.is_set():
                raise Cancelled
        return out

    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, lambda: s.gate.run(run, cancel=cancel))
    watcher = asyncio.ensure_future(watch_disconnect(request, cancel))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if cancel.is_set():
        work.add_done_callback(lambda f: f.exception())
        return None
    return work.result()


async def generate_events(s: Served, req, sides: Sides, request: Request) -> AsyncIterator[str]:
    """Run the generations in a worker thread (holding the gate) and relay its tokens as
    server-sent events. A client that goes away (seen by `watch_disconnect`, or by the server
    cancelling this generator) sets `cancel`, which stops the generation at the next token and
    releases the model."""
    from transformers import TextStreamer

    lm, gate = s.lm, s.gate
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(event: dict) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (server shutting down)
            cancel.set()

    class Relay(TextStreamer):
        def __init__(self, side):
            super().__init__(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.side = side

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                put({"type": "token", "side": self.side, "text": text})

    def work():
        try:
            for side, steer in sides:
                text = gate.run(lm.generate, req.prompt, max_new_tokens=req.max_new_tokens, chat=req.chat, steer=steer,
                                streamer=Relay(side), stopping_criteria=StoppingCriteriaList([StopWhenSet(cancel)]),
                                cancel=cancel)
                put({"type": "done", "side": side, "text": text})
                if cancel.is_set():
                    break
            put({"type": "end"})
        except Cancelled:
            pass
        except Exception as exc:  # reported to the client; the server keeps serving
            put({"type": "error", "detail": str(exc) if isinstance(exc, QScopeError) else f"generation failed: {exc!r}"})

    threading.Thread(target=work, daemon=True, name="qscope-generate").start()
    watcher = asyncio.ensure_future(watch_disconnect(request, cancel))
    try:
        while True:
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # disconnected
                getter.cancel()
                return
            event = getter.result()
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            if event["type"] in ("end", "error"):
                return
    finally:
        cancel.set()
        watcher.cancel()
