"""Correctness prediction: constructed cases with known answers; no real model."""

import json

import numpy as np
import pytest
import torch

from qscope import SAE, SAEConfig
from qscope.data.benchmarks import mc_item
from qscope.errors import QScopeError
from qscope.uncertainty import (
    LabelConfig,
    LabelledItem,
    LabelledSet,
    ReportConfig,
    auroc,
    bootstrap_aurocs,
    ci,
    residual_probe,
    rivalry,
    run_label,
    run_report,
    sae_probe,
    selective_curve,
    trace_features,
    write_report,
)
from qscope.uncertainty.report import judge


def test_auroc_known_answers():
    y = np.array([0, 0, 1, 1, 1])
    assert auroc(y, y.astype(float)) == 1.0
    assert auroc(y, -y.astype(float)) == 0.0
    assert auroc(y, np.zeros(5)) == 0.5
    assert auroc(y, np.array([0.1, 0.4, 0.35, 0.8, 0.9])) == pytest.approx(5 / 6)
    assert np.isnan(auroc(np.ones(3), np.arange(3.0)))


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(0, 1.0, 300)
    boots = bootstrap_aurocs(y, {"s": s}, n_boot=400, seed=1)["s"]
    lo, hi = ci(boots)
    assert lo < auroc(y, s) < hi and 0.5 < lo and hi - lo < 0.2


def test_rivalry_identical_vs_orthogonal_vs_opposing():
    d = 16
    values, indices = torch.ones(6), torch.arange(6)
    same = torch.ones(6, d)
    orth = torch.eye(d)[:6]
    opposing = torch.cat([torch.eye(d)[:3], -torch.eye(d)[:3]])
    r_same, r_orth, r_opp = (rivalry(values, indices, w) for w in (same, orth, opposing))
    assert r_same[0] == pytest.approx(-1.0) and r_orth[0] == pytest.approx(0.0) and r_opp[0] == pytest.approx(1.0)
    assert r_same[1] == pytest.approx(-1.0) and r_orth[1] == pytest.approx(0.0)
    # weighted: the opposing pairs carry almost no activation, so the weighted rivalry drops
    weak = torch.tensor([10.0, 10.0, 10.0, 0.01, 0.01, 0.01])
    assert rivalry(weak, indices, opposing)[1] < rivalry(weak, indices, opposing)[0]
    assert rivalry(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), orth) == (0.0, 0.0)  # one active: no rivals


def test_selective_curve_and_judge():
    y = np.array([1, 1, 1, 0, 0, 1, 0, 1, 0, 1])
    curve = selective_curve(y, y.astype(float), coverages=[0.2, 0.6, 1.0])
    assert curve == [(0.2, 1.0), (0.6, 1.0), (1.0, 0.6)]
    rows = judge(y, [("ref", "logit", None, y.astype(float)), ("same", "logit", None, y.astype(float)),
                     ("flip", "probe", 3, -y.astype(float))], "ref", n_boot=50)
    ref, same, flip = rows
    assert ref.delta is None and same.delta == 0 and same.delta_ci == (0.0, 0.0)
    assert flip.auroc == 0.0 and flip.delta == -1.0 and flip.layer == 3
    with pytest.raises(QScopeError, match="finite"):
        judge(y, [("ref", "logit", None, y.astype(float)), ("bad", "logit", None, np.full(10, np.nan))], "ref")


def _synthetic(n=120, d=24, n_layers=2, seed=0):
    """Items whose layer-1 residual carries the label along direction e_0 (layer 0: noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    items = []
    for i in range(n):
        resid = rng.normal(0, 1, (n_layers, d))
        resid[1, 0] = 3.0 * (2 * y[i] - 1) + rng.normal(0, 0.5)
        p = list(rng.uniform(0.2, 1.0, 1 + i % 5))
        items.append(LabelledItem(f"s/{i}", "s", "mc", int(y[i]), "A", "A",
                                  {"maxp": 0.5, "entropy": 1.0, "margin_p": 0.1, "margin_logit": 0.2},
                                  choice_probs=[0.6, 0.4], choice_scores=[-0.5, -0.9], trace_p=p,
                                  trace_h=[1.0] * len(p), resid=resid.astype(np.float16)))
    return LabelledSet("s", "synthetic", items)


def test_probes_find_a_planted_signal():
    data = _synthetic()
    assert auroc(data.labels, residual_probe(data, 1)) > 0.95
    assert auroc(data.labels, residual_probe(data, 0)) < 0.75
    sae = SAE.random(SAEConfig(d_model=24, d_sae=64, k=8), seed=0)
    with torch.no_grad():  # feature 5 reads +e_0 (fires on right answers), strongly
        sae.W_enc[:, 5] = 0
        sae.W_enc[0, 5] = 20.0
    probe = sae_probe(data, sae, 1)
    assert auroc(data.labels, probe.scores) > 0.9
    assert probe.features[0].feature == 5 and probe.features[0].weight > 0
    assert probe.features[0].rate_correct > 0.9 and probe.features[0].rate_wrong < 0.1


def test_trace_features_shape_and_slope():
    data = _synthetic(n=4)
    data.items[0].trace_p = [0.9, 0.5, 0.1]
    data.items[0].trace_h = [0.1, 1.0, 2.0]
    feats = trace_features(data)
    assert feats.shape == (4, 14) and np.isfinite(feats).all()
    assert feats[0, 10] > 0  # entropy slope rises
    assert feats[0, 13] == pytest.approx(0.9)  # first token probability


@pytest.fixture(scope="module")
def lm(tiny_lm_copy):
    return tiny_lm_copy("llama", seed=1)


def test_labelled_set_caches_and_resumes(lm, tmp_path, monkeypatch):
    items = [mc_item(f"t/{i}", "t", f"Is {i} even?", ["yes", "no"], i % 2) for i in range(10)]
    cfg = LabelConfig(batch_size=4, mc_trace_tokens=3)
    first = run_label(lm, items[:6], cfg, cache=tmp_path)
    assert len(first.items) == 6 and first.n_layers == lm.n_layers
    assert all(it.correct == (it.prediction == it.gold) for it in first.items)
    assert all(abs(sum(it.choice_probs) - 1) < 1e-5 and 1 <= len(it.trace_p) <= 3 for it in first.items)
    seen = []
    import qscope.uncertainty.dataset as ds

    real = ds.label_batch
    monkeypatch.setattr(ds, "label_batch", lambda lm_, batch, c: seen.extend(batch) or real(lm_, batch, c))
    again = run_label(lm, items, cfg, cache=tmp_path)
    assert [it.id for it in seen] == [it.id for it in items[6:]]  # only the new items ran
    assert [it.correct for it in again.items[:6]] == [it.correct for it in first.items]
    assert np.array_equal(again.items[0].resid, first.items[0].resid)
    with pytest.raises(QScopeError, match="kind"):
        run_label(lm, [items[0], mc_item("x", "t", "q", ["a", "b"], 0)] + [
            type(items[0])("o", "Q?", "a", kind="code")], cfg, cache=False)


def test_cloze_scoring_matches_a_manual_likelihood(lm):
    from qscope.uncertainty.dataset import question_prompt

    item = mc_item("c/0", "c", "The cat sat on the", ["mat.", "dog ran in the park."], 0)
    assert question_prompt(item) == "Question: The cat sat on the\nAnswer:"
    labelled = run_label(lm, [item], LabelConfig(mc_scoring="cloze"), cache=False).items[0]
    tok = lm.tokenizer
    q = tok(question_prompt(item))["input_ids"]
    per_char = []
    for choice in item.choices:
        c = tok(" " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(torch.tensor([q + c])).logits[0].float(), -1)
        total = sum(float(logp[len(q) - 1 + j, t]) for j, t in enumerate(c))
        per_char.append(total / (len(choice) + 1))
    assert labelled.choice_scores == pytest.approx(per_char, abs=1e-4)
    assert labelled.prediction == "AB"[int(np.argmax(per_char))] and labelled.correct == (labelled.prediction == "A")
    assert len(labelled.trace_p) == len(tok(" " + item.choices["AB".index(labelled.prediction)],
                                            add_special_tokens=False)["input_ids"])
    assert LabelConfig().key() == "f56a61aa"  # cache file names must not change under existing caches


def test_report_end_to_end(tmp_path):
    data = _synthetic(n=80)
    sae = SAE.random(SAEConfig(d_model=24, d_sae=64, k=8), seed=0)
    report = run_report(None, {1: sae}, data, ReportConfig(probe_layers=(0, 1), n_boot=50))
    names = {(s.name, s.layer) for s in report.scores}
    assert {("max_prob", None), ("choice_max_prob", None), ("trace_lr", None), ("resid_probe", 1),
            ("rivalry", 1), ("rivalry_weighted", 1), ("sae_probe", 1)} <= names
    assert report.reference == "choice_max_prob" and report.best().name == "resid_probe"
    paths = write_report(report, tmp_path)
    assert json.loads(paths[0].read_text())["n_items"] == 80
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths[1:])


def test_cli_help_has_examples():
    import typer
    from typer.testing import CliRunner

    from qscope.cli.uncertainty import _parse_layers, register

    app = typer.Typer()
    register(app)
    for cmd in ("label", "report"):
        assert "Example" in CliRunner().invoke(app, ["uncertainty", cmd, "--help"]).output
    assert _parse_layers("6, 15", 30) == [6, 15] and _parse_layers("all", 30) is None
    with pytest.raises(QScopeError, match="out of range"):
        _parse_layers("31", 30)
