"""Benchmark: early-stopping residual capture, and TopK SAE encode vs the machine's matmul rate.

    python bench/capture.py [--repeats 10] [--batch 8] [--seq 128] [--n-acts 4096]

1. Capture of layer L = n_layers // 3 on the default model (SmolLM2-135M-Instruct, fp32):
   `lm.run_to_layers` (hooks stop the forward after block L) and `lm.capture` (the same plus
   tokenisation and per-token strings) against a plain HF forward with
   `output_hidden_states=True` over the whole model, same batch. Target: >= 2.5x.
2. Encode throughput of a 16x TopK SAE (576 -> 9216, k=50, random weights) on a batch of
   activations against a plain (N x 576) @ (576 x 9216) fp32 matmul on the same shapes.
   GFLOP/s count 2 * N * d_model * d_sae. Target: encode >= 70% of the matmul rate.

Every variant runs once per repeat, interleaved (A, B, C, A, B, C, ...) after warm-up, so
load from other processes hits all of them alike; medians are reported (and minima in the
JSON). Torch's default thread count is used. Every capture figure is also given as a share of
the fp32 forward limit of the layers it runs, every encode figure as a share of the machine's
fp32 matmul rate (bench/machine.py). Writes bench/results/capture.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import (  # noqa: E402
    add_options, describe, forward_limit, interleaved, print_machine, share, summary, token_batch,
)
from qscope.io import write_json  # noqa: E402
from qscope.model import load_model  # noqa: E402
from qscope.sae import SAE, SAEConfig  # noqa: E402
from qscope.sae import activations as act  # noqa: E402


def bench_capture(lm, batch: int, seq: int, repeats: int, warmup: int, machine: dict) -> dict:
    layer = lm.n_layers // 3
    ids = token_batch(lm, batch, seq)
    mask = torch.ones_like(ids)
    texts = [lm.tokenizer.decode(row) for row in ids]
    model = lm.model

    def hf_full():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states[layer + 1]

    with torch.no_grad():
        diff = float((lm.run_to_layers(ids, mask, [layer])[layer] - hf_full()).abs().max())
    times = interleaved({
        "hf_full_forward": hf_full,
        "run_to_layers": lambda: lm.run_to_layers(ids, mask, [layer]),
        "lm.capture": lambda: lm.capture(texts, layer, max_length=seq, batch_size=batch),
    }, repeats, warmup)
    tokens = batch * seq
    rows = {name: {**summary(t), "tokens_per_s": tokens / statistics.median(t)} for name, t in times.items()}
    base = rows["hf_full_forward"]["median_s"]
    limits = {"hf_full_forward": forward_limit(machine, lm, seq, "float32")}
    limits["run_to_layers"] = limits["lm.capture"] = forward_limit(machine, lm, seq, "float32", n_layers=layer + 1, head=False)
    for name, row in rows.items():
        row["speedup_vs_full"] = base / row["median_s"]
        row["limit_tokens_per_s"] = limits[name]
        row["share_of_limit"] = share(row["tokens_per_s"], limits[name])
    return {"layer": layer, "n_layers": lm.n_layers, "batch": batch, "seq": seq, "tokens": tokens,
            "max_abs_diff_vs_hf": diff, "rows": rows, "target_speedup": 2.5,
            "speedup": rows["run_to_layers"]["speedup_vs_full"],
            "met": rows["run_to_layers"]["speedup_vs_full"] >= 2.5}


def bench_encode(n: int, d_model: int, d_sae: int, k: int, repeats: int, warmup: int, machine: dict) -> dict:
    sae = SAE.random(SAEConfig(d_model=d_model, d_sae=d_sae, activation="topk", k=k), seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_model, generator=gen)
    W, b = sae.W_enc.detach(), sae.b_enc.detach()
    times = interleaved({
        "matmul (x @ W_enc)": lambda: x @ W,
        "sae.encode_topk": lambda: sae.encode_topk(x),
        "naive topk(x @ W + b)": lambda: act.topk_sparse(x @ W + b, k),
        "sae.forward (enc+dec)": lambda: sae(x),
    }, repeats, warmup)
    flops = 2 * n * d_model * d_sae
    rows = {name: {**summary(t), "gflop_s": flops / statistics.median(t) / 1e9} for name, t in times.items()}
    rate = rows["matmul (x @ W_enc)"]["gflop_s"]
    for row in rows.values():
        row["fraction_of_matmul"] = row["gflop_s"] / rate
        row["share_of_machine_fp32_matmul"] = share(row["gflop_s"], machine["matmul_gflop_s"]["float32"])
    frac = rows["sae.encode_topk"]["fraction_of_matmul"]
    return {"n": n, "d_model": d_model, "d_sae": d_sae, "k": k, "flops_per_call": flops, "rows": rows,
            "matmul_gflop_s": rate, "encode_gflop_s": rows["sae.encode_topk"]["gflop_s"],
            "fraction": frac, "target_fraction": 0.7, "met": frac >= 0.7}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_options(parser, "capture", model="default", batch=8, seq=128, n_acts=4096, repeats=10, warmup=2)
    args = parser.parse_args()

    machine = describe("cpu")
    print_machine(machine)
    lm = load_model(args.model, device="cpu", dtype="float32")
    cap = bench_capture(lm, args.batch, args.seq, args.repeats, args.warmup, machine)
    enc = bench_encode(args.n_acts, 576, 9216, 50, args.repeats, args.warmup, machine)

    print(f"\n1. capture of layer {cap['layer']} / {cap['n_layers']} on {lm.name}, batch {args.batch} x {args.seq} "
          f"tokens, median of {args.repeats} (max |diff| vs HF hidden_states: {cap['max_abs_diff_vs_hf']:.2e})")
    print(f"   {'variant':24s} {'median ms':>10s} {'tokens/s':>10s} {'vs full':>8s} {'of fp32 limit':>14s}")
    for name, row in cap["rows"].items():
        print(f"   {name:24s} {row['median_s'] * 1e3:10.1f} {row['tokens_per_s']:10.0f} {row['speedup_vs_full']:7.2f}x "
              f"{row['share_of_limit']:13.0%}")
    print(f"   target >= 2.5x: {'met' if cap['met'] else 'MISSED'} ({cap['speedup']:.2f}x)")

    print(f"\n2. TopK SAE encode, {enc['n']} x {enc['d_model']} -> {enc['d_sae']}, k={enc['k']}, "
          f"{enc['flops_per_call'] / 1e9:.1f} GFLOP per call, median of {args.repeats}")
    print(f"   {'variant':24s} {'median ms':>10s} {'GFLOP/s':>10s} {'of matmul':>10s}")
    for name, row in enc["rows"].items():
        print(f"   {name:24s} {row['median_s'] * 1e3:10.1f} {row['gflop_s']:10.1f} {row['fraction_of_matmul']:9.0%}")
    print(f"   (the machine's fp32 matmul rate, measured before: {machine['matmul_gflop_s']['float32']:.0f} GFLOP/s)")
    print(f"   target >= 70%: {'met' if enc['met'] else 'MISSED'} ({enc['fraction']:.0%})")

    result = {
        "machine": machine,
        "args": vars(args), "capture": cap, "encode": enc,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
