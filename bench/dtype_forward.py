"""Benchmark: the default model in fp32 vs bf16 on this machine - the measurement `--dtype auto` rests on.

    python bench/dtype_forward.py [--repeats 7] [--batch 8] [--seq 128] [--new-tokens 16]

Two copies of the default model (SmolLM2-135M-Instruct), one per dtype, run interleaved
(fp32, bf16, fp32, ...) after a warm-up round, so load from other processes hits both alike:
- forward: one full forward of batch x seq tokens of real text (what capture, footprints,
  `sae eval` and training's LM side do), as tokens/s and as a share of the forward limit in
  that dtype (bench/machine.py);
- generate: greedy generation of batch x new-tokens tokens (EOS disabled) from chat prompts.
Medians are reported (every time in the JSON). Writes bench/results/dtype_forward.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import add_options, describe, forward_limit, interleaved, print_machine, share, token_batch  # noqa: E402
from qscope.io import write_json  # noqa: E402
from qscope.model import load_model  # noqa: E402
from qscope.steer.evaluate import NEUTRAL_PROMPTS  # noqa: E402

DTYPES = ("float32", "bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_options(ap, "dtype_forward", repeats=7, batch=8, seq=128, new_tokens=16).parse_args()

    machine = describe("cpu")
    print_machine(machine)
    lms = {name: load_model("default", device="cpu", dtype=name) for name in DTYPES}
    ids = token_batch(lms["float32"], args.batch, args.seq)
    prompts = (NEUTRAL_PROMPTS * (args.batch // len(NEUTRAL_PROMPTS) + 1))[:args.batch]
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, chat=True)
    jobs = {(kind, name): (lambda lm=lm: lm.model(input_ids=ids, use_cache=False)) if kind == "forward"
            else (lambda lm=lm: lm.generate(prompts, **gen))
            for kind in ("forward", "generate") for name, lm in lms.items()}
    times = interleaved(jobs, args.repeats, warmup=1,
                        progress=lambda round_: print(f"round {round_}/{args.repeats}", file=sys.stderr, flush=True))

    n_tokens = {"forward": args.batch * args.seq, "generate": args.batch * args.new_tokens}
    rows = {}
    print(f"\ndefault model, forward {args.batch} x {args.seq} tokens, generate {args.batch} x {args.new_tokens} new; "
          f"median of {args.repeats}")
    print(f"{'what':<9} {'dtype':<9} {'median s':>9} {'tokens/s':>9} {'of limit':>9} {'bf16 / fp32':>12}")
    for (kind, name), ts in times.items():
        med = statistics.median(ts)
        limit = forward_limit(machine, lms[name], args.seq, name)
        row = {"median_s": med, "min_s": min(ts), "tokens_per_s": n_tokens[kind] / med,
               "forward_limit_tokens_per_s": limit, "share_of_limit": share(n_tokens[kind] / med, limit),
               "times_s": [round(t, 4) for t in ts]}
        rows[f"{kind}/{name}"] = row
        speedup = statistics.median(times[(kind, "float32")]) / med
        print(f"{kind:<9} {name:<9} {med:9.3f} {row['tokens_per_s']:9.0f} {row['share_of_limit']:9.1%} {speedup:11.2f}x")
    speedups = {kind: statistics.median(times[(kind, "float32")]) / statistics.median(times[(kind, "bfloat16")])
                for kind in n_tokens}
    write_json(args.out, {"bench": "dtype_forward", "machine": machine, "args": vars(args), "rows": rows,
                          "bf16_speedup": speedups})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
