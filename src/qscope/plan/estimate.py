"""Memory and time of a qscope job before it runs: what a user checks before renting a GPU.

Every estimate is a list of `Term`s, each with the formula it came from (symbols, then the
numbers put in), so a user can see what dominates and redo the sum. Memory terms are exact
where they are shapes (weights, SAEs, caches) and approximate where they are transient
activations (the largest tensors one layer builds; bench/scale.py measures the error). Time
is FLOPs divided by an achievable rate, and for generation at least the bytes of weights each
step reads divided by memory bandwidth.

Symbols: P parameters, b bytes per model value, s bytes per SAE value, B batch (sequences),
T tokens per sequence, d residual width, D SAE width, k SAE top-k, L SAE layers, V vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..errors import QScopeError
from ..parse import int_list
from ..sae.registry import Release
from .arch import Arch
from .hardware import DEFAULT_EFFICIENCY, GIB, RESERVED_GIB, Hardware

TASKS = ("capture", "steer", "footprint", "train")
BYTES = {"bf16": 2, "fp32": 4}
INDEX_BYTES = 8  # torch.topk indices are int64


@dataclass
class Workload:
    """The job: which task, at which layers, on how much text."""

    task: str
    layers: list[int]
    batch: int = 8
    seq: int = 512
    tokens: int = 1_000_000  # capture / train: tokens processed in all
    texts: int = 1000  # footprint: samples (each `seq` tokens, features at the last one)
    new_tokens: int = 64  # steer: tokens generated per sequence
    steer_mode: str = "add"  # add | clamp | gated (clamp and gated encode every step)
    sae_batch: int = 4096  # train: tokens per SAE optimiser step
    buffer_tokens: int = 65536  # train: shuffle buffer of residuals per layer
    dtype: str = "bf16"
    sae_dtype: str = "fp32"

    def check(self) -> None:
        if self.task not in TASKS:
            raise QScopeError(f"unknown task {self.task!r} (one of {', '.join(TASKS)})")
        for name in ("dtype", "sae_dtype"):
            if getattr(self, name) not in BYTES:
                raise QScopeError(f"{name} must be bf16 or fp32, not {getattr(self, name)!r}")
        if self.steer_mode not in ("add", "clamp", "gated"):
            raise QScopeError(f"steer mode must be add, clamp or gated, not {self.steer_mode!r}")
        for name in ("batch", "seq", "tokens", "texts", "new_tokens", "sae_batch"):
            if getattr(self, name) < 1:
                raise QScopeError(f"{name} must be at least 1, not {getattr(self, name)}")


@dataclass
class Term:
    name: str
    value: float  # bytes (memory) or seconds (time)
    formula: str
    kind: str = "resident"  # memory: resident | transient ; time: compute | bandwidth
    flops: float | None = None


@dataclass
class Plan:
    model: str
    model_source: str
    arch: dict
    releases: list[dict]
    workload: dict
    hardware: dict
    rate_tflops: float
    rate_basis: str
    memory: list[Term]
    time: list[Term]
    notes: list[str] = field(default_factory=list)

    @property
    def memory_total(self) -> float:
        return sum(t.value for t in self.memory)

    @property
    def per_device(self) -> float:
        """Peak bytes on the fullest device: resident terms split evenly over the devices
        (device_map="auto" spreads layers, SAEs follow their layer), transients on one."""
        resident = sum(t.value for t in self.memory if t.kind == "resident")
        transient = sum(t.value for t in self.memory if t.kind == "transient")
        return resident / self.hardware["count"] + transient

    @property
    def capacity(self) -> float:
        return (self.hardware["memory_gib"] - RESERVED_GIB) * GIB

    @property
    def fits(self) -> bool:
        return self.per_device <= self.capacity

    @property
    def time_total(self) -> float:
        return sum(t.value for t in self.time)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items()}
        out.update(memory_total_bytes=self.memory_total, per_device_bytes=self.per_device,
                   capacity_bytes=self.capacity, fits=self.fits, time_total_s=self.time_total)
        return out


def _gb(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def _e(x: float) -> str:
    return f"{x:.4g}"


def resolve_layers(spec: str | Sequence[int] | None, arch: Arch, releases: Sequence[Release]) -> list[int]:
    """Layer list from 'all', '6,15,24' or a sequence; checked against the model and releases."""
    n = min([arch.n_layers] + [r.n_layers for r in releases])
    if spec is None or spec == "all":
        return list(range(n))
    if isinstance(spec, str):
        layers = int_list(spec, "--layers", "6,15,24 (or all)")
    else:
        layers = [int(x) for x in spec]
    if not layers:
        raise QScopeError("no layer given")
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise QScopeError(f"layer {bad[0]} out of range: {arch.name} has SAE layers 0..{n - 1}")
    return sorted(set(layers))


def check_releases(arch: Arch, releases: Sequence[Release]) -> None:
    for r in releases:
        if r.d_model != arch.d_model:
            raise QScopeError(f"SAE release {r.repo} reads d_model={r.d_model}, but {arch.name} has d_model={arch.d_model}")


def _forward_transient(arch: Arch, tokens: int, b: int) -> tuple[float, str]:
    """Largest tensors one decoder layer holds at once in a no-grad forward of `tokens` tokens."""
    d = arch.d_model
    mlp = 3 * arch.widest_mlp  # gate, up, act(gate)*up
    value = tokens * (4 * d + mlp) * b
    formula = f"N·(4d + 3·I_max)·b = {tokens}·(4·{d} + 3·{arch.widest_mlp})·{b}"
    if any(arch.moe_layers):
        router = tokens * arch.n_experts * 4 + tokens * arch.top_k * (arch.n_experts + 1) * INDEX_BYTES
        value += router
        formula += f" + router N·E·4 + expert mask N·k_e·(E+1)·8 (E={arch.n_experts}, k_e={arch.top_k})"
    if arch.n_linear:
        conv_dim = 2 * arch.lin_k_heads * arch.lin_k_dim + arch.lin_v_heads * arch.lin_v_dim
        # the chunked delta rule works in fp32: q, k, v, decays and the per-chunk C x C blocks
        linear = tokens * (3 * conv_dim + arch.lin_v_heads * 64) * 4
        if linear > tokens * mlp * b:
            value += linear - tokens * mlp * b
            formula += f" (linear attention: N·(3·{conv_dim} + H_v·64)·4 fp32 dominates)"
    return value, formula


def _rate(hw: Hardware, dtype: str, tflops: float | None, efficiency: float) -> tuple[float, str]:
    if tflops is not None:
        if tflops <= 0:
            raise QScopeError(f"--tflops must be positive, not {tflops}")
        return tflops * 1e12, f"{tflops:g} TFLOP/s achievable (given)"
    peak = hw.peak_tflops(dtype)
    if peak <= 0:
        raise QScopeError(f"no peak rate known for {hw.name}: give --tflops (achievable TFLOP/s)")
    return peak * efficiency * 1e12, f"{peak:g} TFLOP/s {dtype} peak ({hw.name}) x {efficiency:g} efficiency (assumed)"


def _compute(name: str, flops: float, rate: float, formula: str) -> Term:
    return Term(name, flops / rate, f"{formula} = {_e(flops)} FLOP / rate", "compute", flops)


def plan(arch: Arch, releases: Sequence[Release], work: Workload, hw: Hardware, tflops: float | None = None,
         efficiency: float = DEFAULT_EFFICIENCY) -> Plan:
    """Memory and time of `work` on `hw` for the model `arch` with the SAE `releases`."""
    work.check()
    check_releases(arch, releases)
    if work.task in ("train",) and not releases:
        raise QScopeError("train: give a release (its width and k are the SAE to train)")
    rate, basis = _rate(hw, work.dtype, tflops, efficiency)
    b, s = BYTES[work.dtype], BYTES[work.sae_dtype]
    d, layers = arch.d_model, work.layers
    L, last, B, T = len(layers), max(layers), work.batch, work.seq
    mem: list[Term] = [Term("model weights", arch.params * b, f"P·b = {_e(arch.params)}·{b}")]
    times: list[Term] = []
    notes = [f"weights: {arch.params / 1e9:.2f}B parameters ({arch.active_params / 1e9:.2f}B active per token), "
             f"{arch.n_full} full-attention + {arch.n_linear} linear-attention layers"
             + (f", {sum(arch.moe_layers)} MoE layers ({arch.n_experts} experts, top {arch.top_k})" if any(arch.moe_layers) else "")]

    sae_params = [(r, 2 * d * r.d_sae + r.d_sae + d) for r in releases]
    if work.task != "train":
        for r, p in sae_params:
            mem.append(Term(f"SAEs {r.repo}", L * p * s, f"L·(2dD + D + d)·s = {L}·(2·{d}·{r.d_sae} + {r.d_sae} + {d})·{s}"))

    if work.task in ("capture", "footprint"):
        n = B * T
        value, formula = _forward_transient(arch, n, b)
        mem.append(Term("forward activations (one layer)", value, formula, "transient"))
        mem.append(Term("captured residuals (one batch)", L * n * d * b, f"L·B·T·d·b = {L}·{B}·{T}·{d}·{b}", "transient"))
        for r in releases:
            rows = n if work.task == "capture" else B
            what = "B·T" if work.task == "capture" else "B (last token)"
            mem.append(Term(f"SAE encode {r.repo} (one layer)", rows * (r.d_sae * s + r.k * (s + INDEX_BYTES)),
                            f"{what}·(D·s + k·(s+8)) = {rows}·({r.d_sae}·{s} + {r.k}·{s + INDEX_BYTES})", "transient"))
        total = work.tokens if work.task == "capture" else work.texts * T
        times.append(_compute(f"forward to layer {last} (stop there)", arch.forward_flops(total, T / 2, upto=last), rate,
                              f"tokens·Σ_(i≤{last}) flops_i(ctx=T/2), tokens={total}"))
        for r in releases:
            rows = total if work.task == "capture" else work.texts
            times.append(_compute(f"SAE encode {r.repo}", 2.0 * rows * d * r.d_sae * L, rate,
                                  f"2·rows·d·D·L = 2·{rows}·{d}·{r.d_sae}·{L}"))
        notes.append("lm.capture keeps every residual it returns on the device: for long runs capture and encode "
                     "batch by batch (the 'one batch' terms above)")
    elif work.task == "steer":
        N = work.new_tokens
        ctx = T + N
        kv = B * ctx * arch.kv_bytes_per_token(b)
        mem.append(Term("KV cache (full-attention layers)", kv,
                        f"B·(T+n)·n_full·2·KV·hd·b = {B}·{ctx}·{arch.n_full}·2·{arch.n_kv_heads}·{arch.head_dim}·{b}", "transient"))
        if arch.n_linear:
            mem.append(Term("linear-attention state", B * arch.linear_state_bytes(b),
                            f"B·n_linear·(H_v·dk·dv·4 + conv_dim·(K-1)·b) = {B}·{arch.n_linear}·(...)", "transient"))
        value, formula = _forward_transient(arch, B * T, b)
        mem.append(Term("prefill activations (one layer)", value, formula, "transient"))
        mem.append(Term("logits (last position only)", B * arch.vocab * 4, f"B·V·4 = {B}·{arch.vocab}·4", "transient"))
        encodes = work.steer_mode in ("clamp", "gated")
        if encodes:
            for r in releases:
                mem.append(Term(f"SAE encode {r.repo} (prefill, one layer)", B * T * r.d_sae * s,
                                f"B·T·D·s = {B}·{T}·{r.d_sae}·{s}", "transient"))
        times.append(_compute("prefill", arch.forward_flops(B * T, T / 2, logits=B), rate, "B·T·Σ flops_i(ctx=T/2) + B·2dV"))
        step_flops = arch.forward_flops(B, T + N / 2, logits=B)
        step_bytes = _decode_bytes(arch, B, b)
        if encodes:
            for r in releases:
                step_flops += 2.0 * B * d * r.d_sae * L
                step_bytes += L * d * r.d_sae * s
        bw = hw.bandwidth_gbs * 1e9 * hw.count
        compute_s, bandwidth_s = N * step_flops / rate, (N * step_bytes / bw if bw else 0.0)
        kind = "bandwidth" if bandwidth_s > compute_s else "compute"
        times.append(Term(f"decode {N} steps", max(compute_s, bandwidth_s),
                          f"n·max(flops_step/rate, bytes_step/bandwidth) = {N}·max({_e(step_flops)} FLOP, "
                          f"{_e(step_bytes)} B) -> {kind}-bound", kind, N * step_flops))
        if work.steer_mode == "add":
            notes.append("add-mode steering adds one vector per step: its cost is a broadcast add, not counted")
    else:  # train
        n_lm = B * T
        value, formula = _forward_transient(arch, n_lm, b)
        mem.append(Term("harvest forward activations (one layer)", value, formula, "transient"))
        for r, p in sae_params:
            mem.append(Term(f"SAE training state {r.repo}", L * p * 16,
                            f"L·params·(4 weight + 4 grad + 8 Adam) = {L}·{_e(p)}·16"))
            k_aux = d // 2
            mem.append(Term(f"SAE step activations {r.repo} (one layer)", work.sae_batch * r.d_sae * 4 * 2,
                            f"batch·D·4·2 (pre-activations + top-k workspace) = {work.sae_batch}·{r.d_sae}·8", "transient"))
            times.append(_compute(f"SAE training {r.repo}", L * work.tokens * (2.0 * d * r.d_sae + 6.0 * (r.k + k_aux) * d),
                                  rate, "L·tokens·(2dD + 6·(k + k_aux)·d), k_aux=d/2 (dense encoder GEMM, sparse backward)"))
        mem.append(Term("shuffle buffer", L * work.buffer_tokens * d * 4, f"L·buffer·d·4 = {L}·{work.buffer_tokens}·{d}·4"))
        times.insert(0, _compute(f"harvest forward to layer {last}", arch.forward_flops(work.tokens, T / 2, upto=last), rate,
                                 f"tokens·Σ_(i≤{last}) flops_i(ctx=T/2), tokens={work.tokens}"))
        notes.append("train: the LM runs only to the deepest layer; from a cached activation store "
                     "(qscope train --cache-dir) the model weights and harvest time drop out")
    if hw.count > 1:
        notes.append(f"{hw.count} devices: load with device_map='auto' (layers split, SAEs on their layer's device); "
                     "resident terms are divided among them, transients counted on one")
    return Plan(model=arch.name, model_source=arch.source, arch=arch.to_dict(), releases=[r.to_dict() for r in releases],
                workload=asdict(work), hardware=hw.to_dict(), rate_tflops=rate / 1e12, rate_basis=basis,
                memory=mem, time=times, notes=notes)


def _decode_bytes(arch: Arch, batch: int, b: int) -> float:
    """Weight bytes one decode step of `batch` sequences reads: everything but unused experts.
    Distinct experts hit per MoE layer: E·(1 - (1 - k/E)^batch)."""
    total = arch.params * b
    if not any(arch.moe_layers):
        return total
    e, k = arch.n_experts, arch.top_k
    hit = e * (1 - (1 - k / e) ** batch)
    unused = (e - hit) * 3 * arch.d_model * arch.moe_intermediate * b
    return total - unused * sum(arch.moe_layers) - (arch.embed_params * b if not arch.tied else 0)
