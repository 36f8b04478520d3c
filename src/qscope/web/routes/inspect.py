"""Texts you give: each token's features, the features strongest on a text, and the features
that separate two sets of texts."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .. import schemas as S
from ..served import Served, served

router = APIRouter()


@router.post("/api/search/text", summary="Features strongest on a text (max activation over its tokens)")
def search_text(req: S.TextSearchRequest, s: Served = Depends(served)):
    from ...features.active import encode_text

    sae = s.sae_for(req.layer)
    enc = s.gate.run(encode_text, s.lm, sae, req.text, top=sae.cfg.k or S.MAX_TOP, layer=req.layer,
                     max_length=S.MAX_TOKENS)
    rows = [{"feature": f, "max_act": a} for f, a in enc.strongest(req.top)]
    return {"layer": req.layer, "features": s.labeller.rows(req.layer, rows), **s.cut_note(req.text)}


@router.post("/api/search/contrast", summary="Features firing more on the positive texts than on the negative")
def search_contrast(req: S.ContrastRequest, s: Served = Depends(served)):
    from ...features.search import contrast

    sae = s.sae_for(req.layer)
    out = s.gate.run(contrast, s.lm, sae, req.positive, req.negative, req.layer, req.top, req.by,
                     max_length=S.MAX_TOKENS).to_dict()
    return {**out, "features": s.labeller.rows(req.layer, out["features"])}


@router.post("/api/inspect", summary="Each token's strongest features")
def inspect(req: S.InspectRequest, s: Served = Depends(served)):
    from ...features.active import encode_text

    sae = s.sae_for(req.layer)
    full = s.gate.run(encode_text, s.lm, sae, req.text, top=sae.cfg.k or S.MAX_TOP, layer=req.layer,
                      max_length=S.MAX_TOKENS)
    strongest = [{"feature": f, "max_act": a} for f, a in full.strongest(20)]
    result = full.to_dict()
    for tok in result["tokens"]:
        tok["features"] = tok["features"][:req.top]
    shown = {f for tok in result["tokens"] for f, _ in tok["features"]} | {r["feature"] for r in strongest}
    labels = s.labeller.info(req.layer, sorted(shown))
    return {**result, "strongest": s.labeller.rows(req.layer, strongest),
            "labels": {str(f): v for f, v in labels.items()}, **s.cut_note(req.text)}
