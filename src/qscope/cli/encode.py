"""`qscope encode`: per-token top features of a text."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, JsonOpt, LayerOpt, ModelOpt, SaeOpt, console, emit_json, load_models


def register(root: typer.Typer) -> None:
    root.command("encode")(encode)


def encode(
    text: str = typer.Argument(..., help="The text to encode."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    top: int = typer.Option(5, min=1, help="Features shown per token."),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show each token's strongest SAE features and their activations.

    Example: qscope encode --layer 15 "The cat sat on the mat."
    """
    from ..features.active import encode_text

    loaded = load_models(model, sae, layer, device, dtype)
    lm, sae_ = loaded.lm, loaded.sae
    result = encode_text(lm, sae_, text, top=top, layer=layer)
    if json:
        emit_json(result)
        return
    table = Table("pos", "token", f"top {top} features (id:activation)", title=f"{lm.name} · layer {result.layer}")
    for row in result.tokens:
        table.add_row(str(row.position), repr(row.token), "  ".join(f"{f}:{v:.2f}" for f, v in row.features))
    console.print(table)
