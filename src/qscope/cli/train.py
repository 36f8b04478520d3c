"""`qscope train`: train TopK SAEs (or resume), and `qscope train cache`: build an activation cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import QScopeError
from .common import console, emit_json

TRAIN_HELP = """Train TopK SAEs on residual-stream layers (several layers side by side, one LM pass).

Examples:

  qscope train --model default --layers 3,15,24 --tokens 2M --out runs/smollm2

  qscope train --config train.toml --tokens 50M          (flags override the file)

  qscope train --resume runs/smollm2                      (continue after a crash or kill)

  qscope train --layers 15 --tokens 2M --out runs/smollm2 --overwrite   (replace an earlier run)

  qscope train cache --model default --layers 3,15,24 --tokens 2M --out cache/

  qscope train --cache cache/ --tokens 4M --out runs/from-cache   (epochs over the cache)

  torchrun --nproc-per-node 2 "$(which qscope)" train --layers 15 --tokens 20M --out runs/ddp

Writes OUT/metrics.jsonl, OUT/checkpoint/ (every --ckpt-every steps), OUT/layer<N>/ (the SAEs,
qscope = SAELens folder layout) and OUT/final.json.
"""

CACHE_HELP = """Run the LM once and store filtered residual activations (fp16 safetensors shards).

Training from the cache (`qscope train --cache DIR`) needs no LM, so several epochs, runs and
benchmarks reuse it. An interrupted build continues from its last shard.

Example: qscope train cache --model default --layers 3,15,24 --tokens 2M --out cache/
"""


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Train TopK SAEs, or build an activation cache.", no_args_is_help=False,
                        invoke_without_command=True, pretty_exceptions_enable=False)
    group.callback(invoke_without_command=True, help=TRAIN_HELP)(train_command)
    group.command("cache", help=CACHE_HELP)(cache_command)
    app.add_typer(group, name="train")


def train_command(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="JSON or TOML file of TrainConfig fields."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in --out (its checkpoint, "
                                   "metrics and layer<N>/ SAEs)."),
    model: str | None = typer.Option(None, "--model", "-m", help="`default`, an HF folder/hub id, or a .gguf."),
    layers: str | None = typer.Option(None, "--layers", "-l", help="Comma-separated layers, e.g. 3,15,24."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder."),
    data: str | None = typer.Option(None, "--data", help="`mix` (default corpus mix), a corpus name, file or folder."),
    cache: Path | None = typer.Option(None, "--cache", help="Train from this activation cache (built if missing)."),
    tokens: str | None = typer.Option(None, "--tokens", "-t", help="Training tokens, e.g. 2M, 500k."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Tokens per step (all ranks). [4096]"),
    expansion: int | None = typer.Option(None, "--expansion", min=1, help="d_sae = expansion x d_model. [16]"),
    d_sae: int | None = typer.Option(None, "--d-sae", min=1, help="Number of latents (overrides --expansion)."),
    k: int | None = typer.Option(None, "--k", "-k", min=1, help="Active latents per token. [50]"),
    lr: float | None = typer.Option(None, "--lr", help="Adam lr. [2e-4 / sqrt(d_sae / 2^14)]"),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", min=0, help="[min(1000, steps/10)]"),
    lr_decay: float | None = typer.Option(None, "--lr-decay", help="Linear decay over this last fraction. [0]"),
    auxk_alpha: float | None = typer.Option(None, "--auxk-alpha", help="AuxK loss weight. [1/32]"),
    dead_after: str | None = typer.Option(None, "--dead-after", help="Tokens unfired before a latent is dead. "
                                             "[min(10M, tokens/10)]"),
    ctx_len: int | None = typer.Option(None, "--ctx-len", min=1, help="Tokens per packed sequence. [256]"),
    lm_batch: int | None = typer.Option(None, "--lm-batch", min=1, help="Sequences per LM forward. [32]"),
    norm_mult: float | None = typer.Option(None, "--norm-mult", help="Drop tokens above this x median norm. [10]"),
    buffer_tokens: str | None = typer.Option(None, "--buffer-tokens", help="Shuffle buffer size. [65536]"),
    holdout_shards: int | None = typer.Option(None, "--holdout-shards", min=0,
                                                 help="With --cache: keep the last N shards out, for eval."),
    ckpt_every: int | None = typer.Option(None, "--ckpt-every", min=1, help="Checkpoint every N steps. [200]"),
    log_every: int | None = typer.Option(None, "--log-every", min=1, help="Metrics row every N steps. [10]"),
    seed: int | None = typer.Option(None, "--seed", min=0, help="[0]"),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1, ... [auto]"),
    dtype: str | None = typer.Option(None, "--dtype", help="The LM's dtype: auto, float32, bfloat16. [auto]"),
    matmul: str | None = typer.Option(None, "--matmul", help="Encoder matmul precision: auto (tf32 on CUDA, "
                                         "fp32 on CPU), fp32, tf32, bf16. [auto]"),
    save_fp16: bool = typer.Option(False, "--save-fp16", help="Save the SAEs in float16 (default float32)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress display."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON on stdout."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from ..train import TrainConfig, Trainer, parse_count, parse_layers

    flags: dict[str, Any] = {
        "model": model, "layers": parse_layers(layers) if layers is not None else None,
        "out_dir": str(out) if out else None, "data": data, "cache_dir": str(cache) if cache else None,
        "total_tokens": parse_count(tokens) if tokens else None, "batch_size": batch_size, "expansion": expansion,
        "d_sae": d_sae, "k": k, "lr": lr, "warmup_steps": warmup_steps, "lr_decay_frac": lr_decay,
        "auxk_alpha": auxk_alpha, "dead_after_tokens": parse_count(dead_after) if dead_after else None,
        "ctx_len": ctx_len, "lm_batch": lm_batch, "norm_mult": norm_mult,
        "buffer_tokens": parse_count(buffer_tokens) if buffer_tokens else None, "holdout_shards": holdout_shards,
        "ckpt_every": ckpt_every, "log_every": log_every, "seed": seed, "device": device, "dtype": dtype, "matmul": matmul,
        "save_dtype": "float16" if save_fp16 else None,
    }
    flags = {key: value for key, value in flags.items() if value is not None}
    if resume is not None:
        saved = resume / "config.json"
        if not saved.is_file():
            raise QScopeError(f"{resume}: no run to resume (missing config.json)")
        if out is not None and out != resume:
            raise QScopeError("--resume DIR continues in DIR; drop --out")
        if overwrite:
            raise QScopeError("--resume continues a run and --overwrite replaces it; give one of them")
        base = TrainConfig.from_file(saved).to_dict()
        base["out_dir"] = str(resume)
    elif config is not None:
        base = TrainConfig.from_file(config).to_dict()
    else:
        base = TrainConfig().to_dict()
    cfg = TrainConfig.from_dict({**base, **flags})
    if not cfg.out_dir:
        raise QScopeError("no output folder: give --out DIR (or --resume DIR)")
    trainer = Trainer(cfg, progress=not no_progress, resume=resume is not None, overwrite=overwrite)
    summary = trainer.run()
    if _rank() != 0:
        return
    _print_summary(summary)
    if as_json:
        emit_json(summary)


def cache_command(
    model: str = typer.Option("default", "--model", "-m", help="`default`, an HF folder/hub id, or a .gguf."),
    layers: str = typer.Option(..., "--layers", "-l", help="Comma-separated layers, e.g. 3,15,24."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder."),
    tokens: str = typer.Option("2M", "--tokens", "-t", help="Tokens to store, e.g. 2M."),
    data: str = typer.Option("mix", "--data", help="`mix`, a corpus name, a file or a folder."),
    ctx_len: int = typer.Option(256, "--ctx-len", min=1, help="Tokens per packed sequence."),
    lm_batch: int = typer.Option(32, "--lm-batch", min=1, help="Sequences per LM forward."),
    norm_mult: float = typer.Option(10.0, "--norm-mult", help="Drop tokens above this x median norm."),
    shard_tokens: str = typer.Option("32768", "--shard-tokens", help="Tokens per shard file."),
    store_dtype: str = typer.Option("float16", "--store-dtype", help="float16, bfloat16 or float32."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the `mix` data order."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    dtype: str = typer.Option("auto", "--dtype", help="The LM's dtype."),
    as_json: bool = typer.Option(False, "--json", help="Print the cache's meta as JSON on stdout."),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..model.loading import load_model
    from ..train import build_cache, parse_count, parse_layers

    total = parse_count(tokens)
    lm = load_model(model, device=device, dtype=dtype)

    def texts():
        from .. import data as datamod

        return datamod.training_mix(seed=seed) if data == "mix" else datamod.iter_texts(data)

    with Progress(TextColumn("[bold]cache[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("", total=total)
        meta = build_cache(lm, parse_layers(layers), texts, out, total, ctx_len=ctx_len, lm_batch=lm_batch,
                           norm_mult=norm_mult, shard_tokens=parse_count(shard_tokens), dtype=store_dtype, data=data,
                           progress=lambda done, _total: bar.update(task, completed=done))
    meta = {key: value for key, value in meta.items() if key != "source"}
    console.print(f"cache {out}: {meta['tokens']:,} tokens of layers {meta['layers']} in {len(meta['shards'])} "
                  f"shard(s)", highlight=False)
    if as_json:
        emit_json(meta)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['steps']} steps, {summary['tokens']:,} tokens, {summary['wall_s']:.0f} s "
                        f"({summary['tokens_per_s']:,.0f} tok/s)")
    for name in ("layer", "fvu", "l0", "dead", "held-out fvu", "saved"):
        table.add_column(name)
    console.print()  # the live progress view may leave the cursor at the end of its last line
    held = summary.get("heldout", {})
    for layer, m in summary["layers"].items():
        table.add_row(layer, f"{m['fvu']:.4f}", f"{m['l0']:.1f}", f"{m['dead']:.1%}",
                      f"{held[layer]['fvu']:.4f}" if layer in held else "-", summary.get("saved", {}).get(layer, ""))
    console.print(table)
