"""Mixture-of-experts models (qwen3_moe; qwen3_5_moe with its linear-attention layers): capture,
steering under the KV cache, SASFT gradients through the router, and routing left untouched."""

import pytest
import torch

from qscope.posttrain.sasft import SASFTPenalty, build_sft_batch
from qscope.sae import SAE, SAEConfig
from qscope.steer import FeatureEdit, Steering
from tiny import tiny_lm

MOE = ["qwen3_moe", "qwen3_5_moe"]
TEXTS = ["The cat sat on the mat.", "Hello", "def add(a, b): return a + b"]
PROMPTS = ["The cat sat on", "def add(a, b):"]


def _routers(lm):
    return [layer.mlp.gate for layer in lm.layers]


def record_routing(lm):
    """Hooks on every router; returns (calls {layer: [expert indices (tokens, k)]}, handles)."""
    calls: dict[int, list[torch.Tensor]] = {}

    def make(i):
        def hook(_module, _inputs, output):
            calls.setdefault(i, []).append(output[2].detach().clone())

        return hook

    return calls, [router.register_forward_hook(make(i)) for i, router in enumerate(_routers(lm))]


@pytest.mark.parametrize("arch", MOE)
def test_capture_equals_hidden_states_and_later_experts_never_run(arch):
    lm = tiny_lm(arch, seed=2)
    enc = lm.tokenize(TEXTS)
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True, use_cache=False).hidden_states
    calls, handles = record_routing(lm)
    try:
        out = lm.run_to_layers(enc["input_ids"], enc["attention_mask"], [0, 1])
    finally:
        for h in handles:
            h.remove()
    mask = enc["attention_mask"].bool()
    for layer in (0, 1):
        assert torch.allclose(out[layer][mask], hs[layer + 1][mask], atol=1e-5)
    assert sorted(calls) == [0, 1]  # stop-at-layer: the routers of layers 2, 3 never ran


@pytest.mark.parametrize("arch", MOE)
def test_routing_is_the_same_in_plain_and_capture_runs(arch):
    lm = tiny_lm(arch, seed=3)
    enc = lm.tokenize(TEXTS)
    plain, handles = record_routing(lm)
    with torch.no_grad():
        lm.model(**enc, use_cache=False)
    for h in handles:
        h.remove()
    captured, handles = record_routing(lm)
    cap = lm.capture(TEXTS, layers=[0, 2], batch_size=len(TEXTS))
    for h in handles:
        h.remove()
    k = lm.model.config.num_experts_per_tok
    real = cap.mask.reshape(-1)
    assert sorted(captured) == [0, 1, 2]
    for layer in captured:
        want = plain[layer][0].reshape(*enc["input_ids"].shape, k).reshape(-1, k)[enc["attention_mask"].reshape(-1).bool()]
        got = captured[layer][0].reshape(*cap.input_ids.shape, k).reshape(-1, k)[real]
        assert torch.equal(got, want), layer
    # different tokens route differently somewhere, so the comparison is not vacuous
    assert len({tuple(row.tolist()) for row in plain[0][0]}) > 1


@pytest.mark.parametrize("arch", MOE)
@pytest.mark.parametrize("edit", ["add", "gated"])
def test_steering_applies_on_every_token_with_kv_cache(arch, edit):
    lm = tiny_lm(arch, seed=1)
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=8, layer=1), seed=3)
    gate = None if edit == "add" else 7
    steer = Steering(sae, [FeatureEdit(5, 40.0, "add", gate=gate, gate_threshold=-1e9 if gate is not None else 0.0)])
    edits = []
    fn = steer.edits(lm)[1]
    steer.edits = lambda _lm: {1: lambda h: (edits.append(h.shape[1]), fn(h))[1]}  # count the edited forwards
    new = 6
    cached = lm.generate(PROMPTS, max_new_tokens=new, min_new_tokens=new, steer=steer, use_cache=True)
    assert edits[1:] == [1] * (new - 1)  # prompt once, then every generated token, one at a time
    assert cached == lm.generate(PROMPTS, max_new_tokens=new, min_new_tokens=new, steer=steer, use_cache=False)
    assert cached != lm.generate(PROMPTS, max_new_tokens=new, min_new_tokens=new)


@pytest.mark.parametrize("arch", MOE)
def test_sasft_gradient_reaches_the_router(arch):
    """Through the routing weights (softmax of the kept experts): non-zero for routers up to
    the penalised layer, none after it (with the default grouped-GEMM experts), and equal to a
    finite difference (float64, per-expert loop: grouped GEMM has no float64)."""
    lm = tiny_lm(arch, seed=4)
    layer = 2
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=32, k=4, layer=layer), seed=5)
    penalty = SASFTPenalty(lm, {layer: sae}, {layer: [0, 1, 2, 3]}, {layer: -5.0}, lam=1.0)
    batch = build_sft_batch(lm.tokenizer, [("Hi", "The cat sat on the mat."), ("Code?", "def add(a, b):")], 32, chat=False)

    def gradients():
        lm.model.zero_grad()
        _, pen, _ = penalty(lm.model, batch)
        pen.backward()
        return [router.weight.grad for router in _routers(lm)]

    grads = gradients()
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: layer + 1])
    assert all(g is None or g.abs().sum() == 0 for g in grads[layer + 1:])

    lm.model.set_experts_implementation("eager")
    lm.model.double()
    sae.double()
    penalty = SASFTPenalty(lm, {layer: sae}, {layer: [0, 1, 2, 3]}, {layer: -5.0}, lam=1.0)
    grad = gradients()[1]
    weight = _routers(lm)[1].weight
    direction = torch.randn(weight.shape, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    # transformers computes the router softmax in float32: much smaller steps drown in its rounding,
    # much larger ones change which experts are kept
    eps = 1e-5
    values = []
    with torch.no_grad():
        for step in (eps, -2 * eps):
            weight += step * direction
            values.append(penalty(lm.model, batch)[1].item())
        weight += eps * direction
    assert (values[0] - values[1]) / (2 * eps) == pytest.approx(float((grad * direction).sum()), rel=2e-2)
