"""What a store file is: where it lives, its SQLite tables, and the constants the builder and
the reader must agree on (context width, histogram bins, activation intervals)."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ...errors import QScopeError

SCHEMA_VERSION = 1
LEFT, RIGHT = 24, 8  # context tokens kept left / right of the activating token
WIDTH = LEFT + RIGHT + 1
HIST_EDGES = np.logspace(-3, 3, 49)  # 48 log-spaced bins (8 per decade); values outside go to the end bins
BINS_PER_INTERVAL = 4  # activation intervals for samples = half decades of the histogram
N_INTERVALS = (len(HIST_EDGES) - 1) // BINS_PER_INTERVAL
SAMPLES_PER_INTERVAL = 3
N_EFFECTS = 10  # promoted / suppressed tokens kept per feature

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS texts (idx INTEGER PRIMARY KEY, label TEXT, n_tokens INTEGER NOT NULL, tokens TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feature_stats (feature INTEGER PRIMARY KEY, fires INTEGER NOT NULL, text_fires INTEGER NOT NULL,
    sum_act REAL NOT NULL, max_act REAL NOT NULL, hist BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS top_examples (feature INTEGER NOT NULL, slot INTEGER NOT NULL, act REAL NOT NULL,
    text_idx INTEGER NOT NULL, pos INTEGER NOT NULL, start INTEGER NOT NULL, acts BLOB NOT NULL, PRIMARY KEY (feature, slot));
CREATE TABLE IF NOT EXISTS interval_examples (feature INTEGER NOT NULL, interval INTEGER NOT NULL, slot INTEGER NOT NULL,
    key INTEGER NOT NULL, act REAL NOT NULL, text_idx INTEGER NOT NULL, pos INTEGER NOT NULL, start INTEGER NOT NULL,
    acts BLOB NOT NULL, PRIMARY KEY (feature, interval, slot));
CREATE TABLE IF NOT EXISTS token_effects (feature INTEGER PRIMARY KEY, promoted TEXT NOT NULL, suppressed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS explanations (id INTEGER PRIMARY KEY AUTOINCREMENT, feature INTEGER NOT NULL, text TEXT NOT NULL,
    source TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS explanations_feature ON explanations (feature);
CREATE TABLE IF NOT EXISTS labels (feature INTEGER PRIMARY KEY, text TEXT NOT NULL);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _slug(name: str) -> str:
    base = Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9._]+", "-", base).strip("-").lower() or "x"


def default_store_path(model: str, sae: str, layer: int) -> Path:
    """Where `qscope features build` puts a store unless told: QSCOPE_HOME/stores/<model>-<sae>-layer<L>.sqlite."""
    from ...paths import home_dir

    return home_dir("stores") / f"{_slug(model)}-{_slug(sae)}-layer{layer}.sqlite"


def find_store(model: str = "default", sae: str = "default", layer: int | None = None) -> Path:
    """The default store of `model` + `sae` (+ `layer`, needed only when several layers have one)."""
    from ...paths import home_dir

    if layer is not None:
        path = default_store_path(model, sae, layer)
        if not path.is_file():
            raise QScopeError(f"{path}: no feature store for layer {layer}; build one with "
                              f"`qscope features build --layer {layer}` or pass --store")
        return path
    prefix = f"{_slug(model)}-{_slug(sae)}-layer"
    found = sorted(home_dir("stores").glob(prefix + "*.sqlite"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise QScopeError(f"no feature store for model {model!r} and SAE {sae!r} under {home_dir('stores')}; "
                          f"build one with `qscope features build` or pass --store")
    layers = ", ".join(p.stem[len(prefix):] for p in found)
    raise QScopeError(f"several feature stores for model {model!r} and SAE {sae!r} (layers {layers}): pass --layer")

