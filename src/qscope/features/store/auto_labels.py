"""Automatic labels of a whole store, computed from what it holds (top contexts, texts, token
effects): written by the build, and by the reader for stores built before labels existed."""

from __future__ import annotations

import json
import sqlite3

from ..labels import auto_label, text_language


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


def write_labels(conn: sqlite3.Connection, labels: dict[int, str]) -> None:
    with conn:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE IF NOT EXISTS labels (feature INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        conn.execute("DELETE FROM labels")
        conn.executemany("INSERT INTO labels VALUES (?, ?)", labels.items())

