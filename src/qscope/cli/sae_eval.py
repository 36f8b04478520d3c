"""`qscope sae eval`: an SAE's quality on held-out text (FVU, L0, dead features, CE recovered, KL)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import typer
from rich.table import Table

from ..errors import QScopeError
from .common import DtypeOpt, console, emit_json, load_models, progress_bar

HELD_OUT = "held-out"


def register(root: typer.Typer) -> None:
    """Add `eval` to the `sae` sub-app (created here if `sae_cmd` has not registered it)."""
    group = next((g.typer_instance for g in root.registered_groups if g.name == "sae"), None)
    if group is None:
        group = typer.Typer(help="Inspect SAEs: config, shape, known releases.", no_args_is_help=True)
        root.add_typer(group, name="sae")
    group.command("eval")(eval_)


def read_texts(spec: str, n: int) -> tuple[list[str], str]:
    """Up to `n` texts for `spec` and a description of where they came from.

    `held-out` = `qscope.data.held_out_texts(n)` (a slice of the default corpora kept out of
    training) when qscope.data has it, else the built-in sample texts; anything else goes
    through `qscope.data.iter_texts` (files, folders, corpus names, hub datasets)."""
    from ..metrics import SAMPLE_TEXTS

    try:
        from .. import data
    except ImportError as exc:
        data = None
        why = f"qscope.data is unavailable ({exc})"
    if spec == HELD_OUT:
        held_out = getattr(data, "held_out_texts", None)
        if held_out is not None:
            return list(islice(held_out(n), n)), HELD_OUT
        console.print("[yellow]note:[/] no held-out corpus slice available (qscope.data.held_out_texts is "
                      f"missing); using {min(n, len(SAMPLE_TEXTS))} built-in sample texts. Pass --data for more.")
        return SAMPLE_TEXTS[:n], "built-in samples"
    iter_texts = getattr(data, "iter_texts", None)
    if iter_texts is None:
        raise QScopeError(f"cannot read --data {spec!r}: " + (why if data is None else "qscope.data.iter_texts is missing"))
    return list(islice(iter_texts(spec), n)), spec


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _table(res: dict) -> Table:
    table = Table("metric", "value", title=f"SAE eval: layer {res['layer']} of {res['model']}", title_justify="left")
    rows = [
        ("SAE", res["sae"]),
        ("data", f"{res['data']} ({res['n_texts']} texts)"),
        ("LM dtype", res["dtype"]),
        ("tokens counted", f"{res['n_tokens']} of {res['n_tokens_real']} real"
         + (f" (position 0 excluded: {res['n_skipped_first']})" if res["n_skipped_first"] else "")
         + (f", {res['n_filtered']} over {res['norm_mult']}x median norm dropped" if res["norm_mult"] else "")),
        ("median residual norm", _fmt(res["median_norm"], 2)),
        ("FVU", _fmt(res["fvu"])),
        ("explained variance", _fmt(res["explained_variance"])),
        ("cosine(x, x_hat)", _fmt(res["cosine"])),
        ("L0", _fmt(res["l0"], 2)),
        ("dead features", f"{res['n_dead']} / {res['d_sae']} ({res['dead_fraction']:.1%})"),
        ("firing density", "  ".join(f"{row['range']}: {row['count']}" for row in res["density_hist"])),
        ("CE clean", _fmt(res["ce_clean"])),
        ("CE with SAE", _fmt(res["ce_sae"])),
        ("CE zero-ablated", _fmt(res["ce_zero"])),
        ("CE loss recovered", _fmt(res["ce_recovered"])),
        ("KL(clean || SAE)", _fmt(res["kl"])),
        ("seconds", _fmt(res["seconds"], 1)),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def eval_(
    sae_source: str = typer.Argument(..., metavar="SAE", help="SAE: 'default', a file, a folder, or a hub repo id."),
    model: str = typer.Option("default", "--model", "-m", help="Model: 'default', a folder, a .gguf, or a hub id."),
    layer: int = typer.Option(None, "--layer", "-l", help="Layer (default: the SAE's own)."),
    data: str = typer.Option(HELD_OUT, "--data", "-d",
                             help="Texts: 'held-out' (a slice of the default corpora), a file, a folder, or a corpus name."),
    n_texts: int = typer.Option(64, "--n-texts", "-n", min=1, help="How many texts to evaluate on."),
    max_length: int = typer.Option(256, "--max-length", min=2, help="Tokens per text (longer texts are cut)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Texts per forward pass."),
    norm_mult: float = typer.Option(None, "--norm-mult",
                                    help="Drop tokens with residual norm > this x the median from the statistics."),
    include_first: bool = typer.Option(False, "--include-first", help="Count position 0 too (and splice it)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
    dtype: DtypeOpt = None,
    json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result to this JSON file."),
) -> None:
    """Measure an SAE on held-out text: FVU, L0, dead features, and the LM cost of splicing it in.

    Position 0 and padding are left out of every number (attention sinks there have huge norms);
    the reconstruction is spliced at the other real positions, position 0 stays clean.

    Example: qscope sae eval default --layer 10 --data brown --n-texts 128
    """
    from ..io import write_json
    from ..metrics import evaluate_sae
    from ..provenance import record

    texts, where = read_texts(data, n_texts)
    if not texts:
        raise QScopeError(f"--data {data}: no texts")
    loaded = load_models(model, sae_source, layer, device, dtype)
    lm, sae = loaded.lm, loaded.sae
    if sae.cfg.model_name and sae.cfg.model_name not in (lm.name, model):
        console.print(f"[yellow]note:[/] the SAE was made for {sae.cfg.model_name}, the model is {lm.name}")
    with progress_bar("evaluating SAE") as bar:
        task = bar.add_task("eval", total=None)
        res = evaluate_sae(lm, sae, texts, layer=layer, max_length=max_length, batch_size=batch_size,
                           skip_first=not include_first, norm_mult=norm_mult,
                           progress=lambda done, total: bar.update(task, completed=done, total=total))
    result = {"source": sae_source, "data": where, "dtype": str(lm.dtype).removeprefix("torch."), **res.to_dict()}
    if out is not None:
        write_json(out, result, provenance=record())
    if json:
        emit_json(result)
    else:
        console.print(_table(result))
        if out is not None:
            console.print(f"wrote {out}")
