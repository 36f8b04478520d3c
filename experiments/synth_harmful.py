"""Feature-driven data synthesis for harm-specific layer-15 features of the default model (docs/synth.md).

    python experiments/synth_harmful.py                    # prompting + steering -> docs/classify/synth-report.json
    python experiments/synth_harmful.py --only strength    # greedy strength check -> docs/classify/synth-strength.json
    python experiments/synth_harmful.py --only prompting --seeds 0,1,2 --neutral-max-rate 0.01 --name synth-prompting-rule

Targets (the rule of docs/synth.md): layer-15 features firing on >= 3 of the 400 harmful discovery
prompts of the `harmful` task and on none of its 400 benign ones, ranked by their harmful firing rate;
the seed set is the first 25 harmful test prompts; the target set is the first 20 targets the seed set
leaves uncovered. With `--neutral-max-rate r`, features firing on >= r of the tokens of 200 neutral
texts (the training mix's held-out split, 64 tokens each) are excluded first, so that "not a short
question" features, which plain prose fires, are not targets. `--seeds` repeats the generation parts
with each sampling seed (targets fixed) and reports mean and spread of the coverages; each finished
seed is kept in the output JSON and skipped on a rerun. Parts:
- prompting: `qscope synth generate --examples` (each target's 3 top harmful discovery prompts; random
  baseline: 3 random ones), 4 candidates per target, 40 new tokens;
- steering: `qscope synth generate --strength 60` (decoder direction added at every position on neutral
  prompts; random baseline: unsteered), 4 per target, 32 new tokens;
- strength: greedy generations on the neutral prompts, steering each of the first 3 targets at strengths
  0, 60, 150 and 300: does the text fire its target?
Codes of the task texts are cached under QSCOPE_HOME, so reruns skip those forward passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import qscope
from qscope.data import held_out_texts
from qscope.features.search import collect_stats
from qscope.datatools.cache import CodeCache
from qscope.datatools.classify import firing_rates
from qscope.datatools.labelled import load_task
from qscope.datatools.synth import (NEUTRAL_PROMPTS, LocalPrompted, LocalSteered, RowSteering, coverage_from_acts,
                                    describe_by_examples, max_acts_of)
from qscope.datatools.synth_runs import SynthConfig, run_synthesis
from qscope.io import write_json
from qscope.provenance import record

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("prompting", "steering", "strength")


def neutral_rates(lm, sae, n: int = 200) -> np.ndarray:
    """Share of the tokens of `n` neutral held-out texts (64 tokens each) on which each feature fires."""
    return collect_stats(lm, sae, held_out_texts(n=n), max_length=64).rate.numpy()


def select_targets(lm, saes, layer: int, n_seeds: int, n_targets: int, min_hits: int, split_seed: int,
                   neutral_max_rate: float | None = None) -> dict:
    """Harm-specific features, the seed set and the targets it leaves uncovered (see the module doc)."""
    cache = CodeCache(lm, saes, max_length=64)
    task = load_task("harmful", 400, 200, split_seed)
    disc = cache.codes(task.discovery.texts)
    p_pos, p_neg = firing_rates(disc, task.discovery.labels, layer)
    n_pos = int(np.sum(task.discovery.labels))
    keep = (p_neg == 0) & (p_pos * n_pos >= min_hits)
    excluded_neutral = []
    if neutral_max_rate is not None:
        neutral = neutral_rates(lm, saes[layer])
        excluded_neutral = [int(f) for f in np.flatnonzero(keep & (neutral >= neutral_max_rate))]
        keep &= neutral < neutral_max_rate
    specific = np.flatnonzero(keep)
    ranked = [int(f) for f in specific[np.argsort(-p_pos[specific], kind="stable")]]
    test = task.tests["test"]
    seeds = [t for t, y in zip(test.texts, test.labels) if y][:n_seeds]
    seed_cov = coverage_from_acts(cache.codes(seeds).max_acts[layer], ranked)
    pool = [t for t, y in zip(task.discovery.texts, task.discovery.labels) if y]
    return {"harm_specific": ranked, "excluded_as_neutral": excluded_neutral,
            "seed_coverage_of_harm_specific": seed_cov.to_dict(),
            "targets": seed_cov.uncovered[:n_targets], "seeds": seeds, "pool": pool}


def run_compare(lm, sae, sel: dict, gen, per_target: int, seed: int) -> dict:
    res = run_synthesis(lm, sae, sel["seeds"], sel["targets"], SynthConfig(per_target=per_target, seed=seed),
                        generator=gen)
    rep, synth, rand = res.report, res.synthesised, res.random
    return {"report": rep.to_dict(), "candidates": [c.to_dict() for c in synth],
            "random_candidates": [c.to_dict() for c in rand]}


def summarise(per_seed: dict) -> dict:
    """Mean and spread over seeds of each part's coverage: feature-driven (kept if it fires its
    target), the same with every candidate added, and random generation (all added)."""
    out = {}
    parts = sorted({part for runs in per_seed.values() for part in runs})
    for part in parts:
        rows = [runs[part]["report"] for runs in per_seed.values() if part in runs]
        series = {"feature_driven_kept": [r["feature_driven"]["coverage_total"] for r in rows],
                  "feature_driven_added": [r["feature_driven"]["added"] for r in rows],
                  "random_all": [r["random"]["coverage_total"] for r in rows]}
        out[part] = {k: {"per_seed": v, "mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                     for k, v in series.items()}
    return out


def strength_check(lm, sae, targets: list[int], strengths: list[float], tokens: int) -> dict:
    """Greedy text on the neutral prompts with each target steered up; its activation on that text."""
    prompts = list(NEUTRAL_PROMPTS)
    rows = []
    for feature in targets:
        for s in strengths:
            steer = RowSteering(sae, [feature] * len(prompts), s) if s else None
            texts = lm.generate(prompts, max_new_tokens=tokens, chat=True, do_sample=False, steer=steer)
            live = [t if t.strip() else "." for t in texts]
            acts = max_acts_of(lm, sae, live)[:, feature].toarray().ravel()
            rows.append({"feature": feature, "strength": s, "fired": int((acts > 0).sum()), "n": len(texts),
                         "max_activation": float(acts.max()), "texts": texts})
            print(f"feature {feature} strength {s}: fired on {rows[-1]['fired']}/{len(texts)}", file=sys.stderr, flush=True)
    return {"prompts": prompts, "max_new_tokens": tokens, "greedy": True, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=PARTS, action="append", help="run only these parts (default: prompting, steering)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--n-seeds", type=int, default=25)
    ap.add_argument("--n-targets", type=int, default=20)
    ap.add_argument("--min-hits", type=int, default=3, help="harmful discovery prompts a target must fire on")
    ap.add_argument("--per-target", type=int, default=4)
    ap.add_argument("--strength", type=float, default=60.0, help="steering part")
    ap.add_argument("--check-strengths", default="0,60,150,300")
    ap.add_argument("--check-targets", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="sampling seeds, e.g. 0,1,2 (targets stay fixed)")
    ap.add_argument("--neutral-max-rate", type=float, default=None,
                    help="exclude targets firing on >= this share of neutral tokens (e.g. 0.01)")
    ap.add_argument("--name", default="synth-report", help="output JSON name (without .json) under --out")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/classify")
    args = ap.parse_args()
    parts = args.only or ["prompting", "steering"]

    lm, saes = qscope.load()
    sae = saes[args.layer]
    sel = select_targets(lm, saes, args.layer, args.n_seeds, args.n_targets, args.min_hits, args.split_seed,
                         args.neutral_max_rate)
    print(f"{len(sel['harm_specific'])} harm-specific features; targets {sel['targets']}", file=sys.stderr, flush=True)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    prov = record(seeds={"split": args.split_seed, "sampling": seeds})
    head = {"model": lm.name, "sae": f"default layer {args.layer}", "device": str(lm.device)}
    if "prompting" in parts or "steering" in parts:
        path = args.out / f"{args.name}.json"
        result = {**head, "target_rule": {"min_hits": args.min_hits, "benign_hits": 0,
                                          "neutral_max_rate": args.neutral_max_rate},
                  "target_selection": {k: sel[k] for k in ("harm_specific", "excluded_as_neutral",
                                                           "seed_coverage_of_harm_specific", "targets")},
                  "seeds": sel["seeds"], "per_seed": {}}
        if path.exists():  # resume: keep the seeds already done with the same targets
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("target_selection", {}).get("targets") == sel["targets"]:
                result["per_seed"] = old.get("per_seed", {})
        for seed in seeds:
            done = result["per_seed"].setdefault(str(seed), {})
            if "prompting" in parts and "example_prompting" not in done:
                describe = describe_by_examples(sel["pool"], max_acts_of(lm, sae, sel["pool"]), seed=seed)
                gen = LocalPrompted(lm, describe, max_new_tokens=40)
                done["example_prompting"] = run_compare(lm, sae, sel, gen, args.per_target, seed)
            key = f"steering_{args.strength:g}"
            if "steering" in parts and key not in done:
                gen = LocalSteered(lm, sae, strength=args.strength, max_new_tokens=32)
                done[key] = run_compare(lm, sae, sel, gen, args.per_target, seed)
            result["summary"] = summarise(result["per_seed"])
            write_json(path, result, provenance=prov)
            print(json.dumps(result["summary"]), file=sys.stderr, flush=True)
    if "strength" in parts:
        strengths = [float(x) for x in args.check_strengths.split(",")]
        check = strength_check(lm, sae, sel["targets"][: args.check_targets], strengths, tokens=32)
        write_json(args.out / "synth-strength.json", {**head, "targets": sel["targets"], **check},
                   provenance=record(seeds={"split": args.split_seed}))


if __name__ == "__main__":
    main()
