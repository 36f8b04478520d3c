"""`qscope.io.ItemCache`: per-item results survive a kill, a torn last line is redone, reruns reuse."""

from qscope.io import ItemCache


def test_records_persist_and_a_torn_line_is_skipped(tmp_path):
    path = tmp_path / "cache" / "bench.jsonl"
    cache = ItemCache(path)
    cache.add([{"id": "b/0", "h": "aa", "f": [1, 2]}, {"id": "b/1", "h": "bb", "f": []}])
    cache.add([])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"id": "b/2", "h": "cc", "f": [3')  # killed mid-write
    again = ItemCache(path)
    assert len(again) == 2 and ("b/0", "aa") in again and ("b/2", "cc") not in again
    assert again["b/0", "aa"]["f"] == [1, 2] and again[("b/1", "bb")]["f"] == []
    again.add([{"id": "b/0", "h": "aa", "f": [9]}, {"id": "b/2", "h": "cc", "f": ["é"]}])  # a redo wins
    third = ItemCache(path)
    assert third["b/0", "aa"]["f"] == [9] and third["b/2", "cc"]["f"] == ["é"] and len(third) == 3


def test_other_keys_and_memory_only(tmp_path):
    cache = ItemCache(None, key=("text",))
    cache.add([{"text": "x", "n": 1}])
    assert ("x",) in cache and cache["x",]["n"] == 1 and not list(tmp_path.iterdir())
    path = tmp_path / "k.jsonl"
    path.write_text('{"text": "y"}\n[1, 2]\n{"other": 1}\n\n')  # records without the key are skipped
    assert list(ItemCache(path, key=("text",)).records) == [("y",)]
