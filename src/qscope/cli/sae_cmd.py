"""`qscope sae`: inspect SAE files and the registry of known releases."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import console, emit_json

app = typer.Typer(help="Inspect SAEs: config, shape, known releases.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sae")


@app.command("info")
def info(
    source: str = typer.Argument(..., help="SAE: 'default', a layer<n>.sae.pt, a folder, or a hub repo id."),
    layer: int = typer.Option(None, "--layer", "-l", help="Layer, for sources holding several."),
    json: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """Print an SAE's configuration and tensor shapes.

    Example: qscope sae info default --layer 15
    """
    from ..sae import SAE

    sae = SAE.load(source, layer=layer)
    data = {"source": source, **sae.cfg.to_dict(),
            "tensors": {name: list(t.shape) for name, t in sae.state_dict().items()},
            "decoder_norm_mean": round(float(sae.W_dec.norm(dim=-1).mean()), 4)}
    if json:
        emit_json(data)
        return
    table = Table("field", "value", title=f"SAE {source}" + (f" layer {layer}" if layer is not None else ""))
    for key, value in data.items():
        if key != "metadata":
            table.add_row(key, str(value))
    for key, value in data.get("metadata", {}).items():
        table.add_row(f"metadata.{key}", str(value))
    console.print(table)


@app.command("list")
def list_(json: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")) -> None:
    """List known releases: qscope's shipped default SAEs and the 14 Qwen-Scope repos.

    Example: qscope sae list
    """
    from ..sae.registry import DEFAULT_RELEASE, QWEN_SCOPE, default_layers

    rows = [dict(DEFAULT_RELEASE.to_dict(), shipped_layers=default_layers())] + [r.to_dict() for r in QWEN_SCOPE]
    if json:
        emit_json(rows)
        return
    table = Table("repo", "model", "layers", "d_model", "d_sae", "k")
    for row in rows:
        layers = row.get("shipped_layers") or row["n_layers"]
        table.add_row(row["repo"], row["model"], str(layers), str(row["d_model"]), str(row["d_sae"]), str(row["k"]))
    console.print(table)
