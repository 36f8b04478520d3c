"""Repetition features (ranked + causal check) and GRPO vanilla vs SAE-guided at CPU scale.

1. Repetition features of the layer-L SAE: activation at repeats minus at first occurrences,
   over constructed + natural repetitive passages (Brown sentences).
2. Causal check: mean repetition ratio (word 3-grams) of greedy generations with the top-3
   features suppressed / untouched / amplified.
3. GRPO (LoRA r=8 on q/v, G=4, 2 prompts/step, 32 new tokens, reward = -repetition ratio
   - 0.5 if < 5 words), vanilla vs SAE-guided (one rollout per group steered up along the
   repetition features) vs random-guided (the control: the same steered rollout, along 3
   random features of matched firing density (`steer.methods.density_matched_features`,
   rates on 300 Brown texts), a fresh draw per seed, same strength). Every `--eval-every`
   steps: greedy repetition ratio on held-out prompts; at the end also held-out English
   perplexity; KL to the initial policy is logged every step.

Primary comparison (stated before the random-guided runs): SAE-guided vs random-guided final
held-out repetition, paired by seed. If random-guided does as well, "SAE-guided" is just
"any perturbed negative rollout".

    .venv/bin/python experiments/grpo_repetition.py               # cached, resumable per variant
    .venv/bin/python experiments/grpo_repetition.py --variants random_guided --docs-name grpo_random_control \
        --out experiments/runs/grpo      # per-seed results kept in the repo: reruns resume
    .venv/bin/python experiments/grpo_repetition.py --compare   # the three variants side by side, paired tests
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from itertools import islice
from pathlib import Path

import torch

from qscope import load_model
from qscope.data import iter_texts
from qscope.io import save_png, write_json
from qscope.metrics import text_perplexity
from qscope.posttrain import GRPOConfig, add_lora, causal_check, repetition_features, repetitive_corpus, train_grpo
from qscope.posttrain.repetition import mean_repetition_ratio
from qscope.features.search import collect_stats
from qscope.provenance import record
from qscope.sae import SAE
from qscope.steer import Steering
from qscope.steer.methods import density_matched_features

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the sea", "a cat", "winter", "the city", "friendship", "a robot", "the moon", "coffee", "a garden", "music",
          "rain", "a train", "mountains", "books", "the forest", "a dog", "summer", "the sun", "a river", "school"]
KINDS = ["poem", "story", "description", "list of facts", "song"]


def prompts():
    ps = [f"Write a short {k} about {t}." for t in TOPICS for k in KINDS]
    return ps[::2], ps[1::2][:24]  # train (50), held-out (24)


def greedy_rep(lm, ps, tokens):
    outs = lm.generate(ps, max_new_tokens=tokens, chat=True, do_sample=False)
    return mean_repetition_ratio(outs), outs


VARIANTS = ("vanilla", "sae_guided", "random_guided")


def run_variant(args, variant, seed, sae, feats, train_ps, eval_ps, held_ppl) -> dict:
    """One GRPO run (LoRA on the default model) with periodic greedy repetition evals."""
    t1 = time.time()
    torch.manual_seed(seed)
    lm = load_model("default", dtype="float32")
    add_lora(lm, r=8, alpha=16)
    steered = {"sae_guided": feats["top"], "random_guided": feats["random_controls"][str(seed)]}.get(variant)
    steer = Steering.add(sae, {f: feats["strength"] for f in steered}) if steered else None
    cfg = GRPOConfig(group_size=args.group, prompts_per_step=args.per_step, max_new_tokens=args.tokens, lr=args.lr, kl_coef=0.04,
                     steer=steer, temperature=1.0, seed=seed)
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=args.lr)
    rep0, outs = greedy_rep(lm, eval_ps, args.eval_tokens)
    evals = [{"step": 0, "greedy_repetition": rep0}]
    history = []
    for start in range(0, args.steps, args.eval_every):
        n = min(args.eval_every, args.steps - start)
        history += train_grpo(lm, train_ps, cfg, n, optimizer=opt, start_step=start,
                              on_step=lambda s: print(seed, variant, s["step"], round(s["reward"], 3), round(s["repetition"], 3),
                                                       s["repetition_steered"], round(s["kl"], 4), f"{time.time() - t1:.0f}s",
                                                       flush=True)).history
        rep, outs = greedy_rep(lm, eval_ps, args.eval_tokens)
        evals.append({"step": start + n, "greedy_repetition": rep})
        print(seed, variant, "eval", start + n, rep, flush=True)
    return {"done": True, "steered_features": steered, "history": history, "evals": evals,
            "heldout_ppl_en": text_perplexity(lm, held_ppl),
            "final_greedy_repetition": evals[-1]["greedy_repetition"], "examples": outs[:4],
            "config": cfg.to_dict(), "seconds": round(time.time() - t1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--strength", type=float, default=0.0, help="steering strength (0 = from the features' activations)")
    ap.add_argument("--out", default=str(ROOT / "runs/posttrain/grpo"))
    ap.add_argument("--per-step", type=int, default=2, help="prompts per GRPO step")
    ap.add_argument("--n-eval", type=int, default=24, help="held-out prompts for the greedy repetition eval")
    ap.add_argument("--eval-tokens", type=int, default=48)
    ap.add_argument("--docs-name", default="grpo_repetition", help="basename of the JSON/PNG written under docs/posttrain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="GRPO seeds (sampling and LoRA init); each is cached on its own")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="which of " + ", ".join(VARIANTS))
    ap.add_argument("--compare", action="store_true",
                    help="only read docs/posttrain/grpo_repetition.json + grpo_random_control.json and write grpo_comparison.json")
    args = ap.parse_args()
    if args.compare:
        return compare()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ps, eval_ps = prompts()
    eval_ps = eval_ps[: args.n_eval]
    brown = list(islice(iter_texts("brown"), 400))
    held_ppl = brown[-40:]
    t0 = time.time()
    sae = SAE.load("default", layer=args.layer)

    feat_path = out / "features.json"
    if feat_path.exists():
        feats = json.loads(feat_path.read_text())
    else:
        lm = load_model("default", dtype="float32")
        texts = repetitive_corpus(brown[:300], n=120, seed=0)
        res = repetition_features(lm, sae, texts, top=10, max_length=96)
        top = res.ids[:3]
        strength = args.strength or 2.0 * max(f.mean_repeat for f in res.features[:3])
        check = causal_check(lm, sae, top, eval_ps, strengths=(-strength, 0.0, strength), max_new_tokens=48, do_sample=False)
        feats = {"n_causal_prompts": len(eval_ps), "ranking": res.to_dict(), "top": top, "strength": strength, "causal_check": check.to_dict()}
        write_json(feat_path, feats)
        print("causal", check.strengths, check.repetition, f"{time.time() - t0:.0f}s", flush=True)
        del lm
    seeds = [int(x) for x in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if "random_guided" in variants and not all(str(sd) in feats.get("random_controls", {}) for sd in seeds):
        lm = load_model("default", dtype="float32")
        rates = collect_stats(lm, sae, brown[:300], max_length=96).rate
        feats["random_controls"] = {**feats.get("random_controls", {}),
                                    **{str(sd): density_matched_features(rates, feats["top"], seed=sd) for sd in seeds}}
        write_json(feat_path, feats)
        del lm
    runs = {}  # seed -> variant -> result
    for seed in seeds:
        results_path = out / f"seed{seed}" / "results.json"
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        for variant in variants:
            if variant not in results or not results[variant].get("done"):
                results[variant] = run_variant(args, variant, seed, sae, feats, train_ps, eval_ps, held_ppl)
                write_json(results_path, results)
        runs[seed] = {v: results[v] for v in variants}
    base_lm = load_model("default", dtype="float32")
    base_ppl = text_perplexity(base_lm, held_ppl)
    finals = {v: [runs[sd][v]["final_greedy_repetition"] for sd in seeds] for v in variants}
    ppls = {v: [runs[sd][v]["heldout_ppl_en"] for sd in seeds] for v in variants}
    kls = {v: [statistics.mean(h["kl"] for h in runs[sd][v]["history"][-5:]) for sd in seeds] for v in variants}
    summary = {"setup": vars(args), "features": feats, "base_heldout_ppl_en": base_ppl,
               "base_greedy_repetition": runs[seeds[0]][variants[0]]["evals"][0]["greedy_repetition"],
               "final_greedy_repetition": {v: {"per_seed": x, "mean": statistics.mean(x),
                                               "sd": statistics.stdev(x) if len(x) > 1 else 0.0} for v, x in finals.items()},
               "heldout_ppl_en": {v: {"per_seed": x, "mean": statistics.mean(x)} for v, x in ppls.items()},
               "kl_last5_steps": {v: {"per_seed": x, "mean": statistics.mean(x)} for v, x in kls.items()},
               "steered_features": {str(sd): {v: runs[sd][v].get("steered_features") for v in variants} for sd in seeds},
               "runs": {str(sd): {v: {k: r[k] for k in ("evals", "heldout_ppl_en", "final_greedy_repetition", "seconds", "examples")}
                                  for v, r in runs[sd].items()} for sd in seeds},
               "train_curves": {str(sd): {v: [{k: h[k] for k in ("step", "reward", "repetition", "repetition_steered", "kl")}
                                              for h in r["history"]] for v, r in runs[sd].items()} for sd in seeds}}
    prov = record(seeds={"runs": seeds, "repetitive_corpus": 0})
    write_json(ROOT / f"docs/posttrain/{args.docs_name}.json", summary, provenance=prov)
    plot(runs, ROOT / f"docs/posttrain/{args.docs_name}.png", prov)
    print(json.dumps(summary["final_greedy_repetition"]), flush=True)
    print("total", f"{time.time() - t0:.0f}s")


def compare(names=("grpo_repetition", "grpo_random_control")) -> dict:
    """Vanilla, SAE-guided and random-guided from their published summaries, paired by seed: final
    held-out repetition (primary: SAE-guided vs random-guided), KL over the last 5 steps, held-out
    perplexity, and how repetitive the steered rollouts were (does the control give a negative at all?)."""
    from scipy import stats

    variants = {}
    for name in names:
        d = json.loads((ROOT / f"docs/posttrain/{name}.json").read_text())
        for v, fin in d["final_greedy_repetition"].items():
            curves = {sd: d["train_curves"][sd][v] for sd in sorted(d["train_curves"], key=int)}
            variants[v] = {"source": f"docs/posttrain/{name}.json",
                           "final_repetition": fin["per_seed"],
                           "heldout_ppl_en": d["heldout_ppl_en"][v]["per_seed"],
                           "kl_last5_steps": [statistics.mean(h["kl"] for h in c[-5:]) for c in curves.values()],
                           "rollout_repetition_unsteered": [statistics.mean(h["repetition"] for h in c) for c in curves.values()],
                           "rollout_repetition_steered": [statistics.mean(h["repetition_steered"] for h in c) for c in curves.values()]
                           if v != "vanilla" else None}
            variants[v]["base"] = {"heldout_ppl_en": d["base_heldout_ppl_en"], "greedy_repetition": d["base_greedy_repetition"]}
    for v in variants.values():
        for k in ("final_repetition", "heldout_ppl_en", "kl_last5_steps"):
            x = v[k]
            v[k] = {"per_seed": x, "mean": statistics.mean(x), "sd": statistics.stdev(x)}

    def paired(a, b):
        x, y = variants[a]["final_repetition"]["per_seed"], variants[b]["final_repetition"]["per_seed"]
        return {"a": a, "b": b, "mean_diff": statistics.mean(i - j for i, j in zip(x, y)),
                "a_lower_in_seeds": sum(i < j for i, j in zip(x, y)), "n_seeds": len(x),
                "paired_t_p": float(stats.ttest_rel(x, y).pvalue), "wilcoxon_p": float(stats.wilcoxon(x, y).pvalue)}

    out = {"primary": paired("sae_guided", "random_guided"),
           "secondary": [paired("sae_guided", "vanilla"), paired("random_guided", "vanilla")],
           "variants": variants}
    prov = record(seeds={"runs": [0, 1, 2, 3, 4]})
    write_json(ROOT / "docs/posttrain/grpo_comparison.json", out, provenance=prov)
    print(json.dumps({k: out[k] for k in ("primary", "secondary")}, indent=1))
    return out


def plot(runs, path, prov=None):
    """Left: unsteered rollout repetition during training (5-step mean); right: held-out greedy
    repetition at each eval; one line per seed, colour per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"vanilla": "tab:blue", "sae_guided": "tab:red", "random_guided": "tab:grey"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for seed, results in runs.items():
        for v, r in results.items():
            label = v if seed == min(runs) else None
            reps = [h["repetition"] for h in r["history"]]
            smooth = [statistics.mean(reps[max(0, i - 4):i + 1]) for i in range(len(reps))]
            axes[0].plot([h["step"] for h in r["history"]], smooth, color=colours[v], alpha=0.7, label=label)
            axes[1].plot([e["step"] for e in r["evals"]], [e["greedy_repetition"] for e in r["evals"]], marker="o",
                         color=colours[v], alpha=0.7, label=label)
    axes[0].set(title="rollout repetition ratio (unsteered, 5-step mean)", xlabel="GRPO step", ylabel="1 - distinct-3")
    axes[1].set(title="held-out greedy repetition ratio (per seed)", xlabel="GRPO step")
    for a in axes:
        a.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=120, provenance=prov)


if __name__ == "__main__":
    main()
