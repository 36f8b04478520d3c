"""File writes that survive a crash or kill: atomic files and folders, append-only caches; streamed hashes;
torch files loaded without running code."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask, read once (os.umask can only be read by setting it, which races other threads)."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            try:
                with open("/proc/self/status", encoding="ascii") as fh:
                    _UMASK = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
            except (OSError, StopIteration, ValueError, IndexError):
                _UMASK = os.umask(0o022)
                os.umask(_UMASK)
        return _UMASK


def _as_if_created(path: Path) -> None:
    """mkstemp/mkdtemp (and some writers, e.g. safetensors) make 0600/0700 entries; give `path`, and
    everything in it if it is a folder, the mode a plain open()/mkdir() would (executables keep x)."""
    for root, dirs, files in os.walk(path) if path.is_dir() else [(path.parent, [], [path.name])]:
        if path.is_dir():
            os.chmod(root, 0o777 & ~umask())
        for name in files:
            file = Path(root, name)
            executable = os.stat(file).st_mode & 0o111
            os.chmod(file, (0o777 if executable else 0o666) & ~umask())


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
        _as_if_created(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only on success.

    The swap is two renames (target -> `.NAME.old`, temp -> target); a kill between them leaves
    no target but a complete `.NAME.old`, which `recover_dir` puts back."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _as_if_created(tmp)
        if target.exists():
            old = _old_dir(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _old_dir(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_dir(target: str | os.PathLike) -> list[str]:
    """Undo what a kill inside `atomic_dir(target)` left: put a complete `.NAME.old` back when
    the target is missing (killed between the renames), drop it when the target exists (killed
    after them), and delete half-written `.NAME.*.tmp` folders. Call it only while no other
    process writes `target`. Returns what was done, one phrase per action."""
    target = Path(target)
    done = []
    old = _old_dir(target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}")
        else:
            os.replace(old, target)
            done.append(f"restored {target.name} from {old.name}")
    if target.parent.is_dir():
        for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            done.append(f"removed {tmp.name}")
    return done


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
    """Append lines to a per-item cache file; its readers skip a last line torn by a kill, and the
    first line appended after one starts on a line of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a line torn by a kill: start a fresh one
                fh.write(b"\n")
        fh.write("".join(line + "\n" for line in lines).encode("utf-8"))


class ItemCache:
    """Results per item in one append-only JSONL file, so a killed run keeps every finished item
    and a rerun does only the rest. Each line is one JSON record, named by its `key` fields (by
    default the item id and prompt hash of `data.benchmarks.item_key`); a line torn by a kill is
    skipped, and that item is simply redone. `path=None` keeps the records in memory only."""

    def __init__(self, path: str | os.PathLike | None, key: Sequence[str] = ("id", "h")):
        self.path = Path(path) if path is not None else None
        self.key = tuple(key)
        self.records: dict[tuple, dict] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.records[self._key(record)] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def _key(self, record: dict) -> tuple:
        return tuple(record[name] for name in self.key)

    def __contains__(self, key: Sequence) -> bool:
        return tuple(key) in self.records

    def __getitem__(self, key: Sequence) -> dict:
        return self.records[tuple(key)]

    def __len__(self) -> int:
        return len(self.records)

    def add(self, records: Iterable[dict]) -> None:
        """Keep `records` (each holding the key fields) and append them to the file at once."""
        records = list(records)
        for record in records:
            self.records[self._key(record)] = record
        if self.path is not None and records:
            append_lines(self.path, (json.dumps(record, ensure_ascii=False) for record in records))


def load_torch_plain(path: str | os.PathLike, what: str = "torch file"):
    """`torch.load` with `weights_only=True` (code in a pickle never runs); a refusal or a damaged
    file becomes one QScopeError line. The refusal never echoes torch's advice to retry with
    `weights_only=False`: that advice is how a malicious file gets to run."""
    import pickle

    import torch

    from .errors import QScopeError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        raise QScopeError(f"{path}: refused to unpickle: the file holds more than plain tensors "
                          f"({_unpickle_reason(exc)})") from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise QScopeError(f"{path}: not a readable {what} ({first[:200]})") from None


def _unpickle_reason(exc: BaseException) -> str:
    """What the pickle asked for, without torch's how-to-load-it-anyway text."""
    text = str(exc)
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found:
        return f"it names {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    reason = found.group(1) if found else "not a plain tensor file"
    return re.split(r"\s+Please\b|weights_only", reason)[0].strip().rstrip(".")[:200] or "not a plain tensor file"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed (artefacts can be tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file_remembered(path: str | os.PathLike, memo: str | os.PathLike) -> str:
    """`sha256_file`, remembered in the JSON file `memo` under the file's identity: resolved path,
    device, inode, size, and mtime and ctime in ns. Any write to the file moves its ctime, which no
    user call can set back, so a changed file is hashed again; an unchanged one costs one stat."""
    path = Path(path).resolve()
    st = path.stat()
    identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    memo = Path(memo)
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(path)) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("identity") == identity and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    known = {name: row for name, row in (known.items() if isinstance(known, dict) else ()) if Path(name).exists()}
    known[str(path)] = {"identity": identity, "sha256": digest}
    try:
        write_json(memo, known)
    except PermissionError:  # a read-only cache: hash again next time
        pass
    return digest
