"""Steering: every mode, every generated token under the KV cache, and exact identity at zero."""

import pytest
import torch

from qscope import SAE, SAEConfig
from qscope.errors import QScopeError
from qscope.steer import FeatureEdit, Steering

PROMPTS = ["The cat sat on", "def add(a, b):"]



def gen(lm, steer=None, **kw):
    return lm.generate(PROMPTS, max_new_tokens=8, steer=steer, **kw)


def test_zero_strength_is_exactly_plain(lm, sae):
    assert gen(lm, Steering.add(sae, {5: 0.0, 9: 0.0})) == gen(lm)
    enc = lm.tokenize(PROMPTS)
    from qscope.model import hooks

    with torch.no_grad():
        plain = lm.model(**enc).logits
        with hooks.edit(lm.layers, Steering.add(sae, {5: 0.0}).edits(lm)):
            steered = lm.model(**enc).logits
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_steering_reaches_every_token_with_kv_cache(lm, sae, positions):
    """Cached and uncached generation see the same edits only if no step is missed."""
    steer = Steering.add(sae, {5: 40.0}, positions=positions)
    cached = gen(lm, steer, use_cache=True)
    uncached = gen(lm, steer, use_cache=False)
    assert cached == uncached
    assert cached != gen(lm)


def test_generated_positions_edit_each_new_token(lm, sae):
    steer = Steering.add(sae, {5: 10.0}, positions="generated")
    seen = []
    fn = steer.edits(lm)[1]
    for shape in [(2, 6), (2, 1), (2, 1), (2, 1)]:  # prompt pass, then one token per step
        h = torch.randn(*shape, lm.d_model)
        seen.append(bool((fn(h) != h).any(dim=-1).all()) if shape[1] == 1 else bool((fn(h) == h).all()))
    assert all(seen)


def test_add_and_relative(lm, sae):
    h = torch.randn(2, 3, lm.d_model)
    d = sae.W_dec[7]
    out = Steering.add(sae, {7: 2.5}).edits(lm)[1](h)
    assert torch.allclose(out, h + 2.5 * d, atol=1e-6)
    rel = Steering.add(sae, {7: 0.5}, relative=True).edits(lm)[1](h)
    assert torch.allclose(rel, h + 0.5 * h.norm(dim=-1, keepdim=True) * d / d.norm(), atol=1e-5)


def test_clamp_sets_the_activation(lm, sae):
    h = torch.randn(4, lm.d_model) * 3
    codes = sae.encode(h)
    f = int(codes[0].argmax())  # active at row 0
    out = Steering(sae, [FeatureEdit(f, 7.0, "clamp")]).edits(lm)[1](h.unsqueeze(0))[0]
    assert torch.allclose(out, h + (7.0 - codes[:, f:f + 1]) * sae.W_dec[f], atol=1e-5)
    assert abs(float(sae.pre_acts(out[:1]).detach()[0, f]) - 7.0) < 1e-3  # W_enc = W_dec^T, unit rows


def test_gate_limits_edit_to_firing_positions(lm, sae):
    h = torch.randn(1, 12, lm.d_model) * 3
    codes = sae.encode(h)[0]
    gate = int((codes > 0).sum(0).argmax())  # fires somewhere, not everywhere (k=8 of 128)
    fires = codes[:, gate] > 0
    assert 0 < int(fires.sum()) < 12
    out = Steering(sae, [FeatureEdit(3, 5.0, gate=gate)]).edits(lm)[1](h)[0]
    changed = (out != h[0]).any(-1)
    assert torch.equal(changed, fires)


def test_bad_steering_input(lm, sae):
    with pytest.raises(QScopeError, match="out of range"):
        Steering.add(sae, {128: 1.0})
    with pytest.raises(QScopeError, match="positions"):
        Steering.add(sae, {1: 1.0}, positions="middle")
    other = SAE.random(SAEConfig(d_model=8, d_sae=16, k=2, layer=1))
    with pytest.raises(QScopeError, match="does not match"):
        gen(lm, Steering.add(other, {1: 1.0}))


def test_several_steerings_compose(lm, sae):
    a, b = Steering.add(sae, {1: 3.0}), Steering.add(sae, {2: -2.0})
    both = Steering.add(sae, {1: 3.0, 2: -2.0})
    assert gen(lm, [a, b]) == gen(lm, both)
