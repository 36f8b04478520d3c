"""Benchmark: generation speed with SAE steering vs without, on the default model.

    python bench/steer_speed.py [--repeats 5] [--batch 8] [--tokens 32] [--layer 15]

Variants, all greedy on the same chat prompts with the same token budget (EOS disabled, so
every variant generates exactly batch x tokens new tokens):
- plain: no hook;
- add: h + 20 d (one feature) - a broadcast add per step; target overhead <= 5%;
- clamp: set one feature to 0 - encodes every edited position with the SAE each step;
- gated add: add only where a gating feature fires - also encodes each step;
- direction add: h + 20 u for a unit vector u (how diffmean, RepE and random-direction steer);
  target overhead <= 2%.
Each repeat runs every variant once, interleaved (plain, add, clamp, gated, plain, ...), after a
warm-up round, so load from other processes hits all alike; medians are reported (minima in the
JSON). Tokens/s are also given as a share of the forward limit (bench/machine.py): generation
runs one small matmul per step, so it stays far below it. Writes bench/results/steer_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import add_options, describe, forward_limit, interleaved, print_machine, share  # noqa: E402
from qscope.io import write_json
from qscope.model import load_model
from qscope.sae import SAE
from qscope.steer import FeatureEdit, Steering
from qscope.steer.directions import DirectionSteering, random_direction
from qscope.steer.evaluate import NEUTRAL_PROMPTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_options(ap, "steer_speed", repeats=5, batch=8, tokens=32, layer=15, feature=100, dtype="auto",
                       helps={"dtype": "the LM's dtype (auto, float32, bfloat16)"}).parse_args()

    machine = describe("cpu")
    print_machine(machine)
    lm = load_model("default", dtype=args.dtype)
    sae = SAE.load("default", layer=args.layer, device=lm.device)
    prompts = (NEUTRAL_PROMPTS * (args.batch // len(NEUTRAL_PROMPTS) + 1))[:args.batch]
    f = args.feature
    variants = {
        "plain": None,
        "add": Steering.add(sae, {f: 20.0}),
        "clamp": Steering(sae, [FeatureEdit(f, 0.0, "clamp")]),
        "gated_add": Steering(sae, [FeatureEdit(f, 20.0, "add", gate=f + 1)]),
        "direction_add": DirectionSteering(random_direction(lm.d_model, 0), args.layer, 20.0),
    }
    gen = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, chat=True)
    times = interleaved({name: lambda steer=steer: lm.generate(prompts, steer=steer, **gen)
                         for name, steer in variants.items()}, args.repeats, warmup=1,
                        progress=lambda round_: print(f"round {round_}/{args.repeats} done", file=sys.stderr, flush=True))

    n_tokens = args.batch * args.tokens
    base = statistics.median(times["plain"])
    limit = forward_limit(machine, lm, args.tokens, lm.dtype)
    rows = {}
    print(f"LM in {lm.dtype}; forward limit {limit:.0f} tokens/s")
    print(f"{'variant':<10} {'median s':>9} {'tokens/s':>9} {'vs plain':>9} {'of limit':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "min_s": min(ts), "tokens_per_s": n_tokens / med, "overhead": med / base - 1,
                      "share_of_limit": share(n_tokens / med, limit), "times_s": [round(t, 4) for t in ts]}
        print(f"{name:<10} {med:9.3f} {n_tokens / med:9.1f} {med / base - 1:+9.1%} {share(n_tokens / med, limit):9.1%}")
    write_json(args.out, {"model": lm.name, "layer": args.layer, "d_sae": sae.cfg.d_sae, "batch": args.batch,
                          "new_tokens": args.tokens, "repeats": args.repeats, "dtype": str(lm.dtype),
                          "forward_limit_tokens_per_s": limit, "machine": machine, "variants": rows})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
