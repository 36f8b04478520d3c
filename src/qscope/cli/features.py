"""`qscope features`: find features - contrast two text sets, by promoted tokens."""

from __future__ import annotations

from typing import List

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, JsonOpt, LayerOpt, ModelOpt, SaeOpt, console, emit_json, load_pair, read_texts

app = typer.Typer(help="Find and describe features.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="features")


@app.command("contrast")
def contrast_cmd(
    pos: str = typer.Option(..., "--pos", help="Positive texts: a file (.txt/.jsonl/...), folder or corpus name."),
    neg: str = typer.Option(..., "--neg", help="Negative texts, same forms as --pos."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    top: int = typer.Option(20, help="Features listed."),
    by: str = typer.Option("mean", help="Rank by difference of 'mean' activation or firing 'rate'."),
    limit: int = typer.Option(500, help="At most this many texts per side."),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Features that fire more on the positive texts than on the negative ones (position 0 excluded).

    Example: qscope features contrast --layer 15 --pos french.txt --neg english.txt
    """
    from rich.progress import Progress

    from ..features.logits import token_effects
    from ..features.search import contrast

    pos_texts, neg_texts = read_texts(pos, limit), read_texts(neg, limit)
    lm, sae_ = load_pair(model, sae, layer, device, dtype)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("encoding texts", total=len(pos_texts) + len(neg_texts))
        result = contrast(lm, sae_, pos_texts, neg_texts, layer, top=top, by=by, progress=lambda: bar.advance(task))
    if json:
        emit_json(result)
        return
    effects = {e.feature: e for e in token_effects(lm, sae_, result.ids, n=5)}
    table = Table("feature", f"Δ{by}", "mean +", "mean -", "rate +", "rate -", "promotes",
                  title=f"layer {result.layer}: {result.n_pos} positive vs {result.n_neg} negative texts")
    for f in result.features:
        table.add_row(str(f.feature), f"{f.score:.3f}", f"{f.mean_pos:.3f}", f"{f.mean_neg:.3f}", f"{f.rate_pos:.3f}",
                      f"{f.rate_neg:.3f}", " ".join(repr(t) for t, _ in effects[f.feature].promoted))
    console.print(table)


@app.command("tokens")
def tokens_cmd(
    tokens: List[str] = typer.Argument(..., help="Single tokens, e.g. ' Paris' (mind the leading space)."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    top: int = typer.Option(20, help="Features listed."),
    suppress: bool = typer.Option(False, help="Find features that suppress the tokens instead."),
    json: JsonOpt = False,
) -> None:
    """Features whose decoder direction promotes (or suppresses) the given tokens.

    Example: qscope features tokens --layer 24 " Paris" " London"
    """
    from ..features.search import features_for_tokens

    lm, sae_ = load_pair(model, sae, layer)
    rows = features_for_tokens(lm, sae_, tokens, top=top, suppress=suppress)
    if json:
        emit_json([{"feature": f, "score": s} for f, s in rows])
        return
    table = Table("feature", "mean logit effect")
    for f, s in rows:
        table.add_row(str(f), f"{s:+.3f}")
    console.print(table)
