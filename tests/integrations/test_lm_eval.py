"""The lm-evaluation-harness backend: plain and steered log-likelihoods and generations equal qscope's own
computation, and a local JSON task runs end to end offline. Skipped where lm-eval is not installed."""

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="the harness adapter needs lm-evaluation-harness (pip install 'qscope[lm-eval]')")

from lm_eval.api.instance import Instance  # noqa: E402

from qscope import SAE, SAEConfig  # noqa: E402
from qscope.errors import QScopeError  # noqa: E402
from qscope.integrations.lm_eval import QScopeLM, parse_steer  # noqa: E402
from qscope.model import hooks  # noqa: E402
from qscope.steer import Steering  # noqa: E402

LAYER, FEATURE, STRENGTH = 2, 5, 6.0
STEER = f"{FEATURE}:{STRENGTH}@{LAYER}"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_lm_copy):
    """A tiny model folder and an SAE folder for its layer 2."""
    root = tmp_path_factory.mktemp("lmeval")
    lm = tiny_lm_copy("llama", seed=3)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    SAE.random(SAEConfig(d_model=lm.d_model, d_sae=48, k=4, layer=LAYER), seed=2).save(root / "sae")
    return root


@pytest.fixture(scope="module")
def plain(files):
    return QScopeLM(model=str(files / "model"), device="cpu", dtype="float32", batch_size=2)


@pytest.fixture(scope="module")
def steered(files):
    return QScopeLM(model=str(files / "model"), sae=str(files / "sae"), steer=STEER, device="cpu", dtype="float32",
                    batch_size=2)


def direct_loglikelihood(lm, context: str, continuation: str, steering=None) -> float:
    """Sum of log-probabilities of the continuation's tokens, by a plain forward of the whole text."""
    ctx = lm.tokenizer(context)["input_ids"]
    whole = lm.tokenizer(context + continuation)["input_ids"]
    ids = torch.tensor([whole])
    edits = hooks.edit(lm.layers, lm._edits(steering)) if steering else torch.no_grad()
    with torch.no_grad(), edits:
        logp = lm.model(ids).logits.log_softmax(-1)[0]
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


REQUESTS = [("The cat sat on", " the mat."), ("def add(a, b):", " return a + b"), ("Paris is the", " capital")]


def loglikelihoods(model: QScopeLM) -> list[float]:
    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(REQUESTS)]
    return [ll for ll, _ in model.loglikelihood(reqs)]


def test_parse_steer():
    assert parse_steer("6644:20@15+120:-8.5@15") == [(6644, 20.0, 15), (120, -8.5, 15)]
    assert parse_steer("7:1e1") == [(7, 10.0, None)]
    for bad in ("6644", "a:1@2", "1:2@x", "1:2+"):
        with pytest.raises(QScopeError, match="FEATURE:STRENGTH@LAYER"):
            parse_steer(bad)


def test_plain_and_steered_loglikelihoods_match_qscope(files, plain, steered):
    lm = steered.qscope_lm
    ours_plain = [direct_loglikelihood(lm, c, x) for c, x in REQUESTS]
    steering = Steering.add(SAE.load(files / "sae"), {FEATURE: STRENGTH})
    ours_steered = [direct_loglikelihood(lm, c, x, steering) for c, x in REQUESTS]
    assert loglikelihoods(plain) == pytest.approx(ours_plain, abs=1e-4)
    assert loglikelihoods(steered) == pytest.approx(ours_steered, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(ours_plain, ours_steered)) > 1e-2  # the steering changes the scores
    assert loglikelihoods(plain) == pytest.approx(ours_plain, abs=1e-4)  # and leaves no hook behind


def test_steered_generation_matches_qscope_generate(plain, steered):
    lm = steered.qscope_lm
    prompts = ["The quick brown fox", "for i in range(10):"]
    reqs = [Instance("generate_until", {}, (p, {"until": ["<never>"], "max_gen_toks": 6, "do_sample": False}), i)
            for i, p in enumerate(prompts)]
    got_steered = steered.generate_until(reqs)
    got_plain = plain.generate_until([Instance(r.request_type, {}, r.arguments, r.idx) for r in reqs])
    assert got_steered == [lm.generate(p, max_new_tokens=6, steer=steered.steering) for p in prompts]
    assert got_plain == [lm.generate(p, max_new_tokens=6) for p in prompts]
    assert got_plain != got_steered


def test_generated_positions_leave_the_prompt_alone(files, plain):
    """positions=generated: log-likelihoods (one forward, all prompt) are the plain ones."""
    model = QScopeLM(model=str(files / "model"), sae=str(files / "sae"), steer=STEER, positions="generated",
                     device="cpu", dtype="float32", batch_size=2)
    assert loglikelihoods(model) == pytest.approx(loglikelihoods(plain), abs=1e-5)


def test_bad_arguments(files):
    with pytest.raises(QScopeError, match="FEATURE:STRENGTH@LAYER"):
        QScopeLM(model=str(files / "model"), sae=str(files / "sae"), steer="5=3", device="cpu")
    with pytest.raises(QScopeError, match="out of range"):
        QScopeLM(model=str(files / "model"), sae=str(files / "sae"), steer="4800:3@2", device="cpu")
    with pytest.raises(QScopeError, match="layer 2, not layer 1"):
        QScopeLM(model=str(files / "model"), sae=str(files / "sae"), steer="5:3@1", device="cpu")


def test_local_json_tasks_through_the_harness(files, tmp_path):
    """`--model qscope` resolved by the harness' registry; a multiple-choice and a generate_until task
    read from local JSON files (no network)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [{"question": q, "choices": [" yes", " no", " maybe"], "answer": i % 3, "target": "yes"}
            for i, q in enumerate(["Is the cat on the mat?", "Is Paris in France?", "Is 2 a number?",
                                   "Does the dog run?"])]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(tmp_path / "docs.jsonl")}},
            "test_split": "test", "doc_to_text": "{{question}}"}
    tasks = {
        "qscope_tiny_mc": {**data, "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
                           "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}]},
        "qscope_tiny_gen": {**data, "output_type": "generate_until", "doc_to_target": "{{target}}",
                            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
                            "metric_list": [{"metric": "exact_match"}]},
    }
    for name, cfg in tasks.items():
        (tmp_path / f"{name}.yaml").write_text(json.dumps({"task": name, **cfg}))  # JSON is valid YAML
    manager = TaskManager(include_path=str(tmp_path))
    results = {}
    for steer in ("", f",sae={files / 'sae'},steer={STEER}"):
        out = simple_evaluate(model="qscope", model_args=f"model={files / 'model'},device=cpu{steer}",
                              tasks=list(tasks), task_manager=manager, batch_size=2, log_samples=True)
        results[bool(steer)] = out
        assert set(out["results"]) == set(tasks)
        assert 0.0 <= out["results"]["qscope_tiny_mc"]["acc,none"] <= 1.0
        assert len(out["samples"]["qscope_tiny_gen"]) == len(docs)
    mc = [s["resps"] for s in results[False]["samples"]["qscope_tiny_mc"]]
    mc_steered = [s["resps"] for s in results[True]["samples"]["qscope_tiny_mc"]]
    assert mc != mc_steered  # the steered run really scored differently
