"""The default SAE training mix: built-in corpora interleaved by character share.

An SAE only learns features for what it sees, so the default mix spreads over English prose of
several registers, source code, Chinese and many other scripts, rather than one big English
corpus. Shares are by characters, not documents, because corpora differ in document length.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Iterator

from ..io import atomic_path
from .corpora import corpus_dir, pull_corpus
from .sources import load_texts

# 45% English prose, 25% code, 15% Chinese, 15% other languages.
MIX_WEIGHTS: dict[str, float] = {
    "brown": 0.20,
    "nlp-corpus": 0.10,
    "pydocs": 0.15,
    "code": 0.25,
    "chinese": 0.15,
    "multilingual": 0.15,
}

# What a feature store reads unless told: the training mix with the other languages' share
# raised to 40%. The multilingual corpus spreads over 47 languages, so at 15% the first 1500
# texts of the mix hold 10 French ones and the first 256 hold 3; at 40%, 15 and 6
# (`python experiments/store_corpus.py`). A language feature is named by its label only when
# its strong top contexts are in its language, so every language needs texts.
DASHBOARD_WEIGHTS: dict[str, float] = {
    "brown": 0.15,
    "nlp-corpus": 0.05,
    "pydocs": 0.10,
    "code": 0.20,
    "chinese": 0.10,
    "multilingual": 0.40,
}

# Every document belongs to one split, decided by a hash of its text: the same on every machine
# and stable when a corpus grows. About 3% is held out for evaluating SAEs on unseen text.
HELD_OUT_PERCENT = 3
SPLITS = ("train", "held-out", "all")


def split_of(text: str) -> str:
    bucket = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:4], "big") % 100
    return "held-out" if bucket < HELD_OUT_PERCENT else "train"


def _corpus_texts(name: str, split: str = "train") -> list[str]:
    """Texts of one built-in corpus in `split`, pulling it first if needed (never a same-named local path)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    pull_corpus(name)
    texts = load_texts(corpus_dir(name) / "texts.jsonl.gz")
    return texts if split == "all" else [t for t in texts if split_of(t) == split]


def mix_records(total_chars: int | None = None, seed: int = 0, weights: dict[str, float] | None = None,
                split: str = "train") -> Iterator[tuple[str, str]]:
    """Yield `(corpus, text)` pairs: the corpus furthest below its share goes next.

    Each corpus is replayed in a fresh seeded shuffle whenever it runs out, so small corpora
    cycle while the shares hold; the stream stops once `total_chars` have been yielded.
    """
    weights = {k: v for k, v in (weights or MIX_WEIGHTS).items() if v > 0}
    rng = random.Random(seed)
    pools = {name: _corpus_texts(name, split) for name in weights}
    queues: dict[str, list[str]] = {name: [] for name in weights}
    emitted = dict.fromkeys(weights, 0)
    total = 0
    while total_chars is None or total < total_chars:
        name = min(weights, key=lambda n: (emitted[n] / weights[n], n))
        if not queues[name]:
            queues[name] = rng.sample(pools[name], len(pools[name]))
        text = queues[name].pop()
        emitted[name] += len(text)
        total += len(text)
        yield name, text


def training_mix(total_chars: int | None = None, seed: int = 0, weights: dict[str, float] | None = None) -> Iterator[str]:
    """Texts of the default training mix (endless when `total_chars` is None), deterministic per
    seed; held-out documents never appear in it."""
    return (text for _, text in mix_records(total_chars, seed, weights))


def held_out_texts(n: int = 200, seed: int = 0, weights: dict[str, float] | None = None) -> list[str]:
    """`n` held-out documents in the mix's proportions, for evaluating SAEs on unseen text
    (each document at most once)."""
    seen: set[str] = set()
    out: list[str] = []
    pools = sum(len(_corpus_texts(name, "held-out")) for name in (weights or MIX_WEIGHTS))
    for _, text in mix_records(None, seed, weights, split="held-out"):
        if len(out) >= min(n, pools):
            break
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def export_mix(path: str | os.PathLike, total_chars: int, seed: int = 0, weights: dict[str, float] | None = None,
               split: str = "train") -> dict:
    """Write the mix to one `.jsonl.gz` ({"text", "corpus"} per line) to ship to another machine."""
    per_corpus: dict[str, int] = {}
    docs = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
            for name, text in mix_records(total_chars, seed, weights, split):
                gz.write((json.dumps({"text": text, "corpus": name}, ensure_ascii=False) + "\n").encode("utf-8"))
                per_corpus[name] = per_corpus.get(name, 0) + len(text)
                docs += 1
    return {"path": str(Path(path)), "docs": docs, "chars": sum(per_corpus.values()), "seed": seed, "per_corpus": per_corpus}
