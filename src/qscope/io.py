"""File writes that survive a crash or kill: atomic files and folders, append-only caches; streamed hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any, provenance: dict | None = None) -> None:
    """Write `obj` as indented JSON, atomically; a published result passes `provenance=provenance.record(...)`,
    stored under the object's "provenance" key (so `obj` must then be a dict)."""
    if provenance is not None:
        if not isinstance(obj, dict):
            raise TypeError(f"provenance needs a JSON object to live in, got {type(obj).__name__}")
        obj = {**obj, "provenance": provenance}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_png(fig, path: str | os.PathLike, dpi: int = 120, provenance: dict | None = None, **savefig: Any) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it (figures are not freed otherwise).
    The PNG carries its provenance (`provenance.record()` of this process unless given) in a text chunk."""
    import matplotlib.pyplot as plt

    from .provenance import png_metadata, record

    path = Path(path)
    metadata = {**png_metadata(provenance or record()), **savefig.pop("metadata", {})}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata=metadata, **savefig)
    plt.close(fig)
    return path


def append_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Append lines to a per-item cache file; its readers skip a last line torn by a kill."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed (artefacts can be tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
