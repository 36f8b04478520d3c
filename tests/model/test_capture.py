"""Capture equals `output_hidden_states`, stops early, and handles padding, for every architecture."""

import pytest
import torch

from qscope.errors import QScopeError
from qscope.model import hooks
from tiny import ARCHS, tiny_lm

TEXTS = ["The cat sat on the mat.", "Hello", "def add(a, b): return a + b"]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_capture_matches_hidden_states(arch, tiny_lm_copy):
    lm = tiny_lm_copy(arch)
    cap = lm.capture(TEXTS, layers=[0, 2], batch_size=2)
    enc = lm.tokenize(TEXTS)
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    assert cap.mask.equal(enc["attention_mask"].bool())
    for layer in (0, 2):
        got, want = cap.acts[layer][cap.mask], hs[layer + 1][cap.mask]
        assert torch.allclose(got, want, atol=1e-5), (arch, layer, (got - want).abs().max())


@pytest.mark.parametrize("arch", ["llama", "qwen3_5_vl"])
def test_capture_stops_after_last_layer(arch, tiny_lm_copy):
    lm = tiny_lm_copy(arch)
    calls = []
    handle = lm.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    lm.capture(TEXTS, layers=[1])
    handle.remove()
    assert calls == []  # the last block never ran


def test_padding_is_masked_and_reported(tiny_lm_copy):
    lm = tiny_lm_copy()
    cap = lm.capture(TEXTS, layers=[1])
    lengths = cap.mask.sum(1)
    assert cap.n_pad == int(cap.mask.numel() - lengths.sum())
    assert cap.valid(1).shape == (int(lengths.sum()), lm.d_model)
    assert cap.valid(1, skip_first=True).shape[0] == int(lengths.sum()) - len(TEXTS)
    assert [len(t) for t in cap.tokens] == lengths.tolist()
    # padded batch equals one-by-one capture
    alone = lm.capture([TEXTS[1]], layers=[1])
    assert torch.allclose(cap.acts[1][1, : lengths[1]], alone.acts[1][0], atol=1e-5)


def test_token_strings_keep_multibyte_characters_whole(tiny_lm_copy):
    lm = tiny_lm_copy()
    text = "The 猫 sat on the mat, café."
    ids = lm.tokenize([text])["input_ids"][0]
    single = [lm.tokenizer.decode([int(t)]) for t in ids]
    assert any("\ufffd" in t for t in single)  # the byte-level tokenizer splits 猫 and é over several tokens
    shown = lm.token_strings(ids)
    assert len(shown) == len(ids) and "".join(shown) == text
    assert "猫" in shown and "é" in shown  # each on the token that completes it, the other pieces ''
    assert lm.capture([text], layers=[1]).tokens[0] == shown
    cut = lm.token_strings(ids[:-2])  # cut inside "é": the dangling byte stays visible
    assert cut[-1] == "\ufffd" and "".join(cut) == text[:-2] + "\ufffd"


def test_edit_hook_changes_forward_and_is_removed(tiny_lm_copy):
    lm = tiny_lm_copy()
    enc = lm.tokenize(TEXTS[:1])
    with torch.no_grad():
        clean = lm.model(**enc).logits
        with hooks.edit(lm.layers, {1: lambda h: h * 0}):
            zeroed = lm.model(**enc).logits
        again = lm.model(**enc).logits
    assert not torch.allclose(clean, zeroed)
    assert torch.equal(clean, again)


@pytest.mark.parametrize("bad", [[-1], [4], []])
def test_layer_out_of_range(bad):
    with pytest.raises(QScopeError, match="layer|no layer"):
        tiny_lm().capture(TEXTS, layers=bad)


@pytest.mark.parametrize("texts", [[""], ["   "], []])
def test_empty_text_is_refused(texts):
    with pytest.raises(QScopeError, match="empty text"):
        tiny_lm().capture(texts, layers=[0])
