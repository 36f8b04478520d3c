"""The core types are named wherever they pass: a public function's `lm` says `LM`, its `sae` says
`SAE` (or `str`, where it is a source to load from) and its `saes` says `SAE`; so do dataclass fields.

Every module under qscope is imported and walked with `inspect`; shells whose optional
dependencies are missing are skipped rather than failed.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re

import pytest

import qscope
from qscope.errors import QScopeError

# the word each name's annotation must contain
EXPECTED = {"lm": ("LM",), "sae": ("SAE", "str"), "saes": ("SAE",)}
NOT_IMPORTED = {"qscope.__main__"}  # runs the CLI on import


def _modules() -> list:
    modules = []
    for info in pkgutil.walk_packages(qscope.__path__, "qscope."):
        if info.name in NOT_IMPORTED:
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:  # an optional dependency of a shell
            if (exc.name or "").startswith("qscope"):
                raise
        except QScopeError as exc:  # a shell that says which extra it needs (the lm-eval adapter)
            if "pip install" not in str(exc):
                raise
    return modules


def _public_callables(module) -> list:
    """(qualified name, function) for the module's own public functions and its public classes' methods."""
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            found.append((f"{module.__name__}.{name}", obj))
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                if inspect.isfunction(func):
                    found.append((f"{module.__name__}.{name}.{attr}", func))
    return found


def _annotation_text(annotation, module) -> str:
    """The annotation as written, plus what it stands for when it can be resolved (e.g. `SaeOpt`)."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    try:
        return f"{text} {eval(text, vars(module))!r}"  # noqa: S307 - the package's own annotations
    except Exception:  # a name imported only for type checkers
        return text


def _problem(where: str, name: str, annotation, module) -> str | None:
    if name not in EXPECTED:
        return None
    if annotation is inspect.Parameter.empty or annotation is dataclasses.MISSING:
        return f"{where}: `{name}` has no annotation"
    text = _annotation_text(annotation, module)
    if not any(re.search(rf"\b{word}\b", text) for word in EXPECTED[name]):
        return f"{where}: `{name}: {annotation}` names none of {EXPECTED[name]}"
    return None


MODULES = _modules()


def test_the_walk_sees_the_package():
    names = {qualname for module in MODULES for qualname, _ in _public_callables(module)}
    assert "qscope.features.search.contrast" in names
    assert "qscope.model.lm.LM.check_sae" in names
    assert len(MODULES) > 50


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_lm_and_sae_parameters_are_annotated(module):
    problems = []
    for qualname, func in _public_callables(module):
        for param in inspect.signature(func).parameters.values():
            problems.append(_problem(qualname, param.name, param.annotation, module))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_lm_and_sae_fields_are_annotated(module):
    problems = []
    for name, cls in vars(module).items():
        if inspect.isclass(cls) and cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls):
            for field in dataclasses.fields(cls):
                problems.append(_problem(f"{module.__name__}.{name}.{field.name}", field.name, field.type, module))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)
