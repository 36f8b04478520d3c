"""The scripts under experiments/ and bench/ import from qscope by name: every such import must
resolve, so that moving a module cannot leave a published experiment unrunnable."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("experiments/*.py"), *ROOT.glob("bench/*.py")])


def qscope_imports(path: Path) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qscope":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "qscope"]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_qscope_import_resolves(script):
    missing = []
    for module, name in qscope_imports(script):
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # a module of an optional extra (lm-eval, ...) whose package is absent
            cause = exc if isinstance(exc, ImportError) else (exc.__cause__ or exc.__context__)
            if isinstance(cause, ImportError) and not (cause.name or "qscope").startswith("qscope"):
                continue
            raise
        if name and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports what qscope no longer has: {missing}"


def test_the_check_sees_a_missing_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qscope.evals.benchmarks import load_benchmark\n")
    assert qscope_imports(bad) == [("qscope.evals.benchmarks", "load_benchmark")]
    with pytest.raises(ImportError):
        importlib.import_module("qscope.evals.benchmarks")
