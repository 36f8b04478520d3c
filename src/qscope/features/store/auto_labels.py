"""Automatic labels of a whole store, computed from what it holds (top contexts, texts, token
effects): written by the build, and by the reader for stores built before labels existed or
labelled by an older rule (`LABELS_VERSION`)."""

from __future__ import annotations

import json
import sqlite3

from ..labels import auto_label, text_languages

# 2: languages named by lingua among all its languages, judged on the strong contexts only
LABELS_VERSION = 2


def compute_auto_labels(conn: sqlite3.Connection) -> dict[int, str]:
    """{feature: automatic label} from a store's top contexts, texts and token effects."""
    texts = {idx: (label, json.loads(tokens)) for idx, label, tokens in conn.execute("SELECT idx, label, tokens FROM texts")}
    order = list(texts)
    languages = dict(zip(order, text_languages(["".join(texts[i][1]) for i in order], [texts[i][0] for i in order])))
    d_sae = json.loads(conn.execute("SELECT value FROM meta WHERE key='d_sae'").fetchone()[0])
    focus: dict[int, list] = {}
    for feature, text_idx, pos, act in conn.execute(
            "SELECT feature, text_idx, pos, act FROM top_examples ORDER BY feature, act DESC"):
        if text_idx in texts:
            focus.setdefault(feature, []).append((texts[text_idx][1][pos], languages[text_idx], texts[text_idx][0], act))
    promoted = {f: [t for t, _ in json.loads(p)] for f, p in conn.execute("SELECT feature, promoted FROM token_effects")}
    out = {}
    for f in range(d_sae):
        tokens, langs, corpora, acts = zip(*focus[f]) if f in focus else ((), (), (), ())
        out[f] = auto_label(tokens, promoted.get(f, []), langs, corpora, acts)
    return out


def labels_current(conn: sqlite3.Connection) -> bool:
    """True if the store's labels were made by this version's rule."""
    row = conn.execute("SELECT value FROM meta WHERE key='labels_version'").fetchone()
    return row is not None and json.loads(row[0]) == LABELS_VERSION


def write_labels(conn: sqlite3.Connection, labels: dict[int, str]) -> None:
    with conn:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE IF NOT EXISTS labels (feature INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        conn.execute("DELETE FROM labels")
        conn.executemany("INSERT INTO labels VALUES (?, ?)", labels.items())
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('labels_version', ?)", (json.dumps(LABELS_VERSION),))
