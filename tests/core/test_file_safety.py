"""Files qscope writes and reads: modes like a plain write, torch files never unpickled with code,
a Qwen-Scope k never guessed, bad text files and too-long prompts refused with one clear line."""

from __future__ import annotations

import gzip
import logging
import os
import stat

import pytest
import torch

from qscope import SAE, SAEConfig
from qscope.errors import QScopeError
from qscope.io import atomic_dir, atomic_path, load_torch_plain, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_modes_of_plain_writes(tmp_path):
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    (tmp_path / "plain_dir").mkdir()
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inner.txt").write_text("x")
    SAE.random(SAEConfig(d_model=8, d_sae=16, k=2, layer=0)).save(tmp_path / "sae")
    file_mode, dir_mode = _mode(tmp_path / "plain.txt"), _mode(tmp_path / "plain_dir")
    assert file_mode != 0o600 or dir_mode != 0o700  # the umask of the test run is not 077
    for path in ("a.json", "b.bin", "folder/inner.txt", "sae/cfg.json", "sae/sae_weights.safetensors"):
        assert _mode(tmp_path / path) == file_mode, path
    for path in ("folder", "sae"):
        assert _mode(tmp_path / path) == dir_mode, path


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_refusal_names_the_global_and_never_suggests_unsafe_loading(tmp_path):
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(QScopeError) as err:
        load_torch_plain(tmp_path / "evil.pt")
    message = str(err.value)
    assert "refused to unpickle" in message and "system" in message
    assert "weights_only" not in message and "\n" not in message
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    torch.save({"version": 1, "x": Evil()}, tmp_path / "run" / "checkpoint" / "state.pt")
    from qscope.train.checkpoint import load_checkpoint

    with pytest.raises(QScopeError, match="refused to unpickle") as err:
        load_checkpoint(tmp_path / "run")
    assert "weights_only" not in str(err.value)


def _qwen_scope_file(path, sae):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"W_enc": sae.W_enc.T.contiguous(), "W_dec": sae.W_dec.T.contiguous(), "b_enc": sae.b_enc.data,
                "b_dec": sae.b_dec.data}, path)
    return path


def test_qwen_scope_k_is_required_when_the_path_names_none(tmp_path):
    sae = SAE.random(SAEConfig(d_model=8, d_sae=16, k=3, layer=2))
    path = _qwen_scope_file(tmp_path / "plain" / "layer2.sae.pt", sae)
    with pytest.raises(QScopeError, match=r"does not record k.*:k=<k>"):
        SAE.load(path)
    assert SAE.load(path, k=3).cfg.k == 3
    assert SAE.load(f"{path}:k=5").cfg.k == 5
    named = _qwen_scope_file(tmp_path / "SAE-Res-Tiny-W16-L0_7" / "layer2.sae.pt", sae)
    assert SAE.load(named).cfg.k == 7
    with pytest.raises(QScopeError, match="0 < k <= d_sae"):
        SAE.load(f"{path}:k=99")


@pytest.mark.parametrize("field, value", [("d_model", "abc"), ("d_sae", 1.5), ("k", "many"), ("layer", "abc"),
                                          ("d_model", True)])
def test_sae_config_rejects_wrongly_typed_fields(field, value):
    kwargs = dict(d_model=8, d_sae=16, k=2, layer=0)
    kwargs[field] = value
    with pytest.raises(QScopeError, match=f"SAE {field} must be a whole number"):
        SAEConfig(**kwargs)


def test_bad_text_files_name_the_file(tmp_path):
    from qscope.data import load_texts

    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "na\xefve"}\n')
    with pytest.raises(QScopeError, match="latin1.jsonl line 2: not UTF-8 text"):
        load_texts(tmp_path / "latin1.jsonl")
    (tmp_path / "plain.jsonl.gz").write_text('{"text": "not compressed"}\n')
    with pytest.raises(QScopeError, match="plain.jsonl.gz: not a gzip file"):
        load_texts(tmp_path / "plain.jsonl.gz")
    whole = gzip.compress(b'{"text": "a"}\n' * 2000)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(QScopeError, match="cut.jsonl.gz: truncated"):
        load_texts(tmp_path / "cut.jsonl.gz")


def test_prompt_past_the_context_is_refused_and_long_generations_are_cut(caplog):
    from tiny import tiny_lm

    lm = tiny_lm("llama")
    lm.model.config.max_position_embeddings = 128  # the context length generate() checks against
    with pytest.raises(QScopeError, match="reads at most 128 tokens"):
        lm.generate(" ".join(["cat"] * 200), max_new_tokens=4)
    prompt = " ".join(["cat"] * 50)
    n_prompt = lm.tokenize([prompt], max_length=None)["input_ids"].shape[1]
    lm.model.generation_config.eos_token_id = None
    with caplog.at_level(logging.WARNING, logger="qscope"):
        out = lm.generate(prompt, max_new_tokens=100)
    assert "generation cut to" in caplog.text
    assert len(lm.tokenizer(out, add_special_tokens=False)["input_ids"]) <= 128 - n_prompt + 2
    with caplog.at_level(logging.WARNING, logger="qscope"):
        caplog.clear()
        lm.capture([" ".join(["dog"] * 100)], [1], max_length=16)
        lm.capture([" ".join(["dog"] * 100)], [1], max_length=16)
    assert caplog.text.count("cut to their first 16") == 1  # said once per limit, not per batch
