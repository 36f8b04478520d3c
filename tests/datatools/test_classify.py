"""Feature classifiers (delta ranking, top-K OR rule, top1-diff layer choice), the code cache,
labelled splits and resumable corpus classification - on constructed cases with known answers."""

import functools
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from qscope import SAE, SAEConfig
from qscope.datatools.cache import CodeCache, Codes, encode_examples
from qscope.datatools.classify import (
    FeatureClassifier,
    SelectedFeature,
    binary_scores,
    choose_layer,
    delta_scores,
    discover,
    evaluate,
    multi_layer,
    top1_diff,
)
from qscope.datatools.labelled import from_texts, split_binary
from qscope.datatools.scale import classify_stream
from qscope.errors import QScopeError

Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])


def constructed_codes() -> Codes:
    """Layer 5 feature 7 fires exactly on positives; feature 9 on half of them; feature 2 on all.
    Layer 3 feature 1 fires on 3 of 4 positives and 1 of 4 negatives."""
    a5 = np.zeros((8, 16), np.float32)
    a5[:4, 7] = 2.0
    a5[:2, 9] = 1.0
    a5[:, 2] = 0.5
    a3 = np.zeros((8, 16), np.float32)
    a3[[0, 1, 2, 5], 1] = 1.0
    means = {l: np.random.default_rng(l).normal(size=(8, 4)).astype(np.float32) for l in (3, 5)}
    return Codes([3, 5], {3: sp.csr_matrix(a3), 5: sp.csr_matrix(a5)}, means)


def test_delta_ranking_and_top1_diff_layer_choice():
    codes = constructed_codes()
    delta = delta_scores(codes, Y, 5)
    assert delta[7] == 1.0 and delta[9] == 0.5 and delta[2] == 0.0
    assert [f.feature for f in discover(codes, Y, 5, 2).features] == [7, 9]
    d = top1_diff(codes, Y)
    assert (d[5].feature, d[5].delta, d[3].feature, d[3].delta) == (7, 1.0, 1, 0.5)
    assert choose_layer(codes, Y) == 5
    assert [(f.layer, f.feature) for f in multi_layer(codes, Y, 2).features] == [(5, 7), (3, 1)]


def test_planted_feature_gives_f1_one_with_k1():
    codes = constructed_codes()
    assert binary_scores(Y, discover(codes, Y, 5, 1).predict(codes))["f1"] == 1.0
    report = evaluate("t", codes, Y, {"test": (codes, Y)}, ks=(1, 2), fractions=(0.5, 1.0), seeds=2)
    assert report.chosen_layer == 5 and report.f1("test", 5, 1) == 1.0
    assert report.f1("test", 3, 1) == pytest.approx(0.75)  # tp 3, fp 1, fn 1
    assert {r["kind"] for r in report.baselines} == {"raw-probe", "sae-probe"}
    assert report.to_dict()["headline"]["test"]["chosen_f1"] == 1.0
    assert len(report.efficiency) == 4 and json.dumps(report.to_dict())


def test_or_rule_semantics():
    codes = constructed_codes()
    clf = FeatureClassifier([SelectedFeature(3, 1, 0, 0, 0), SelectedFeature(5, 9, 0, 0, 0)])
    # fires: layer-3 f1 on rows 0,1,2,5; layer-5 f9 on rows 0,1 -> union 0,1,2,5
    assert clf.predict(codes).tolist() == [True, True, True, False, False, True, False, False]
    assert FeatureClassifier([]).predict(codes).sum() == 0
    assert binary_scores([1, 1, 0, 0], [1, 0, 1, 0]) == {"f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.5}


def test_classifier_round_trip_and_bad_input(tmp_path):
    clf = discover(constructed_codes(), Y, 5, 2, meta={"task": "x"})
    clf.save(tmp_path / "c.json")
    assert FeatureClassifier.load(tmp_path / "c.json").to_dict() == clf.to_dict()
    (tmp_path / "bad.json").write_text('{"x": 1}')
    with pytest.raises(QScopeError, match="not a qscope feature classifier"):
        FeatureClassifier.load(tmp_path / "bad.json")
    with pytest.raises(QScopeError, match="both positive and negative"):
        discover(constructed_codes(), np.ones(8), 5, 1)
    with pytest.raises(QScopeError, match="reads layer 7"):
        FeatureClassifier([SelectedFeature(7, 1, 0, 0, 0)]).predict(constructed_codes())


def test_splits_are_seeded_balanced_and_disjoint():
    pos = [(f"p{i}", "a") for i in range(30)]
    neg = [(f"n{i}", "b") for i in range(50)]
    disc, test = split_binary(pos, neg, 10, 5, seed=1)
    assert (disc.n_pos, len(disc), test.n_pos, len(test)) == (10, 20, 5, 10)
    assert not set(disc.texts) & set(test.texts)
    assert split_binary(pos, neg, 10, 5, seed=1)[0].texts == disc.texts
    small_disc, small_test = split_binary(pos[:6], neg, 10, 5)  # too few positives: both splits shrink
    assert (small_disc.n_pos, small_test.n_pos) == (4, 2)
    task = from_texts("x", [f"p{i}" for i in range(9)], [f"n{i}" for i in range(9)], 6, 3)
    assert len(task.discovery) == 12 and len(task.tests["test"]) == 6
    with pytest.raises(QScopeError, match="at least 4"):
        split_binary(pos[:2], neg, 10, 5)


# ------------------------------------------------------------------ tiny model, planted feature
POS = ["The cat sat on the mat.", "A cat ran in the park.", "Hello cat world.", "My cat is here."]
NEG = ["The dog sat on the mat.", "A dog ran in the park.", "Hello world, this is a test.", "Numbers: 1 2 3 4 5"]


@pytest.fixture(scope="module")
def lm(tiny_lm_copy):
    return tiny_lm_copy("llama", seed=0)


def planted_sae(lm, layer, feature=5, token=" c"):
    """A TopK SAE whose `feature` fires exactly at positions holding `token` (checked)."""
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=4, layer=layer), seed=layer)
    cap = lm.capture(POS + NEG, [layer])
    mask = cap.mask.clone()
    mask[:, 0] = False
    tid = lm.tokenizer.encode(token)[0]
    on = (cap.input_ids == tid) & mask
    h = cap.acts[layer]
    w = h[on].mean(0) - h[mask & ~on].mean(0)
    w = w / w.norm()
    lo, hi = (h[mask & ~on] @ w).max(), (h[on] @ w).min()
    assert lo < hi
    with torch.no_grad():
        sae.W_enc[:, feature] = w * 1000
        sae.b_enc[feature] = -(lo + hi) / 2 * 1000
    return sae


@pytest.fixture(scope="module")
def saes(lm):
    return {1: planted_sae(lm, 1), 2: SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=4, layer=2), seed=9)}


def test_planted_feature_end_to_end_and_cache_reuse(lm, saes, tmp_path):
    y = [1] * 4 + [0] * 4
    cache = CodeCache(lm, saes, tmp_path, max_length=32)
    encoded = []
    codes = cache.codes(POS + NEG, progress=encoded.append)
    assert sum(encoded) == 8
    assert codes.fires(1)[:, 5].toarray().ravel().tolist() == y
    direct = encode_examples(lm, saes, POS[:2])
    assert np.allclose(direct.max_acts[2].toarray(), codes.max_acts[2][:2].toarray(), atol=0.02, rtol=0.01)
    report = evaluate("cat", codes, y, {"test": (codes, y)}, ks=(1,), fractions=(1.0,), seeds=1, baselines=False)
    assert report.chosen_layer == 1 and report.features[0]["feature"] == 5 and report.f1("test") == 1.0
    again = CodeCache(lm, saes, tmp_path, max_length=32)  # a new process: everything is on disk
    assert again.missing(POS + NEG + ["new text"]) == ["new text"]
    assert np.array_equal(again.codes(POS + NEG).max_acts[1].toarray(), codes.max_acts[1].toarray())


def test_corpus_classification_resumes_exactly(lm, saes, tmp_path):
    clf = FeatureClassifier([SelectedFeature(1, 5, 1.0, 1.0, 0.0)])
    texts = (POS + NEG) * 2 + ["cat and dog"]
    full = tmp_path / "full.jsonl"
    classify_stream(lm, saes, clf, texts, full, chunk=3)
    part = tmp_path / "part.jsonl"
    first = classify_stream(lm, saes, clf, iter(texts), part, chunk=3, limit=7)  # "killed" after 3 chunks
    assert first.texts == 7
    with open(part, "a") as fh:
        fh.write('{"index": 99, "lab')  # a torn line from the kill
    second = classify_stream(lm, saes, clf, iter(texts), part, chunk=3)
    assert second.resumed_from == 7 and second.texts == len(texts)
    assert part.read_text() == full.read_text()
    rows = [json.loads(line) for line in full.read_text().splitlines()]
    assert [r["label"] for r in rows] == [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4 + [False]
    with pytest.raises(QScopeError, match="another classifier"):
        classify_stream(lm, saes, FeatureClassifier([SelectedFeature(2, 1, 0, 0, 0)]), texts, part)


@pytest.mark.slow
def test_ray_actor_pool_matches_streaming(lm, saes, tmp_path):
    from qscope.datatools.scale import classify_ray, given, ray_available

    if ray_available():
        pytest.skip(ray_available())
    import ray

    clf = FeatureClassifier([SelectedFeature(1, 5, 1.0, 1.0, 0.0)])
    texts = (POS + NEG) * 2
    classify_stream(lm, saes, clf, texts, tmp_path / "s.jsonl", chunk=4)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = classify_ray(
            functools.partial(given, lm, saes), clf, texts, tmp_path / "r.jsonl", actors=1, batch_size=2
        )
    finally:
        ray.shutdown()
    assert result.texts == 16 and result.positives == 8
    assert (tmp_path / "r.jsonl").read_text() == (tmp_path / "s.jsonl").read_text()


def test_cli_discover_run_corpus(lm, saes, tmp_path):
    import typer
    from typer.testing import CliRunner

    from qscope.cli import classify as cli

    model_dir, sae_dir = tmp_path / "model", tmp_path / "sae"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    saes[1].save(sae_dir)
    (tmp_path / "pos.txt").write_text("\n\n".join(POS))
    (tmp_path / "neg.txt").write_text("\n\n".join(NEG))
    app = typer.Typer()
    cli.register(app)
    common = ["--model", str(model_dir), "--sae", str(sae_dir)]
    run = lambda *args: CliRunner().invoke(app, ["classify", *args])  # noqa: E731
    out = run(
        "discover",
        "--pos",
        str(tmp_path / "pos.txt"),
        "--neg",
        str(tmp_path / "neg.txt"),
        *common,
        "--layers",
        "1",
        "-k",
        "1",
        "--out",
        str(tmp_path / "clf.json"),
        "--cache",
        str(tmp_path / "cache"),
        "--json",
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["features"][0]["feature"] == 5
    out = run("run", "-c", str(tmp_path / "clf.json"), *common, "--json", "My cat is here.", "A dog barks.")
    assert out.exit_code == 0, out.output
    assert [r["label"] for r in json.loads(out.stdout)] == [True, False]
    out = run(
        "corpus",
        "-c",
        str(tmp_path / "clf.json"),
        *common,
        "--texts",
        str(tmp_path / "pos.txt"),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--json",
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["positives"] == 4
    assert "Example" in run("eval", "--help").stdout


def test_residual_store_feeds_the_code_cache_without_a_forward(lm, saes, tmp_path):
    from qscope.datatools.cache import ResidualStore

    store = ResidualStore(lm, [1, 2], tmp_path / "res", max_length=32)
    store.ensure(POS + NEG)
    cache = CodeCache(lm, saes, tmp_path / "codes", max_length=32, residuals=store)
    calls = []
    lm_capture, lm.capture = lm.capture, lambda *a, **k: calls.append(1)  # any forward would be recorded
    try:
        codes = cache.codes(POS + NEG)
    finally:
        lm.capture = lm_capture
    assert not calls
    direct = encode_examples(lm, saes, POS + NEG, max_length=32)
    assert np.array_equal(codes.fires(1).toarray(), direct.fires(1).toarray())
    assert np.allclose(codes.means[2], direct.means[2], atol=1e-2)
    with pytest.raises(QScopeError, match="max_length"):
        CodeCache(lm, saes, tmp_path / "codes", max_length=16, residuals=store)


def test_dense_saes_use_every_active_feature(lm):
    relu = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, activation="relu", layer=1), seed=3)
    codes = encode_examples(lm, {1: relu}, POS[:2])
    cap = lm.capture(POS[:1], [1])
    expected = relu.encode(cap.valid(1, skip_first=True)).max(0).values.clamp(min=0).detach()
    assert np.allclose(codes.max_acts[1][0].toarray().ravel(), expected.numpy(), atol=1e-5)
    assert codes.fires(1)[0].sum() > 4  # more than any top-k would keep here
