"""The machine a benchmark ran on, and the limits its figures are read against.

Every bench script calls `describe()` once, prints it with `print_machine`, stores it in its
JSON, and states its figures as a share of a limit (`share`):
- matmul limit: the measured rate of one dense (4096 x 576) @ (576 x 9216) matmul - the SAE
  encode shape of the default model - in fp32 and in bf16 (`matmul_gflop_s`);
- forward limit: that rate divided by the multiply-adds of one token's forward
  (`forward_flops_per_token`): what the LM could reach if every matmul ran at the big-matmul rate.
CPU flags that decide those rates (AVX2, AVX-512, AVX512-BF16, AMX) come from
`qscope.model.hardware`, which also picks `--dtype auto`, so numbers from different machines
can be read side by side.

The scripts also share from here their common options (`add_options`), the interleaved timing
loop (`interleaved`, `summary`) and a batch of real-text token ids (`token_batch`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Hashable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from qscope.model.hardware import MATRIX_FLAGS, auto_dtype, cpu_flags, cpu_name  # noqa: E402
from qscope.provenance import record  # noqa: E402

MATMUL_SHAPE = (4096, 576, 9216)  # (tokens, d_model, d_sae) of the default SAEs' encode
RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflop_s(dtype: torch.dtype, device: str = "cpu", shape: tuple[int, int, int] = MATMUL_SHAPE,
                   repeats: int = 5, warmup: int = 2, clock=time.perf_counter) -> float:
    """Median GFLOP/s (2 m k n per call) of one dense matmul in `dtype` on `device`; per second of
    `clock` (wall time by default; `time.process_time` gives GFLOP per CPU-second of this process,
    which other jobs on a shared machine distort far less)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync(device)
            start = clock()
            a @ b
            sync(device)
            if i >= warmup:
                times.append(clock() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def describe(device: str = "cpu") -> dict:
    """CPU model and flags, torch build and threads, the dtype `auto` picks, the measured
    fp32 / bf16 matmul rates on `device` (a few seconds), and the run's provenance."""
    dev = torch.device(device)
    choice = auto_dtype(dev.type)
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "flags": cpu_flags(),
        "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "auto_dtype": choice.name, "auto_dtype_why": choice.why,
        "matmul_shape": list(MATMUL_SHAPE),
        "matmul_gflop_s": {name: round(matmul_gflop_s(dt, device), 1)
                           for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "provenance": record(),  # the command line, commit and whether the tree was clean
    }


def print_machine(info: dict, file=sys.stdout) -> None:
    flags = " ".join(f"{flag}:{'yes' if info['flags'][flag] else 'no'}" for flag in MATRIX_FLAGS)
    rates = info["matmul_gflop_s"]
    where = info["gpu"] or f"{info['cpu']}, {info['cores']} cores, {info['threads']} torch threads"
    print(f"machine: {where}; torch {info['torch']} ({info['torch_cpu_capability']}, "
          f"oneDNN {'yes' if info.get('mkldnn') else 'no'})", file=file)
    print(f"  CPU flags: {flags}", file=file)
    print(f"  matmul {'x'.join(map(str, info['matmul_shape']))} on {info['device']}: fp32 {rates['float32']:.0f} GFLOP/s, "
          f"bf16 {rates['bfloat16']:.0f} GFLOP/s ({rates['bfloat16'] / rates['float32']:.2f}x); "
          f"--dtype auto -> {info['auto_dtype']} ({info['auto_dtype_why']})", file=file)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def forward_flops_per_token(lm, seq: int, n_layers: int | None = None, head: bool = True) -> float:
    """Multiply-adds x 2 of one token's forward through the first `n_layers` decoder blocks
    (all by default) and, with `head`, the unembedding: every Linear weight once, plus causal
    attention scores and mixing over on average seq / 2 earlier positions."""
    from qscope.model.layers import text_config

    cfg = text_config(lm.model)
    attn_width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    blocks = lm.layers if n_layers is None else lm.layers[:n_layers]
    linear = sum(m.weight.numel() for block in blocks for m in block.modules() if isinstance(m, torch.nn.Linear))
    head_params = lm.model.get_output_embeddings().weight.numel() if head else 0
    return 2.0 * (linear + head_params) + 2.0 * len(blocks) * seq * attn_width


def forward_limit(info: dict, lm, seq: int, dtype: torch.dtype | str, **kwargs) -> float:
    """Tokens/s the forward would reach at the machine's big-matmul rate in `dtype`."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return info["matmul_gflop_s"][name] * 1e9 / forward_flops_per_token(lm, seq, **kwargs)


def share(value: float, limit: float) -> float:
    """`value` as a fraction of `limit` (same unit)."""
    return value / limit if limit else float("nan")


def add_options(parser: argparse.ArgumentParser, name: str, helps: dict[str, str] | None = None,
                **defaults) -> argparse.ArgumentParser:
    """`--<option>` for each keyword (its type that of the default, `_` written `-`, help text from
    `helps`), then `--out` defaulting to bench/results/<name>.json: the options most bench scripts share."""
    for option, default in defaults.items():
        parser.add_argument("--" + option.replace("_", "-"), type=type(default), default=default,
                            help=(helps or {}).get(option))
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    return parser


def interleaved(variants: dict[Hashable, Callable[[], object]], repeats: int, warmup: int,
                progress: Callable[[int], None] | None = None) -> dict[Hashable, list[float]]:
    """Seconds per call of each variant, `repeats` rounds of one call each, after `warmup` rounds:
    one call of every variant per round, so load from other processes hits all of them alike.
    `progress(round)` is called after each round."""
    times: dict[Hashable, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                if round_ >= warmup:
                    times[name].append(elapsed)
            if progress:
                progress(round_)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": [round(t, 5) for t in times]}


def token_batch(lm, batch: int, seq: int) -> torch.Tensor:
    """(batch, seq) ids cut from the sample texts (repeated as needed): real text, no padding."""
    from qscope.metrics import SAMPLE_TEXTS

    once = [i for text in SAMPLE_TEXTS for i in lm.tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]]
    ids = once * -(-batch * seq // len(once))  # tokenised once, repeated to length
    return torch.tensor(ids[: batch * seq]).reshape(batch, seq)


if __name__ == "__main__":
    print_machine(describe("cuda" if torch.cuda.is_available() else "cpu"))
