"""Steering methods beside SAE features: diffmean, RepE, random controls, matched edit norms."""

import math

import pytest
import torch

from qscope import SAE
from qscope.errors import QScopeError
from qscope.stats import bootstrap_ratio_interval, wilson_interval
from qscope.steer import Steering
from qscope.steer.compare import compare_methods
from qscope.steer.directions import (
    DirectionSteering,
    diffmean_direction,
    mean_residual_norm,
    random_direction,
    repe_direction,
    text_means,
)
from qscope.steer.methods import METHODS, build_methods, density_matched_features

POS = ["The cat sat on the mat.", "A dog ran in the park.", "Hello world, this is a test.", "The quick brown fox."]
NEG = ["def add(a, b): return a + b", "for i in range(10): print(i)", "Numbers: 1 2 3 4 5", "x = [1, 2, 3]"]
PROMPTS = ["The cat sat on", "Paris is the", "def add(a, b):"]



def test_zero_strength_direction_is_plain_output(lm):
    plain = lm.generate(PROMPTS, max_new_tokens=6)
    steer = DirectionSteering(random_direction(lm.d_model, 0), layer=1, strength=0.0)
    assert lm.generate(PROMPTS, max_new_tokens=6, steer=steer) == plain
    strong = steer.at(50.0)
    assert lm.generate(PROMPTS, max_new_tokens=6, steer=strong) != plain


def test_direction_edit_is_exactly_strength_times_unit_vector(lm):
    u = random_direction(lm.d_model, 4) * 7.0  # any norm in, unit norm kept
    steer = DirectionSteering(u, layer=2, strength=3.0)
    assert float(steer.direction.norm()) == pytest.approx(1.0, abs=1e-6)
    h = torch.randn(2, 5, lm.d_model)
    out = steer.edits(lm)[2](h)
    assert torch.allclose(out - h, (3.0 * steer.direction).expand_as(h), atol=1e-6)
    gen_only = DirectionSteering(u, layer=2, strength=3.0, positions="generated").edits(lm)[2]
    assert torch.equal(gen_only(h), h)  # the first forward is the prompt: untouched
    assert not torch.equal(gen_only(h[:, :1]), h[:, :1])  # a one-token forward is generated


def test_diffmean_points_from_negative_to_positive(lm):
    u = diffmean_direction(lm, 1, POS, NEG)
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)
    pos, neg = text_means(lm, 1, POS), text_means(lm, 1, NEG)
    assert float((pos @ u).mean()) > float((neg @ u).mean())
    expected = pos.mean(0) - neg.mean(0)
    assert torch.allclose(u, expected / expected.norm(), atol=1e-5)


def test_identical_sets_are_refused(lm):
    with pytest.raises(QScopeError, match="same set"):
        diffmean_direction(lm, 1, POS, list(reversed(POS)))
    with pytest.raises(QScopeError, match="same set"):
        repe_direction(lm, 1, POS, POS)
    with pytest.raises(QScopeError, match="at least one"):
        diffmean_direction(lm, 1, POS, [])


def test_repe_is_sign_aligned_unit_and_seeded(lm):
    u = repe_direction(lm, 1, POS, NEG, seed=0)
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)
    pos, neg = text_means(lm, 1, POS), text_means(lm, 1, NEG)
    assert float(((pos - neg) @ u).mean()) > 0
    assert torch.allclose(u, repe_direction(lm, 1, POS, NEG, seed=0))


def test_random_controls_are_seeded_and_density_matched():
    assert torch.equal(random_direction(32, 5), random_direction(32, 5))
    assert not torch.equal(random_direction(32, 5), random_direction(32, 6))
    rates = torch.logspace(-5, -1, 200)
    rates[7] = 0.0  # dead: never drawn
    chosen = [100, 150]
    a = density_matched_features(rates, chosen, seed=1, window=10)
    assert a == density_matched_features(rates, chosen, seed=1, window=10)
    assert not set(a) & set(chosen) and 7 not in a
    for f, g in zip(chosen, a):
        assert abs(math.log(rates[g]) - math.log(rates[f])) <= abs(math.log(rates[f + 8]) - math.log(rates[f]))


def test_methods_are_matched_in_edit_norm(lm, sae):
    norm = mean_residual_norm(lm, 1, POS)
    rates = torch.rand(sae.cfg.d_sae) + 0.01
    ms = build_methods(lm, sae, [3, 9], [m for m in METHODS], norm, POS, NEG, rates, seed=2)
    sae_vec = Steering.add(sae, {3: -4.0, 9: -4.0}).edit_vector()
    for name in ("diffmean", "repe", "random-direction"):
        steer = ms.factories[name](-4.0)
        assert float(steer.edit_vector().norm()) == pytest.approx(float(sae_vec.norm()), rel=1e-5)
        assert steer.strength < 0
    assert ms.edit_norm_ratio("sae", -4.0) == pytest.approx(float(sae_vec.norm()) / norm, rel=1e-5)
    drawn = ms.feature_sets["random-feature"]
    assert len(drawn) == 2 and not set(drawn) & {3, 9}
    assert ms.edit_norm_ratio("random-feature", -4.0) == pytest.approx(ms.edit_norm(-4.0, drawn) / norm)
    more = build_methods(lm, sae, [3, 9], ["random-feature", "random-direction"], norm, rates=rates, seed=2,
                         control_seeds=[2, 5])
    assert list(more.factories) == ["random-feature", "random-feature@5", "random-direction", "random-direction@5"]
    assert not torch.equal(more.factories["random-direction"](1.0).direction,
                           more.factories["random-direction@5"](1.0).direction)
    with pytest.raises(QScopeError, match="unknown steering method"):
        build_methods(lm, sae, [3], ["magic"], norm)
    with pytest.raises(QScopeError, match="--pos and --neg"):
        build_methods(lm, sae, [3], ["diffmean"], norm)


def test_compare_methods_json_shape_and_plot(lm, sae, tmp_path):
    norm = mean_residual_norm(lm, 1, POS)
    ms = build_methods(lm, sae, [3, 9], ["sae", "diffmean", "random-direction"], norm, POS, NEG)
    result = compare_methods(lm, ms, [0, 5, 40], PROMPTS, lambda t: "cat" in t, baselines=["Talk about cats."],
                             neutral_prompts=["Hello world", "A dog ran"], max_new_tokens=5,
                             second_detector=lambda t: "the" in t)
    d = result.to_dict()
    assert set(d["methods"]) == {"sae", "diffmean", "random-direction"}
    for rows in d["methods"].values():
        assert [r["strength"] for r in rows] == [0.0, 5.0, 40.0]  # the plain model heads every method
        assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[0]["edit_norm_ratio"] == 0.0
        assert rows[2]["kl"] > rows[0]["kl"]
        for r in rows:
            lo, hi = r["success_ci"]
            assert 0 <= lo <= r["success"] <= hi <= 1
            assert r["kl_ci"][0] <= r["kl"] + 1e-9 and r["perplexity_ci"][0] <= r["perplexity"] * (1 + 1e-9)
    ratios = [rows[2]["edit_norm_ratio"] for rows in d["methods"].values()]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-5)
    assert d["prompting"][0]["instruction"] == "Talk about cats."
    assert d["best_at_kl"][0]["best"] is not None
    assert result.plot(tmp_path / "f.png").stat().st_size > 1000


def test_intervals():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0
    lo, hi = bootstrap_ratio_interval([1, 2, 3, 4], [1, 1, 1, 1])
    assert 1 <= lo < 2.5 < hi <= 4
    assert bootstrap_ratio_interval([2.0], [1.0]) == (2.0, 2.0)


def test_output_features_find_the_feature_that_writes_the_target_tokens(lm, sae):
    from qscope.features.logits import unembedding
    from qscope.features.search import output_features

    pos, neg = ["cat cat cat mat mat"] * 3, ["def add(a, b): return a + b"] * 3
    target = lm.tokenizer(" cat", add_special_tokens=False)["input_ids"]
    planted = sae.W_dec.detach().clone()
    planted[17] = unembedding(lm)[target].mean(0).detach() * 5  # feature 17 writes " cat"
    sae2 = SAE.random(sae.cfg, seed=3)
    with torch.no_grad():
        sae2.W_dec.copy_(planted)
    found = output_features(lm, sae2, pos, neg, top=3, n_tokens=5, min_count=1)
    assert found[0].feature == 17 and found[0].score > found[1].score
    with pytest.raises(QScopeError):
        output_features(lm, sae2, pos, [], top=3)


def test_mcnemar_exact():
    from qscope.stats import mcnemar_exact

    same = mcnemar_exact([1, 0, 1], [1, 0, 1])
    assert same == {"only_first": 0, "only_second": 0, "p": 1.0}
    lopsided = mcnemar_exact([1] * 12, [0] * 12)
    assert lopsided["only_first"] == 12 and lopsided["p"] == pytest.approx(2 * 0.5 ** 12)
