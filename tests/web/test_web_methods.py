"""Web API on tiny models: steering by diffmean / repe directions, detection scoring of labels,
and /api/compare as a thin call of the compare application."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from qscope.web import create_app  # noqa: E402
from qscope.web import schemas as S  # noqa: E402
from test_web_api import served  # noqa: E402,F401  (fixture: tiny model, layers 1 and 2, a store on layer 2)

BASE = {"prompt": "The cat", "layer": 2, "max_new_tokens": 6, "chat": False}


class AlwaysYes:
    name = "always-yes"

    def __call__(self, explanation, excerpts):
        return [True] * len(excerpts)


class ReadsTheModel:
    """A judge that knows the answer: runs the feature on each excerpt (read alone)."""

    name = "oracle"

    def __init__(self, lm, sae, feature):
        self.lm, self.sae, self.feature = lm, sae, feature

    def __call__(self, explanation, excerpts):
        from qscope.features.codes import iter_text_codes

        return [float(c.dense_max(self.sae.cfg.d_sae)[self.feature]) > 0
                for c in iter_text_codes(self.lm, self.sae, excerpts, self.sae.cfg.layer, max_length=64)]


@pytest.fixture(scope="module")
def client(served):  # noqa: F811
    lm, saes, stores = served
    return TestClient(create_app(lm, saes, stores, judge=AlwaysYes()), base_url="http://localhost")


@pytest.mark.parametrize("method", ["diffmean", "repe"])
def test_direction_methods_steer_along_the_library_direction(client, served, method):  # noqa: F811
    from qscope.steer.directions import diffmean_direction, repe_direction

    lm = served[0]
    still = client.post("/api/steer", json={**BASE, "method": method, "strength": 0}).json()
    assert still["steered"] == still["plain"] and still["steering"]["method"] == method
    find = {"diffmean": diffmean_direction, "repe": repe_direction}[method]
    want = find(lm, 2, S.DIRECTION_TEXTS["positive"], S.DIRECTION_TEXTS["negative"], max_length=S.MAX_TOKENS)
    assert still["steering"]["direction_head"] == pytest.approx(want[:4].tolist(), abs=1e-4)
    pushed = client.post("/api/steer", json={**BASE, "method": method, "strength": 200}).json()
    assert pushed["steered"] != pushed["plain"] and pushed["steering"]["strength"] == 200


def test_direction_texts_change_the_direction(client):
    given = {"positive": ["The cat sat on the mat.", "A cat slept."], "negative": ["def f(x): return x", "for i in x: pass"]}
    default = client.post("/api/steer", json={**BASE, "method": "diffmean", "strength": 1}).json()
    own = client.post("/api/steer", json={**BASE, "method": "diffmean", "strength": 1, **given}).json()
    assert own["steering"]["direction_head"] != default["steering"]["direction_head"]


def test_direction_sweep_streams_one_side_per_strength(client):
    with client.stream("POST", "/api/steer/stream", json={**BASE, "method": "repe", "sweep": [0, 200]}) as r:
        assert r.status_code == 200
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    done = {e["side"]: e["text"] for e in events if e["type"] == "done"}
    assert list(done) == ["plain", "sweep-0", "sweep-1"] and events[-1]["type"] == "end"
    assert done["sweep-0"] == done["plain"] and done["sweep-1"] != done["plain"]


@pytest.mark.parametrize("body, status, words", [
    (BASE, 422, "edits is required with method sae"),
    ({**BASE, "method": "diffmean"}, 422, "strength is required with method diffmean"),
    ({**BASE, "method": "repe", "strength": 3, "edits": [{"feature": 3, "strength": 2}]}, 422, "edits does not apply"),
    ({**BASE, "edits": [{"feature": 3, "strength": 2}], "strength": 3}, 422, "strength does not apply to method sae"),
    ({**BASE, "method": "mean", "strength": 3}, 422, "method must be"),
    ({**BASE, "method": "repe", "strength": 3, "positive": ["a b"], "negative": ["c d"]}, 400, "at least two positive"),
    ({**BASE, "method": "diffmean", "strength": 3, "positive": ["same"], "negative": ["same"]}, 400, "same set"),
    ({**BASE, "method": "diffmean", "strength": 3, "layer": 3}, 400, "layer 3 is not served"),
])
def test_steering_method_errors_are_one_line_before_any_generation(client, body, status, words):
    for path in ("/api/steer", "/api/steer/stream"):
        r = client.post(path, json=body)
        assert r.status_code == status and words in r.json()["detail"], (path, r.text)


def test_compare_route_returns_the_compare_application_rows(client, served):  # noqa: F811
    from qscope.compare import firing_rate_differences

    lm, saes, _ = served
    texts = ("The cat sat on the mat.", "def add(a, b): return a + b")
    got = client.post("/api/compare", json={"text_a": texts[0], "text_b": texts[1], "top": 5}).json()
    want = firing_rate_differences(lm, saes, *texts, layers=[1, 2], top=5, max_length=S.MAX_TOKENS)
    for layer, expected in zip(got["layers"], want):
        for side in ("more_in_a", "more_in_b"):
            assert [{k: r[k] for k in expected[side][0]} for r in layer[side]] == expected[side]
        diffs = [r["diff"] for r in expected["more_in_a"]]
        assert diffs == sorted(diffs, reverse=True) and all(d > 0 for d in diffs)
        assert all(r["diff"] == pytest.approx(r["rate_a"] - r["rate_b"], abs=2e-4) for r in expected["more_in_b"])


def _busy_feature(served) -> int:  # noqa: F811
    return served[2][2].browse("frequent", 0, 1)[1][0]["feature"]


def test_detection_without_a_judge_says_how_to_configure_one(served):  # noqa: F811
    lm, saes, stores = served
    bare = TestClient(create_app(lm, saes, stores), base_url="http://localhost")
    assert bare.get("/api/info").json()["judge"] is None
    r = bare.post("/api/feature/detection", json={"layer": 2, "feature": 7})
    assert r.status_code == 200 and r.json()["scored"] is False and "--endpoint" in r.json()["detail"]


def test_detection_score_is_balanced_accuracy(client, served):  # noqa: F811
    feature = _busy_feature(served)
    assert client.get("/api/info").json()["judge"] == "always-yes"
    r = client.post("/api/feature/detection", json={"layer": 2, "feature": feature, "n": 4}).json()
    fires = [x for x in r["excerpts"] if x["fires"]]
    quiet = [x for x in r["excerpts"] if not x["fires"]]
    assert r["scored"] and 2 <= len(fires) <= 4 and len(quiet) == len(fires)
    assert (r["hit_rate_fires"], r["hit_rate_quiet"], r["balanced_accuracy"]) == (1.0, 0.0, 0.5)  # yes to all: chance
    assert r["explanation"] == served[2][2].labels([feature])[feature].text and all(x["act"] > 0 for x in fires)


def test_detection_non_activating_excerpts_really_do_not_fire(served):  # noqa: F811
    from qscope.features.detection import detection_score

    lm, saes, stores = served
    feature = _busy_feature(served)
    score = detection_score(stores[2], lm, saes[2], feature, ReadsTheModel(lm, saes[2], feature), n=4)
    assert score.hit_rate_quiet == 1.0 and score.judge == "oracle"
    assert score.balanced_accuracy == pytest.approx((score.hit_rate_fires + 1) / 2)


def test_detection_needs_a_store_and_a_served_feature(client):
    assert client.post("/api/feature/detection", json={"layer": 1, "feature": 3}).status_code == 404
    assert "out of range" in client.post("/api/feature/detection", json={"layer": 2, "feature": 96}).json()["detail"]
    assert client.post("/api/feature/detection", json={"layer": 2, "feature": 3, "n": 1}).status_code == 422


def test_llm_judge_numbers_the_excerpts_and_reads_the_numbers_back(monkeypatch):
    from qscope.features import detection

    asked = []
    monkeypatch.setattr(detection, "ask_llm", lambda messages, *a, **k: asked.append(messages) or "2 and 3.")
    judge = detection.LLMJudge("http://localhost:9/v1", "judge-model")
    assert judge("cats", ["a cat", "the mat", "a dog", "code"]) == [False, True, True, False]
    prompt = asked[0][-1]["content"]
    assert "Explanation: cats" in prompt and "\n2. the mat\n" in prompt and "\n4. code\n" in prompt
    assert detection.picked("none", 3) == [False, False, False] and detection.picked("1, 9", 2) == [True, False]
    from qscope.errors import QScopeError

    with pytest.raises(QScopeError, match="http"):
        detection.LLMJudge("localhost:8000", "m")
