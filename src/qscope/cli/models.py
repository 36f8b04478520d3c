"""`qscope models`: fetch the default model, convert GGUF files, list what is cached."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import QScopeError
from .common import console, emit_json

app = typer.Typer(help="Fetch and list models (default: SmolLM2-135M-Instruct).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")


@app.command("pull")
def pull(
    name: str = typer.Argument("default", help="'default', or a .gguf file to convert to an HF folder."),
    out: Path = typer.Option(None, help="Target folder for a converted GGUF (default: QSCOPE_HOME/models/<stem>)."),
    force: bool = typer.Option(False, help="Convert again even if the folder exists."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Install a model once so later loads are fast.

    Example: qscope models pull default
    """
    from ..model.loading import convert_gguf, models_dir, pull_default

    with console.status(f"preparing {name} (first time: ~20 s)"):
        if name == "default":
            folder = pull_default(force=force)
        else:
            gguf = Path(name).expanduser()
            if not gguf.is_file() or gguf.suffix != ".gguf":
                raise QScopeError(f"{name}: expected 'default' or an existing .gguf file")
            folder = out or models_dir() / gguf.stem.lower()
            if force or not (folder / "config.json").is_file():
                convert_gguf(gguf, folder)
    if json:
        emit_json({"name": name, "path": str(folder)})
    else:
        console.print(f"[green]ready:[/] {folder}")


@app.command("list")
def list_(json: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")) -> None:
    """Show the models converted under QSCOPE_HOME.

    Example: qscope models list --json
    """
    from ..model.loading import list_models

    rows = list_models()
    if json:
        emit_json(rows)
        return
    table = Table("name", "path", "size (MB)")
    for row in rows:
        table.add_row(row["name"], row["path"], str(row["size_mb"]))
    console.print(table if rows else "no models yet: run `qscope models pull default`")
