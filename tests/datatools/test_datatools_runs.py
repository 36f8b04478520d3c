"""Each datatools job's run_* entry point gives what its CLI command prints, and its result's
to_dict() survives a JSON round trip."""

import functools
import json

import pytest
import typer
from test_classify import NEG, POS, lm, saes  # noqa: F401 - fixtures
from tiny import json_round_trip, save_pair
from typer.testing import CliRunner

from qscope import load
from qscope.cli import classify as cli_classify
from qscope.cli import synth as cli_synth
from qscope.datatools import (ClassifyEvalConfig, CorpusConfig, DiscoveryConfig, SynthConfig, run_classify,
                              run_classify_eval, run_corpus, run_coverage, run_discovery, run_synthesis)
from qscope.datatools.labelled import from_texts
from qscope.datatools.scale import given



@pytest.fixture()
def saved(lm, saes, tmp_path):  # noqa: F811
    """The planted layer-1 SAE and the model on disk (what the CLI reads), loaded back from there."""
    model_dir, sae_dir = save_pair(lm, saes[1], tmp_path)
    (tmp_path / "pos.txt").write_text("\n\n".join(POS))
    (tmp_path / "neg.txt").write_text("\n\n".join(NEG))
    loaded = load(str(model_dir), str(sae_dir), device="cpu")
    return model_dir, sae_dir, loaded.lm, loaded.saes


def invoke(register, *args):
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_classify_runs_match_the_cli(saved, tmp_path):
    model_dir, sae_dir, lm, saes = saved  # noqa: F811
    common = ["--model", str(model_dir), "--sae", str(sae_dir)]
    texts = ["--pos", str(tmp_path / "pos.txt"), "--neg", str(tmp_path / "neg.txt")]
    cli = functools.partial(invoke, cli_classify.register, "classify")

    task = from_texts("pos", POS, NEG, 400, 2, 0)
    clf = run_discovery(lm, saes, task, DiscoveryConfig(k=2, cache_dir=str(tmp_path / "codes"), model=str(model_dir),
                                                        sae=str(sae_dir)))
    assert clf.features[0].feature == 5  # the planted feature
    clf_path = tmp_path / "clf.json"
    assert json_round_trip(clf) == cli("discover", *texts, *common, "--layers", "1", "-k", "2", "--out", str(clf_path))

    labelled = run_classify(lm, saes, clf, ["My cat is here.", "A dog barks."])
    assert [t.label for t in labelled.labels] == [True, False]
    assert json_round_trip(labelled)["labels"] == cli("run", "-c", str(clf_path), *common, "My cat is here.", "A dog barks.")

    task = from_texts("pos", POS, NEG, 2, 2, 0)
    evaluated = run_classify_eval(lm, saes, [task], ClassifyEvalConfig(ks=(1, 2), seeds=2))
    assert evaluated.reports[0].chosen_layer == 1
    assert json_round_trip(evaluated) == cli("eval", *texts, *common, "--layers", "1", "--ks", "1,2", "--n-discovery", "2",
                                     "--n-test", "2", "--seeds", "2", "--out", str(tmp_path / "eval"))

    corpus = run_corpus(functools.partial(given, lm, saes), clf, POS, tmp_path / "lib.jsonl", CorpusConfig())
    printed = cli("corpus", "-c", str(clf_path), *common, "--texts", str(tmp_path / "pos.txt"), "--out",
                  str(tmp_path / "cli.jsonl"))
    assert corpus.positives == 4 and (tmp_path / "lib.jsonl").read_text() == (tmp_path / "cli.jsonl").read_text()
    timing = ("out", "seconds")  # where and how long: the only fields that differ
    assert {k: v for k, v in json_round_trip(corpus).items() if k not in timing} == {
        k: v for k, v in printed.items() if k not in timing}


def test_synth_runs_match_the_cli(saved, tmp_path):
    model_dir, sae_dir, lm, saes = saved  # noqa: F811
    sae = saes[1]
    common = ["--model", str(model_dir), "--sae", str(sae_dir), "--layer", "1"]
    cli = functools.partial(invoke, cli_synth.register, "synth")

    coverage = run_coverage(lm, sae, NEG, [5, 6])
    assert 5 in coverage.uncovered  # the planted feature fires on no negative text
    assert json_round_trip(coverage) == cli("coverage", "--texts", str(tmp_path / "neg.txt"), "--targets", "5,6", *common)

    result = run_synthesis(lm, sae, NEG, [5], SynthConfig(per_target=2, max_new_tokens=4), examples=POS)
    assert result.report.budget == 2 and len(result.random) == 2
    assert json_round_trip(result) == cli("generate", "--seed-texts", str(tmp_path / "neg.txt"), "--targets", "5",
                                  "--examples", str(tmp_path / "pos.txt"), "--per-target", "2", "--max-new-tokens",
                                  "4", *common, "--out", str(tmp_path / "s.jsonl"))
