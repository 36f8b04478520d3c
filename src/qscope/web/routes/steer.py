"""Steering: plain and steered generations side by side, whole or streamed.

Methods: `sae` adds feature directions (`edits`); `diffmean` and `repe` add one direction found
from positive and negative example texts (`steer.directions`), the baselines a feature edit must
beat. Finding a direction reads the texts through the model, so it runs under the gate in the
thread pool, before any generation starts: bad input still gets a 4xx, never half a stream.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import schemas as S
from ..generation import Sides, generate_all, generate_events
from ..messages import error_response
from ..served import Served, served

router = APIRouter()


def _refuse_fields(req: S.SteerRequest, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(req, n) is not None]
    if given:
        raise HTTPException(422, f"{given[0]} does not apply to method {req.method}")


def feature_steering(s: Served, req: S.SteerRequest, first_strength: float | None = None):
    from ...steer import FeatureEdit, Steering

    sae = s.sae_for(req.layer)
    for e in req.edits:
        s.check_feature(req.layer, e.feature)
    edits = [FeatureEdit(e.feature, e.strength, e.mode, e.relative) for e in req.edits]
    if first_strength is not None:
        edits[0].strength = first_strength
    return Steering(sae, edits, req.positions, req.layer)


def direction_steering(s: Served, req: S.SteerRequest):
    """The request's diffmean / repe direction at its strength (0 when only a sweep is given)."""
    from ...steer.directions import DirectionSteering, diffmean_direction, repe_direction

    s.sae_for(req.layer)
    find = {"diffmean": diffmean_direction, "repe": repe_direction}[req.method]
    positive = req.positive or S.DIRECTION_TEXTS["positive"]
    negative = req.negative or S.DIRECTION_TEXTS["negative"]
    direction = s.gate.run(find, s.lm, req.layer, positive, negative, max_length=S.MAX_TOKENS)
    return DirectionSteering(direction, req.layer, req.strength or 0.0, req.positions, req.method)


def sides_for(s: Served, req: S.SteerRequest) -> Sides:
    """(side name, steering) per generation: plain, then steered (or one per sweep strength)."""
    if req.method == "sae":
        _refuse_fields(req, ("strength", "positive", "negative"))
        if req.edits is None:
            raise HTTPException(422, "edits is required with method sae (or choose method diffmean or repe)")
        if req.sweep:
            return [("plain", None), *[(f"sweep-{i}", feature_steering(s, req, x)) for i, x in enumerate(req.sweep)]]
        return [("plain", None), ("steered", feature_steering(s, req))]
    _refuse_fields(req, ("edits",))
    if req.strength is None and not req.sweep:
        raise HTTPException(422, f"strength is required with method {req.method} (or give a sweep)")
    base = direction_steering(s, req)
    if req.sweep:
        return [("plain", None), *[(f"sweep-{i}", base.at(x)) for i, x in enumerate(req.sweep)]]
    return [("plain", None), ("steered", base)]


@router.post("/api/steer", summary="Plain and steered greedy generations (not streamed)")
async def steer(req: S.SteerRequest, request: Request, s: Served = Depends(served)):
    sides = await run_in_threadpool(sides_for, s, req)
    texts = await generate_all(s, req, sides, request)
    if texts is None:  # the client is gone; the worker stops at its next token
        return error_response(499, "client closed the request")
    out = {"prompt": req.prompt, "steering": sides[1][1].to_dict(), "plain": texts[0], "steered": texts[1]}
    if req.sweep:
        out["sweep"] = [{"strength": x, "text": t} for x, t in zip(req.sweep, texts[1:])]
    return out


@router.post("/api/steer/stream", summary="Plain then steered generation as server-sent events")
async def steer_stream(req: S.SteerRequest, request: Request, s: Served = Depends(served)):
    """Events (`data: {json}`): {type: token, side, text} as tokens arrive, {type: done, side, text}
    with each side's full text, then {type: end}; {type: error, detail} if generation fails.
    Sides: plain, steered; with `sweep`, plain then sweep-0, sweep-1 ... (one per strength)."""
    sides = await run_in_threadpool(sides_for, s, req)  # bad input -> 4xx before the stream starts
    events = generate_events(s, req, sides, request)
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
