"""What made an artefact: the command line, qscope version, git commit, seeds and time.

Published JSON files carry this under a "provenance" key and PNGs in a "provenance" text chunk,
so every number in the docs can be traced to the run (and the code) that produced it.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

VERSION = "0.1.0"  # the package version (`qscope.__version__`); here so that artefacts can record it
KEY = "provenance"
REPO = Path(__file__).resolve().parents[2]  # src/qscope/provenance.py -> the checkout, when run from one


def command_line(argv: list[str] | None = None) -> str:
    """`sys.argv` as a command anyone can paste: `qscope ...` for the CLI, repo-relative script paths."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = Path(argv[0])
    if head.name == "qscope" or (head.name == "__main__.py" and head.parent.name == "qscope"):
        return shlex.join(["qscope", *argv[1:]])
    try:
        head = head.resolve().relative_to(REPO)
    except (OSError, ValueError):
        pass
    prefix = ["python"] if head.suffix == ".py" else []
    return shlex.join([*prefix, str(head), *argv[1:]])


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """Commit of the checkout qscope runs from and whether tracked files differ from it; read once per
    process, so an artefact written late in a run does not count the run's own earlier outputs as edits."""
    top = _git("rev-parse", "--show-toplevel")
    if not top or not (Path(top) / "src" / "qscope").is_dir():
        return {"git_commit": None, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def record(seeds: Any = None, command: str | None = None, **extra: Any) -> dict:
    """The provenance of an artefact written now. `seeds`: every seed the result depends on (an int,
    a list or a dict of named seeds); `command`: defaults to this process's command line."""
    return {
        "command": command if command is not None else command_line(),
        "qscope_version": VERSION,
        **git_state(),
        "seeds": seeds,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def png_metadata(prov: dict) -> dict:
    """PNG text chunks for `matplotlib.savefig(metadata=...)`."""
    return {KEY: json.dumps(prov, ensure_ascii=False, default=str)}


def stamp_png(path: str | os.PathLike, prov: dict | None = None) -> None:
    """Add provenance to a PNG written by something other than matplotlib (e.g. a browser screenshot)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .io import atomic_path

    info = PngInfo()
    for key, value in png_metadata(prov or record()).items():
        info.add_itxt(key, value)
    with Image.open(path) as img:
        img.load()
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG", pnginfo=info)


def read(path: str | os.PathLike) -> dict | None:
    """The provenance stored in a JSON or PNG artefact, or None if it has none."""
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as img:
            text = getattr(img, "text", {}).get(KEY)
        return json.loads(text) if text else None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get(KEY) if isinstance(data, dict) else None
