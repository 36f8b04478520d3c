"""The `qscope` command: a typer app with one module per command group."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..errors import QScopeError
from .common import console

app = typer.Typer(
    name="qscope",
    help="Sparse-autoencoder features as development tools for language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# Each module `qscope.cli.<name>` has `register(app)` adding its commands or sub-app.
COMMAND_MODULES = [
    "models", "data", "train", "sae_cmd", "sae_eval", "encode", "demo", "features", "steer", "evals", "classify",
    "synth", "posttrain", "uncertainty", "compare", "plan", "serve",
]


def _register() -> None:
    """Attach every command group; imported here so `import qscope` stays light."""
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"qscope.cli.{name}").register(app)


def main() -> None:
    """Console entry point: user errors become one red line on stderr and exit code 2."""
    _register()
    try:
        app()
    except QScopeError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
