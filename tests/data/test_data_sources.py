"""Text sources, built-in corpus bookkeeping and the training mix, without any download."""

from __future__ import annotations

import gzip
import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from qscope.data import CORPORA, MIX_WEIGHTS, export_mix, iter_texts, list_corpora, load_texts, pull_corpus, texts_by_language, training_mix
from qscope.data import sources
from qscope.data.corpora import corpus_dir, detokenize, strip_rest, write_corpus
from qscope.errors import QScopeError

DOCS = ["first document", "second document\nspans two lines", "third"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own QSCOPE_HOME, so nothing touches the real cache."""
    monkeypatch.setenv("QSCOPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_jsonl(path, records):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


# --- local formats --------------------------------------------------------------------------


def test_txt_paragraphs_and_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\ncontinued\n\n\ntwo\n\nthree\n", encoding="utf-8")
    assert load_texts(path) == ["one\ncontinued", "two", "three"]
    assert load_texts(path, by_line=True) == ["one", "continued", "two", "three"]


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz"])
def test_jsonl_fields_and_chat(tmp_path, name):
    path = write_jsonl(tmp_path / name, [
        {"text": "plain", "body": "b1"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}], "body": "b2"},
    ])
    assert load_texts(path) == ["plain", "hi\n\nhello"]
    assert load_texts(path, field="body") == ["b1", "b2"]


def test_parquet_and_arrow_formats(tmp_path):
    table = pa.table({"text": DOCS, "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "a.parquet")
    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    for name in ["a.parquet", "file.arrow", "stream.arrow"]:
        assert load_texts(tmp_path / name) == DOCS, name
    with pytest.raises(QScopeError, match="no column 'body'.*text, n"):
        load_texts(tmp_path / "a.parquet", field="body")


def test_folder_reads_supported_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("from txt", encoding="utf-8")
    write_jsonl(tmp_path / "a.jsonl", [{"text": "from jsonl"}])
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_texts(tmp_path) == ["from jsonl", "from txt"]


def test_limit_is_lazy(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}] * 3 + [{"other": 1}])
    assert load_texts(path, limit=2) == ["ok", "ok"]  # the bad 4th line is never read


# --- errors ---------------------------------------------------------------------------------


def test_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    (tmp_path / "void").mkdir()
    write_jsonl(tmp_path / "other.jsonl", [{"prompt": "p"}])
    cases = {
        "missing.txt": "no such file or folder",
        "empty.txt": "empty.txt: no texts found",
        "data.csv": "unsupported file type",
        "bad.jsonl": "bad.jsonl line 2: not valid JSON",
        "void": "folder has no",
        "other.jsonl": r"line 1: no field 'text' \(fields: prompt\)",
    }
    for name, message in cases.items():
        with pytest.raises(QScopeError, match=message):
            load_texts(tmp_path / name)


def test_hub_spec_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    monkeypatch.setattr(sources, "_has_datasets", lambda: False)
    with pytest.raises(QScopeError, match="needs the `datasets` library"):
        load_texts("hf:someone/corpus@train")
    with pytest.raises(QScopeError, match="hf:<id>"):
        load_texts("someone/corpus")


def test_mistyped_path_is_not_sent_to_the_hub(monkeypatch):
    monkeypatch.setattr(sources, "_has_datasets", lambda: True)
    with pytest.raises(QScopeError, match="no such file or folder, and not a built-in corpus"):
        load_texts("data/train.json")


def test_hub_spec_through_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        if name == "offline/x":
            raise ConnectionError("hub unreachable")
        return [{"text": "row one"}, {"text": "row two"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_texts("hf:org/set:cfg@validation", limit=1) == ["row one"]
    assert calls == [("org/set", "cfg", "validation", True)]
    with pytest.raises(QScopeError, match="could not load hub dataset.*hub unreachable"):
        load_texts("hf:offline/x")


# --- corpora and mix ------------------------------------------------------------------------


def fake_corpora():
    """Small fake copies of every built-in corpus, with valid meta so no pull happens."""
    for i, name in enumerate(CORPORA):
        docs = [{"text": f"{name} doc {j} " + "x" * (20 * (i + 1)), "source": "fake"} for j in range(5 + i)]
        write_corpus(name, docs, [{"package": "fake", "version": "0", "licence": "none", "sha256": None}])


def test_pull_skips_intact_corpus_and_rebuilds_corrupt(monkeypatch):
    fake_corpora()
    monkeypatch.setitem(CORPORA, "brown", CORPORA["brown"].__class__("brown", "", "MIT", lambda tmp, say: ([], iter([{"text": "rebuilt"}]))))
    assert pull_corpus("brown")["docs"] == 5  # intact: kept
    (corpus_dir("brown") / "texts.jsonl.gz").write_bytes(b"corrupt")
    assert pull_corpus("brown")["docs"] == 1  # checksum mismatch: rebuilt
    assert load_texts("brown") == ["rebuilt"]
    rows = {r["name"]: r for r in list_corpora()}
    assert rows["brown"]["pulled"] and rows["brown"]["chars"] == len("rebuilt")
    with pytest.raises(QScopeError, match="unknown corpus"):
        pull_corpus("nope")


def test_mix_is_deterministic_and_follows_weights(tmp_path):
    fake_corpora()
    first = list(training_mix(total_chars=20_000, seed=1))
    assert first == list(training_mix(total_chars=20_000, seed=1))
    assert first != list(training_mix(total_chars=20_000, seed=2))
    summary = export_mix(tmp_path / "mix.jsonl.gz", 20_000, seed=1)
    assert load_texts(tmp_path / "mix.jsonl.gz") == first
    for name, weight in MIX_WEIGHTS.items():  # small corpora cycle, shares still hold
        assert abs(summary["per_corpus"][name] / summary["chars"] - weight) < 0.02, name


# --- text cleaning --------------------------------------------------------------------------


def test_detokenize_and_strip_rest():
    assert detokenize("He said `` hi ( yes ) '' , Jr. .".split()) == 'He said "hi (yes)", Jr.'
    rest = ".. _label:\n\nTitle\n=====\n\n.. function:: open(file)\n\n   See :func:`os.open` and ``x``.\n"
    assert strip_rest(rest).split() == ["Title", "open(file)", "See", "`os.open`", "and", "`x`."]


def test_cli_show_and_list(tmp_path):
    from qscope.cli.data import register

    app = typer.Typer()
    register(app)
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in DOCS])
    result = CliRunner().invoke(app, ["data", "show", str(tmp_path / "a.jsonl"), "--limit", "2", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == DOCS[:2]
    result = CliRunner().invoke(app, ["data", "list", "--json"])
    assert [r["name"] for r in json.loads(result.stdout)] == list(CORPORA)


@pytest.mark.network_pkg
def test_pull_code_corpus():
    """The `code` corpus reads the local stdlib, so it needs no network at all."""
    meta = pull_corpus("code")
    assert meta["docs"] > 1000 and meta["licence"] == "PSF-2.0"
    first = next(iter_texts("code"))
    assert "def " in first or "class " in first or "import " in first


def test_held_out_split_is_disjoint_and_stable(tmp_path, monkeypatch):
    from qscope.data import held_out_texts, training_mix
    from qscope.data.corpora import write_corpus
    from qscope.data.mix import split_of

    monkeypatch.setenv("QSCOPE_HOME", str(tmp_path))
    docs = [{"text": f"document number {i} " * 20} for i in range(400)]
    write_corpus("brown", docs, [])
    weights = {"brown": 1.0}
    held = held_out_texts(50, weights=weights)
    assert held and all(split_of(t) == "held-out" for t in held)
    assert len(set(held)) == len(held)
    import itertools

    train = set(itertools.islice(training_mix(weights=weights), 2000))
    assert not train & set(held)
    assert 0 < len(held) < 40  # about 3% of 400 documents


def test_texts_by_language_groups_limits_and_complains(tmp_path):
    path = tmp_path / "ml.jsonl"
    rows = [{"text": "bonjour", "lang": "fr"}, {"text": "hello", "lang": "en"}, {"text": "salut", "lang": "fr"},
            {"text": "no language"}, {"text": "encore", "lang": "fr"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert texts_by_language(path) == {"fr": ["bonjour", "salut", "encore"], "en": ["hello"]}
    assert texts_by_language(path, limit=2) == {"fr": ["bonjour", "salut"], "en": ["hello"]}
    (tmp_path / "none.jsonl").write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(QScopeError, match="no records with a 'lang' field"):
        texts_by_language(tmp_path / "none.jsonl")
    with pytest.raises(QScopeError, match="no such file or corpus"):
        texts_by_language(tmp_path / "missing.jsonl")
