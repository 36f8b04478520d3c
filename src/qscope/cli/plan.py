"""`qscope plan`: will this job fit, and how long will it take? (No download, no model run.)"""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from .common import JsonOpt, console, emit_json


def register(root: typer.Typer) -> None:
    root.command("plan")(plan_cmd)


def _human_time(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 600:
        return f"{seconds:.1f} s"
    if seconds < 36000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model id (e.g. Qwen/Qwen3.5-35B-A3B), a config.json "
                                                                    "or an HF folder (default: the release's model)."),
    release: Optional[List[str]] = typer.Option(None, "--release", "-r", help="SAE release repo id (repeat for several "
                                                                              "groups loaded together), or 'default'."),
    layers: str = typer.Option("all", help="SAE layers: 'all' or e.g. 6,15,24."),
    task: str = typer.Option("capture", help="capture, steer, footprint or train."),
    gpu: Optional[str] = typer.Option("h100", help="h200, h100, a100-80g, a100-40g, l40s, a10, rtx4090; '' for custom."),
    gpu_mem: Optional[float] = typer.Option(None, help="GiB per device (replaces the preset's)."),
    gpus: int = typer.Option(1, help="Number of devices (layers split with device_map='auto')."),
    dtype: str = typer.Option("bf16", help="Model dtype: bf16 or fp32."),
    sae_dtype: str = typer.Option("fp32", help="SAE dtype: fp32 (as released) or bf16."),
    batch: int = typer.Option(8, help="Sequences per forward."),
    seq: int = typer.Option(512, help="Tokens per sequence (prompt length for steer)."),
    tokens: int = typer.Option(1_000_000, help="capture / train: tokens in all."),
    texts: int = typer.Option(1000, help="footprint: number of samples."),
    new_tokens: int = typer.Option(64, help="steer: tokens generated per sequence."),
    steer_mode: str = typer.Option("add", help="steer: add, clamp or gated (clamp/gated encode each step)."),
    tflops: Optional[float] = typer.Option(None, help="Achievable TFLOP/s (replaces peak x efficiency)."),
    efficiency: Optional[float] = typer.Option(None, help="Fraction of the datasheet peak assumed achievable."),
    bandwidth: Optional[float] = typer.Option(None, help="Memory bandwidth GB/s per device (replaces the preset's)."),
    json: JsonOpt = False,
) -> None:
    """Memory and time of a job before running it, with each formula, and whether it fits.

    Example: qscope plan -r Qwen/SAE-Res-Qwen3.5-35B-A3B-Base-W128K-L0_100 --layers all --task capture --gpu h100
    """
    from ..errors import QScopeError
    from ..plan import DEFAULT_EFFICIENCY, Workload, hardware, load_arch, plan, resolve_layers
    from ..sae.registry import find_release

    found = []
    for repo in release or []:
        r = find_release(repo)
        if r is None:
            raise QScopeError(f"unknown SAE release {repo!r} (the 14 Qwen-Scope repos Qwen/SAE-Res-... or 'default')")
        found.append(r)
    if model is None:
        if not found:
            raise QScopeError("give --model or --release")
        model = found[0].model
    arch = load_arch(model)
    work = Workload(task=task, layers=resolve_layers(layers, arch, found), batch=batch, seq=seq, tokens=tokens,
                    texts=texts, new_tokens=new_tokens, steer_mode=steer_mode, dtype=dtype, sae_dtype=sae_dtype)
    hw = hardware(gpu or None, memory_gib=gpu_mem, count=gpus, bandwidth_gbs=bandwidth)
    result = plan(arch, found, work, hw, tflops=tflops, efficiency=DEFAULT_EFFICIENCY if efficiency is None else efficiency)
    if json:
        emit_json(result)
        return
    _print(result)


def _print(result) -> None:
    w, hw = result.workload, result.hardware
    layers = w["layers"]
    shown = ",".join(map(str, layers)) if len(layers) <= 8 else f"{len(layers)} layers ({layers[0]}..{layers[-1]})"
    console.print(f"[bold]{result.model}[/] - task [bold]{w['task']}[/], layers {shown}, {w['dtype']} model, "
                  f"{w['sae_dtype']} SAEs, on {hw['count']} x {hw['name']} ({hw['memory_gib']:g} GiB each)")
    console.print(f"config: {result.model_source}", style="dim")
    for r in result.releases:
        console.print(f"SAEs: {r['repo']} (d_sae {r['d_sae']}, k {r['k']})", style="dim")
    table = Table(title="memory", title_justify="left")
    for col in ("term", "kind", "formula", "size"):
        table.add_column(col, overflow="fold")
    for t in result.memory:
        table.add_row(t.name, t.kind, t.formula, f"{t.value / 2**30:.2f} GiB")
    console.print(table)
    verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
    console.print(f"total {result.memory_total / 2**30:.2f} GiB; peak per device {result.per_device / 2**30:.2f} GiB "
                  f"(resident / {hw['count']} + transients) vs {result.capacity / 2**30:.2f} GiB usable "
                  f"(memory - 1.5 GiB reserved): {verdict}")
    table = Table(title=f"time at {result.rate_tflops:.1f} TFLOP/s = {result.rate_basis}", title_justify="left")
    for col in ("step", "formula", "time"):
        table.add_column(col, overflow="fold")
    for t in result.time:
        table.add_row(t.name, t.formula, _human_time(t.value))
    console.print(table)
    console.print(f"total {_human_time(result.time_total)}")
    for note in result.notes:
        console.print(f"- {note}", style="dim")
