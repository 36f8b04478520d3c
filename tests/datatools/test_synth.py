"""Feature-driven synthesis: coverage arithmetic, keep-only-if-fires, random baseline budget,
local steered generation and an OpenAI-compatible endpoint (a fake local HTTP server)."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from qscope.datatools.synth import (
    Endpoint,
    LocalSteered,
    coverage_from_acts,
    synthesize,
    write_jsonl,
)
from qscope.datatools.synth_runs import SynthConfig, run_coverage, run_synthesis
from qscope.errors import QScopeError
from fake_llm import FakeChat
from test_classify import NEG, POS, planted_sae


def test_coverage_arithmetic():
    acts = np.zeros((3, 10), np.float32)
    acts[0, 2] = 1.0
    acts[2, 7] = 0.5
    acts[1, 4] = -1.0  # not firing: activation must be > 0
    cov = coverage_from_acts(sp.csr_matrix(acts), [2, 4, 7, 9, 2])
    assert cov.targets == [2, 4, 7, 9] and cov.covered == [2, 7] and cov.uncovered == [4, 9]
    assert cov.fraction == 0.5 and cov.to_dict()["n_texts"] == 3
    assert coverage_from_acts(acts[:0], [1]).fraction == 0.0
    with pytest.raises(QScopeError, match="out of range"):
        coverage_from_acts(acts, [10])


@pytest.fixture(scope="module")
def lm(tiny_lm_copy):
    return tiny_lm_copy("llama", seed=0)


@pytest.fixture(scope="module")
def sae(lm):
    planted = planted_sae(lm, 1)  # feature 5 fires exactly where the token " c" is
    with torch.no_grad():  # feature 6 never fires
        planted.W_enc[:, 6] = 0
        planted.b_enc[6] = -1
    return planted


class Fixed:
    """A generator with known outputs: 'cat' texts for target 5, 'dog' texts otherwise."""

    name = "fixed"

    def generate(self, target, n, seed):
        texts = POS if target == 5 else NEG
        return [{"text": texts[i % 4], "prompt": f"p{target}", "seed": seed} for i in range(n)]


def test_synthesis_keeps_only_candidates_that_fire(lm, sae):
    assert run_coverage(lm, sae, NEG, [5, 6]).uncovered == [5, 6]
    cands = synthesize(lm, sae, [5, 6], Fixed(), per_target=2)
    assert [(c.target, c.kept) for c in cands] == [(5, True), (5, True), (6, False), (6, False)]
    assert all(c.activation > 0 for c in cands[:2]) and cands[0].hits == [5]


def test_compare_reports_coverage_at_equal_budget(lm, sae, tmp_path):
    result = run_synthesis(lm, sae, NEG, [5, 6], SynthConfig(per_target=3), generator=Fixed())
    report, synth, rand = result.report, result.synthesised, result.random
    assert report.seed.covered == [] and report.budget == 6
    assert len(synth) == 6 and len(rand) == 6  # same number of generations
    assert report.feature_driven["newly_covered"] == [5] and report.feature_driven["coverage_total"] == 0.5
    assert report.random["newly_covered"] == [] and report.random["coverage_of_uncovered"] == 0.0
    assert report.per_feature[0] == {
        "feature": 5,
        "kept": 3,
        "tried": 3,
        "max_activation": max(c.activation for c in synth),
        "random_hits": 0,
    }
    n = write_jsonl(synth, tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert n == 3 and {r["target"] for r in rows} == {5}
    assert set(rows[0]) >= {"text", "target", "generator", "prompt", "activation", "seed"}


def test_local_steered_generation_batches_targets(lm, sae):
    from qscope.datatools.synth import RowSteering
    from qscope.steer import Steering

    gen = LocalSteered(lm, sae, strength=20.0, max_new_tokens=6, chat=False)
    out = gen.generate(5, 3, seed=1)
    assert len(out) == 3 and all(r["steer"] == {"feature": 5, "strength": 20.0} for r in out)
    assert gen.generate(5, 3, seed=1) == out  # seeded
    assert gen.generate(None, 2, seed=1)[0]["steer"] is None
    # one batched call = per-row steering: row 0 as if steered alone, row 1 untouched
    prompt = "The cat sat"
    rows = lm.generate([prompt, prompt], max_new_tokens=5, steer=RowSteering(sae, [7, None], 30.0))
    assert rows[0] == lm.generate(prompt, max_new_tokens=5, steer=Steering.add(sae, {7: 30.0}))
    assert rows[1] == lm.generate(prompt, max_new_tokens=5)
    assert rows[0] != rows[1]


@pytest.fixture()
def server():
    def reply(body):
        return "The cat sat on the mat." if "feature five" in body["messages"][0]["content"] else "The dog sat on the mat."

    with FakeChat(reply) as llm:
        yield llm


def test_endpoint_generator_against_fake_server(lm, sae, server):
    gen = Endpoint(server.url, "fake-model", describe=lambda f: "feature five" if f == 5 else "other", api_key="k")
    result = run_synthesis(lm, sae, NEG, [5, 6], SynthConfig(per_target=2), generator=gen)
    report, synth = result.report, result.synthesised
    path, auth, body = server.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "fake-model"
    assert [c.kept for c in synth] == [True, True, False, False] and synth[0].generator == "endpoint:fake-model"
    assert report.feature_driven["coverage_of_uncovered"] == 0.5 and report.random["coverage_of_uncovered"] == 0.0
    with pytest.raises(QScopeError, match="cannot reach"):
        Endpoint("http://127.0.0.1:9/v1", "m", describe=str, timeout=2).generate(None, 1, 0)
    with pytest.raises(QScopeError, match="must start with http"):
        Endpoint("localhost:8000", "m", describe=str)


def test_example_prompted_generation(lm, sae):
    from qscope.datatools.synth import LocalPrompted, describe_by_examples, max_acts_of

    pool = POS + NEG
    describe = describe_by_examples(pool, max_acts_of(lm, sae, pool), n=2)
    top = [line[2:] for line in describe(5).splitlines()]
    assert len(top) == 2 and set(top) <= set(POS)  # the feature's top-activating texts, all 'cat' ones
    assert describe(None).count("- ") == 2  # random examples for the baseline
    with pytest.raises(QScopeError, match="fires on none"):
        describe(6)
    gen = LocalPrompted(lm, describe, max_new_tokens=4)
    rows = gen.generate_batch([5, None, 5], seed=0)
    assert len(rows) == 3 and rows[0]["prompt"] == rows[2]["prompt"] and top[0] in rows[0]["prompt"]
    assert gen.name.startswith("local-prompted:")


def test_cli_synth_coverage_and_generate(lm, sae, tmp_path):
    import typer
    from typer.testing import CliRunner

    from qscope.cli import synth as cli

    model_dir, sae_dir = tmp_path / "model", tmp_path / "sae"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    sae.save(sae_dir)
    (tmp_path / "seeds.txt").write_text("\n\n".join(NEG))
    (tmp_path / "pool.txt").write_text("\n\n".join(POS))
    app = typer.Typer()
    cli.register(app)
    common = ["--model", str(model_dir), "--sae", str(sae_dir), "--layer", "1"]
    run = lambda *a: CliRunner().invoke(app, ["synth", *a])  # noqa: E731
    out = run("coverage", "--texts", str(tmp_path / "seeds.txt"), "--targets", "5,6", *common, "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["uncovered_ids"] == [5, 6]
    out = run(
        "generate",
        "--seed-texts",
        str(tmp_path / "seeds.txt"),
        "--targets",
        "5",
        "--examples",
        str(tmp_path / "pool.txt"),
        "--per-target",
        "2",
        "--max-new-tokens",
        "4",
        *common,
        "--out",
        str(tmp_path / "s.jsonl"),
        "--json",
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["budget"] == 2 and report["random"]["generated"] == 2
    assert (tmp_path / "s.jsonl.report.json").exists() and (tmp_path / "s.random.jsonl").exists()
    bad = run("coverage", "--texts", str(tmp_path / "seeds.txt"), "--targets", "x,y", *common)
    assert bad.exit_code != 0
