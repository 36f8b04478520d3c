"""`/api/compare`: two texts, features ranked by the difference of their firing rates, per layer."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .. import schemas as S
from ..served import Served, served

router = APIRouter()


@router.post("/api/compare", summary="Features ranked by the difference of their firing rates on two texts, per layer")
def compare(req: S.CompareRequest, s: Served = Depends(served)):
    from ...compare.texts import firing_rate_differences

    layers = req.layers or sorted(s.saes)
    for layer in layers:
        s.sae_for(layer)
    out = s.gate.run(firing_rate_differences, s.lm, s.saes, req.text_a, req.text_b, layers, req.top,
                     max_length=S.MAX_TOKENS)
    for L in out:
        L["more_in_a"] = s.labeller.rows(L["layer"], L["more_in_a"])
        L["more_in_b"] = s.labeller.rows(L["layer"], L["more_in_b"])
    cut = [s.cut_note(t) for t in (req.text_a, req.text_b)]
    return {"layers": out, "truncated": any(c["truncated"] for c in cut), "max_tokens": S.MAX_TOKENS}
