"""`qscope.load`: one call for a model and its SAEs - which layers, where each SAE lands, what fails first."""

import pytest
import torch

import qscope
from qscope import SAE, SAEConfig, QScopeError
from tiny import tiny_lm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model folder and a qscope SAE folder per layer (1 and 2), plus a lone layer-3 SAE."""
    root = tmp_path_factory.mktemp("load")
    lm = tiny_lm("llama")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    for layer in (1, 2, 3):
        cfg = SAEConfig(d_model=lm.d_model, d_sae=64, k=4, layer=layer, model_name="tiny")
        SAE.random(cfg, seed=layer).save(root / ("lone" if layer == 3 else "saes") / f"layer{layer}")
    return root


def test_load_unpacks_and_keys_saes_by_layer(saved):
    lm, saes = qscope.load(str(saved / "model"), str(saved / "saes"), [2, 1], device="cpu", dtype="float32")
    assert list(saes) == [2, 1] and [s.cfg.layer for s in saes.values()] == [2, 1]
    assert all(s.W_enc.dtype == torch.float32 and s.W_enc.device == lm.layer_device(l) for l, s in saes.items())
    single = qscope.load(str(saved / "model"), str(saved / "saes"), 1, device="cpu")
    assert torch.equal(single.sae.W_enc, saes[1].W_enc)


def test_load_without_layers_takes_the_layer_the_sae_names(saved):
    loaded = qscope.load(str(saved / "model"), str(saved / "lone" / "layer3"), device="cpu")
    assert list(loaded.saes) == [3] and loaded.sae.cfg.layer == 3


def test_sae_is_only_for_one_layer(saved):
    loaded = qscope.load(str(saved / "model"), str(saved / "saes"), [1, 2], device="cpu")
    with pytest.raises(QScopeError, match=r"layers \[1, 2\]; pick one layer"):
        loaded.sae


def test_a_bad_sae_fails_before_the_model_loads(saved, monkeypatch):
    import qscope.model.with_saes as with_saes

    calls = []
    monkeypatch.setattr(with_saes, "load_model", lambda *a, **kw: calls.append(a))
    with pytest.raises(QScopeError, match="no such"):
        qscope.load(str(saved / "model"), str(saved / "missing" / "layer1.sae.pt"))
    assert calls == []


def test_an_sae_for_another_model_or_layer_is_refused(saved, tmp_path):
    SAE.random(SAEConfig(d_model=16, d_sae=32, k=4, layer=1)).save(tmp_path / "layer1")
    SAE.random(SAEConfig(d_model=32, d_sae=32, k=4, layer=9)).save(tmp_path / "layer9")
    with pytest.raises(QScopeError, match="d_model=16 does not match"):
        qscope.load(str(saved / "model"), str(tmp_path / "layer1"), device="cpu")
    with pytest.raises(QScopeError, match="layer 9 out of range"):
        qscope.load(str(saved / "model"), str(tmp_path / "layer9"), device="cpu")
