"""Does rivalry resist steering? Strength each feature needs vs its rivalry score.

    python experiments/steer_rivalry.py [--n-features 40] [--layer 15] [--seed 0]

Hypothesis (qscope's notes on Feature Rivalry): features that fire among rivals - active
features whose decoder directions point against theirs - are harder to steer. For `n` features
drawn at random (seeded) among those firing on 0.1%-10% of corpus tokens (no sinks, no rare
ones), on 300 corpus texts (Brown + nlp-corpus, 128 tokens each):

- rivalry of feature f: the mean, over the tokens where f fires, of the token's rivalry as
  `qscope.uncertainty.rivalry` computes it (paper version: minus the 5th percentile of pairwise
  decoder cosines among the top-50 active features); also the partner rivalry: minus the lowest
  decoder cosine between f and a feature co-active on >= 5% of f's tokens;
- strength needed: steer f (add, all positions) on 8 neutral prompts, 12 greedy tokens, at
  strengths 2, 4, 8, 16, 32, 64; re-encode the answers with the plain model + SAE; the needed
  strength is the smallest at which f's mean activation over the answers' tokens reaches f's
  median activation when it fires (its typical strength). Features that never reach it are
  censored at the top rank (their count is reported).
Spearman correlation between rivalry and needed strength, with a 95% bootstrap interval over
features. Writes docs/steering/rivalry.json|png.

The first run left every one of the 40 features censored (none reached its median activation
even at strength 64), so the registered measure cannot rank them. A secondary measure, chosen
after seeing that and labelled as such in the output: the response, max over the grid of the
mean activation in the answers divided by the feature's median activation; Spearman of each
statistic with it, Holm-corrected over the four statistics. Feature rows (the generations'
results) are reused from an existing rivalry.json with the same settings, so the analysis
reruns in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qscope.data import load_texts, pull_corpus  # noqa: E402
from qscope.features.codes import iter_text_codes  # noqa: E402
from qscope.io import save_png, write_json  # noqa: E402
from qscope.model import load_model  # noqa: E402
from qscope.provenance import record  # noqa: E402
from qscope.sae import SAE  # noqa: E402
from qscope.steer import Steering  # noqa: E402
from qscope.steer.evaluate import NEUTRAL_PROMPTS, target_activation  # noqa: E402
from qscope.uncertainty.scores import rivalry  # noqa: E402

OUT = ROOT / "docs" / "steering"
STRENGTHS = [2, 4, 8, 16, 32, 64]


def feature_statistics(lm, sae, texts, layer):
    """Per feature: firing rate, median activation when firing, mean token rivalry over its
    firing tokens, and partner rivalry (from co-activation counts)."""
    d_sae = sae.cfg.d_sae
    w_dec = sae.W_dec.detach().float()
    unit = w_dec / w_dec.norm(dim=-1, keepdim=True)
    fires = torch.zeros(d_sae)
    riv_sum = torch.zeros(d_sae)
    acts: dict[int, list[float]] = {}
    co = torch.zeros(d_sae, d_sae, dtype=torch.float32)  # co-activation counts (9216^2 floats = 340 MB)
    tokens = 0
    for codes in iter_text_codes(lm, sae, texts, layer, batch_size=16, max_length=128):
        for t in range(1, len(codes.tokens)):
            v, i = codes.values[t], codes.indices[t]
            on = v > 0
            v, i = v[on], i[on]
            if not len(i):
                continue
            r, _ = rivalry(v, i, w_dec)
            fires[i] += 1
            riv_sum[i] += r
            co[i.unsqueeze(1), i.unsqueeze(0)] += 1
            for f, a in zip(i.tolist(), v.tolist()):
                acts.setdefault(f, []).append(a)
            tokens += 1
    partner = torch.zeros(d_sae)
    for f in torch.nonzero(fires >= 20).flatten().tolist():
        mates = torch.nonzero(co[f] >= 0.05 * fires[f]).flatten()
        mates = mates[mates != f]
        partner[f] = -float((unit[mates] @ unit[f]).min()) if len(mates) else 0.0
    median = torch.tensor([float(np.median(acts[f])) if f in acts else 0.0 for f in range(d_sae)])
    return {"rate": fires / max(tokens, 1), "rivalry": riv_sum / fires.clamp(min=1), "partner_rivalry": partner,
            "median_act": median, "tokens": tokens}


def spearman(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Spearman rho with a 95% percentile bootstrap interval over features (None when a side is constant)."""
    from scipy import stats

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "ci": [None, None], "p": None, "note": "constant input: undefined"}
    res = stats.spearmanr(x, y)
    boot = stats.bootstrap((x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
                           n_resamples=2000, method="percentile", rng=seed)
    return {"rho": float(res.statistic), "ci": [float(boot.confidence_interval.low), float(boot.confidence_interval.high)],
            "p": float(res.pvalue)}


def holm(tests: dict) -> None:
    """Add Holm-corrected p-values (`p_holm`) to a dict of tests, in place."""
    named = sorted(((t["p"], k) for k, t in tests.items() if t["p"] is not None))
    running = 0.0
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, p * (len(named) - i)))
        tests[k]["p_holm"] = running


def needed_strength(lm, sae, feature, threshold):
    """Smallest grid strength whose steered answers reach `threshold` mean activation (None: never)."""
    trace = []
    for s in STRENGTHS:
        outs = lm.generate(NEUTRAL_PROMPTS, max_new_tokens=12, chat=True, steer=Steering.add(sae, {feature: float(s)}))
        mean, _ = target_activation(lm, sae, feature, outs)
        trace.append({"strength": s, "target_mean": mean})
        if mean == mean and mean >= threshold:
            return s, trace
    return None, trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--n-features", type=int, default=40)
    ap.add_argument("--n-texts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = load_model("default", dtype="float32")  # the published numbers are fp32 (see docs/benchmarks.md)
    sae = SAE.load("default", layer=args.layer, device=lm.device)
    for name in ("brown", "nlp-corpus"):
        pull_corpus(name)
    texts = [t for t in load_texts("brown", limit=args.n_texts // 2) + load_texts("nlp-corpus", limit=args.n_texts // 2)
             if t.strip()]
    st = feature_statistics(lm, sae, texts, args.layer)
    pool = torch.nonzero((st["rate"] >= 0.001) & (st["rate"] <= 0.10)).flatten().tolist()
    rng = np.random.default_rng(args.seed)
    chosen = sorted(int(f) for f in rng.choice(pool, size=min(args.n_features, len(pool)), replace=False))
    path = OUT / "rivalry.json"
    cached = {}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("layer") == args.layer and old.get("strengths") == STRENGTHS and old.get("seed") == args.seed:
            cached = {r["feature"]: r for r in old["features"]}
    rows = []
    for n, f in enumerate(chosen):
        if f in cached:
            rows.append(cached[f])
            continue
        need, trace = needed_strength(lm, sae, f, float(st["median_act"][f]))
        rows.append({"feature": f, "rate": float(st["rate"][f]), "median_act": float(st["median_act"][f]),
                     "rivalry": float(st["rivalry"][f]), "partner_rivalry": float(st["partner_rivalry"][f]),
                     "needed_strength": need, "trace": trace})
        print(f"[{n + 1}/{len(chosen)}] feature {f}: rivalry {rows[-1]['rivalry']:.3f} needs {need}",
              file=sys.stderr, flush=True)
    censor = 2 * STRENGTHS[-1]
    need = np.array([r["needed_strength"] or censor for r in rows], float)
    for r in rows:
        r["response"] = max((t["target_mean"] for t in r["trace"] if t["target_mean"] == t["target_mean"]),
                            default=0.0) / r["median_act"]
    response = np.array([r["response"] for r in rows])
    result = {"layer": args.layer, "seed": args.seed, "n_features": len(rows), "strengths": STRENGTHS,
              "tokens": st["tokens"], "censored": int(sum(r["needed_strength"] is None for r in rows)),
              "response_median": float(np.median(response)), "response_max": float(response.max())}
    for measure, y in (("needed_strength", need), ("response", response)):
        result[measure] = {}
        for key in ("rivalry", "partner_rivalry", "rate", "median_act"):
            result[measure][key] = spearman(np.array([r[key] for r in rows]), y, args.seed)
            print(f"Spearman({key}, {measure}) = {result[measure][key]}", file=sys.stderr)
        holm(result[measure])
    result["features"] = rows
    write_json(path, result, provenance=record(seeds=args.seed))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([r["rivalry"] for r in rows], response, s=18)
    ax.set_xlabel("feature's mean token rivalry where it fires")
    ax.set_ylabel("response: max mean activation in answers / median")
    s = result["response"]["rivalry"]
    ax.set_title(f"{len(rows)} features, {result['censored']} never reach their median (strength <= {STRENGTHS[-1]})\n"
                 f"Spearman {s['rho']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}], Holm p = {s['p_holm']:.2f}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, OUT / "rivalry.png")


if __name__ == "__main__":
    main()
