"""`qscope train`: train TopK SAEs (or resume), and `qscope train cache`: build an activation cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import QScopeError
from ..parse import int_list
from ..train import TrainConfig
from .common import console, emit_json

DEFAULTS = TrainConfig()

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


# The TrainConfig fields `qscope train` takes as options: field -> (flags, help, typer keywords).
# Each option's type and the default its help shows come from TrainConfig; a "[...]" in the help
# is the rule TrainConfig applies when the field is left unset. Counts take "2M", "500k" ...
FIELD_OPTIONS: dict[str, tuple[tuple[str, ...], str, dict[str, Any]]] = {
    "model": (("--model", "-m"), "`default`, an HF folder/hub id, or a .gguf.", {}),
    "layers": (("--layers", "-l"), "Comma-separated layers, e.g. 3,15,24.", {}),
    "out_dir": (("--out", "-o"), "Output folder.", {}),
    "data": (("--data",), "`mix` (default corpus mix), a corpus name, file or folder.", {}),
    "cache_dir": (("--cache",), "Train from this activation cache (built if missing).", {}),
    "total_tokens": (("--tokens", "-t"), "Training tokens, e.g. 2M, 500k.", {}),
    "batch_size": (("--batch-size",), "Tokens per step (all ranks).", {"min": 1}),
    "expansion": (("--expansion",), "d_sae = expansion x d_model.", {"min": 1}),
    "d_sae": (("--d-sae",), "Number of latents (overrides --expansion).", {"min": 1}),
    "k": (("--k", "-k"), "Active latents per token.", {"min": 1}),
    "lr": (("--lr",), "Adam lr. [2e-4 / sqrt(d_sae / 2^14)]", {}),
    "warmup_steps": (("--warmup-steps",), "Steps of linear lr warmup. [min(1000, steps/10)]", {"min": 0}),
    "lr_decay_frac": (("--lr-decay",), "Linear decay over this last fraction.", {}),
    "auxk_alpha": (("--auxk-alpha",), "AuxK loss weight.", {}),
    "dead_after_tokens": (("--dead-after",), "Tokens unfired before a latent is dead. [min(10M, tokens/10)]", {}),
    "ctx_len": (("--ctx-len",), "Tokens per packed sequence.", {"min": 1}),
    "lm_batch": (("--lm-batch",), "Sequences per LM forward.", {"min": 1}),
    "norm_mult": (("--norm-mult",), "Drop tokens above this x median norm.", {}),
    "buffer_tokens": (("--buffer-tokens",), "Shuffle buffer size.", {}),
    "holdout_shards": (("--holdout-shards",), "With --cache: keep the last N shards out, for eval.", {"min": 0}),
    "ckpt_every": (("--ckpt-every",), "Checkpoint every N steps.", {"min": 1}),
    "log_every": (("--log-every",), "Metrics row every N steps.", {"min": 1}),
    "seed": (("--seed",), "Seed of the data order and the SAEs' initialisation.", {"min": 0}),
    "device": (("--device",), "auto, cpu, cuda, cuda:1, ...", {}),
    "dtype": (("--dtype",), "The LM's dtype: auto, float32, bfloat16.", {}),
    "matmul": (("--matmul",), "Encoder matmul precision: auto (tf32 on CUDA, fp32 on CPU), fp32, tf32, bf16.", {}),
}
# Option types that differ from the field's: folders, and text that TrainConfig.from_dict parses
# (counts like "2M", layer lists like "3,15,24").
OPTION_TYPES = {"out_dir": Path, "cache_dir": Path, "layers": str, "total_tokens": str, "dead_after_tokens": str,
                "buffer_tokens": str}


def with_field_options(command):
    """Add one option per FIELD_OPTIONS entry to `command`, after its `overwrite` parameter (typer
    reads `__signature__`); the values arrive as keyword arguments named after the fields, None
    when not given, so a config file's values stand unless a flag overrides them."""
    import inspect
    import typing

    types = typing.get_type_hints(TrainConfig)
    generated = []
    for name, (flags, text, keywords) in FIELD_OPTIONS.items():
        default = getattr(DEFAULTS, name)
        shown = f" [{default:g}]" if isinstance(default, float) else f" [{default}]" if default not in (None, []) else ""
        cli_type = OPTION_TYPES.get(name) or next(t for t in typing.get_args(types[name]) or (types[name],)
                                                  if t is not type(None))  # `int | None` -> int
        option = typer.Option(*flags, help=text + shown, **keywords)
        generated.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                           annotation=Annotated[Optional[cli_type], option]))
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    cut = [p.name for p in own].index("overwrite") + 1
    command.__signature__ = signature.replace(parameters=[*own[:cut], *generated, *own[cut:]])
    return command


@with_field_options
def train_command(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="JSON or TOML file of TrainConfig fields."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in --out (its checkpoint, "
                                   "metrics and layer<N>/ SAEs)."),
    save_fp16: bool = typer.Option(False, "--save-fp16", help="Save the SAEs in float16 (default float32)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress display."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON on stdout."),
    **fields: Any,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from ..train import Trainer

    flags = {key: str(value) if isinstance(value, Path) else value for key, value in fields.items() if value is not None}
    if save_fp16:
        flags["save_dtype"] = "float16"
    out = fields["out_dir"]
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
        base = DEFAULTS.to_dict()
    cfg = TrainConfig.from_dict({**base, **flags})
    if not cfg.out_dir:
        raise QScopeError("no output folder: give --out DIR (or --resume DIR)")
    trainer = Trainer(cfg, progress=None if no_progress else LiveTrainView(), resume=resume is not None,
                      overwrite=overwrite)
    summary = trainer.run()
    if _rank() != 0:
        return
    _print_summary(summary)
    if as_json:
        emit_json(summary)


def cache_command(
    model: str = typer.Option(DEFAULTS.model, "--model", "-m", help="`default`, an HF folder/hub id, or a .gguf."),
    layers: str = typer.Option(..., "--layers", "-l", help="Comma-separated layers, e.g. 3,15,24."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder."),
    tokens: str = typer.Option(str(DEFAULTS.total_tokens), "--tokens", "-t", help="Tokens to store, e.g. 2M."),
    data: str = typer.Option(DEFAULTS.data, "--data", help="`mix`, a corpus name, a file or a folder."),
    ctx_len: int = typer.Option(DEFAULTS.ctx_len, "--ctx-len", min=1, help="Tokens per packed sequence."),
    lm_batch: int = typer.Option(DEFAULTS.lm_batch, "--lm-batch", min=1, help="Sequences per LM forward."),
    norm_mult: float = typer.Option(DEFAULTS.norm_mult, "--norm-mult", help="Drop tokens above this x median norm."),
    shard_tokens: str = typer.Option("32768", "--shard-tokens", help="Tokens per shard file."),
    store_dtype: str = typer.Option(DEFAULTS.store_dtype, "--store-dtype", help="float16, bfloat16 or float32."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", min=0, help="Seed of the `mix` data order."),
    device: str = typer.Option(DEFAULTS.device, "--device", help="auto, cpu, cuda, ..."),
    dtype: str = typer.Option(DEFAULTS.dtype, "--dtype", help="The LM's dtype."),
    as_json: bool = typer.Option(False, "--json", help="Print the cache's meta as JSON on stdout."),
) -> None:
    from ..model.loading import load_model
    from ..train import build_cache, parse_count

    total = parse_count(tokens)
    lm = load_model(model, device=device, dtype=dtype)

    def texts():
        from .. import data as datamod

        return datamod.training_mix(seed=seed) if data == "mix" else datamod.iter_texts(data)

    with Progress(TextColumn("[bold]cache[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("", total=total)
        meta = build_cache(lm, int_list(layers, "--layers"), texts, out, total, ctx_len=ctx_len, lm_batch=lm_batch,
                           norm_mult=norm_mult, shard_tokens=parse_count(shard_tokens), dtype=store_dtype, data=data,
                           progress=lambda done, _total: bar.update(task, completed=done))
    meta = {key: value for key, value in meta.items() if key != "source"}
    console.print(f"cache {out}: {meta['tokens']:,} tokens of layers {meta['layers']} in {len(meta['shards'])} "
                  f"shard(s)", highlight=False)
    if as_json:
        emit_json(meta)


class LiveTrainView:
    """The live training view on stderr (a `qscope.train.TrainProgress`): a progress bar plus a
    per-layer table of the latest metrics row."""

    def __init__(self) -> None:
        self.live: Live | None = None
        self.row: dict | None = None

    def start(self, total_steps: int, done_steps: int) -> None:
        self.bar = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                            TimeRemainingColumn(), TextColumn("{task.description}"), console=console)
        self.task = self.bar.add_task("", total=total_steps, completed=done_steps)
        self.live = Live(Group(self.bar, self), console=console, refresh_per_second=4)
        self.live.start()

    def __rich__(self):
        if self.row is None:
            return ""
        table = Table(box=None, pad_edge=False)
        for name in ("layer", "loss", "fvu", "auxk", "l0", "dead", "tok/s"):
            table.add_column(name, justify="right")
        for layer, m in self.row["layers"].items():
            table.add_row(layer, f"{m['loss']:.4f}", f"{m['fvu']:.4f}", f"{m['auxk']:.3f}", f"{m['l0']:.1f}",
                          f"{m['dead']:.1%}", _si(m["tokens_per_s"]))
        return table

    def logged(self, row: dict) -> None:
        self.row = row
        self.bar.update(self.task, description=f"{_si(row['tokens_per_s'])} tok/s, {_si(row['tokens'])} tokens")

    def advance(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _si(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _print_summary(summary: dict) -> None:
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
