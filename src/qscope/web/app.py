"""The FastAPI app: a thin JSON/SSE shell over `qscope.features` and `qscope.steer`.

Why one lock: a model (and its hooks, which steering installs on it) is shared state; two
requests interleaving forwards would mix steered and plain outputs. Every model call holds
`Gate.lock`, so concurrent requests queue and each gets exactly what it would get alone.
Endpoints are plain `def` (FastAPI runs them in its thread pool) so waiting on the lock never
blocks the event loop. Generations (the long calls) run in a worker thread watched by the event
loop: a client that disconnects sets a flag that generation polls after every token, so an
abandoned request gives the model back within one token. No endpoint takes a filesystem path:
stores are chosen at start-up. Requests another site could make are refused first (`guard`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import AsyncIterator

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import StoppingCriteria, StoppingCriteriaList

from ..errors import QScopeError
from . import schemas as S
from .docs import add_offline_docs
from .guard import LOCAL_HOSTS, guard
from .labelling import Labeller
from .messages import validation_message

STATIC = Path(__file__).parent / "static"
NOT_FOUND_PAGE = ("<!doctype html><meta charset=utf-8><title>Not found · qscope</title><link rel=icon "
                  "href=/static/favicon.svg><body style='font-family:system-ui;margin:2em'><h2>Page not found</h2>"
                  "<p>qscope has no page at this address. <a href='/'>Go to the feature browser</a>.</p>")


class Cancelled(Exception):
    """The client went away before its turn at the model came."""


class Gate:
    """Serialises model access (a plain lock: requests are short and bounded by the limits)."""

    def __init__(self):
        self.lock = threading.Lock()

    def run(self, fn, *args, cancel: threading.Event | None = None, **kwargs):
        """`fn(*args, **kwargs)` under the lock; with `cancel`, give up waiting once it is set."""
        while not self.lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise Cancelled
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            with torch.inference_mode():
                return fn(*args, **kwargs)
        finally:
            self.lock.release()


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


class Stores:
    """Feature stores by layer, one SQLite connection per thread (sqlite3 objects may not cross threads)."""

    def __init__(self, stores: dict):
        self.paths = {int(layer): Path(s.path if hasattr(s, "path") else s) for layer, s in stores.items() if s}
        self.local = threading.local()

    def get(self, layer: int):
        from ..features.store import FeatureStore

        if layer not in self.paths:
            return None
        cache = self.local.__dict__.setdefault("stores", {})
        if layer not in cache:
            cache[layer] = FeatureStore(self.paths[layer])
        return cache[layer]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def cut_note(lm, text: str) -> dict:
    """Whether `text` is longer than the tokens the server reads (it is cut; the page says so)."""
    n = len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    return {"n_tokens_in": n, "truncated": n > S.MAX_TOKENS, "max_tokens": S.MAX_TOKENS}


def create_app(lm, saes: dict, stores: dict | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """App serving `lm` with one SAE per layer (`saes`) and optional feature stores per layer
    (`stores`: FeatureStore, a store path chosen by the operator, or None). `allowed_hosts`: the
    Host names requests may carry (default: loopback names; '*' accepts any)."""
    if not saes:
        raise QScopeError("serve at least one SAE")
    saes = {int(layer): sae for layer, sae in saes.items()}
    for layer, sae in saes.items():
        lm.check_sae(sae, layer)
    stores_ = Stores(stores or {})
    for layer, path in stores_.paths.items():
        if layer not in saes:
            raise QScopeError(f"{path}: store for layer {layer}, which is not served")
        store = stores_.get(layer).check(layer)
        if store.d_sae != saes[layer].cfg.d_sae:
            raise QScopeError(f"{path}: store has {store.d_sae} features, the layer-{layer} SAE {saes[layer].cfg.d_sae}")
    gate = Gate()
    app = FastAPI(title="qscope", version="1", description="SAE features as development tools: browse, inspect, "
                  "steer, compare. Model calls are serialised; limits are in /api/info.", docs_url=None, redoc_url=None)
    labeller = Labeller(lm, saes, stores_, gate)
    app.state.gate, app.state.lm, app.state.saes, app.state.stores = gate, lm, saes, stores_
    for layer in stores_.paths:  # older stores compute their automatic labels once, here, not in a request
        stores_.get(layer).auto_labels()

    guard(app, allowed_hosts or LOCAL_HOSTS)
    add_offline_docs(app)

    @app.exception_handler(QScopeError)
    async def _user_error(request: Request, exc: QScopeError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and not request.url.path.startswith("/api/") and \
                "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(NOT_FOUND_PAGE, status_code=404)
        return _error(exc.status_code, str(exc.detail))

    def sae_for(layer: int, status: int = 400):
        if layer not in saes:
            raise HTTPException(status, f"layer {layer} is not served; served layers: {', '.join(map(str, sorted(saes)))}")
        return saes[layer]

    def check_feature(layer: int, feature: int, status: int = 400) -> int:
        d_sae = sae_for(layer, status).cfg.d_sae
        if not 0 <= feature < d_sae:
            raise HTTPException(status, f"feature {feature} out of range: layer {layer} has features 0..{d_sae - 1}")
        return feature

    # ------------------------------------------------------------------ pages + info
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/api/info", summary="Model, served layers, stores and request limits")
    def info():
        layers = []
        for layer, sae in sorted(saes.items()):
            store = stores_.get(layer)
            summary = None
            if store is not None:
                meta = store.summary()
                summary = {k: meta.get(k) for k in ("texts_done", "tokens_done", "state", "features_fired", "model", "sae")}
            layers.append({"layer": layer, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "store": summary})
        return {"model": lm.name, "n_layers": lm.n_layers, "layers": layers, "limits": S.LIMITS}

    # ------------------------------------------------------------------ feature browser
    @app.get("/api/feature/{layer}/{feature}", summary="A feature's dashboard (store) or its token effects (no store)")
    def feature_page(layer: int, feature: int):
        from ..features.logits import token_effects

        check_feature(layer, feature, 404)
        store = stores_.get(layer)
        if store is not None:
            dash = store.dashboard(feature).to_dict()
            if not dash["promoted"]:  # a store still building has no token effects yet
                effect = gate.run(token_effects, lm, saes[layer], [feature], n=10)[0]
                dash.update(promoted=effect.promoted, suppressed=effect.suppressed)
            return {"store": True, "d_sae": saes[layer].cfg.d_sae, **dash}
        effect = gate.run(token_effects, lm, saes[layer], [feature], n=10)[0]
        label = labeller.info(layer, [feature])[feature]
        return {"store": False, "feature": feature, "layer": layer, "model": lm.name, "d_sae": saes[layer].cfg.d_sae,
                "promoted": effect.promoted, "suppressed": effect.suppressed, "explanations": [], "top": [],
                "intervals": [], "histogram": [], "label": label["label"], "label_source": label["label_source"],
                "auto_label": label["label"]}

    @app.get("/api/feature/{layer}/{feature}/summary", summary="A feature's label and activation range (cheap)")
    def feature_summary(layer: int, feature: int):
        check_feature(layer, feature, 404)
        store = stores_.get(layer)
        out = {"layer": layer, "feature": feature, "store": store is not None, **labeller.info(layer, [feature])[feature],
               "fires": None, "max_act": None, "mean_act": None}
        if store is not None:
            t = store.feature_table()
            out.update(fires=int(t["fires"][feature]), max_act=round(float(t["max_act"][feature]), 4),
                       mean_act=round(float(t["mean_act"][feature]), 4))
        return out

    @app.post("/api/feature/activations", summary="One feature's activation on each token of a text (live)")
    def feature_activations(req: S.ActivationsRequest):
        sae = sae_for(req.layer)
        check_feature(req.layer, req.feature)

        def run():
            cap = lm.capture([req.text], [req.layer], max_length=S.MAX_TOKENS)
            acts = sae.encode(cap.valid(req.layer))[:, req.feature]
            return cap.tokens[0], [round(float(a), 4) for a in acts]

        tokens, acts = gate.run(run)
        return {"layer": req.layer, "feature": req.feature, "tokens": tokens, "acts": acts, **cut_note(lm, req.text)}

    def browse_store(layer: int):
        sae_for(layer, 404)
        store = stores_.get(layer)
        if store is None:
            raise HTTPException(404, f"no feature store for layer {layer}; build one with `qscope features build`")
        return store

    Order = Query("frequent", description="frequent, rare, strongest (max activation) or random")
    MaxDensity = Query(None, ge=0, le=1, description="hide features firing on more than this share of tokens")

    @app.get("/api/features/{layer}", summary="Features of a layer's store by frequency, rarity, strength or at random")
    def list_features(layer: int, order: S.BrowseOrder = Order, n: int = Query(20, ge=1, le=200),
                      offset: int = Query(0, ge=0), max_density: float | None = MaxDensity,
                      q: str | None = Query(None, max_length=200), seed: int = Query(0, ge=0)):
        return browse_store(layer).browse(order, offset, n, max_density, q, seed)[1]

    @app.get("/api/browse/{layer}", summary="One page of a layer's features, with how many match")
    def browse(layer: int, order: S.BrowseOrder = Order, n: int = Query(25, ge=1, le=200),
               offset: int = Query(0, ge=0), max_density: float | None = MaxDensity,
               q: str | None = Query(None, max_length=200), seed: int = Query(0, ge=0)):
        store = browse_store(layer)
        total, rows = store.browse(order, offset, n, max_density, q, seed)
        return {"layer": layer, "order": order, "offset": offset, "total": total, "d_sae": store.d_sae, "rows": rows}

    @app.get("/api/search/explanations", summary="Features whose explanation or automatic label contains every word of q")
    def search_explanations(q: str = Query(min_length=1, max_length=200), layer: int | None = None):
        layers = [layer] if layer is not None else sorted(saes)
        if layer is not None:
            sae_for(layer)
        out = []
        for l in layers:
            store = stores_.get(l)
            if store is not None:
                found = [{"layer": l, **e.to_dict()} for e in store.search_labels(q)]
                out += labeller.rows(l, found) if found else []
        return out

    @app.post("/api/search/text", summary="Features strongest on a text (max activation over its tokens)")
    def search_text(req: S.TextSearchRequest):
        from ..features.active import encode_text

        sae = sae_for(req.layer)
        enc = gate.run(encode_text, lm, sae, req.text, top=sae.cfg.k or S.MAX_TOP, layer=req.layer,
                       max_length=S.MAX_TOKENS)
        rows = [{"feature": f, "max_act": a} for f, a in enc.strongest(req.top)]
        return {"layer": req.layer, "features": labeller.rows(req.layer, rows), **cut_note(lm, req.text)}

    @app.post("/api/search/contrast", summary="Features firing more on the positive texts than on the negative")
    def search_contrast(req: S.ContrastRequest):
        from ..features.search import contrast

        sae = sae_for(req.layer)
        out = gate.run(contrast, lm, sae, req.positive, req.negative, req.layer, req.top, req.by,
                       max_length=S.MAX_TOKENS).to_dict()
        return {**out, "features": labeller.rows(req.layer, out["features"])}

    # ------------------------------------------------------------------ inspector + compare
    @app.post("/api/inspect", summary="Each token's strongest features")
    def inspect(req: S.InspectRequest):
        from ..features.active import encode_text

        sae = sae_for(req.layer)
        full = gate.run(encode_text, lm, sae, req.text, top=sae.cfg.k or S.MAX_TOP, layer=req.layer,
                        max_length=S.MAX_TOKENS)
        strongest = [{"feature": f, "max_act": a} for f, a in full.strongest(20)]
        result = full.to_dict()
        for tok in result["tokens"]:
            tok["features"] = tok["features"][:req.top]
        shown = {f for tok in result["tokens"] for f, _ in tok["features"]} | {r["feature"] for r in strongest}
        labels = labeller.info(req.layer, sorted(shown))
        return {**result, "strongest": labeller.rows(req.layer, strongest), "labels": {str(f): v for f, v in labels.items()},
                **cut_note(lm, req.text)}

    @app.post("/api/compare", summary="Features ranked by the difference of their firing rates on two texts, per layer")
    def compare(req: S.CompareRequest):
        from ..features.search import collect_stats

        layers = req.layers or sorted(saes)
        for layer in layers:
            sae_for(layer)

        def rows(a, b, order):
            diff = a.rate - b.rate
            return [{"feature": int(f), "rate_a": round(float(a.rate[f]), 4), "rate_b": round(float(b.rate[f]), 4),
                     "diff": round(float(diff[f]), 4), "mean_a": round(float(a.mean[f]), 4),
                     "mean_b": round(float(b.mean[f]), 4)} for f in order if diff[f] != 0]

        def run():
            out = []
            for layer in layers:
                a = collect_stats(lm, saes[layer], [req.text_a], layer, max_length=S.MAX_TOKENS)
                b = collect_stats(lm, saes[layer], [req.text_b], layer, max_length=S.MAX_TOKENS)
                diff = a.rate - b.rate
                out.append({"layer": layer, "tokens_a": a.tokens, "tokens_b": b.tokens,
                            "more_in_a": rows(a, b, diff.argsort(descending=True)[:req.top]),
                            "more_in_b": rows(a, b, diff.argsort()[:req.top])})
            return out

        out = gate.run(run)
        for L in out:
            L["more_in_a"], L["more_in_b"] = labeller.rows(L["layer"], L["more_in_a"]), labeller.rows(L["layer"], L["more_in_b"])
        cut = [cut_note(lm, t) for t in (req.text_a, req.text_b)]
        return {"layers": out, "truncated": any(c["truncated"] for c in cut), "max_tokens": S.MAX_TOKENS}

    # ------------------------------------------------------------------ steering
    def steering_for(req: S.SteerRequest, first_strength: float | None = None):
        from ..steer import FeatureEdit, Steering

        sae = sae_for(req.layer)
        for e in req.edits:
            check_feature(req.layer, e.feature)
        edits = [FeatureEdit(e.feature, e.strength, e.mode, e.relative) for e in req.edits]
        if first_strength is not None:
            edits[0].strength = first_strength
        return Steering(sae, edits, req.positions, req.layer)

    def sides_for(req: S.SteerRequest) -> list[tuple[str, object]]:
        """(side name, steering) per generation: plain, then steered (or one per sweep strength)."""
        if req.sweep:
            return [("plain", None), *[(f"sweep-{i}", steering_for(req, s)) for i, s in enumerate(req.sweep)]]
        return [("plain", None), ("steered", steering_for(req))]

    @app.post("/api/steer", summary="Plain and steered greedy generations (not streamed)")
    async def steer(req: S.SteerRequest, request: Request):
        sides = sides_for(req)
        steering = sides[1][1]
        cancel = threading.Event()
        kw = dict(max_new_tokens=req.max_new_tokens, chat=req.chat,
                  stopping_criteria=StoppingCriteriaList([StopWhenSet(cancel)]))

        def run():
            out = []
            for _, steer in sides:
                out.append(lm.generate(req.prompt, steer=steer, **kw))
                if cancel.is_set():
                    raise Cancelled
            return out

        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, lambda: gate.run(run, cancel=cancel))
        watcher = asyncio.ensure_future(watch_disconnect(request, cancel))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if cancel.is_set():  # the client is gone; the worker stops at its next token
            work.add_done_callback(lambda f: f.exception())
            return _error(499, "client closed the request")
        texts = work.result()
        out = {"prompt": req.prompt, "steering": steering.to_dict(), "plain": texts[0], "steered": texts[1]}
        if req.sweep:
            out["sweep"] = [{"strength": s, "text": t} for s, t in zip(req.sweep, texts[1:])]
        return out

    @app.post("/api/steer/stream", summary="Plain then steered generation as server-sent events")
    async def steer_stream(req: S.SteerRequest, request: Request):
        """Events (`data: {json}`): {type: token, side, text} as tokens arrive, {type: done, side, text}
        with each side's full text, then {type: end}; {type: error, detail} if generation fails.
        Sides: plain, steered; with `sweep`, plain then sweep-0, sweep-1 ... (one per strength)."""
        sides = sides_for(req)  # bad input -> 4xx before the stream starts
        events = _generate_events(lm, gate, req, sides, request)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


async def _generate_events(lm, gate: Gate, req, sides, request: Request) -> AsyncIterator[str]:
    """Run both generations in a worker thread (holding the gate) and relay its tokens. A client
    that goes away (seen by `watch_disconnect`, or by the server cancelling this generator) sets
    `cancel`, which stops the generation at the next token and releases the model."""
    from transformers import TextStreamer

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
