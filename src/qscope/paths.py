"""Where qscope keeps downloads and caches: `QSCOPE_HOME` (default `~/.cache/qscope`), never git."""

from __future__ import annotations

import os
from pathlib import Path


def qscope_home() -> Path:
    """The root of qscope's cache; created on first use."""
    home = Path(os.environ.get("QSCOPE_HOME", Path.home() / ".cache" / "qscope")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_dir(*parts: str) -> Path:
    """A sub-folder of `QSCOPE_HOME` (e.g. `home_dir("models")`), created on first use."""
    path = qscope_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_slug(text: str) -> str:
    """A model or benchmark name as a cache file name: unsafe characters -> '_', the last 80 kept."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-80:]
