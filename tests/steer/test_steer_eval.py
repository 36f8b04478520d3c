"""Steering evaluation: each metric checked on a case with a known answer."""

import math

import pytest
import torch
from tiny import tiny_lm

from qscope.errors import QScopeError
from qscope.steer import Steering
from qscope.steer.evaluate import (
    continuation_logprobs,
    evaluate_steering,
    mean_kl,
    perplexity,
    target_activation,
    with_instruction,
)

PROMPTS = ["The cat sat on", "def add(a, b):", "Paris is the"]
NEUTRAL = ["Hello world", "A dog ran"]



def test_perplexity_of_uniform_model_is_vocab_size():
    flat = tiny_lm("llama", seed=2)
    with torch.no_grad():
        flat.model.lm_head.weight.zero_()  # logits all 0: every token has probability 1/V
    ppl = perplexity(flat, ["The cat", "A dog ran"], [" sat on the mat.", " in the park"])
    assert ppl == pytest.approx(flat.model.config.vocab_size, rel=1e-4)
    assert math.isnan(perplexity(flat, ["The cat"], ["  "]))


def test_continuation_logprobs_match_a_plain_forward(lm):
    ctx, cont = ["The cat sat", "A dog"], [" on the mat.", " ran"]
    logps = continuation_logprobs(lm, ctx, cont)
    for c, n, lp in zip(ctx, cont, logps):
        ids = lm.tokenizer(c + n, return_tensors="pt")["input_ids"]  # no padding, one text alone
        n_ctx = len(lm.tokenizer(c)["input_ids"])
        with torch.no_grad():
            ref = torch.log_softmax(lm.model(ids).logits[0].float(), -1)[n_ctx - 1:-1]
        assert lp.shape == ref.shape
        assert torch.allclose(lp, ref, atol=1e-4)


def test_mean_kl_known_values():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert mean_kl([p], [q]) == pytest.approx(expected, rel=1e-5)
    assert mean_kl([p], [p]) == 0.0


def test_target_activation_reads_the_sae(lm, sae):
    texts = ["The cat sat on the mat.", "A dog ran in the park."]
    codes = sae.encode(lm.capture(texts, [1]).acts[1])
    feature = int(codes[:, 1:].amax((0, 1)).argmax())
    mean, mx = target_activation(lm, sae, feature, texts)
    assert mx > 0 and 0 < mean <= mx


def test_evaluate_steering_sweep_and_plot(lm, sae, tmp_path):
    calls = []
    result = evaluate_steering(lm, lambda s: Steering.add(sae, {5: s}), PROMPTS, [0, 60],
                               detector=lambda t: "cat" in t, target_feature=5, neutral_prompts=NEUTRAL,
                               baseline_prompt="Talk about cats.", max_new_tokens=6, neutral_tokens=5,
                               cache={}, progress=calls.append)
    zero, strong = result.points
    assert zero.kl == pytest.approx(0.0, abs=1e-6)  # strength 0 is exactly the plain model
    assert strong.kl > 1e-3
    assert zero.outputs == lm.generate(PROMPTS, max_new_tokens=6, chat=True)
    assert sum(calls) == len(NEUTRAL) + 3 * len(PROMPTS)
    assert result.baseline is not None and result.baseline.kl > 0
    for p in result.points + [result.baseline]:
        assert 0 <= p.success <= 1 and p.perplexity > 0 and p.target_mean is not None
    out = result.plot(tmp_path / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = result.to_dict()
    assert d["points"][1]["strength"] == 60 and "outputs" not in result.table()[0]


def test_cache_resumes_without_generating(lm, sae):
    cache: dict = {}
    factory = lambda s: Steering.add(sae, {5: s})
    first = evaluate_steering(lm, factory, PROMPTS, [20], target_feature=5, neutral_prompts=NEUTRAL,
                              max_new_tokens=4, neutral_tokens=3, cache=cache)
    cache = {k: ["cached"] * len(v) for k, v in cache.items()}
    second = evaluate_steering(lm, factory, PROMPTS, [20], target_feature=5, neutral_prompts=NEUTRAL,
                               max_new_tokens=4, neutral_tokens=3, cache=cache)
    assert first.points[0].outputs != second.points[0].outputs == ["cached"] * 3


def test_bad_input(lm, sae):
    factory = lambda s: Steering.add(sae, {5: s})
    with pytest.raises(QScopeError, match="detector or a target feature"):
        evaluate_steering(lm, factory, PROMPTS, [1])
    with pytest.raises(QScopeError, match="out of range"):
        evaluate_steering(lm, factory, PROMPTS, [1], target_feature=10_000)
    with pytest.raises(QScopeError, match="at least one prompt"):
        evaluate_steering(lm, factory, [], [1], target_feature=1)
    assert with_instruction("Hi", "Answer in French.") == "Answer in French.\n\nHi"
    assert with_instruction("Hi", "{prompt} (in French)") == "Hi (in French)"


def test_cli_helpers():
    from qscope.cli.steer import make_detector, parse_strengths

    assert parse_strengths("0, 10,-20") == [0.0, 10.0, -20.0]
    with pytest.raises(QScopeError, match="--strengths"):
        parse_strengths("a,b")
    assert make_detector(None) == (None, None)
    judge, second = make_detector("fr")
    assert judge("Le chat est sur la table.") and second("Le chat est sur la table.")
    assert judge.__name__ == "lingua_is_fr" and second.__name__ == "is_fr"
    assert make_detector("fr", judge="stopwords")[0].__name__ == "is_fr"
    assert make_detector("contains:zh")[0]("Hello 你好")
    with pytest.raises(QScopeError):
        make_detector("contains:xx")
