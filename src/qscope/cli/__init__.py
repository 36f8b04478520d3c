"""The `qscope` command: a typer app with one module per command group.

Exit codes: 0 success; 2 a user error (one line naming the input and what was expected: a
`QScopeError`, a bad option value, a file the system refuses); 1 a bug (one line and the path
of a file holding the full traceback; `qscope --debug ...` prints it instead); 130 Ctrl-C.
"""

from __future__ import annotations

import logging
import re
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

_DEBUG = {"on": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Print the full traceback of an unexpected error.")):
    _DEBUG["on"] = debug


# Each module `qscope.cli.<name>` has `register(app)` adding its commands or sub-app.
COMMAND_MODULES = [
    "models", "data", "train", "sae_cmd", "sae_eval", "encode", "demo", "features", "steer", "evals", "classify",
    "synth", "posttrain", "uncertainty", "compare", "plan", "serve",
]


def _register() -> None:
    """Attach every command group; imported here so `import qscope` stays light."""
    import importlib

    if app.registered_commands or app.registered_groups:
        return
    for name in COMMAND_MODULES:
        importlib.import_module(f"qscope.cli.{name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (see the module docstring for what each exit code means)."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run one command line; returns its exit code (tests call this in-process)."""
    _register()
    _show_warnings()
    _DEBUG["on"] = False
    try:
        code = app(args=argv, prog_name="qscope", standalone_mode=False)
    except QScopeError as exc:
        return _user_error(str(exc), exc)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        kinds = {cls.__name__ for cls in type(exc).__mro__}  # typer may bundle its own copy of click
        if "NoArgsIsHelpError" in kinds:  # the help was printed already
            return exc.exit_code
        if "ClickException" in kinds:  # bad option value, unknown option, missing argument
            ctx = getattr(exc, "ctx", None)
            return _user_error(f"{ctx.command_path}: {exc.format_message()}" if ctx else exc.format_message(), exc)
        if "Abort" in kinds:
            code = 130
        elif isinstance(exc, OSError) and exc.filename is not None:  # a file the system refuses
            return _user_error(f"{exc.filename}: {exc.strerror or exc}", exc)
        else:
            return _internal_error(exc)
    if code == 130:
        console.print("[yellow]interrupted[/]")
    return code if isinstance(code, int) else 0


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def _user_error(message: str, exc: BaseException) -> int:
    if _DEBUG["on"]:
        console.print_exception()
    console.print(f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False, soft_wrap=True)
    return 2


def _internal_error(exc: BaseException) -> int:
    """A bug: one line on the terminal, the traceback in a file (or on the terminal with --debug)."""
    import traceback

    if _DEBUG["on"]:
        console.print_exception()
        return 1
    trace = "".join(traceback.format_exception(exc))
    where = _write_trace(f"qscope {' '.join(sys.argv[1:])}\n\n{trace}")
    summary = _one_line(f"{type(exc).__name__}: {exc}")[:300]
    console.print(f"[bold red]internal error:[/] {escape(summary)} (a bug in qscope; full traceback in {where}; "
                  "rerun with `qscope --debug ...` to print it)", highlight=False, soft_wrap=True)
    return 1


def _write_trace(text: str) -> str:
    """Save a traceback under QSCOPE_HOME/logs (or the temp folder if that is not writable)."""
    import os
    import tempfile
    import time

    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        from ..paths import home_dir

        path = home_dir("logs") / name
        path.write_text(text, encoding="utf-8")
    except OSError:
        fd, path = tempfile.mkstemp(prefix="qscope-crash-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    return str(path)


class _WarningLine(logging.Handler):
    """Library warnings (`logging.getLogger("qscope...")`), e.g. a text cut to the model's limit,
    as one yellow line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {escape(_one_line(record.getMessage()))}", highlight=False, soft_wrap=True)


def _show_warnings() -> None:
    logger = logging.getLogger("qscope")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING))
        logger.propagate = False
