"""The feature store: every feature's dashboard for one model + SAE + layer, in one SQLite file.

Why SQLite: one self-contained file that any tool can open, queried without loading the model,
readable while a build is still writing (WAL mode), and one transaction per checkpoint, so a
killed build never leaves a half-counted store: it resumes from the last committed text.

What a dashboard holds (the parts sae_vis / SAEDashboard / Neuronpedia show): firing count and
density, max / mean activation, a log-binned activation histogram, the top-N contexts by max
activation (at most one per text, so the list is not twenty neighbouring tokens of one text),
samples from several activation intervals, the tokens the decoder direction promotes and
suppresses, explanations, and an automatic label per feature (`labels`) for the lists to show
until an explanation replaces it. Position 0 of every text is skipped, as in `FeatureStats`:
attention-sink tokens carry "register" features that say nothing about the text.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import QScopeError
from .labels import AUTO, auto_label, text_language

SCHEMA_VERSION = 1
LEFT, RIGHT = 24, 8  # context tokens kept left / right of the activating token
WIDTH = LEFT + RIGHT + 1
HIST_EDGES = np.logspace(-3, 3, 49)  # 48 log-spaced bins (8 per decade); values outside go to the end bins
BINS_PER_INTERVAL = 4  # activation intervals for samples = half decades of the histogram
N_INTERVALS = (len(HIST_EDGES) - 1) // BINS_PER_INTERVAL
SAMPLES_PER_INTERVAL = 3
N_EFFECTS = 10  # promoted / suppressed tokens kept per feature
BROWSE_ORDERS = ("frequent", "rare", "strongest", "random")

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


# ------------------------------------------------------------------------------ typed results
@dataclass
class Example:
    """One context: tokens around `position` (the token the example is about) with the feature's
    activation on each token; `focus` indexes that token within `tokens`."""

    text_index: int
    label: str | None
    position: int
    act: float
    focus: int
    tokens: list[str]
    acts: list[float]


@dataclass
class Interval:
    """Samples of firings whose activation lies in [low, high); `share` = fraction of all firings."""

    low: float
    high: float
    count: int
    share: float
    examples: list[Example] = field(default_factory=list)


@dataclass
class Explanation:
    id: int
    feature: int
    text: str
    source: str
    created_at: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FeatureSummary:
    feature: int
    fires: int
    density: float
    max_act: float
    mean_act: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FeatureDashboard:
    feature: int
    layer: int
    model: str
    sae: str
    n_texts: int
    n_tokens: int
    fires: int
    text_fires: int
    density: float  # firings per token
    text_density: float  # share of texts where it fires at least once
    max_act: float
    mean_act: float  # mean activation when firing
    histogram: list[tuple[float, float, int]]  # (low, high, count), nonzero range only
    top: list[Example]
    intervals: list[Interval]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    explanations: list[Explanation]
    label: str = ""  # the newest explanation, else the automatic label
    label_source: str = AUTO  # that explanation's source, or "auto"
    auto_label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Label:
    """What lists show for a feature: the newest explanation, else its automatic label."""

    text: str
    source: str  # "auto", "manual" or the explaining model's name

    def to_dict(self) -> dict:
        return {"label": self.text, "label_source": self.source}


# ------------------------------------------------------------------------------ helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(name: str) -> str:
    base = Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9._]+", "-", base).strip("-").lower() or "x"


def default_store_path(model: str, sae: str, layer: int) -> Path:
    """Where `qscope features build` puts a store unless told: QSCOPE_HOME/stores/<model>-<sae>-layer<L>.sqlite."""
    from ..paths import home_dir

    return home_dir("stores") / f"{_slug(model)}-{_slug(sae)}-layer{layer}.sqlite"


def find_store(model: str = "default", sae: str = "default", layer: int | None = None) -> Path:
    """The default store of `model` + `sae` (+ `layer`, needed only when several layers have one)."""
    from ..paths import home_dir

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


def sae_fingerprint(sae) -> str:
    """A short hash of some decoder rows: catches resuming a store with a different SAE."""
    w = sae.W_dec.detach()[:: max(1, sae.cfg.d_sae // 64)].float().cpu().contiguous()
    return hashlib.sha1(w.numpy().tobytes()).hexdigest()[:16]


def _chain(prev: str, text: str) -> str:
    """Running hash of the texts processed so far: resuming with other texts is refused."""
    return hashlib.sha1((prev + hashlib.sha1(text.encode("utf-8")).hexdigest()).encode()).hexdigest()


_M31 = (1 << 31) - 1


def _sample_keys(text: int, pos: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random keys in [0, 2^31) per (text, position, feature): the random
    priorities of bottom-k reservoir sampling, identical whether a build was resumed or not."""
    x = (feat * 0x9E3779B1 + pos * 0x85EBCA77 + text * 0xC2B2AE3D) & _M31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _M31
    x = ((x ^ (x >> 12)) * 0x297A2D39) & _M31
    return x ^ (x >> 15)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


# ------------------------------------------------------------------------------ reading
class FeatureStore:
    """A built (or building) feature store; opening a missing or foreign file is an error."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._auto: dict[int, str] | None = None
        self._table: dict[str, np.ndarray] | None = None
        if not self.path.is_file():
            raise QScopeError(f"{self.path}: no feature store there; build one with `qscope features build`")
        try:
            self.conn = _connect(self.path)
            self.meta = {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as exc:
            raise QScopeError(f"{self.path}: not a qscope feature store ({exc})") from None
        if not self.meta:
            raise QScopeError(f"{self.path}: the build has not committed its first checkpoint yet; try again shortly")
        if self.meta.get("schema") != SCHEMA_VERSION:
            raise QScopeError(f"{self.path}: not a qscope feature store (schema {self.meta.get('schema')!r}, "
                              f"expected {SCHEMA_VERSION})")

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def __repr__(self) -> str:
        m = self.meta
        return f"FeatureStore({self.path.name}, layer={m['layer']}, texts={m['texts_done']}, state={m['state']})"

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    def summary(self) -> dict:
        """Metadata plus file size and how many features ever fired."""
        fired = self.conn.execute("SELECT COUNT(*) FROM feature_stats WHERE fires > 0").fetchone()[0]
        return {**self.meta, "path": str(self.path), "bytes": self.path.stat().st_size, "features_fired": fired}

    def check(self, layer: int | None = None) -> "FeatureStore":
        """Refuse a store built for another layer than the one asked for."""
        if layer is not None and int(layer) != self.layer:
            raise QScopeError(f"{self.path}: store is for layer {self.layer}, not layer {layer}")
        return self

    def _check_feature(self, feature: int) -> int:
        if not 0 <= int(feature) < self.d_sae:
            raise QScopeError(f"feature {feature} out of range: {self.path.name} has features 0..{self.d_sae - 1}")
        return int(feature)

    # -- dashboards
    def _examples(self, rows, tokens_of) -> list[Example]:
        out = []
        for act, text_idx, pos, start, blob in rows:
            label, tokens = tokens_of(text_idx)
            acts = np.frombuffer(blob, dtype=np.float16).astype(float).round(4).tolist()
            out.append(Example(text_idx, label, pos, float(act), pos - start, tokens[start:start + len(acts)], acts))
        return out

    def dashboard(self, feature: int, n_top: int | None = None) -> "FeatureDashboard":
        """Everything stored about `feature` (top contexts strongest first)."""
        feature = self._check_feature(feature)
        q = self.conn.execute
        cache: dict[int, tuple[str | None, list[str]]] = {}

        def tokens_of(idx: int):
            if idx not in cache:
                label, tokens = q("SELECT label, tokens FROM texts WHERE idx=?", (idx,)).fetchone()
                cache[idx] = (label, json.loads(tokens))
            return cache[idx]

        row = q("SELECT fires, text_fires, sum_act, max_act, hist FROM feature_stats WHERE feature=?", (feature,)).fetchone()
        fires, text_fires, sum_act, max_act, hist = row or (0, 0, 0.0, 0.0, None)
        counts = np.frombuffer(hist, dtype=np.int64) if hist else np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
        nz = np.nonzero(counts)[0]
        histogram = [(float(HIST_EDGES[b]), float(HIST_EDGES[b + 1]), int(counts[b]))
                     for b in (range(nz[0], nz[-1] + 1) if len(nz) else [])]
        top = self._examples(q("SELECT act, text_idx, pos, start, acts FROM top_examples WHERE feature=? "
                               "ORDER BY act DESC, text_idx LIMIT ?", (feature, n_top or -1)), tokens_of)
        intervals = []
        for i in range(N_INTERVALS):
            rows = q("SELECT act, text_idx, pos, start, acts FROM interval_examples WHERE feature=? AND interval=? "
                     "ORDER BY key", (feature, i)).fetchall()
            if rows:
                lo, hi = i * BINS_PER_INTERVAL, (i + 1) * BINS_PER_INTERVAL
                count = int(counts[lo:hi].sum())
                intervals.append(Interval(float(HIST_EDGES[lo]), float(HIST_EDGES[hi]), count, count / max(fires, 1),
                                          self._examples(rows, tokens_of)))
        eff = q("SELECT promoted, suppressed FROM token_effects WHERE feature=?", (feature,)).fetchone()
        promoted, suppressed = ([tuple(p) for p in json.loads(e)] for e in eff) if eff else ([], [])
        m = self.meta
        explanations = self.explanations(feature)
        auto = self.auto_labels().get(feature, "")
        label = Label(explanations[-1].text, explanations[-1].source) if explanations else Label(auto, AUTO)
        return FeatureDashboard(
            feature, self.layer, m["model"], m["sae"], m["texts_done"], m["tokens_done"], fires, text_fires,
            fires / max(m["tokens_done"], 1), text_fires / max(m["texts_done"], 1), max_act,
            sum_act / fires if fires else 0.0, histogram, top, intervals, promoted, suppressed, explanations,
            label.text, label.source, auto)

    def top_features_by_density(self, n: int = 20, lowest: bool = False, min_fires: int = 1) -> list[FeatureSummary]:
        """The most (or, with `lowest`, least) frequently firing features among those firing at least `min_fires` times."""
        tokens = max(self.meta["tokens_done"], 1)
        rows = self.conn.execute(
            f"SELECT feature, fires, max_act, sum_act FROM feature_stats WHERE fires >= ? "
            f"ORDER BY fires {'ASC' if lowest else 'DESC'}, feature LIMIT ?", (max(min_fires, 1), n))
        return [FeatureSummary(f, c, c / tokens, mx, s / c) for f, c, mx, s in rows]

    def feature_table(self) -> dict[str, np.ndarray]:
        """Per-feature arrays over all `d_sae` features (zeros where a feature never fired):
        fires, density (firings per token), max_act, mean_act. What browsing sorts and filters
        (kept once the store is complete)."""
        if self._table is not None:
            return self._table
        fires, max_act, sum_act = np.zeros(self.d_sae, np.int64), np.zeros(self.d_sae), np.zeros(self.d_sae)
        rows = self.conn.execute("SELECT feature, fires, max_act, sum_act FROM feature_stats").fetchall()
        if rows:
            f, c, mx, sm = (np.array(x) for x in zip(*rows))
            fires[f], max_act[f], sum_act[f] = c, mx, sm
        table = {"fires": fires, "density": fires / max(self.meta["tokens_done"], 1), "max_act": max_act,
                 "mean_act": np.divide(sum_act, fires, out=np.zeros(self.d_sae), where=fires > 0)}
        if self.meta.get("state") == "complete":  # a finished store no longer changes
            self._table = table
        return table

    def browse(self, order: str = "frequent", offset: int = 0, limit: int = 25, max_density: float | None = None,
               query: str | None = None, seed: int = 0) -> tuple[int, list[dict]]:
        """(how many features match, one page of them) among features that fired: `order` is
        frequent / rare (by firings), strongest (max activation) or random (a fixed shuffle per
        `seed`); `max_density` hides denser features (firings per token); `query` keeps features
        whose label has every word. Rows: feature, fires, density, max_act, mean_act, label, label_source."""
        if order not in BROWSE_ORDERS:
            raise QScopeError(f"order must be one of {', '.join(BROWSE_ORDERS)}, not {order!r}")
        t = self.feature_table()
        keep = t["fires"] > 0
        if max_density is not None:
            keep &= t["density"] <= max_density
        labels = self.labels() if query else None
        if query:
            words = [w.lower() for w in query.split()]
            keep &= np.array([all(w in labels[f].text.lower() for w in words) for f in range(self.d_sae)])
        ids = np.nonzero(keep)[0]
        if order == "random":
            ids = ids[np.random.default_rng(seed).permutation(len(ids))]
        else:
            key = {"frequent": -t["fires"], "rare": t["fires"], "strongest": -t["max_act"]}[order][ids]
            ids = ids[np.argsort(key, kind="stable")]
        page = ids[max(offset, 0):max(offset, 0) + limit].tolist()
        labels = labels or self.labels(page)
        return len(ids), [{"feature": f, "fires": int(t["fires"][f]), "density": float(t["density"][f]),
                           "max_act": float(t["max_act"][f]), "mean_act": float(t["mean_act"][f]),
                           **labels[f].to_dict()} for f in page]

    # -- labels
    def auto_labels(self) -> dict[int, str]:
        """Every feature's automatic label: stored by the build, or (a store built before labels
        existed, or one still building) computed from the store on first use and kept in memory;
        a complete store is also given them on disk when the file is writable."""
        if self._auto is None:
            rows = self.conn.execute("SELECT feature, text FROM labels").fetchall() if self._has_labels_table() else []
            if rows and self.meta.get("state") == "complete":
                self._auto = dict(rows)
            else:
                self._auto = compute_auto_labels(self.conn)
                if self.meta.get("state") == "complete":
                    try:
                        _write_labels(self.conn, self._auto)
                    except sqlite3.OperationalError:  # read-only file: keep them in memory
                        pass
        return self._auto

    def _has_labels_table(self) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='labels'").fetchone())

    def labels(self, features: Iterable[int] | None = None) -> dict[int, Label]:
        """{feature: Label} for `features` (default: all): the newest explanation, else the automatic label."""
        auto = self.auto_labels()
        wanted = range(self.d_sae) if features is None else [int(f) for f in features]
        newest = {f: Label(t, s) for f, t, s in self.conn.execute(
            "SELECT feature, text, source FROM explanations WHERE id IN (SELECT MAX(id) FROM explanations GROUP BY feature)")}
        return {f: newest.get(f) or Label(auto.get(f, ""), AUTO) for f in wanted}

    def search_labels(self, query: str, limit: int = 50) -> list[Explanation]:
        """Explanations, then automatic labels (source "auto", id 0; most frequent feature first),
        containing every word of `query`."""
        found = self.search_explanations(query, limit)
        words = [w.lower() for w in query.split()]
        seen = {e.feature for e in found}
        fires = self.feature_table()["fires"]
        for feature, text in sorted(self.auto_labels().items(), key=lambda kv: (-int(fires[kv[0]]), kv[0])):
            if len(found) >= limit:
                break
            low = text.lower()
            if feature not in seen and all(w in low for w in words):
                found.append(Explanation(0, feature, text, AUTO, ""))
        return found

    # -- explanations
    def add_explanation(self, feature: int, text: str, source: str = "manual") -> Explanation:
        """Attach an explanation (several per feature are kept, newest last)."""
        feature = self._check_feature(feature)
        text = " ".join(text.split())
        if not text:
            raise QScopeError("empty explanation")
        created = _now()
        cur = self.conn.execute("INSERT INTO explanations (feature, text, source, created_at) VALUES (?, ?, ?, ?)",
                                (feature, text, source, created))
        return Explanation(cur.lastrowid, feature, text, source, created)

    def explanations(self, feature: int) -> list[Explanation]:
        rows = self.conn.execute("SELECT id, feature, text, source, created_at FROM explanations WHERE feature=? "
                                 "ORDER BY id", (self._check_feature(feature),))
        return [Explanation(*r) for r in rows]

    def search_explanations(self, query: str, limit: int = 50) -> list[Explanation]:
        """Explanations containing every word of `query` (case-insensitive), newest first."""
        words = query.split()
        if not words:
            raise QScopeError("empty search query")
        where = " AND ".join("text LIKE ? ESCAPE '\\'" for _ in words)
        like = ["%" + re.sub(r"([%_\\])", r"\\\1", w) + "%" for w in words]
        rows = self.conn.execute(f"SELECT id, feature, text, source, created_at FROM explanations WHERE {where} "
                                 "ORDER BY id DESC LIMIT ?", (*like, limit))
        return [Explanation(*r) for r in rows]


# ------------------------------------------------------------------------------ building
class _Keeper:
    """The best `n` candidates per row by score, in fixed slots (a vectorised min-heap: a new
    candidate replaces the row's weakest slot). Slots are saved as they are, so a resumed build
    continues from exactly the state an uninterrupted one would have."""

    def __init__(self, rows: int, n: int, score_dtype: torch.dtype, empty):
        self.score = torch.full((rows, n), empty, dtype=score_dtype)
        self.text = torch.full((rows, n), -1, dtype=torch.long)
        self.pos = torch.zeros(rows, n, dtype=torch.long)
        self.act = torch.zeros(rows, n)
        self.win = torch.zeros(rows, n, WIDTH, dtype=torch.float16)
        self.dirty = torch.zeros(rows, dtype=torch.bool)

    def offer(self, rows, score, text: int, pos, act, win_fn: Callable) -> None:
        """Offer one candidate per (distinct) row; windows are only built for the winners."""
        weakest, slot = self.score[rows].min(dim=1)
        win = score > weakest
        if not win.any():
            return
        rows, slot, pos = rows[win], slot[win], pos[win]
        self.score[rows, slot] = score[win]
        self.text[rows, slot] = text
        self.pos[rows, slot] = pos
        self.act[rows, slot] = act[win]
        self.win[rows, slot] = win_fn(rows, pos)
        self.dirty[rows] = True

    def restore(self, entries: list[tuple]) -> None:
        """Put back saved slots: (row, slot, score, text, pos, act, start, acts bytes) each."""
        if not entries:
            return
        row, slot, score, text, pos, act, start, blobs = zip(*entries)
        row, slot = torch.tensor(row), torch.tensor(slot)
        self.score[row, slot] = torch.tensor(score, dtype=self.score.dtype)
        self.text[row, slot], self.pos[row, slot] = torch.tensor(text), torch.tensor(pos)
        self.act[row, slot] = torch.tensor(act, dtype=torch.float32)
        win = np.zeros((len(entries), WIDTH), dtype=np.float16)
        for i, (p, st, blob) in enumerate(zip(pos, start, blobs)):
            acts = np.frombuffer(blob, dtype=np.float16)
            off = st - (p - LEFT)
            win[i, off:off + len(acts)] = acts
        self.win[row, slot] = torch.from_numpy(win)

    def saved(self, rows: list[int], lengths: list[int]):
        """(row, slot, score, text, pos, act, start, acts bytes) of the filled slots of `rows`."""
        if not rows:
            return
        idx = torch.tensor(rows)
        text, pos, act, score = (t[idx].tolist() for t in (self.text, self.pos, self.act, self.score))
        win = self.win[idx].numpy()
        for i, row in enumerate(rows):
            for slot, t in enumerate(text[i]):
                if t < 0:
                    continue
                p = pos[i][slot]
                start, stop = max(p - LEFT, 0), min(p + RIGHT + 1, lengths[t])
                off = start - (p - LEFT)
                yield row, slot, score[i][slot], t, p, act[i][slot], start, win[i, slot, off:off + stop - start].tobytes()


class _Builder:
    """Per-feature running statistics, top contexts and interval samples over streamed texts."""

    def __init__(self, d_sae: int, top_n: int):
        self.d_sae = d_sae
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.text_fires = torch.zeros(d_sae, dtype=torch.long)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae, len(HIST_EDGES) - 1, dtype=torch.long)
        self.stats_dirty = torch.zeros(d_sae, dtype=torch.bool)
        self.top = _Keeper(d_sae, top_n, torch.float32, 0.0)
        self.samples = _Keeper(d_sae * N_INTERVALS, SAMPLES_PER_INTERVAL, torch.long, torch.iinfo(torch.long).min)
        self.edges = torch.from_numpy(HIST_EDGES[1:-1]).float()
        self.lengths: list[int] = []

    def update(self, text: int, codes) -> int:
        """Fold one text's codes in; returns the number of tokens counted (position 0 skipped)."""
        n_tok = len(codes.tokens)
        self.lengths.append(n_tok)
        start = 1 if n_tok > 1 else 0
        values, indices = codes.values[start:], codes.indices[start:]
        positions = torch.arange(start, n_tok).unsqueeze(1).expand_as(indices)
        on = values > 0
        v, f, p = values[on], indices[on], positions[on]
        if len(v) == 0:
            return n_tok - start
        # Running statistics and histogram.
        self.fires.index_add_(0, f, torch.ones_like(f))
        self.sum.index_add_(0, f, v.double())
        self.max.scatter_reduce_(0, f, v, "amax")
        bins = torch.bucketize(v, self.edges, right=True)
        self.hist.view(-1).index_add_(0, f * self.hist.shape[1] + bins, torch.ones_like(f))
        feats = f.unique()
        self.text_fires[feats] += 1
        self.stats_dirty[feats] = True

        dense = torch.zeros(n_tok, self.d_sae)
        dense[start:].scatter_(1, indices, values)

        def windows(feat, pos):  # (n, WIDTH) activations of `feat` around `pos`
            idx = pos.unsqueeze(1) + torch.arange(-LEFT, RIGHT + 1)
            ok = (idx >= 0) & (idx < n_tok)
            return torch.where(ok, dense[idx.clamp(0, n_tok - 1), feat.unsqueeze(1)], 0.0).half()

        # Top contexts: each feature's maximum over this text (its first position on ties).
        fmax = torch.zeros(self.d_sae).scatter_reduce_(0, f, v, "amax")
        at_max = v == fmax[f]
        first = torch.full((self.d_sae,), n_tok, dtype=torch.long).scatter_reduce_(0, f[at_max], p[at_max], "amin")
        self.top.offer(feats, fmax[feats], text, first[feats], fmax[feats], windows)

        # Interval samples: bottom-k by a deterministic random key = a uniform reservoir sample,
        # in one pass; at most one firing per text per (feature, interval).
        rows = f * N_INTERVALS + bins // BINS_PER_INTERVAL
        comp = _sample_keys(text, p, f) * (1 << 20) + p  # unique per (row, text): ties impossible
        best = torch.full((self.samples.score.shape[0],), torch.iinfo(torch.long).max, dtype=torch.long)
        best.scatter_reduce_(0, rows, comp, "amin")
        pick = comp == best[rows]
        self.samples.offer(rows[pick], -comp[pick], text, p[pick], v[pick],
                           lambda r, pos: windows(r // N_INTERVALS, pos))
        return n_tok - start

    # -- persistence
    def save(self, conn: sqlite3.Connection, texts: list[tuple], meta: dict) -> None:
        """Write everything changed since the last save plus the progress counters, in ONE transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?)", texts)
            feats = self.stats_dirty.nonzero().flatten().tolist()
            conn.executemany("INSERT OR REPLACE INTO feature_stats VALUES (?, ?, ?, ?, ?, ?)", [
                (f, int(self.fires[f]), int(self.text_fires[f]), float(self.sum[f]), float(self.max[f]),
                 self.hist[f].numpy().tobytes()) for f in feats])
            rows = self.top.dirty.nonzero().flatten().tolist()
            conn.executemany("DELETE FROM top_examples WHERE feature=?", [(r,) for r in rows])
            conn.executemany("INSERT INTO top_examples VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(r, s, a, t, p, st, b) for r, s, _, t, p, a, st, b in self.top.saved(rows, self.lengths)])
            rows = self.samples.dirty.nonzero().flatten().tolist()
            conn.executemany("DELETE FROM interval_examples WHERE feature=? AND interval=?",
                             [divmod(r, N_INTERVALS) for r in rows])
            conn.executemany("INSERT INTO interval_examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                (*divmod(r, N_INTERVALS), s, -sc, a, t, p, st, b)
                for r, s, sc, t, p, a, st, b in self.samples.saved(rows, self.lengths)])
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats_dirty[:] = False
        self.top.dirty[:] = False
        self.samples.dirty[:] = False

    def load(self, conn: sqlite3.Connection) -> None:
        """Rebuild the in-memory state from the last committed checkpoint."""
        self.lengths = [n for (n,) in conn.execute("SELECT n_tokens FROM texts ORDER BY idx")]
        rows = conn.execute("SELECT * FROM feature_stats").fetchall()
        if rows:
            f, fires, text_fires, sums, maxes, hists = zip(*rows)
            f = torch.tensor(f)
            self.fires[f], self.text_fires[f] = torch.tensor(fires), torch.tensor(text_fires)
            self.sum[f], self.max[f] = torch.tensor(sums, dtype=torch.float64), torch.tensor(maxes, dtype=torch.float32)
            self.hist[f] = torch.from_numpy(np.frombuffer(b"".join(hists), dtype=np.int64).reshape(len(rows), -1).copy())
        self.top.restore([(f, slot, act, text, pos, act, start, blob) for f, slot, act, text, pos, start, blob
                          in conn.execute("SELECT * FROM top_examples")])
        self.samples.restore([(f * N_INTERVALS + i, slot, -key, text, pos, act, start, blob)
                              for f, i, slot, key, act, text, pos, start, blob
                              in conn.execute("SELECT * FROM interval_examples")])


@contextmanager
def _one_thread():
    """Run small tensor ops on one thread: with the cores busy (the model, other jobs), OpenMP
    hand-offs made the per-text bookkeeping ~50x slower (0.6 s vs 9 ms per text, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_item(item) -> tuple[str | None, str]:
    return (None, item) if isinstance(item, str) else (item[0], item[1])


def _store_token_effects(conn: sqlite3.Connection, lm, sae, chunk: int = 256) -> None:
    """Promoted / suppressed tokens of every feature, once per store (they do not depend on texts)."""
    from .logits import token_effects

    done = conn.execute("SELECT COUNT(*) FROM token_effects").fetchone()[0]
    for lo in range(done, sae.cfg.d_sae, chunk):  # chunks commit in order: a rerun picks up where it stopped
        effects = token_effects(lm, sae, list(range(lo, min(lo + chunk, sae.cfg.d_sae))), n=N_EFFECTS)
        rows = [(e.feature, json.dumps([(t, round(s, 4)) for t, s in e.promoted], ensure_ascii=False),
                 json.dumps([(t, round(s, 4)) for t, s in e.suppressed], ensure_ascii=False)) for e in effects]
        with conn:
            conn.execute("BEGIN")
            conn.executemany("INSERT OR REPLACE INTO token_effects VALUES (?, ?, ?)", rows)


def compute_auto_labels(conn: sqlite3.Connection) -> dict[int, str]:
    """{feature: automatic label} from a store's top contexts, texts and token effects."""
    texts = {idx: (label, json.loads(tokens)) for idx, label, tokens in conn.execute("SELECT idx, label, tokens FROM texts")}
    languages = {idx: text_language("".join(tokens)) for idx, (_, tokens) in texts.items()}
    d_sae = json.loads(conn.execute("SELECT value FROM meta WHERE key='d_sae'").fetchone()[0])
    focus: dict[int, list] = {}
    for feature, text_idx, pos in conn.execute("SELECT feature, text_idx, pos FROM top_examples ORDER BY feature, act DESC"):
        if text_idx in texts:
            focus.setdefault(feature, []).append((texts[text_idx][1][pos], languages[text_idx], texts[text_idx][0]))
    promoted = {f: [t for t, _ in json.loads(p)] for f, p in conn.execute("SELECT feature, promoted FROM token_effects")}
    out = {}
    for f in range(d_sae):
        tokens, langs, corpora = zip(*focus[f]) if f in focus else ((), (), ())
        out[f] = auto_label(tokens, promoted.get(f, []), langs, corpora)
    return out


def _write_labels(conn: sqlite3.Connection, labels: dict[int, str]) -> None:
    with conn:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE IF NOT EXISTS labels (feature INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        conn.execute("DELETE FROM labels")
        conn.executemany("INSERT INTO labels VALUES (?, ?)", labels.items())


def build_store(lm, sae, texts: Iterable, path: str | Path, layer: int | None = None, max_length: int = 128,
                batch_size: int = 8, top_n: int = 20, checkpoint_every: int = 64, sae_name: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> FeatureStore:
    """Stream `texts` (strings, or `(label, text)` pairs) through `lm` and `sae` into the store at `path`.

    Resumable: if `path` holds an unfinished (or finished) build of the same model, SAE, layer
    and settings, the texts it already counted are skipped (after checking they are the same
    texts) and the build continues; nothing is counted twice. State is committed every
    `checkpoint_every` texts (rounded up to whole batches, so a resumed run sees the same
    batches as an uninterrupted one) in one transaction with the progress counter.
    `progress(texts_done, tokens_done)` is called after every text.
    """
    layer = lm.check_sae(sae, layer)
    if top_n < 1 or batch_size < 1 or checkpoint_every < 1:
        raise QScopeError("top_n, batch_size and checkpoint_every must be positive")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = {"schema": SCHEMA_VERSION, "model": lm.name, "sae": sae_name or sae.cfg.model_name or "sae",
              "sae_fingerprint": sae_fingerprint(sae), "layer": layer, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k,
              "top_n": top_n, "max_length": max_length, "left": LEFT, "right": RIGHT,
              "hist_edges": HIST_EDGES.tolist(), "samples_per_interval": SAMPLES_PER_INTERVAL}
    with _build_lock(path):
        fresh = not path.exists()
        conn = _open_for_build(path)
        try:
            return _build(conn, lm, sae, texts, path, wanted, layer, max_length, batch_size, checkpoint_every, progress)
        except BaseException:
            if fresh and not conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0]:
                conn.close()
                _remove_store_files(path)  # failed before its first commit: leave nothing behind
            raise
        finally:
            conn.close()


def _remove_store_files(path: Path) -> None:
    """Delete a store that holds nothing, with its SQLite side files and build lock."""
    for extra in ("", "-wal", "-shm", "-journal", ".lock"):
        path.with_name(path.name + extra).unlink(missing_ok=True)


@contextmanager
def _build_lock(path: Path):
    """One build per store at a time (a second would count texts twice)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the user is trusted
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise QScopeError(f"{path}: another build is writing this store right now") from None
        yield


def _open_for_build(path: Path) -> sqlite3.Connection:
    """Open (or create) the store, refusing files that are something else."""
    try:
        conn = _connect(path)
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            conn.close()
            raise QScopeError(f"{path}: not a qscope feature store (an SQLite file with other tables)")
        conn.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise QScopeError(f"{path}: not a qscope feature store ({exc})") from None
    return conn


def _build(conn, lm, sae, texts, path, wanted, layer, max_length, batch_size, checkpoint_every, progress) -> FeatureStore:
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    for key in ("schema", "model", "sae_fingerprint", "layer", "d_sae", "top_n", "max_length", "left", "right",
                "hist_edges"):
        if meta and meta.get(key) != wanted[key]:
            raise QScopeError(f"{path}: store was built with {key}={meta.get(key)!r}, not {wanted[key]!r}; "
                              f"use another --out or delete it")
    meta = {"texts_done": 0, "tokens_done": 0, "texts_hash": "", "created_at": _now(), **meta, **wanted,
            "state": "building"}
    builder = _Builder(sae.cfg.d_sae, top_n=wanted["top_n"])
    with _one_thread():
        builder.load(conn)

    items = (_as_item(t) for t in texts)
    items = ((label, text) for label, text in items if text and text.strip())
    done, digest, skipped = meta["texts_done"], "", 0
    for label, text in islice(items, done):  # skip what is already counted, checking it is the same
        digest, skipped = _chain(digest, text), skipped + 1
    if skipped < done:  # asked for fewer texts than the store holds: nothing to add
        return FeatureStore(path)
    if digest != meta["texts_hash"]:
        raise QScopeError(f"{path}: the texts differ from the {done} this store was built on "
                          f"(same corpus, seed and order needed to resume); use another --out")
    every = -(-checkpoint_every // batch_size) * batch_size
    queued: dict[int, tuple[str | None, str]] = {}  # texts handed to the model, not yet folded in

    def texts_of():
        for n, item in enumerate(items):
            queued[n] = item
            yield item[1]

    from .codes import iter_text_codes

    tokens, pending = meta["tokens_done"], []
    for codes in iter_text_codes(lm, sae, texts_of(), layer, batch_size, max_length):
        label, text = queued.pop(codes.index)
        with _one_thread():
            tokens += builder.update(done, codes)
        digest = _chain(digest, text)
        pending.append((done, label, len(codes.tokens), json.dumps(codes.tokens, ensure_ascii=False)))
        done += 1
        meta.update(texts_done=done, tokens_done=tokens, texts_hash=digest)
        if done % every == 0:
            with _one_thread():
                builder.save(conn, pending, {**meta, "updated_at": _now()})
            pending = []
        if progress:
            progress(done, tokens)
    with _one_thread():
        builder.save(conn, pending, {**meta, "updated_at": _now()})
    _store_token_effects(conn, lm, sae)
    _write_labels(conn, compute_auto_labels(conn))
    with conn:
        conn.execute("BEGIN")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('state', ?)", (json.dumps("complete"),))
    conn.execute("VACUUM")  # checkpoints rewrote rows many times: give the free pages back
    return FeatureStore(path)
