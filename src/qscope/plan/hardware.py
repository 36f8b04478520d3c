"""Accelerators the plan knows, and the throughput it assumes on them.

Peak numbers are the vendors' datasheet values for dense math (no structured sparsity);
memory is what `nvidia-smi` reports as total. The plan's time estimates divide FLOPs by
`peak x efficiency`; DEFAULT_EFFICIENCY is an assumption (a transformers eager forward with
SDPA attention rarely exceeds ~40% of peak; MoE expert loops do worse), so the plan prints it
and `--tflops` / `--efficiency` replace it with a measured rate (bench/scale.py measures one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import QScopeError

GIB = 2**30
DEFAULT_EFFICIENCY = 0.35
# Memory the CUDA context, cuBLAS workspaces and allocator fragmentation take from each GPU.
RESERVED_GIB = 1.5


@dataclass(frozen=True)
class Hardware:
    name: str
    memory_gib: float  # per device
    bf16_tflops: float  # dense peak per device
    fp32_tflops: float  # dense peak per device (plain fp32, no TF32)
    bandwidth_gbs: float  # memory bandwidth per device, GB/s
    count: int = 1

    def peak_tflops(self, dtype: str) -> float:
        return self.bf16_tflops if dtype == "bf16" else self.fp32_tflops

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "h200": Hardware("H200 141GB", 139.8, 989.0, 67.0, 4800.0),
    "h100": Hardware("H100 SXM 80GB", 79.6, 989.0, 67.0, 3350.0),
    "a100-80g": Hardware("A100 80GB", 79.2, 312.0, 19.5, 2039.0),
    "a100-40g": Hardware("A100 40GB", 39.4, 312.0, 19.5, 1555.0),
    "l40s": Hardware("L40S 48GB", 44.4, 362.0, 91.6, 864.0),
    "a10": Hardware("A10 24GB", 22.0, 125.0, 31.2, 600.0),
    "rtx4090": Hardware("RTX 4090 24GB", 23.6, 165.0, 82.6, 1008.0),
}


def hardware(preset: str | None = "h100", memory_gib: float | None = None, count: int = 1,
             bandwidth_gbs: float | None = None) -> Hardware:
    """A preset with any field replaced; without a preset, `memory_gib` is required and the peak
    is unknown (the plan then needs an achievable rate, `--tflops`)."""
    if count < 1:
        raise QScopeError(f"--gpus must be at least 1, not {count}")
    if preset:
        key = preset.lower().replace(" ", "").replace("_", "-")
        if key not in PRESETS:
            raise QScopeError(f"unknown GPU {preset!r} (one of {', '.join(PRESETS)}; or give --gpu-mem and --tflops)")
        base = PRESETS[key]
    elif memory_gib is None:
        raise QScopeError("without --gpu, give --gpu-mem (GiB per device) and --tflops (achievable TFLOP/s)")
    else:
        base = Hardware("custom", memory_gib, 0.0, 0.0, bandwidth_gbs or 0.0)
    return Hardware(base.name, memory_gib if memory_gib is not None else base.memory_gib, base.bf16_tflops,
                    base.fp32_tflops, bandwidth_gbs if bandwidth_gbs is not None else base.bandwidth_gbs, count)
