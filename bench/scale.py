"""Scale benchmark: a Qwen3.5 MoE model built from its published config with random weights,
measured against `qscope plan`'s prediction.

    python bench/scale.py --device cuda            # real size: Qwen3.5-35B-A3B, bf16, one GPU
    python bench/scale.py --device cpu             # same architecture scaled down (see SCALED)

Real size needs one GPU of >= 80 GB (the bf16 weights are 64.6 GiB). On CPU the model keeps
every layer type (3 Gated DeltaNet : 1 gated attention), the expert routing (top 8 of many
experts + a shared expert) and the SAE k, with widths, depth and expert count divided (SCALED);
the output says which. Measured, each as the median (CUDA) or minimum (CPU, shared machine) of interleaved repeats after
a warm-up:
1. plain forward (all layers + logits) vs capture of 1, 4 and all SAE layers (the forward
   stops after the deepest one; no logits);
2. SAE encode throughput at the release widths (W32K and W128K, k 50 / 100; scaled on CPU);
3. greedy generation plain vs steered (add, clamp, gated) with the KV cache;
4. peak memory of each (CUDA: max_memory_allocated; CPU: peak RSS above the baseline);
5. on CUDA only: the two CUDA tests and `bench/train_speed.py --device cuda --synthetic`.
Each time and memory is compared with `qscope plan`'s formula for it (arch from the built
model's config; rate = a measured GEMM rate of the device in the model dtype, so the error is
that of the FLOP / memory model, not of a datasheet guess; on CUDA the plan's default
assumption, peak x efficiency of the named --gpu preset, is reported too).
Writes bench/results/scale-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT.parent / "tests"))

from qscope.io import write_json  # noqa: E402
from qscope.model import LM  # noqa: E402
from qscope.plan import Workload, arch_from_config, hardware, plan, transformers_config  # noqa: E402
from qscope.sae import SAE, SAEConfig  # noqa: E402
from qscope.sae.registry import find_release  # noqa: E402
from qscope.steer import FeatureEdit, Steering  # noqa: E402

MODEL = "Qwen/Qwen3.5-35B-A3B"
RELEASES = ("Qwen/SAE-Res-Qwen3.5-35B-A3B-Base-W32K-L0_50", "Qwen/SAE-Res-Qwen3.5-35B-A3B-Base-W128K-L0_100")
# CPU: every width / count divided, layer pattern, top-k and SAE k kept.
SCALED = dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=32,
              num_experts=64, moe_intermediate_size=64, shared_expert_intermediate_size=64, vocab_size=32000,
              layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"])
SAE_SHRINK = 8  # CPU: SAE widths / 8 (d_model / 8 as well: same 16x / 64x expansion)


# ------------------------------------------------------------------ measuring
class Peak:
    """Peak memory above the level at entry: CUDA allocator stats, or the process's peak RSS
    (VmHWM, reset through /proc/self/clear_refs) on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @staticmethod
    def _rss(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._rss("VmRSS:")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.bytes = self._rss("VmHWM:") - self.base


def timed(variants: dict, repeats: int, device: torch.device) -> dict[str, dict]:
    """Median seconds and peak memory of each variant, interleaved, after one warm-up round."""
    times = {name: [] for name in variants}
    peaks = {name: 0 for name in variants}
    for round_ in range(repeats + 1):
        for name, fn in variants.items():
            with Peak(device) as peak:
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak.bytes)
        print(f"  round {round_}/{repeats}", file=sys.stderr, flush=True)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "peak_bytes": peaks[name]} for name, t in times.items()}


def gemm_operands(n: int, d: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """An (n x d) @ (d x 4d) matmul, timed among the variants: the achievable rate the plan is
    given (2 n d 4d FLOP per call)."""
    return torch.randn(n, d, dtype=dtype, device=device), torch.randn(d, 4 * d, dtype=dtype, device=device)


def err(measured: float, predicted: float) -> float:
    return measured / predicted - 1 if predicted else float("nan")


# ------------------------------------------------------------------ the run
def build(device: torch.device, dtype: torch.dtype, real: bool, seed: int = 0) -> LM:
    from transformers import AutoModelForCausalLM

    from tiny import tokenizer

    cfg = transformers_config(MODEL, **({} if real else SCALED))
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    tok = tokenizer()  # random weights: any tokenizer; ids are drawn below
    return LM(model, tok, name=MODEL + ("" if real else " (scaled down)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (scaled-down model) or cuda (real size)")
    ap.add_argument("--dtype", default=None, help="bf16 / fp32 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per forward (default 8 CUDA, 4 CPU)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512 CUDA, 64 CPU)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 32 CUDA, 8 CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu", default="h200", help="plan preset for the datasheet-based prediction (CUDA)")
    ap.add_argument("--skip-extras", action="store_true", help="CUDA: skip the CUDA tests and train_speed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    real = device.type == "cuda"
    if not real and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc keeps freed heap memory, so peak RSS would not see a variant's own allocations:
        # with every block >= 64 KiB mmap'ed (and unmapped when freed) RSS follows live tensors.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    dtype_name = args.dtype or ("bf16" if real else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    B = args.batch or (8 if real else 4)
    T = args.seq or (512 if real else 64)
    n_new = args.new_tokens or (32 if real else 8)
    shrink = 1 if real else SAE_SHRINK
    scale_note = ("real size" if real else
                  f"SCALED DOWN on CPU: d_model 2048->{SCALED['hidden_size']}, 40->{SCALED['num_hidden_layers']} layers "
                  f"(same 3 linear : 1 full pattern), 256->{SCALED['num_experts']} experts (top 8 + shared kept), "
                  f"SAE widths / {SAE_SHRINK}; the real-size run needs a GPU")
    print(f"bench/scale.py: {MODEL}, {scale_note}; {dtype_name}, batch {B} x {T}, {args.repeats} repeats", flush=True)

    with Peak(device) as load_peak:
        lm = build(device, dtype, real)
    arch = arch_from_config(lm.model.config.to_dict(), name=lm.name)
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    releases = []
    for repo in RELEASES:
        r = find_release(repo)
        releases.append(r if real else type(r)(r.repo, r.model, arch.n_layers, arch.d_model, r.d_sae // shrink, r.k))
    hw = hardware(None, memory_gib=1e6) if not real else hardware(args.gpu)
    print(f"model: {arch.params / 1e6:.1f}M parameters ({weights / 2**30:.2f} GiB), {arch.n_full} full + {arch.n_linear} "
          f"linear-attention layers, {arch.n_experts} experts top {arch.top_k}", flush=True)
    ga, gb = gemm_operands(B * T, arch.d_model, dtype, device)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, lm.tokenizer.vocab_size, (B, T), generator=gen).to(device)
    mask = torch.ones_like(ids)
    n = arch.n_layers
    sets = {"1 layer": [n // 2], "4 layers": sorted({n // 4, n // 2, 3 * n // 4, n - 1} if n >= 8 else set(range(4))),
            "all layers": list(range(n))}
    with torch.no_grad():
        variants = {"gemm": lambda: ga @ gb,
                    "plain forward": lambda: lm.model(input_ids=ids, attention_mask=mask, use_cache=False)}
        for label, layers in sets.items():
            variants[f"capture {label}"] = lambda layers=layers: lm.run_to_layers(ids, mask, layers)
        print("1. forward vs capture", file=sys.stderr)
        fwd = timed(variants, args.repeats, device)

    stat = "median_s" if real else "min_s"  # a shared CPU: the least-disturbed repeat
    rate = 2.0 * B * T * arch.d_model * 4 * arch.d_model / fwd["gemm"][stat]
    tflops = rate / 1e12
    print(f"GEMM rate {tflops:.3f} TFLOP/s ({dtype_name}, {B * T} x {arch.d_model} x {4 * arch.d_model})")
    rows = []  # (what, measured, predicted, unit)

    def compare(what, measured, predicted, unit):
        rows.append({"what": what, "measured": measured, "predicted": predicted, "unit": unit,
                     "error": err(measured, predicted)})

    compare("model weights", weights, plan(arch, [], Workload("capture", [0], dtype=dtype_name), hw, tflops=tflops)
            .memory[0].value, "bytes")
    full_flops = arch.forward_flops(B * T, T / 2, logits=B * T)
    compare("plain forward time", fwd["plain forward"][stat], full_flops / rate, "s")
    for label, layers in sets.items():
        p = plan(arch, [], Workload("capture", layers, batch=B, seq=T, tokens=B * T, dtype=dtype_name), hw, tflops=tflops)
        compare(f"capture {label} time", fwd[f"capture {label}"][stat], p.time_total, "s")
        transient = sum(t.value for t in p.memory if t.kind == "transient")
        compare(f"capture {label} peak memory", fwd[f"capture {label}"]["peak_bytes"], transient, "bytes")

    print("2. SAE encode", file=sys.stderr)
    saes = {r.repo: SAE.random(SAEConfig(d_model=arch.d_model, d_sae=r.d_sae, activation="topk", k=r.k), seed=1,
                               device=device) for r in releases}
    for sae in saes.values():
        sae.to(dtype if real else torch.float32)
    x = torch.randn(B * T, arch.d_model, device=device, dtype=next(iter(saes.values())).W_enc.dtype)
    with torch.no_grad():
        enc = timed({repo: (lambda s=s: s.encode_topk(x)) for repo, s in saes.items()}, args.repeats, device)
    for r in releases:
        flops = 2.0 * B * T * arch.d_model * r.d_sae
        compare(f"SAE encode W{r.d_sae // 1024}K time", enc[r.repo][stat], flops / rate, "s")
        enc[r.repo]["gflop_s"] = flops / enc[r.repo][stat] / 1e9

    print("3. steered generation", file=sys.stderr)
    layer = n // 2
    sae = saes[releases[0].repo]
    sae.cfg.layer = layer
    steers = {"plain": None, "add": Steering.add(sae, {5: 20.0}),
              "clamp": Steering(sae, [FeatureEdit(5, 0.0, "clamp")]),
              "gated": Steering(sae, [FeatureEdit(5, 20.0, "add", gate=6)])}
    prompt_ids = ids[:, : T // 4]

    def generate(steer):
        from contextlib import nullcontext

        from qscope.model import hooks

        ctx = hooks.edit(lm.layers, lm._edits(steer)) if steer is not None else nullcontext()
        with ctx, torch.no_grad():
            lm.model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=n_new,
                              min_new_tokens=n_new, do_sample=False, pad_token_id=0)

    gen_t = timed({name: (lambda s=s: generate(s)) for name, s in steers.items()}, args.repeats, device)
    base = gen_t["plain"][stat]
    for name in steers:
        gen_t[name]["overhead"] = gen_t[name][stat] / base - 1
        mode = "add" if name == "plain" else name
        p = plan(arch, [releases[0]] if name in ("clamp", "gated") else [],
                 Workload("steer", [layer], batch=B, seq=T // 4, new_tokens=n_new, steer_mode=mode, dtype=dtype_name,
                          sae_dtype=dtype_name if real else "fp32"), hw, tflops=tflops)
        compare(f"generate {name} time", gen_t[name][stat], p.time_total, "s")

    extras = {}
    if real and not args.skip_extras:
        print("5. CUDA tests and train_speed", file=sys.stderr)
        env = {**os.environ, "PYTHONPATH": str(ROOT.parent / "src")}
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/train/test_train.py", "-k", "cuda"],
                               cwd=ROOT.parent, capture_output=True, text=True, env=env)
        extras["cuda_tests"] = {"rc": tests.returncode, "tail": tests.stdout[-1500:]}
        speed = subprocess.run([sys.executable, str(ROOT / "train_speed.py"), "--device", "cuda", "--synthetic",
                                "--trainers", "qscope,qscope-e2e", "--out", str(ROOT / "results" / "train_speed-cuda.json")],
                               cwd=ROOT.parent, capture_output=True, text=True, env=env)
        extras["train_speed"] = {"rc": speed.returncode, "tail": speed.stdout[-2500:] + speed.stderr[-1000:]}

    # ------------------------------------------------------------------ report
    print(f"\n{'what':34s} {'measured':>12s} {'predicted':>12s} {'error':>8s}")
    for row in rows:
        fmt = (lambda v: f"{v / 2**20:9.1f} MiB") if row["unit"] == "bytes" else (lambda v: f"{v * 1e3:9.1f} ms")
        print(f"{row['what']:34s} {fmt(row['measured']):>12s} {fmt(row['predicted']):>12s} {row['error']:+8.0%}")
    plain = fwd["plain forward"][stat]
    print(f"\n(times: {stat[:-2]} of {args.repeats} repeats)")
    print("stop-at-layer speed-up vs plain forward: " + ", ".join(
        f"{label} {plain / fwd[f'capture {label}'][stat]:.2f}x" for label in sets))
    print("steering overhead vs plain generation: " + ", ".join(
        f"{name} {gen_t[name]['overhead']:+.1%}" for name in steers if name != "plain"))
    print("SAE encode: " + ", ".join(f"W{r.d_sae // 1024}K k{r.k} {enc[r.repo]['gflop_s']:.1f} GFLOP/s" for r in releases)
          + f" (GEMM {rate / 1e9:.1f} GFLOP/s)")
    for name, extra in extras.items():
        print(f"{name}: rc {extra['rc']}\n{extra['tail']}")
    if real:
        default = plan(arch, [], Workload("capture", list(range(n)), batch=B, seq=T, tokens=B * T, dtype=dtype_name),
                       hardware(args.gpu))
        print(f"plan with its default assumption ({default.rate_basis}): all-layer capture "
              f"{default.time_total * 1e3:.1f} ms predicted vs {fwd['capture all layers']['median_s'] * 1e3:.1f} ms measured")

    out = Path(args.out or ROOT / "results" / f"scale-{device.type}.json")
    write_json(out, {
        "model": MODEL, "scale": scale_note, "config": lm.model.config.to_dict(), "dtype": dtype_name, "batch": B,
        "seq": T, "new_tokens": n_new, "repeats": args.repeats, "time_statistic": stat, "gemm_tflops": tflops,
        "params": arch.params, "load_peak_bytes": load_peak.bytes, "forward": fwd, "encode": enc, "generate": gen_t,
        "comparison": rows, "extras": extras,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if real else platform.processor() or platform.machine()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
