"""TopK SAE training speed: qscope vs SAELens vs sparsify on the same cached activations.

Same data (SmolLM2-135M-Instruct layer 15 residuals from the default training mix, ~200k
tokens cached once under QSCOPE_HOME and reused; the last shards are held out), same width
(16 x 576 = 9216), k = 50, batch 4096 tokens, same lr (2e-4 / sqrt(d_sae / 2^14)), same
warm-up (steps / 10), same token budget and batch order. Each trainer runs in its own
subprocess; we report steady-state tokens/s (first 2 steps excluded) and tokens per CPU-second
of the process (on a shared, oversubscribed machine wall time mostly measures the neighbours;
CPU time much less so), peak memory growth during training (process RSS sampled every 5 ms from
/proc, over the RSS before the SAE was built with the data already loaded; on CUDA, peak
allocated GPU memory), and FVU / L0 on the held-out shards.

How each trainer is driven (none is given an LM):
- qscope: `qscope.train.TopKTrainer.step` on the batches; and, separately, the full
  `qscope.train.Trainer` reading the cache itself (shuffle buffer, metrics, checkpoints).
- SAELens: its own `SAETrainer.fit()` with a `TopKTrainingSAE`; SAELens takes any iterator
  of activation tensors as its data provider, so this is SAELens' real training loop.
- sparsify: its `Trainer` needs an HF model and a token dataset, so we drive its
  `SparseCoder` with the loop its Trainer runs for `loss_fn="fvu"` with `optimizer="adam"`
  (b_dec = first-batch mean, unit-norm decoder, parallel-gradient removal, Adam with its lr
  rule and linear warm-up schedule, dead-latent counters, AuxK with auxk_alpha = 1/32).

Each trainer's tokens/s is also given as a share of the encode limit: the machine's measured
fp32 (and bf16) matmul rate (bench/machine.py) divided by one dense encode matmul per token,
2 x d_model x d_sae multiply-adds. Each worker also measures that limit itself, in CPU time
and with its own threads, just before training (`encode_limit_tokens_per_cpu_s`): tokens per
CPU-second over that is the share a loaded machine distorts least (`share_of_encode_limit_cpu`).
`qscope-bf16` is the same trainer with `matmul="bf16"` (bf16 encoder matmul, fp32 weights and Adam).

Usage: python bench/train_speed.py [--tokens 400k] [--trainers qscope,qscope-bf16,sparsify,saelens,qscope-e2e]
       [--device cuda] [--synthetic] [--out FILE]
Writes bench/results/train_speed.json (or FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

D_MODEL, EXPANSION, K, BATCH, LAYER = 576, 16, 50, 4096, 15
D_SAE = D_MODEL * EXPANSION
LR = 2e-4 / (D_SAE / 2**14) ** 0.5
HOLDOUT_SHARDS = 2
RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
TRAINERS = ("qscope", "qscope-bf16", "sparsify", "saelens", "qscope-e2e")


# --------------------------------------------------------------------------- data


def cache_dir() -> Path:
    from qscope.paths import home_dir

    return home_dir("benchmarks") / "train_speed_cache"


def ensure_cache(folder: Path, tokens: int, synthetic: bool) -> tuple[Path, dict]:
    """The cached activations: real (default model, layer 15, default mix) unless that cannot
    be had (no model, no corpora), then synthetic data with residual-stream-like structure."""
    from qscope.train import build_cache, read_cache_meta, write_cache

    if not synthetic and (folder / "meta.json").is_file() and read_cache_meta(folder).get("complete"):
        return folder, read_cache_meta(folder)
    if not synthetic:
        try:
            from qscope.data import training_mix
            from qscope.model import load_model

            lm = load_model("default", dtype="float32")  # the published numbers use fp32 residuals
            print(f"building the activation cache in {folder} (once)...", file=sys.stderr)
            return folder, build_cache(lm, [LAYER], lambda: training_mix(seed=0), folder, total_tokens=tokens,
                                       ctx_len=256, lm_batch=16, shard_tokens=16384, data="mix")
        except Exception as exc:  # no model or corpus on this machine: fall back, and say so
            print(f"cannot build a real cache ({exc}); using synthetic activations", file=sys.stderr)
    folder = folder.with_name(folder.name + "_synthetic")
    if (folder / "meta.json").is_file():
        return folder, read_cache_meta(folder)
    return folder, write_cache(folder, {LAYER: synthetic_acts(tokens)}, shard_tokens=16384, model="synthetic")


def synthetic_acts(n: int, seed: int = 0) -> torch.Tensor:
    """Activations shaped like SmolLM2 layer-15 residuals (mean norm ~127, median token norm
    ~176): a shared mean vector plus ~40 active features per token out of 8 x d_model random
    unit directions with power-law frequencies, plus isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    n_dirs = 8 * D_MODEL
    dirs = torch.randn(n_dirs, D_MODEL, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)
    freq = torch.arange(1, n_dirs + 1).float() ** -0.5
    freq *= 40 / freq.sum()
    mean = torch.randn(D_MODEL, generator=gen)
    mean *= 127 / mean.norm()
    out = torch.empty(n, D_MODEL, dtype=torch.float16)
    for start in range(0, n, 8192):
        m = min(8192, n - start)
        codes = torch.rand(m, n_dirs, generator=gen) * 33 * (torch.rand(m, n_dirs, generator=gen) < freq)
        out[start:start + m] = (codes @ dirs + mean + 2.1 * torch.randn(m, D_MODEL, generator=gen)).half()
    return out


def load_rows(folder: Path, shards: list[str]) -> torch.Tensor:
    """Rows of `shards` into one preallocated fp16 tensor (no concatenation temporaries)."""
    from safetensors import safe_open

    sizes = []
    for name in shards:
        with safe_open(str(folder / name), framework="pt") as fh:
            sizes.append(fh.get_slice(f"layer{LAYER}").get_shape()[0])
    out = torch.empty(sum(sizes), D_MODEL, dtype=torch.float16)
    offset = 0
    for name, size in zip(shards, sizes):
        with safe_open(str(folder / name), framework="pt") as fh:
            out[offset:offset + size] = fh.get_tensor(f"layer{LAYER}")
        offset += size
    return out


def split(meta: dict) -> tuple[list[str], list[str]]:
    files = [s["file"] for s in meta["shards"]]
    return files[:-HOLDOUT_SHARDS], files[-HOLDOUT_SHARDS:]


def batches(data: torch.Tensor, tokens: int, seed: int = 0):
    """The same shuffled batches for every trainer: epochs over a fixed token permutation."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(data.shape[0], generator=gen)
    for step in range(tokens // BATCH):
        positions = torch.arange(step * BATCH, (step + 1) * BATCH) % data.shape[0]
        yield data[perm[positions]].float()


# --------------------------------------------------------------------------- measuring


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS every 5 ms in a thread; `.peak` is the highest seen."""

    def __init__(self):
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class StepClock:
    """Times each step; steady-state throughput leaves out the first `skip` steps."""

    def __init__(self, skip: int = 2, device: str = "cpu"):
        self.marks: list[float] = []
        self.cpu: list[float] = []
        self.skip = skip
        self.cuda = device.startswith("cuda")

    def tick(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())
        self.cpu.append(cpu_seconds())

    def tokens_per_s(self) -> float:
        m = self.marks[self.skip:]
        return BATCH * (len(m) - 1) / (m[-1] - m[0]) if len(m) > 1 else float("nan")

    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second of this process (all its threads): unlike wall time, barely
        moved by other processes competing for the cores."""
        c = self.cpu[self.skip:]
        return BATCH * (len(c) - 1) / (c[-1] - c[0]) if len(c) > 1 else float("nan")


@torch.no_grad()
def heldout_fvu(reconstruct, data: torch.Tensor) -> tuple[float, float]:
    """Pooled FVU and mean L0 of `reconstruct(x) -> (x_hat, l0_sum)` on held-out rows."""
    err = sxx = l0 = 0.0
    sx = torch.zeros(D_MODEL, dtype=torch.float64, device=data.device)
    for start in range(0, data.shape[0], BATCH):
        x = data[start:start + BATCH].float()
        x_hat, n_active = reconstruct(x)
        err += float((x - x_hat).double().pow(2).sum())
        sx += x.double().sum(0)
        sxx += float(x.double().pow(2).sum())
        l0 += float(n_active)
    n = data.shape[0]
    return err / (sxx - float((sx**2).sum()) / n), l0 / n


# --------------------------------------------------------------------------- trainers


def run_qscope(train: torch.Tensor, tokens: int, clock: StepClock, matmul: str = "auto"):
    from qscope.sae import SAE, SAEConfig
    from qscope.train import TopKTrainer, lr_at

    sae = SAE.random(SAEConfig(d_model=D_MODEL, d_sae=D_SAE, k=K), seed=0, device=train.device)
    trainer = TopKTrainer(sae, K, LR, dead_after_tokens=dead_after(tokens), matmul=matmul)
    steps = tokens // BATCH
    for step, x in enumerate(batches(train, tokens)):
        if step == 0:
            trainer.init_from_batch(x)
        trainer.step(x, lr_at(step, LR, steps, steps // 10))
        clock.tick()

    def reconstruct(x):
        vals, idx = sae.encode_topk(x)
        return sae.decode_sparse(vals, idx), (vals > 0).sum()

    return reconstruct


def run_qscope_e2e(folder: Path, tokens: int, clock: StepClock, out: Path, device: str):
    from qscope.train import TrainConfig, Trainer

    cfg = TrainConfig(cache_dir=str(folder), out_dir=str(out), batch_size=BATCH, total_tokens=tokens, k=K,
                      expansion=EXPANSION, lr=LR, holdout_shards=HOLDOUT_SHARDS, log_every=10, ckpt_every=10**9,
                      dead_after_tokens=dead_after(tokens), device=device)
    trainer = Trainer(cfg, on_step=lambda t: clock.tick())
    summary = trainer.run()
    sae = trainer.trainers[LAYER].sae

    def reconstruct(x):
        vals, idx = sae.encode_topk(x)
        return sae.decode_sparse(vals, idx), (vals > 0).sum()

    return reconstruct, summary


def run_saelens(train: torch.Tensor, tokens: int, clock: StepClock):
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    device = str(train.device)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=K, device=device))
    steps = tokens // BATCH
    cfg = SAETrainerConfig(total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=LR,
                           lr_warm_up_steps=steps // 10, lr_end=LR, device=device,
                           dead_feature_window=max(1, dead_after(tokens) // BATCH),
                           logger=LoggingConfig(log_to_wandb=False))

    def provider():
        for x in batches(train, tokens):
            clock.tick()
            yield x
        while True:  # SAETrainer may ask once more than it trains
            yield x

    SAETrainer(cfg, sae, provider()).fit()
    clock.tick()
    clock.marks = clock.marks[1:]  # tick k happens when step k-1 has finished
    sae.eval()

    def reconstruct(x):
        acts = sae.encode(x)
        return sae.decode(acts), (acts > 0).sum()

    return reconstruct, sae_lens.__version__


def run_sparsify(train: torch.Tensor, tokens: int, clock: StepClock):
    from importlib.metadata import version

    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    sae = SparseCoder(D_MODEL, SparseCoderConfig(num_latents=D_SAE, k=K), device=train.device, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    steps = tokens // BATCH
    sched = get_linear_schedule_with_warmup(opt, steps // 10, steps)
    since_fired = torch.zeros(D_SAE, dtype=torch.long, device=train.device)
    threshold = dead_after(tokens)
    for step, x in enumerate(batches(train, tokens)):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > threshold)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[out.latent_indices.flatten()] = 0
        clock.tick()

    def reconstruct(x):
        out = sae(x)
        return out.sae_out, (out.latent_acts > 0).sum()

    return reconstruct, version("eai-sparsify")


def dead_after(tokens: int) -> int:
    return min(10_000_000, tokens // 10)


def worker(name: str, folder: Path, tokens: int, out: Path, device: str = "cpu") -> dict:
    from qscope.train import read_cache_meta

    torch.manual_seed(0)
    meta = read_cache_meta(folder)
    train_shards, held_shards = split(meta)
    held = load_rows(folder, held_shards).to(device)
    train = load_rows(folder, train_shards).to(device) if name != "qscope-e2e" else None
    clock = StepClock(device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    limits_cpu = encode_limits_cpu(device)
    mem0 = torch.cuda.memory_allocated() if cuda else rss_bytes()
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    extra: dict = {}
    with PeakRSS() as peak:
        if name in ("qscope", "qscope-bf16"):
            matmul = "bf16" if name == "qscope-bf16" else "auto"
            reconstruct = run_qscope(train, tokens, clock, matmul)
            extra["how"] = f"qscope.train.TopKTrainer.step on the shared batches (matmul={matmul})"
        elif name == "qscope-e2e":
            reconstruct, summary = run_qscope_e2e(folder, tokens, clock, out / "qscope-e2e", device)
            extra["how"] = "qscope.train.Trainer end to end, reading the cache itself (store + metrics)"
            extra["trainer_heldout_fvu"] = summary["heldout"][str(LAYER)]["fvu"]
        elif name == "saelens":
            reconstruct, ver = run_saelens(train, tokens, clock)
            extra["how"] = f"sae-lens {ver}: SAETrainer.fit() with TopKTrainingSAE, activation iterator"
        elif name == "sparsify":
            reconstruct, ver = run_sparsify(train, tokens, clock)
            extra["how"] = (f"eai-sparsify {ver}: SparseCoder + Adam loop replicating sparsify.Trainer "
                            "(its Trainer needs an HF model + dataset)")
        else:
            raise SystemExit(f"unknown trainer {name}")
    wall = time.perf_counter() - start
    grown = (torch.cuda.max_memory_allocated() if cuda else peak.peak) - mem0
    fvu, l0 = heldout_fvu(reconstruct, held)
    return {"trainer": name, "tokens": (tokens // BATCH) * BATCH, "steps": tokens // BATCH,
            "tokens_per_s": round(clock.tokens_per_s(), 1), "tokens_per_cpu_s": round(clock.tokens_per_cpu_s(), 1),
            "wall_s": round(wall, 2),
            "peak_mem_growth_mb": round(grown / 2**20, 1), "memory": "cuda allocated" if cuda else "process RSS",
            "heldout_fvu": round(fvu, 5),
            "heldout_l0": round(l0, 2), "heldout_tokens": int(held.shape[0]),
            "load_average_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "encode_limit_tokens_per_cpu_s": limits_cpu,
            "share_of_encode_limit_cpu": round(clock.tokens_per_cpu_s() / limits_cpu["float32"], 3), **extra}


def encode_limits_cpu(device: str) -> dict[str, float]:
    """Tokens per CPU-second of this process at one dense encode matmul per token, fp32 and bf16,
    measured here with this worker's threads (CPU time: other jobs distort it far less)."""
    from machine import matmul_gflop_s

    flops = 2 * D_MODEL * D_SAE
    return {name: round(matmul_gflop_s(dtype, device, clock=time.process_time) * 1e9 / flops, 1)
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}


# --------------------------------------------------------------------------- main


def main() -> None:
    from qscope.train import parse_count

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="400k", help="training tokens per trainer (default 400k, ~2 epochs)")
    ap.add_argument("--cache-tokens", default="232768", help="tokens to cache (train + held-out shards)")
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--synthetic", action="store_true", help="use synthetic activations, not the default model")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--parallel", action="store_true",
                    help="run the trainers at the same time (faster on a busy machine; compare tokens per "
                         "CPU-second then, not wall tokens/s)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per trainer (default: torch's own; 1 with --parallel)")
    ap.add_argument("--out", help="JSON report path (default bench/results/train_speed.json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tokens = parse_count(args.tokens)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = worker(args.worker, Path(args.cache), tokens, Path(args.scratch), args.device)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from machine import describe, print_machine, share

    machine = describe(args.device)
    print_machine(machine)
    limits = {name: rate * 1e9 / (2 * D_MODEL * D_SAE) for name, rate in machine["matmul_gflop_s"].items()}
    folder, meta = ensure_cache(cache_dir(), parse_count(args.cache_tokens), args.synthetic)
    train_shards, _ = split(meta)
    train_tokens = sum(s["tokens"] for s in meta["shards"] if s["file"] in train_shards)
    print(f"cache: {folder} ({meta.get('model')}, layer {LAYER}, {train_tokens:,} train + "
          f"{meta['tokens'] - train_tokens:,} held-out tokens); budget {tokens:,} tokens = {tokens // BATCH} steps "
          f"of {BATCH}; d_sae {D_SAE}, k {K}, lr {LR:.3g}", file=sys.stderr)
    import tempfile

    names = args.trainers.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        procs = []
        for name in names:
            print(f"  running {name}...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", name, "--cache", str(folder), "--tokens", str(tokens),
                   "--scratch", scratch, "--device", args.device,
                   "--threads", str(args.threads or (1 if args.parallel else 0))]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            if not args.parallel:
                procs[-1].wait()
        rows = []
        for name, proc in zip(names, procs):
            stdout, stderr = proc.communicate()
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                rows.append({"trainer": name, "error": (stderr.strip().splitlines() or ["failed"])[-1][:300]})
                print(f"  {name} failed: {rows[-1]['error']}", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            rows[-1]["threads"] = args.threads or (1 if args.parallel else torch.get_num_threads())
    by_name = {r["trainer"]: r for r in rows if "error" not in r}
    base = by_name.get("qscope")
    for r in rows:
        if base and "error" not in r:
            r["qscope_speedup_vs_this"] = round(base["tokens_per_s"] / r["tokens_per_s"], 2)
            r["qscope_speedup_vs_this_cpu_time"] = round(base["tokens_per_cpu_s"] / r["tokens_per_cpu_s"], 2)
        if "error" not in r:
            r["share_of_encode_limit"] = {name: share(r["tokens_per_s"], limit) for name, limit in limits.items()}
    report = {"bench": "train_speed", "data": {"cache": str(folder), "model": meta.get("model"), "layer": LAYER,
                                                "train_tokens": train_tokens,
                                                "heldout_tokens": meta["tokens"] - train_tokens},
              "setup": {"d_model": D_MODEL, "d_sae": D_SAE, "k": K, "batch": BATCH, "lr": LR, "tokens": tokens,
                        "warmup_steps": (tokens // BATCH) // 10, "dead_after_tokens": dead_after(tokens)},
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
                          "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                          "load_average": os.getloadavg(), "trainers_run_in_parallel": args.parallel,
                          **machine, "encode_limit_tokens_per_s": limits},
              "results": rows}
    target = Path(args.out) if args.out else RESULTS
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    print(f"encode limit (one dense {D_MODEL} x {D_SAE} matmul per token): "
          + ", ".join(f"{name} {limit:,.0f} tokens/s" for name, limit in limits.items()))
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    print(f"\nwritten {target}")


def print_table(rows: list[dict]) -> None:
    head = (f"{'trainer':<12} {'tok/s':>9} {'of fp32 lim':>11} {'qscope x':>9} {'tok/cpu-s':>10} {'qscope x':>9} "
            f"{'of lim cpu':>10} {'+mem MB':>8} {'FVU':>8} {'L0':>6}  how")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['trainer']:<12} failed: {r['error']}")
            continue
        print(f"{r['trainer']:<12} {r['tokens_per_s']:>9.0f} {r['share_of_encode_limit']['float32']:>11.0%} "
              f"{r.get('qscope_speedup_vs_this', float('nan')):>9.2f} "
              f"{r['tokens_per_cpu_s']:>10.0f} {r.get('qscope_speedup_vs_this_cpu_time', float('nan')):>9.2f} "
              f"{r['share_of_encode_limit_cpu']:>10.0%} {r['peak_mem_growth_mb']:>8.0f} {r['heldout_fvu']:>8.4f} {r['heldout_l0']:>6.1f}  {r['how']}")


if __name__ == "__main__":
    main()
