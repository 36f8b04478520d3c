"""Reading a store: dashboards, the per-feature table that browsing sorts and filters, labels,
and explanations (the one thing a reader writes). Needs no model."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from ...errors import QScopeError
from ..labels import AUTO
from .auto_labels import compute_auto_labels, labels_current, write_labels
from .layout import BINS_PER_INTERVAL, HIST_EDGES, LEFT, N_INTERVALS, RIGHT, SCHEMA_VERSION, connect, now
from .results import Example, Explanation, FeatureDashboard, FeatureSummary, Interval, Label

BROWSE_ORDERS = ("frequent", "rare", "strongest", "random")


class FeatureStore:
    """A built (or building) feature store; opening a missing or foreign file is an error."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._auto: dict[int, str] | None = None
        self._table: dict[str, np.ndarray] | None = None
        if not self.path.is_file():
            raise QScopeError(f"{self.path}: no feature store there; build one with `qscope features build`")
        try:
            self.conn = connect(self.path)
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

    def random_windows(self, n: int, seed: int = 0) -> list[tuple[int, str]]:
        """`n` (text index, excerpt) pairs: random windows of the stored texts, as wide as a stored
        context, position 0 left out (what a feature does not fire on is sampled from these)."""
        rng = np.random.default_rng(seed)
        total = int(self.meta["texts_done"])
        out = []
        for idx in (rng.integers(0, total, n).tolist() if total else []):
            tokens = json.loads(self.conn.execute("SELECT tokens FROM texts WHERE idx=?", (idx,)).fetchone()[0])
            if len(tokens) > 1:
                pos = int(rng.integers(1, len(tokens)))
                out.append((idx, "".join(tokens[max(pos - LEFT, 1):pos + RIGHT + 1])))
        return out

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
        existed or labelled by an older rule, or one still building) computed from the store on
        first use and kept in memory; a complete store is also given them on disk when the file
        is writable."""
        if self._auto is None:
            rows = self.conn.execute("SELECT feature, text FROM labels").fetchall() if self._has_labels_table() else []
            if rows and self.meta.get("state") == "complete" and labels_current(self.conn):
                self._auto = dict(rows)
            else:
                self._auto = compute_auto_labels(self.conn)
                if self.meta.get("state") == "complete":
                    try:
                        write_labels(self.conn, self._auto)
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
        created = now()
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
