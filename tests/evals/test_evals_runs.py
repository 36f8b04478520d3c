"""Each evals job's run_* entry point gives what its CLI command prints, and its result's
to_dict() survives a JSON round trip."""

import json

import numpy as np
import pytest
import typer
from test_evals import olmo_tree, tiny_pair  # noqa: F401 - fixtures
from tiny import json_round_trip, save_pair
from typer.testing import CliRunner

from qscope import load
from qscope.cli import evals as cli_evals
from qscope.data.benchmarks import load_spec
from qscope.errors import QScopeError
from qscope.evals import (AccuracyConfig, AccuracyResult, FootprintConfig, OverlapConfig, RankConfig, RedundancyConfig,
                          load_accuracy, load_footprints, run_accuracy, run_footprint, run_overlap, run_rank,
                          run_redundancy)
from qscope.evals.report import write_result



@pytest.fixture()
def saved(tiny_pair, tmp_path):
    """The tiny model and SAE on disk (what the CLI reads) and loaded back from there."""
    lm, sae = tiny_pair
    model_dir, sae_dir = save_pair(lm, sae, tmp_path)
    loaded = load(str(model_dir), str(sae_dir), device="cpu")
    return model_dir, sae_dir, loaded.lm, loaded.sae


def test_run_entry_points_match_the_cli(olmo_tree, saved, tmp_path):  # noqa: F811
    model_dir, sae_dir, lm, sae = saved
    app = typer.Typer()
    cli_evals.register(app)

    def cli(*args):
        r = CliRunner().invoke(app, ["evals", *args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    common = ["--model", str(model_dir), "--sae", str(sae_dir)]
    specs = ["arc_easy", "mmlu#1", "boolq"]
    items = {name: load_spec(spec, 2) for name, spec in zip(("arc_easy", "mmlu", "boolq"), specs)}
    out = tmp_path / "fp"
    printed = cli("footprint", *specs, *common, "--limit", "2", "--out", str(out))
    result = run_footprint(lm, [sae], items, FootprintConfig(), cache=False)
    assert list(result.groups) == ["L1"] and json_round_trip(result)["L1"] == printed
    both = run_footprint(lm, {1: sae}, items, FootprintConfig(position="both"), cache=False)
    assert json_round_trip(both) == cli("footprint", *specs, *common, "--limit", "2", "--position", "both")
    assert [f.size for f in both.groups["L1"]] == [f.size for f in result.groups["L1"]]

    fps = load_footprints(out / "footprints.json")
    path = str(out / "footprints.json")
    for model, right in (("m1", lambda i: 1), ("m2", lambda i: 0), ("m3", lambda i: i % 2)):
        for fp in fps[::2]:  # arc_easy and boolq; mmlu has none
            correct = [right(i) for i in range(len(fp.items))]
            write_result(tmp_path / "acc" / model / f"{fp.benchmark}.json",
                         AccuracyResult(fp.benchmark, model, len(correct), float(np.mean(correct)), "test",
                                        fp.item_ids, correct, [""] * len(correct)))
    acc = load_accuracy(tmp_path / "acc", [f.benchmark for f in fps])
    redundancy = run_redundancy(fps, RedundancyConfig(samples=20), acc)
    assert [p.benchmark for p in redundancy.performance_based] == ["arc_easy", "boolq"]
    assert redundancy.notes == ["mmlu: accuracy of 0 model(s); tau needs 2 or more"]
    assert json_round_trip(redundancy) == cli("redundancy", "-f", path, "--samples", "20", "--accuracy", str(tmp_path / "acc"))
    assert json_round_trip(run_redundancy(fps, RedundancyConfig(items=0, samples=10))) == cli(
        "redundancy", "-f", path, "--items", "0", "--samples", "10")

    overlap = run_overlap(fps, OverlapConfig(pairs=(("arc_easy", "boolq"),)))
    assert overlap.pairs[0]["a"] == "arc_easy"
    assert json_round_trip(overlap) == cli("overlap", "-f", path, "--pair", "arc_easy,boolq")
    with pytest.raises(QScopeError, match="both must be among"):
        run_overlap(fps, OverlapConfig(pairs=(("arc_easy", "nope"),)))

    rank = run_rank(fps, RankConfig(("arc_easy",), ("boolq", "mmlu"), unique=3), lm, sae)
    assert {r.benchmark for r in rank.ranking} == {"boolq", "mmlu"}
    assert json_round_trip(rank) == cli("rank", "boolq", "mmlu", "--suite", "arc_easy", "-f", path, "--unique", "3", *common)

    accuracy = run_accuracy(lm, items["arc_easy"], AccuracyConfig(), benchmark="arc_easy", cache=False)
    assert accuracy.n_items == 2
    printed = cli("accuracy", "arc_easy", "--model", str(model_dir), "--limit", "2")
    assert [json.loads(json.dumps(accuracy.to_dict(items=False)))] == printed
