"""`qscope models`: fetch the default model, convert GGUF files, list and remove what is cached."""

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
    out: Path = typer.Option(None, help="Target folder for a converted GGUF (default: the cache that loading it uses, "
                                        "QSCOPE_HOME/models/<stem>-<sha256 prefix>)."),
    force: bool = typer.Option(False, help="Convert again even if the folder exists."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Install a model once so later loads are fast.

    Example: qscope models pull default
    """
    from ..model.loading import cached_gguf, convert_gguf, pull_default

    with console.status(f"preparing {name} (first time: ~20 s)"):
        if name == "default":
            folder = pull_default(force=force)
        else:
            gguf = Path(name).expanduser()
            if not gguf.is_file() or gguf.suffix != ".gguf":
                raise QScopeError(f"{name}: expected 'default' or an existing .gguf file")
            if out is None:
                folder = cached_gguf(gguf, force=force)
            else:
                folder = out
                if force or not (folder / "config.json").is_file():
                    convert_gguf(gguf, folder)
    if json:
        emit_json({"name": name, "path": str(folder)})
    else:
        console.print(f"[green]ready:[/] {folder}")


@app.command("list")
def list_(json: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")) -> None:
    """Show the models converted under QSCOPE_HOME (the default model and cached GGUF conversions),
    with the dtype `--dtype auto` loads them in on this machine.

    Example: qscope models list --json
    """
    from ..model.loading import list_models

    rows = list_models()
    if json:
        emit_json(rows)
        return
    if not rows:
        console.print("no models yet: run `qscope models pull default`")
        return
    table = Table("name", "folder", "size (MB)", "from GGUF (sha256)", "auto dtype",
                  caption=f"auto dtype here: {rows[0]['dtype']} ({rows[0]['dtype_why']})")
    for row in rows:
        origin = f"{Path(row['gguf']).name} ({row['sha256'][:12]})" if row["gguf"] else "-"
        table.add_row(row["name"], row["path"], str(row["size_mb"]), origin, row["dtype"])
    console.print(table)


@app.command("rm")
def rm(
    name: str = typer.Argument(..., help="A cached model: its name, folder name or path (see `qscope models list`)."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Remove one cached model folder (a GGUF conversion is redone on its next load).

    Example: qscope models rm gemma-3-270m-q4_k_m-a5fd3b62230a
    """
    from ..model.loading import remove_model

    folder = remove_model(name)
    if json:
        emit_json({"removed": str(folder)})
    else:
        console.print(f"[green]removed:[/] {folder}")
