"""Read texts from a "text source" spec: a file, a folder, a built-in corpus or a hub dataset.

Every command that takes text (`encode`, `train`, `data show`, ...) accepts the same specs:

* `notes.txt` - one document per blank-line-separated paragraph (or per line with `by_line`)
* `chat.jsonl`, `chat.jsonl.gz` - field `text` (or `field=`), or chat `messages` lists
* `shard.parquet`, `cache.arrow` (Arrow IPC file or stream) - the same column rules
* a folder - every supported file inside, in sorted order
* `brown`, `code`, ... - a built-in corpus (pulled on first use)
* `hf:<id>[:config][@split]` or a bare hub id - via the optional `datasets` library
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import QScopeError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet", ".arrow")
_HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+(:[\w.-]+)?(@[\w.-]+)?$")
_FILE_END = re.compile(r"\.[A-Za-z]\w{0,7}$")


def iter_texts(spec: str | Path, field: str = "text", limit: int | None = None, by_line: bool = False) -> Iterator[str]:
    """Yield the non-empty texts of `spec` lazily, at most `limit` of them."""
    texts = _resolve(str(spec), field, by_line)
    return islice(texts, limit) if limit is not None else texts


def load_texts(spec: str | Path, field: str = "text", limit: int | None = None, by_line: bool = False) -> list[str]:
    """All texts of `spec` as a list (see `iter_texts`)."""
    return list(iter_texts(spec, field, limit, by_line))


def _resolve(spec: str, field: str, by_line: bool) -> Iterator[str]:
    """Pick the reader for a spec; local paths win over corpus names and hub ids."""
    from .corpora import CORPORA, corpus_dir, pull_corpus

    path = Path(spec).expanduser()
    if spec.startswith("hf:"):
        return _hub_texts(spec[3:], field)
    if path.exists():
        return _path_texts(path, field, by_line)
    if spec in CORPORA:
        pull_corpus(spec)
        return _path_texts(corpus_dir(spec) / "texts.jsonl.gz", "text", by_line)
    if _looks_like_hub_id(spec) and _has_datasets():
        return _hub_texts(spec, field, f"{spec}: no such file or folder; as a hub dataset")
    raise QScopeError(
        f"{spec}: no such file or folder, and not a built-in corpus ({', '.join(CORPORA)}); "
        f"for a Hugging Face dataset use hf:<id> (optionally :<config> and @<split>) with `pip install datasets`"
    )


def _path_texts(path: Path, field: str, by_line: bool) -> Iterator[str]:
    """Texts of one file or folder; raises if it holds none (a silent empty run helps nobody)."""
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith(".")]
        if not files:
            raise QScopeError(f"{path}: folder has no {', '.join(SUFFIXES)} files")
        texts = (t for f in files for t in _file_texts(f, field, by_line))
    elif path.name.endswith(SUFFIXES):
        texts = _file_texts(path, field, by_line)
    else:
        raise QScopeError(f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)} or a folder")
    return _nonempty(texts, path)


def _nonempty(texts: Iterable[str], where: Path | str) -> Iterator[str]:
    """Drop blank texts; complain once the source turns out to hold none at all."""
    count = 0
    for text in texts:
        if text and text.strip():
            count += 1
            yield text
    if not count:
        raise QScopeError(f"{where}: no texts found (expected non-empty documents)")


def _file_texts(path: Path, field: str, by_line: bool) -> Iterator[str]:
    """Dispatch on the file suffix."""
    name = path.name
    if name.endswith(".txt"):
        return _txt_texts(path, by_line)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_texts(path, field)
    return _arrow_texts(path, field)


def _txt_texts(path: Path, by_line: bool) -> Iterator[str]:
    """Paragraphs (blank-line separated) or single lines of a UTF-8 text file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        if by_line:
            yield from (line.strip() for line in fh)
            return
        para: list[str] = []
        for line in fh:
            if line.strip():
                para.append(line.rstrip("\n"))
            elif para:
                yield "\n".join(para).strip()
                para = []
        if para:
            yield "\n".join(para).strip()


def jsonl_records(path: str | Path, expected: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) per non-blank line of a .jsonl or .jsonl.gz file: the one JSONL reader.
    Bad lines fail naming file and line; `expected` says what a record should hold (e.g. "a 'text' field")."""
    for number, line in _lines(Path(path)):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QScopeError(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise QScopeError(f"{path} line {number}: expected a JSON object with {expected}")
        yield number, record


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, gunzipped if it ends in .gz; a file that is not
    UTF-8, or not gzip, fails naming the file and line, not with a decoder's traceback."""
    gz = path.name.endswith(".gz")
    number = 0
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            for number, raw in enumerate(fh, 1):
                yield number, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QScopeError(f"{path} line {number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line); "
                          "save the file as UTF-8") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        what = "truncated" if isinstance(exc, EOFError) else "not a gzip file"
        raise QScopeError(f"{path}: {what} ({exc}); a .gz name needs whole gzip-compressed content") from None


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    """One record per line, plain or gzipped; bad lines name their line number."""
    for number, record in jsonl_records(path, f"a {field!r} field"):
        yield record_text(record, field, f"{path} line {number}")


def texts_by_language(spec: str | Path, limit: int | None = None) -> dict[str, list[str]]:
    """Texts grouped by their records' `lang` field, at most `limit` per language, in file order.

    `spec`: a built-in corpus that has one (`multilingual`, `chinese`; pull it first) or a
    .jsonl(.gz) file. The per-language input of language-feature search and of experiments."""
    from .corpora import CORPORA, corpus_dir

    spec = str(spec)
    path = Path(spec).expanduser()
    if spec in CORPORA and not path.exists():
        path = corpus_dir(spec) / "texts.jsonl.gz"
        if not path.exists():
            raise QScopeError(f"corpus {spec!r} is not built: run `qscope data pull {spec}`")
    elif not path.is_file():
        raise QScopeError(f"{spec}: no such file or corpus")
    out: dict[str, list[str]] = {}
    for _, record in jsonl_records(path, "a 'lang' field"):
        if "lang" in record and (limit is None or len(out.setdefault(record["lang"], [])) < limit):
            out.setdefault(record["lang"], []).append(record["text"])
    if not out:
        raise QScopeError(f"{spec}: no records with a 'lang' field")
    return out


def record_text(record: dict, field: str, where: str) -> str:
    """The text of one record: `field`, else (for the default field) a chat `messages` list."""
    if field in record:
        value = record[field]
    elif field == "text" and "messages" in record:
        value = record["messages"]
    else:
        raise QScopeError(f"{where}: no field {field!r} (fields: {', '.join(map(str, record)) or 'none'}); choose one with --field")
    return _as_text(value)


def _as_text(value: Any) -> str:
    """Strings stay; chat message lists (content a string or a list of parts) join their contents."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        return "\n\n".join(filter(None, map(_message_text, value)))
    return str(value)


def _message_text(item: Any) -> str:
    """A chat message {"role", "content"} or a content part {"type": "text", "text"}."""
    if isinstance(item, dict):
        return _as_text(item.get("content", item.get("text")))
    return _as_text(item)


def _arrow_texts(path: Path, field: str) -> Iterator[str]:
    """Parquet or Arrow IPC (file or stream format) batches, one column at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.name.endswith(".parquet"):
            reader = pq.ParquetFile(path)
            schema, batches = reader.schema_arrow, reader.iter_batches()
        else:
            source = pa.memory_map(str(path))
            try:
                ipc = pa.ipc.open_file(source)
                schema, batches = ipc.schema, (ipc.get_batch(i) for i in range(ipc.num_record_batches))
            except pa.ArrowInvalid:
                source.seek(0)
                ipc = pa.ipc.open_stream(source)
                schema, batches = ipc.schema, iter(ipc)
    except (pa.ArrowException, OSError) as exc:
        raise QScopeError(f"{path}: not a readable {path.suffix[1:]} file ({exc})") from exc
    column = field if field in schema.names else "messages" if field == "text" and "messages" in schema.names else None
    if column is None:
        raise QScopeError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)}); choose one with --field")
    for batch in batches:
        yield from map(_as_text, batch.column(schema.get_field_index(column)).to_pylist())


def _looks_like_hub_id(spec: str) -> bool:
    """`owner/name[:config][@split]` not ending like a file name, so a mistyped path is not sent to the hub."""
    return bool(_HUB_ID.match(spec)) and not _FILE_END.search(re.split(r"[:@]", spec)[0])


def _has_datasets() -> bool:
    """Whether the optional `datasets` library is importable (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("datasets") is not None


def _hub_texts(spec: str, field: str, what: str = "") -> Iterator[str]:
    """Stream a hub dataset `<id>[:config][@split]` through `datasets`, if installed and reachable."""
    what = what or f"hf:{spec}"
    match = re.fullmatch(r"([^:@]+)(?::([^@]+))?(?:@(.+))?", spec)
    if not match:
        raise QScopeError(f"hf:{spec}: expected hf:<id>, optionally followed by :<config> and @<split>")
    dataset_id, config, split = match.groups()
    try:
        import datasets
    except ImportError as exc:
        raise QScopeError(f"hf:{spec}: reading hub datasets needs the `datasets` library (pip install datasets)") from exc
    try:
        rows = iter(datasets.load_dataset(dataset_id, config, split=split or "train", streaming=True))
        first = next(rows)  # peek, so that network and auth problems surface here
    except StopIteration:
        raise QScopeError(f"{what}: the split holds no rows") from None
    except Exception as exc:  # datasets raises many types (network, auth, missing config)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise QScopeError(f"{what}: could not load hub dataset ({type(exc).__name__}: {detail})") from exc
    return _nonempty((record_text(row, field, f"hf:{spec}") for row in chain([first], rows)), f"hf:{spec}")
