"""Large-model hygiene: device maps, SAEs on their layer's device, no logits for residuals."""

import pytest
import torch

from qscope.model import load, load_model
from qscope.sae import SAE, SAEConfig
from tiny import tiny_lm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_moe")
    lm = tiny_lm("qwen3_5_moe", seed=0)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=8, layer=2, model_name="tiny"), seed=1)
    sae.save(folder / "sae")
    return folder, lm


@pytest.mark.parametrize("how", [dict(device_map="auto"), dict(device="multi")])
def test_device_map_loads_and_captures_like_a_plain_load(saved, how, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder, reference = saved
    seen = []
    original = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: (seen.append(kw.get("device_map")), original(*a, **kw))[1])
    lm = load_model(str(folder), dtype="float32", **how)
    assert seen == ["auto"]  # accelerate chose the placement (all on the CPU here)
    assert all(lm.layer_device(i) == lm.device for i in range(lm.n_layers))  # one CPU here
    texts = ["The cat sat on the mat.", "Hello"]
    got, want = lm.capture(texts, layers=[1, 3]), reference.capture(texts, layers=[1, 3])
    for layer in (1, 3):
        assert torch.allclose(got.valid(layer), want.valid(layer), atol=1e-5)


def test_load_puts_each_sae_on_its_layer_device(saved):
    folder, _ = saved
    loaded = load(str(folder), str(folder / "sae"), device="multi", dtype="float32")
    assert list(loaded.saes) == [2] and loaded.sae.W_enc.device == loaded.lm.layer_device(2)


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen3_5_vl"])
def test_capture_never_computes_logits(arch):
    """Even at the last layer: the vocabulary projection is the largest activation of the model."""
    lm = tiny_lm(arch)
    head = lm.model.get_output_embeddings()
    calls = []
    handle = head.register_forward_hook(lambda *a: calls.append(1))
    try:
        lm.capture(["The cat sat on the mat."], layers=[lm.n_layers - 1])
        assert calls == []
        lm.model(**lm.tokenize(["The cat"]))
        assert calls == [1]  # the hook itself works
    finally:
        handle.remove()
