"""docs/artifacts.json names, for every file under docs/ but the pages, a command in this repo that remakes it."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from qscope import provenance

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MANIFEST = DOCS / "artifacts.json"
SHELL_BREAKS = {"&&", "||", ";", "|", ">", ">>", "2>"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
QSCOPES = {"qscope", ".venv/bin/qscope"}


def manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))["artifacts"]


def docs_artifacts() -> set[str]:
    """Every file under docs/ except the Markdown pages and the manifest itself."""
    return {p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*")
            if p.is_file() and p.suffix != ".md" and p != MANIFEST}


def words(command: str) -> list[str]:
    """The command's words up to the first shell operator, without leading VAR=value assignments."""
    out = []
    for word in shlex.split(command):
        if word in SHELL_BREAKS:
            break
        out.append(word)
    while out and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", out[0]):
        out.pop(0)
    return out


def options(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


@functools.lru_cache(maxsize=1)
def cli_root():
    from qscope.cli import _register, app

    _register()
    return typer.main.get_command(app)


def is_group(cmd) -> bool:
    return hasattr(cmd, "commands")  # typer's click groups (typer may vendor its own click)


def check_cli(root, args: list[str]) -> str | None:
    """None if `qscope <args>` names a command path of the app and only options that command has."""
    cmd, path = root, ["qscope"]
    while is_group(cmd) and args and not args[0].startswith("-"):
        sub = cmd.commands.get(args[0])
        if sub is None:
            return f"`{' '.join(path)}` has no command {args[0]!r}"
        cmd, path, args = sub, path + [args[0]], args[1:]
    if is_group(cmd) and not getattr(cmd, "invoke_without_command", False):
        return f"`{' '.join(path)}` needs a sub-command"
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    bad = [o for o in options(args) if o not in known]
    return f"`{' '.join(path)}` has no option(s) {bad}" if bad else None


def script_source(path: str, commit: str | None) -> str | None:
    """The script's text now, or as it was at `commit` (None where it does not exist; a clone
    without that history cannot tell, and counts as existing)."""
    if commit is None:
        script = ROOT / path
        return script.read_text(encoding="utf-8") if script.is_file() else None
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True)
    except OSError:
        return ""
    if out.returncode == 0:
        return out.stdout
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return None if known.returncode == 0 else ""


def check_script(args: list[str], commit: str | None = None) -> str | None:
    """None if the script exists in the repo (at `commit` when given: artefacts made by an earlier
    design of a script) and, for Python, declares every option given."""
    if not args:
        return "no script named"
    source = script_source(args[0], commit)
    if source is None:
        return f"no script {args[0]}" + (f" at commit {commit}" if commit else "")
    if args[0].endswith(".py") and source:
        bad = [o for o in options(args[1:]) if f'"{o}"' not in source]
        if bad:
            return f"{args[0]} declares no option(s) {bad}"
    return None


def problem(root, command: str, commit: str | None = None) -> str | None:
    w = words(command)
    if not w:
        return "empty command"
    if w[0] in QSCOPES:
        return check_cli(root, w[1:])
    if w[0] in PYTHONS or w[0] == "bash":
        return check_script(w[1:], commit)
    return f"unknown program {w[0]!r} (expected qscope, python or bash)"


def test_every_docs_artifact_is_in_the_manifest():
    missing = sorted(docs_artifacts() - set(manifest()))
    assert not missing, f"add these to docs/artifacts.json with the command that makes them: {missing}"


def test_manifest_names_only_existing_artifacts():
    gone = sorted(p for p in manifest() if not (ROOT / p).is_file())
    assert not gone, f"docs/artifacts.json names files that do not exist: {gone}"


def test_every_command_exists_in_the_repo():
    root = cli_root()
    bad = {}
    for path, entry in manifest().items():
        assert isinstance(entry.get("command"), str) and isinstance(entry.get("recorded"), bool), path
        for command in [*entry.get("after", []), entry["command"]]:
            if (why := problem(root, command, entry.get("at_commit"))) is not None:
                bad[path] = f"{command!r}: {why}"
    assert not bad, bad


def test_recorded_flag_matches_the_files():
    """`recorded: true` exactly when the JSON/PNG carries provenance (other file kinds cannot)."""
    wrong = []
    for path, entry in manifest().items():
        if Path(path).suffix in (".json", ".png"):
            if (provenance.read(ROOT / path) is not None) != entry["recorded"]:
                wrong.append(path)
        elif entry["recorded"]:
            wrong.append(path)
    assert not wrong, f"fix 'recorded' in docs/artifacts.json for {wrong}"


@pytest.mark.parametrize("command, ok", [
    ("qscope evals overlap -f x.json --pair a,b --out d", True),
    ("qscope evals overlap --no-such-option 1", False),
    ("qscope evals no-such-command", False),
    ("qscope sae", False),
    ("N=3 bash experiments/evals_tau.sh", True),
    ("python experiments/no_such_script.py", False),
    ("python experiments/grpo_repetition.py --seeds 0,1 > log.txt", True),
    ("python experiments/grpo_repetition.py --no-such-flag", False),
    ("make docs", False),
])
def test_the_command_check_catches_what_it_should(command, ok):
    assert (problem(cli_root(), command) is None) == ok
