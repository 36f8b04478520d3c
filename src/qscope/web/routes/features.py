"""One feature (dashboard, summary, live activations) and lists of them (browse, label search)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from .. import schemas as S
from ..served import Served, served

router = APIRouter()

Order = Query("frequent", description="frequent, rare, strongest (max activation) or random")
MaxDensity = Query(None, ge=0, le=1, description="hide features firing on more than this share of tokens")


@router.get("/api/feature/{layer}/{feature}", summary="A feature's dashboard (store) or its token effects (no store)")
def feature_page(layer: int, feature: int, s: Served = Depends(served)):
    from ...features.logits import token_effects

    s.check_feature(layer, feature, 404)
    store = s.stores.get(layer)
    sae = s.saes[layer]
    if store is not None:
        dash = store.dashboard(feature).to_dict()
        if not dash["promoted"]:  # a store still building has no token effects yet
            effect = s.gate.run(token_effects, s.lm, sae, [feature], n=10)[0]
            dash.update(promoted=effect.promoted, suppressed=effect.suppressed)
        return {"store": True, "d_sae": sae.cfg.d_sae, **dash}
    effect = s.gate.run(token_effects, s.lm, sae, [feature], n=10)[0]
    label = s.labeller.info(layer, [feature])[feature]
    return {"store": False, "feature": feature, "layer": layer, "model": s.lm.name, "d_sae": sae.cfg.d_sae,
            "promoted": effect.promoted, "suppressed": effect.suppressed, "explanations": [], "top": [],
            "intervals": [], "histogram": [], "label": label["label"], "label_source": label["label_source"],
            "auto_label": label["label"]}


@router.get("/api/feature/{layer}/{feature}/summary", summary="A feature's label and activation range (cheap)")
def feature_summary(layer: int, feature: int, s: Served = Depends(served)):
    s.check_feature(layer, feature, 404)
    store = s.stores.get(layer)
    out = {"layer": layer, "feature": feature, "store": store is not None, **s.labeller.info(layer, [feature])[feature],
           "fires": None, "max_act": None, "mean_act": None}
    if store is not None:
        t = store.feature_table()
        out.update(fires=int(t["fires"][feature]), max_act=round(float(t["max_act"][feature]), 4),
                   mean_act=round(float(t["mean_act"][feature]), 4))
    return out


@router.post("/api/feature/activations", summary="One feature's activation on each token of a text (live)")
def feature_activations(req: S.ActivationsRequest, s: Served = Depends(served)):
    sae = s.sae_for(req.layer)
    s.check_feature(req.layer, req.feature)

    def run():
        cap = s.lm.capture([req.text], [req.layer], max_length=S.MAX_TOKENS)
        acts = sae.encode(cap.valid(req.layer))[:, req.feature]
        return cap.tokens[0], [round(float(a), 4) for a in acts]

    tokens, acts = s.gate.run(run)
    return {"layer": req.layer, "feature": req.feature, "tokens": tokens, "acts": acts, **s.cut_note(req.text)}


@router.get("/api/features/{layer}", summary="Features of a layer's store by frequency, rarity, strength or at random")
def list_features(layer: int, order: S.BrowseOrder = Order, n: int = Query(20, ge=1, le=200),
                  offset: int = Query(0, ge=0), max_density: float | None = MaxDensity,
                  q: str | None = Query(None, max_length=200), seed: int = Query(0, ge=0), s: Served = Depends(served)):
    return s.store_for(layer).browse(order, offset, n, max_density, q, seed)[1]


@router.get("/api/browse/{layer}", summary="One page of a layer's features, with how many match")
def browse(layer: int, order: S.BrowseOrder = Order, n: int = Query(25, ge=1, le=200),
           offset: int = Query(0, ge=0), max_density: float | None = MaxDensity,
           q: str | None = Query(None, max_length=200), seed: int = Query(0, ge=0), s: Served = Depends(served)):
    store = s.store_for(layer)
    total, rows = store.browse(order, offset, n, max_density, q, seed)
    return {"layer": layer, "order": order, "offset": offset, "total": total, "d_sae": store.d_sae, "rows": rows}


@router.get("/api/search/explanations", summary="Features whose explanation or automatic label contains every word of q")
def search_explanations(q: str = Query(min_length=1, max_length=200), layer: int | None = None,
                        s: Served = Depends(served)):
    layers = [layer] if layer is not None else sorted(s.saes)
    if layer is not None:
        s.sae_for(layer)
    out = []
    for l in layers:
        store = s.stores.get(l)
        if store is not None:
            found = [{"layer": l, **e.to_dict()} for e in store.search_labels(q)]
            out += s.labeller.rows(l, found) if found else []
    return out


NO_JUDGE = ("no LLM endpoint is configured to judge explanations: start the server with "
            "`qscope serve --endpoint URL --api-model NAME` to score them")


@router.post("/api/feature/detection", summary="How well a feature's label tells where it fires (detection score)")
def feature_detection(req: S.DetectionRequest, s: Served = Depends(served)):
    """Balanced accuracy of the judge (an LLM) telling held-out activating excerpts from
    non-activating ones given the feature's label; `{scored: false, detail}` without a judge."""
    from ...features.detection import detection_score

    s.check_feature(req.layer, req.feature, 404)
    store = s.store_for(req.layer)
    if s.judge is None:
        return {"scored": False, "detail": NO_JUDGE}
    score = detection_score(store, s.lm, s.saes[req.layer], req.feature, s.judge, req.n, req.seed,
                            run_model=s.gate.run)
    return {"scored": True, **score.to_dict()}
