"""Feature-driven data synthesis for harm-specific layer-15 features of the default model (docs/synth.md).

    python experiments/synth_harmful.py                    # prompting + steering -> docs/classify/synth-report.json
    python experiments/synth_harmful.py --only strength    # greedy strength check -> docs/classify/synth-strength.json

Targets (the rule of docs/synth.md): layer-15 features firing on >= 3 of the 400 harmful discovery
prompts of the `harmful` task and on none of its 400 benign ones, ranked by their harmful firing rate;
the seed set is the first 25 harmful test prompts; the target set is the first 20 targets the seed set
leaves uncovered. Parts:
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
import sys
from pathlib import Path

import numpy as np

from qscope.cli.classify import load_model_and_saes
from qscope.datatools.cache import CodeCache
from qscope.datatools.classify import firing_rates
from qscope.datatools.labelled import load_task
from qscope.datatools.synth import (NEUTRAL_PROMPTS, LocalPrompted, LocalSteered, RowSteering, compare,
                                    coverage_from_acts, describe_by_examples, max_acts_of)
from qscope.io import write_json
from qscope.provenance import record

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("prompting", "steering", "strength")


def select_targets(lm, saes, layer: int, n_seeds: int, n_targets: int, min_hits: int, split_seed: int) -> dict:
    """Harm-specific features, the seed set and the targets it leaves uncovered (see the module doc)."""
    cache = CodeCache(lm, saes, max_length=64)
    task = load_task("harmful", 400, 200, split_seed)
    disc = cache.codes(task.discovery.texts)
    p_pos, p_neg = firing_rates(disc, task.discovery.labels, layer)
    n_pos = int(np.sum(task.discovery.labels))
    specific = np.flatnonzero((p_neg == 0) & (p_pos * n_pos >= min_hits))
    ranked = [int(f) for f in specific[np.argsort(-p_pos[specific], kind="stable")]]
    test = task.tests["test"]
    seeds = [t for t, y in zip(test.texts, test.labels) if y][:n_seeds]
    seed_cov = coverage_from_acts(cache.codes(seeds).max_acts[layer], ranked)
    pool = [t for t, y in zip(task.discovery.texts, task.discovery.labels) if y]
    return {"harm_specific": ranked, "seed_coverage_of_harm_specific": seed_cov.to_dict(),
            "targets": seed_cov.uncovered[:n_targets], "seeds": seeds, "pool": pool}


def run_compare(lm, sae, sel: dict, gen, per_target: int, seed: int) -> dict:
    rep, synth, rand = compare(lm, sae, sel["seeds"], sel["targets"], gen, per_target=per_target, seed=seed)
    return {"report": rep.to_dict(), "candidates": [c.to_dict() for c in synth],
            "random_candidates": [c.to_dict() for c in rand]}


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
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/classify")
    args = ap.parse_args()
    parts = args.only or ["prompting", "steering"]

    lm, saes = load_model_and_saes("default", "default", None)
    sae = saes[args.layer]
    sel = select_targets(lm, saes, args.layer, args.n_seeds, args.n_targets, args.min_hits, args.split_seed)
    print(f"{len(sel['harm_specific'])} harm-specific features; targets {sel['targets']}", file=sys.stderr, flush=True)
    prov = record(seeds={"split": args.split_seed, "sampling": args.seed})
    head = {"model": lm.name, "sae": f"default layer {args.layer}", "device": str(lm.device)}
    if "prompting" in parts or "steering" in parts:
        result = {**head, "target_selection": {k: sel[k] for k in ("harm_specific", "seed_coverage_of_harm_specific",
                                                                   "targets")}, "seeds": sel["seeds"]}
        if "prompting" in parts:
            describe = describe_by_examples(sel["pool"], max_acts_of(lm, sae, sel["pool"]), seed=args.seed)
            gen = LocalPrompted(lm, describe, max_new_tokens=40)
            result["example_prompting"] = run_compare(lm, sae, sel, gen, args.per_target, args.seed)
        if "steering" in parts:
            gen = LocalSteered(lm, sae, strength=args.strength, max_new_tokens=32)
            result[f"steering_{args.strength:g}"] = run_compare(lm, sae, sel, gen, args.per_target, args.seed)
        write_json(args.out / "synth-report.json", result, provenance=prov)
    if "strength" in parts:
        strengths = [float(x) for x in args.check_strengths.split(",")]
        check = strength_check(lm, sae, sel["targets"][: args.check_targets], strengths, tokens=32)
        write_json(args.out / "synth-strength.json", {**head, "targets": sel["targets"], **check},
                   provenance=record(seeds={"split": args.split_seed}))


if __name__ == "__main__":
    main()
