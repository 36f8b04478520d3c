"""The one residual recorder (`qscope.model.hooks.record`): its options."""

from __future__ import annotations

import torch

from qscope.model import hooks


def _enc(lm):
    return lm.tokenize(["The cat sat on the mat.", "Hello"], max_length=None, padding_side="left")


def test_keep_graph_gives_gradients_and_default_detaches(tiny_lm_copy):
    lm = tiny_lm_copy()
    enc = _enc(lm)
    with hooks.record(lm.layers, [1, 2], stop=False, keep_graph=True) as kept:
        lm.model(**enc)
    assert kept[1].requires_grad and kept[2].requires_grad
    (kept[1].sum() + kept[2].pow(2).sum()).backward()
    weight = lm.layers[0].mlp.down_proj.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert lm.layers[3].mlp.down_proj.weight.grad is None  # above the recorded layers: no gradient
    # a later forward without graph does not replace the recorded one
    with hooks.record(lm.layers, [1], stop=False, keep_graph=True) as kept:
        lm.model(**enc)
        with torch.no_grad():
            lm.model(**enc)
    assert kept[1].requires_grad
    with hooks.record(lm.layers, [1], stop=False) as plain:
        lm.model(**enc)
    assert not plain[1].requires_grad and torch.allclose(plain[1], kept[1].detach())


def test_first_call_only_and_positions_record_the_prefill(tiny_lm_copy):
    lm = tiny_lm_copy()
    enc = _enc(lm)
    with torch.no_grad():
        full = lm.run_to_layers(enc["input_ids"], enc["attention_mask"], [0, 3])
    with torch.no_grad(), hooks.record(lm.layers, [0, 3], stop=False, first_call_only=True, positions="last") as last:
        lm.model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad(), hooks.record(lm.layers, [0, 3], stop=False, positions="last") as latest:
        lm.model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0)
    pos = torch.tensor([2, 4])
    with torch.no_grad(), hooks.record(lm.layers, [3], first_call_only=True, positions=pos) as picked:
        try:
            lm.model(**enc)
        except hooks.StopForward:
            pass
    for layer in (0, 3):
        assert last[layer].shape == (2, lm.d_model)
        assert torch.allclose(last[layer], full[layer][:, -1], atol=1e-5)
        assert not torch.allclose(latest[layer], full[layer][:, -1], atol=1e-3)  # without it: the last decode step
    assert torch.allclose(picked[3], full[3][torch.arange(2), pos], atol=1e-5)
