"""What the machine's matrix units can do, and the LM dtype `auto` picks from it.

bf16 halves the bytes a forward moves and, on hardware with bf16 matrix instructions, runs
matmuls several times faster than fp32; without them (AVX2-only CPUs) torch emulates bf16 and
is 5-7x slower. Measured with `python bench/dtype_forward.py` (docs/benchmarks.md): on an AMD
EPYC with AVX512-BF16 and no AMX, the default model's forward ran ~2x faster in bf16, and AMX
CPUs are faster still, so `auto` picks bf16 on CPUs with either, on CUDA GPUs, and fp32
elsewhere (AVX2-only CPUs, Apple MPS, CPUs without oneDNN).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import torch

# /proc/cpuinfo flags that decide matmul speed, in the names Linux uses.
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> dict[str, bool]:
    """Which of `MATRIX_FLAGS` this CPU has: from /proc/cpuinfo on Linux, else torch's own probes."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next(line for line in fh if line.startswith("flags"))
        present = set(line.split(":", 1)[1].split())
        return {flag: flag in present for flag in MATRIX_FLAGS}
    except (OSError, StopIteration):
        probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
                  "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported",
                  "amx_bf16": "_is_amx_tile_supported"}
        return {flag: bool(getattr(torch.cpu, fn, lambda: False)()) for flag, fn in probes.items()}


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    why: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=None)
def auto_dtype(device_type: str) -> DtypeChoice:
    """The LM dtype `--dtype auto` picks on this machine for a device type (cpu, cuda, mps, ...)."""
    if device_type == "cuda":
        return DtypeChoice(torch.bfloat16, "CUDA GPU")
    if device_type != "cpu":
        return DtypeChoice(torch.float32, f"{device_type}: bf16 not measured faster there")
    flags = cpu_flags()
    if not torch.backends.mkldnn.is_available():
        return DtypeChoice(torch.float32, "CPU without oneDNN: bf16 matmul is emulated")
    if flags["amx_bf16"]:
        return DtypeChoice(torch.bfloat16, "CPU with AMX")
    if flags["avx512_bf16"]:
        return DtypeChoice(torch.bfloat16, "CPU with AVX512-BF16")
    return DtypeChoice(torch.float32, "CPU without AMX or AVX512-BF16: bf16 matmul is emulated (slower)")
