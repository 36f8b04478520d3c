"""GGUF files are converted once and cached by hash; `auto` picks the LM dtype from the hardware."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import tiny
from qscope.errors import QScopeError
from qscope.io import sha256_file
from qscope.model import hardware, load_model, loading

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 61]])


def write_tiny_gguf(path, seed: int = 0):
    """A 2-layer Llama with random fp32 weights and the tiny BPE tokenizer, as a GGUF file."""
    import gguf

    tok = tiny.tokenizer()
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    V, D, F, L, H, KV = len(tokens), 32, 64, 2, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(128), w.add_embedding_length(D), w.add_block_count(L), w.add_feed_forward_length(F)
    w.add_head_count(H), w.add_head_count_kv(KV), w.add_layer_norm_rms_eps(1e-6), w.add_rope_freq_base(10000.0)
    w.add_vocab_size(V), w.add_rope_dimension_count(D // H)
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_list(tokens)
    w.add_token_types([1] * V), w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(1), w.add_eos_token_id(1), w.add_pad_token_id(0)
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (V, D), "output.weight": (V, D)}
    for i in range(L):
        shapes.update({f"blk.{i}.attn_q.weight": (D, D), f"blk.{i}.attn_k.weight": (KV * D // H, D),
                       f"blk.{i}.attn_v.weight": (KV * D // H, D), f"blk.{i}.attn_output.weight": (D, D),
                       f"blk.{i}.ffn_gate.weight": (F, D), f"blk.{i}.ffn_up.weight": (F, D),
                       f"blk.{i}.ffn_down.weight": (D, F)})
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    for name in ["output_norm.weight"] + [f"blk.{i}.{n}_norm.weight" for i in range(L) for n in ("attn", "ffn")]:
        w.add_tensor(name, np.ones(D, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def logits(lm):
    with torch.no_grad():
        return lm.model(input_ids=IDS).logits


@pytest.fixture
def tiny_gguf(tmp_path):
    pytest.importorskip("gguf")
    return write_tiny_gguf(tmp_path / "tiny-llama.gguf")


def test_gguf_converted_once_then_loaded_from_cache(tiny_gguf, monkeypatch):
    from transformers import AutoModelForCausalLM

    first = load_model(str(tiny_gguf), device="cpu", dtype="float32")
    folders = [row for row in loading.list_models() if row["sha256"] == sha256_file(tiny_gguf)]
    assert len(folders) == 1 and folders[0]["sha256"][:12] in folders[0]["path"]
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(logits(first), direct(input_ids=IDS).logits)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "convert_gguf", no_conversion)
    copy = shutil.copy(tiny_gguf, tiny_gguf.with_name("renamed.gguf"))  # same bytes, other name: same cache
    for source in (tiny_gguf, copy):
        again = load_model(str(source), device="cpu", dtype="float32")
        assert torch.equal(logits(again), logits(first))
        assert again.tokenizer("The cat sat")["input_ids"] == first.tokenizer("The cat sat")["input_ids"]


def test_changed_gguf_gets_its_own_cache(tiny_gguf):
    one = load_model(str(tiny_gguf), device="cpu", dtype="float32")
    before = sha256_file(tiny_gguf)
    write_tiny_gguf(tiny_gguf, seed=1)  # same path, new weights
    two = load_model(str(tiny_gguf), device="cpu", dtype="float32")
    assert not torch.equal(logits(one), logits(two))
    cached = {row["sha256"] for row in loading.list_models()}
    assert {before, sha256_file(tiny_gguf)} <= cached


def test_models_list_and_rm_on_the_cli(tiny_gguf):
    def qscope(*args):
        return subprocess.run([sys.executable, "-m", "qscope", "models", *args], capture_output=True, text=True)

    folder = loading.cached_gguf(tiny_gguf)
    rows = json.loads(qscope("list", "--json").stdout)
    row = next(r for r in rows if r["path"] == str(folder))
    assert row["sha256"] == sha256_file(tiny_gguf) and row["gguf"].endswith(".gguf") and row["dtype"] in ("float32", "bfloat16") and row["dtype_why"]
    out = qscope("rm", folder.name, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["removed"] == str(folder) and not folder.exists()
    out = qscope("rm", folder.name)
    assert out.returncode == 2 and "matches no cached model" in out.stderr


@pytest.mark.parametrize("device, flags, expected", [
    ("cpu", {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}, torch.bfloat16),
    ("cpu", {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_tile": False, "amx_bf16": False}, torch.bfloat16),
    ("cpu", {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}, torch.float32),
    ("cpu", {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}, torch.float32),
    ("cuda", {}, torch.bfloat16),
    ("mps", {}, torch.float32),
])
def test_auto_dtype_follows_the_hardware(monkeypatch, device, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware.torch.backends.mkldnn, "is_available", lambda: True)
    hardware.auto_dtype.cache_clear()
    try:
        assert loading.pick_dtype("auto", torch.device(device)) == expected
        assert loading.pick_dtype(None, torch.device(device)) == expected
        assert loading.pick_dtype("float32", torch.device(device)) == torch.float32  # the user's choice wins
        assert loading.pick_dtype("bf16", torch.device(device)) == torch.bfloat16
    finally:
        hardware.auto_dtype.cache_clear()


def test_unknown_dtype_and_model_name_are_user_errors():
    with pytest.raises(QScopeError, match="unknown dtype"):
        loading.pick_dtype("int3", torch.device("cpu"))
    with pytest.raises(QScopeError, match="matches no cached model"):
        loading.remove_model("no-such-model")
