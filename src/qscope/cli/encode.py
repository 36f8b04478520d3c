"""`qscope encode`: per-token top features of a text."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import console, emit_json


def register(root: typer.Typer) -> None:
    root.command("encode")(encode)


def encode(
    text: str = typer.Argument(..., help="The text to encode."),
    model: str = typer.Option("default", "--model", "-m", help="Model: 'default', HF folder, .gguf or hub id."),
    sae: str = typer.Option("default", "--sae", "-s", help="SAE: 'default', a .sae.pt, a folder or a hub repo id."),
    layer: int = typer.Option(None, "--layer", "-l", help="Layer (needed for sources holding several)."),
    top: int = typer.Option(5, help="Features shown per token."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
    dtype: str = typer.Option(None, help="float32 / bfloat16 (default: fp32 on CPU, bf16 on GPU)."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Show each token's strongest SAE features and their activations.

    Example: qscope encode --layer 15 "The cat sat on the mat."
    """
    from ..features.active import encode_text
    from ..model import load_model
    from ..sae import SAE

    with console.status("loading model and SAE"):
        lm = load_model(model, device=device, dtype=dtype)
        sae_ = SAE.load(sae, layer=layer, device=lm.device)
    result = encode_text(lm, sae_, text, top=top, layer=layer)
    if json:
        emit_json(result)
        return
    table = Table("pos", "token", f"top {top} features (id:activation)", title=f"{lm.name} · layer {result.layer}")
    for row in result.tokens:
        table.add_row(str(row.position), repr(row.token), "  ".join(f"{f}:{v:.2f}" for f, v in row.features))
    console.print(table)
