"""Imports go downward only: a module may import its own floor or a lower one, never a higher one.

Floors: 0 the building blocks, 1 what is built on them (features, training), 2 the applications,
3 the shells (cli, web). Applications stand side by side and never import each other, except
`posttrain`, which steers. Only the shells draw on the terminal (`rich`) or on `qscope.cli`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "qscope"

FLOORS = {
    0: {"sae", "model", "data", "io", "paths", "errors", "stats", "provenance", "parse", "llm", "assets"},
    1: {"features", "train", "metrics", "plan"},
    2: {"steer", "evals", "datatools", "posttrain", "uncertainty", "compare"},
    3: {"cli", "web", "integrations", "__main__", "__init__"},
}
FLOOR_OF = {part: floor for floor, parts in FLOORS.items() for part in parts}
APPLICATIONS = FLOORS[2]
ALLOWED_BETWEEN_APPLICATIONS = {("posttrain", "steer")}
SHELL_ONLY = ("rich", "qscope.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The floor-bearing part of a qscope module: `qscope.sae.sae` -> `sae`; `qscope` -> `__init__`."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def is_module(module: str) -> bool:
    path = SRC.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports (top level and inside functions), relative imports resolved."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else base))
    return sorted(set(found))


def violations(path: Path) -> list[str]:
    here = module_name(path)
    here_part = part_of(here)
    here_floor = FLOOR_OF[here_part]
    where = path.relative_to(SRC)
    problems = []
    for line, target in imported_modules(path):
        if here_floor < 3 and any(target == s or target.startswith(s + ".") for s in SHELL_ONLY):
            problems.append(f"{where}:{line} imports {target} (terminal/CLI code belongs in qscope.cli)")
            continue
        if target != "qscope" and not target.startswith("qscope."):
            continue
        target_part = part_of(target)
        if target_part not in FLOOR_OF:
            problems.append(f"{where}:{line} imports {target}, which has no floor in FLOORS")
        elif FLOOR_OF[target_part] > here_floor:
            problems.append(
                f"{where}:{line} imports {target} (floor {FLOOR_OF[target_part]}) from floor {here_floor}"
            )
        elif (
            here_part in APPLICATIONS
            and target_part in APPLICATIONS
            and target_part != here_part
            and (here_part, target_part) not in ALLOWED_BETWEEN_APPLICATIONS
        ):
            problems.append(f"{where}:{line} imports {target}: applications do not import each other")
    return problems


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_floor():
    unplaced = sorted({part_of(module_name(p)) for p in SOURCES} - set(FLOOR_OF))
    assert not unplaced, f"modules with no floor (add them to FLOORS): {unplaced}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward(path):
    if part_of(module_name(path)) not in FLOOR_OF:
        pytest.skip("no floor (reported by test_every_module_has_a_floor)")
    problems = violations(path)
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The walker sees relative, function-level and `rich` imports: a planted module fails it."""
    package = tmp_path / "qscope"
    (package / "sae").mkdir(parents=True)
    (package / "cli").mkdir()
    for init in (package / "__init__.py", package / "sae" / "__init__.py", package / "cli" / "__init__.py"):
        init.write_text("")
    (package / "cli" / "common.py").write_text("")
    planted = package / "sae" / "bad.py"
    planted.write_text("def f():\n    from ..cli import common\n    import rich.progress\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    problems = violations(planted)
    assert len(problems) == 2
    assert all(p.startswith(str(Path("qscope/sae/bad.py"))) for p in problems)
    assert "qscope.cli.common" in problems[0] and "rich.progress" in problems[1]
