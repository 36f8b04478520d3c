"""Checkpoints and the metrics log, written so that a killed run resumes with nothing lost.

One checkpoint per run, `out_dir/checkpoint/state.pt`, replaced atomically (a temp folder
renamed into place): a SIGKILL mid-write leaves the previous checkpoint intact, and `recover`
repairs what a kill during the swap left (the previous checkpoint put back, temp folders removed). It holds
everything the next step depends on: SAE and Adam states, step, tokens, dead-latent counters,
RNG states, the activation store (shuffle buffer, generator, source position) and the config.

`metrics.jsonl` is appended as the run goes; rows written after the last checkpoint belong to
steps that the resumed run will redo, so `MetricsLog.resume(step)` drops them (and any torn
last line), and the log continues with no duplicate or missing step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import QScopeError
from ..io import atomic_dir, atomic_path, load_torch_plain, recover_dir

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
FORMAT_VERSION = 1


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / STATE_FILE


def has_checkpoint(out_dir: str | Path) -> bool:
    return checkpoint_path(out_dir).is_file()


def recover(out_dir: str | Path) -> list[str]:
    """Repair a checkpoint swap cut short by a kill; call before `has_checkpoint` (rank 0 only)."""
    return recover_dir(Path(out_dir) / CHECKPOINT_DIR)


# What a run writes into its output folder (`layer<N>/` SAE folders come on top).
RUN_FILES = ("config.json", "metrics.jsonl", "final.json", CHECKPOINT_DIR)


def run_files(out_dir: str | Path) -> list[Path]:
    """The files and folders of an earlier run in `out_dir` (empty: nothing to overwrite)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    found += sorted(p for p in out.glob(f".{CHECKPOINT_DIR}.*") if p.exists())
    found += sorted(p for p in out.glob("layer*") if p.is_dir() and (p / "cfg.json").is_file())
    return found


def clear_run(out_dir: str | Path) -> None:
    """Delete an earlier run's files (what `run_files` lists), leaving anything else in the folder."""
    for path in run_files(out_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def save_checkpoint(out_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, nested dicts/lists) atomically."""
    state = {"version": FORMAT_VERSION, **state}
    with atomic_dir(Path(out_dir) / CHECKPOINT_DIR) as tmp:
        torch.save(state, tmp / STATE_FILE)
        with open(tmp / STATE_FILE, "rb") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
    return checkpoint_path(out_dir)


def load_checkpoint(out_dir: str | Path) -> dict[str, Any]:
    path = checkpoint_path(out_dir)
    try:
        state = load_torch_plain(path, "checkpoint")
    except FileNotFoundError:
        raise QScopeError(f"{out_dir}: no checkpoint to resume from ({path} missing)") from None
    if not isinstance(state, dict):
        raise QScopeError(f"{path}: not a qscope checkpoint")
    if state.get("version") != FORMAT_VERSION:
        raise QScopeError(f"{path}: checkpoint format {state.get('version')} is not {FORMAT_VERSION}")
    return state


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, Python). The trainer's own randomness uses seeded
    generators saved with the store, but code it calls may use the global ones."""
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(obj):
    return tuple(_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


# --------------------------------------------------------------------------- metrics log


class MetricsLog:
    """`metrics.jsonl`: one JSON object per logged step, appended and flushed as it goes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        """Complete rows (a torn last line from a kill is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "step" in row:
                out.append(row)
        return out

    def resume(self, step: int) -> list[dict]:
        """Keep rows up to `step` (the checkpoint's); rewrite the file atomically; return them."""
        keep = [row for row in self.rows() if int(row["step"]) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in keep), encoding="utf-8")
        return keep

    def start(self) -> None:
        """A fresh run: an empty log."""
        with atomic_path(self.path) as tmp:
            tmp.write_text("", encoding="utf-8")

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
