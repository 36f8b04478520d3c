"""The page itself, its icon, and `/api/info` (what is served, and the request limits)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from .. import schemas as S
from ..served import Served, served

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index():
    return FileResponse(STATIC / "index.html")


@router.get("/favicon.ico", include_in_schema=False)
def favicon():
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@router.get("/api/info", summary="Model, served layers, stores and request limits")
def info(s: Served = Depends(served)):
    layers = []
    for layer, sae in sorted(s.saes.items()):
        store = s.stores.get(layer)
        summary = None
        if store is not None:
            meta = store.summary()
            summary = {k: meta.get(k) for k in ("texts_done", "tokens_done", "state", "features_fired", "model", "sae")}
        layers.append({"layer": layer, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "store": summary})
    return {"model": s.lm.name, "n_layers": s.lm.n_layers, "layers": layers, "limits": S.LIMITS,
            "judge": s.judge.name if s.judge is not None else None, "direction_texts": S.DIRECTION_TEXTS}
