"""The web API on tiny models: every endpoint, 4xx on bad input, no path reads, concurrency."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from qscope import SAE, SAEConfig  # noqa: E402
from qscope.features.store import build_store  # noqa: E402
from qscope.web import create_app  # noqa: E402
from live import live_server  # noqa: E402
from tiny import SENTENCES, tiny_lm  # noqa: E402

STEER = {"prompt": "The cat", "layer": 2, "edits": [{"feature": 3, "strength": 20}], "max_new_tokens": 6, "chat": False}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Layers 1 (no store) and 2 (with a store), d_sae 96."""
    lm = tiny_lm("llama", seed=2)
    saes = {layer: SAE.random(SAEConfig(d_model=lm.d_model, d_sae=96, k=6, layer=layer), seed=layer) for layer in (1, 2)}
    store = build_store(lm, saes[2], SENTENCES, tmp_path_factory.mktemp("store") / "s.sqlite", layer=2, max_length=32,
                        batch_size=4)
    store.add_explanation(7, "cats and mats", "manual")
    return lm, saes, {1: None, 2: store}


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(*served), base_url="http://localhost")


def test_info_openapi_and_pages(client):
    info = client.get("/api/info").json()
    assert [l["layer"] for l in info["layers"]] == [1, 2]
    assert info["layers"][0]["store"] is None and info["layers"][1]["store"]["texts_done"] == len(SENTENCES)
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/feature/{layer}/{feature}", "/api/inspect", "/api/compare", "/api/steer/stream", "/api/search/contrast"):
        assert p in paths
    assert "qscope" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200


def test_feature_pages_with_and_without_store(client):
    live = client.get("/api/feature/1/5").json()
    assert live["store"] is False and len(live["promoted"]) == 10 and live["top"] == []
    dash = client.get("/api/feature/2/7").json()
    assert dash["store"] is True and dash["explanations"][0]["text"] == "cats and mats"
    assert {"top", "histogram", "density", "intervals", "promoted", "suppressed"} <= dash.keys()
    busy = client.get("/api/features/2?n=3").json()
    assert len(busy) == 3 and busy[0]["fires"] >= busy[1]["fires"]
    top = client.get(f"/api/feature/2/{busy[0]['feature']}").json()
    assert top["top"] and len(top["top"][0]["tokens"]) == len(top["top"][0]["acts"]) and top["histogram"]
    assert client.get("/api/features/1").status_code == 404  # no store there
    hits = client.get("/api/search/explanations", params={"q": "CATS"}).json()
    assert [(h["layer"], h["feature"], h["source"], h["label"]) for h in hits][0] == (2, 7, "manual", "cats and mats")


def test_every_list_carries_labels(client):
    """Labels everywhere: lists from a store (explanation or automatic label, with density) and
    from a layer without one (automatic label from promoted tokens, no density)."""
    dash = client.get("/api/feature/2/7").json()
    assert (dash["label"], dash["label_source"]) == ("cats and mats", "manual") and dash["auto_label"]
    other = client.get("/api/features/2?n=3").json()
    assert all(r["label"] and r["label_source"] for r in other)
    text = "The cat sat on the mat."
    for layer in (1, 2):
        found = client.post("/api/search/text", json={"text": text, "layer": layer, "top": 4}).json()["features"]
        assert all(r["label"] for r in found) and all((r["density"] is None) == (layer == 1) for r in found)
        if layer == 1:
            assert all(r["label"].startswith("promotes ") and r["label_source"] == "auto" for r in found)
    ins = client.post("/api/inspect", json={"text": text, "layer": 2, "top": 3}).json()
    shown = {f for t in ins["tokens"] for f, _ in t["features"]} | {r["feature"] for r in ins["strongest"]}
    assert {int(f) for f in ins["labels"]} == shown and all(r["label"] for r in ins["strongest"])
    con = client.post("/api/search/contrast", json={"positive": [text], "negative": ["def f(): pass"], "layer": 2}).json()
    assert all(r["label"] for r in con["features"])
    cmp = client.post("/api/compare", json={"text_a": text, "text_b": "def f(): pass", "top": 3}).json()
    assert all(r["label"] for L in cmp["layers"] for r in L["more_in_a"] + L["more_in_b"])
    auto = next(r for r in other if r["label_source"] == "auto")
    word = auto["label"].split()[-1]
    hits = client.get("/api/search/explanations", params={"q": word}).json()
    assert any(h["feature"] == auto["feature"] and h["source"] == "auto" for h in hits)  # search covers automatic labels


def test_browse_pages_orders_and_density_filter(client):
    every = client.get("/api/browse/2?n=200").json()
    rows = every["rows"]
    assert every["total"] == len(rows) > 10 and all(r["fires"] > 0 for r in rows)
    assert [r["fires"] for r in rows] == sorted((r["fires"] for r in rows), reverse=True)
    page2 = client.get("/api/browse/2?n=5&offset=5").json()
    assert [r["feature"] for r in page2["rows"]] == [r["feature"] for r in rows[5:10]] and page2["total"] == every["total"]
    rare = client.get("/api/browse/2?order=rare&n=200").json()["rows"]
    assert [r["fires"] for r in rare] == sorted(r["fires"] for r in rare)
    strong = client.get("/api/browse/2?order=strongest&n=200").json()["rows"]
    assert [r["max_act"] for r in strong] == sorted((r["max_act"] for r in strong), reverse=True)
    shuffled = [client.get(f"/api/browse/2?order=random&n=200&seed={s}").json()["rows"] for s in (0, 0, 1)]
    assert shuffled[0] == shuffled[1] != shuffled[2] and sorted(r["feature"] for r in shuffled[0]) == sorted(r["feature"] for r in rows)
    cut = sorted(r["density"] for r in rows)[len(rows) // 2]
    sparse = client.get(f"/api/browse/2?n=200&max_density={cut}").json()
    assert 0 < sparse["total"] < every["total"] and all(r["density"] <= cut for r in sparse["rows"])
    word = rows[0]["label"].split()[-1]
    named = client.get("/api/browse/2", params={"n": 200, "q": word.upper()}).json()["rows"]
    assert rows[0]["feature"] in [r["feature"] for r in named] and all(word.lower() in r["label"].lower() for r in named)


def test_feature_summary_sweep_cut_docs_favicon_and_not_found(client):
    s = client.get("/api/feature/2/7/summary").json()
    dash = client.get("/api/feature/2/7").json()
    assert s["label"] == "cats and mats" and s["max_act"] == pytest.approx(dash["max_act"], abs=1e-3) and s["fires"] == dash["fires"]
    assert client.get("/api/feature/1/7/summary").json()["max_act"] is None
    sweep = client.post("/api/steer", json={**STEER, "sweep": [0, 20]}).json()
    one = client.post("/api/steer", json=STEER).json()
    assert [x["strength"] for x in sweep["sweep"]] == [0, 20]
    assert sweep["sweep"][0]["text"] == one["plain"] and sweep["sweep"][1]["text"] == one["steered"]
    events = _sse(client.post("/api/steer/stream", json={**STEER, "sweep": [0, 20]}).text)
    assert [e["side"] for e in events if e["type"] == "done"] == ["plain", "sweep-0", "sweep-1"]
    long = client.post("/api/inspect", json={"text": "cat " * 400, "layer": 2}).json()
    assert long["truncated"] and len(long["tokens"]) <= long["max_tokens"] < long["n_tokens_in"]
    assert client.post("/api/inspect", json={"text": "cat", "layer": 2}).json()["truncated"] is False
    docs = client.get("/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/swagger/swagger-ui.css").status_code == 200
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg")
    page = client.get("/no/such/page", headers={"accept": "text/html"})
    assert page.status_code == 404 and "Page not found" in page.text
    assert client.get("/api/nothing").json()["detail"] == "Not Found"


def test_live_activations_inspect_and_search(client):
    act = client.post("/api/feature/activations", json={"text": "The cat sat", "layer": 1, "feature": 4}).json()
    assert len(act["tokens"]) == len(act["acts"]) > 1
    ins = client.post("/api/inspect", json={"text": "The cat sat on the mat.", "layer": 2, "top": 3}).json()
    assert all(len(t["features"]) <= 3 for t in ins["tokens"]) and ins["strongest"]
    found = client.post("/api/search/text", json={"text": "The cat sat on the mat.", "layer": 2, "top": 4}).json()
    assert len(found["features"]) == 4
    strongest = [f["feature"] for f in ins["strongest"][:4]]
    assert [f["feature"] for f in found["features"]] == strongest
    con = client.post("/api/search/contrast", json={"positive": ["The cat sat."], "negative": ["def add(a, b)"],
                                                    "layer": 1, "by": "rate", "top": 5}).json()
    assert con["by"] == "rate" and len(con["features"]) == 5


def test_compare_ranks_by_rate_difference(client):
    r = client.post("/api/compare", json={"text_a": "The cat sat on the mat.", "text_b": "for i in range(10): print(i)",
                                          "top": 5}).json()
    assert [l["layer"] for l in r["layers"]] == [1, 2]
    for layer in r["layers"]:
        diffs = [x["diff"] for x in layer["more_in_a"]]
        assert diffs == sorted(diffs, reverse=True) and all(d > 0 for d in diffs)
        assert all(x["rate_a"] - x["rate_b"] == pytest.approx(x["diff"], abs=1e-3) for x in layer["more_in_b"])


def _sse(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.split("\n\n") if line.startswith("data:")]


def test_steer_and_stream_agree(client):
    whole = client.post("/api/steer", json=STEER).json()
    assert whole["plain"] != whole["steered"]
    events = _sse(client.post("/api/steer/stream", json=STEER).text)
    assert events[-1] == {"type": "end"}
    done = {e["side"]: e["text"] for e in events if e["type"] == "done"}
    assert done == {"plain": whole["plain"], "steered": whole["steered"]}
    streamed = "".join(e["text"] for e in events if e["type"] == "token" and e["side"] == "steered")
    assert streamed == whole["steered"]


BAD = [
    ("post", "/api/inspect", {"text": "x" * 2001, "layer": 2}, 422, "at most 2000"),
    ("post", "/api/inspect", {"text": "", "layer": 2}, 422, "text must not be empty"),
    ("post", "/api/inspect", {"text": "hi", "layer": 3}, 400, "layer 3 is not served"),
    ("post", "/api/inspect", {"text": "hi", "layer": 2, "top": 500}, 422, "top must be at most 50"),
    ("post", "/api/inspect", {"text": "hi", "layer": 2, "path": "/etc/passwd"}, 422, "unknown field path"),
    ("post", "/api/inspect", {"text": "   ", "layer": 2}, 400, "empty text"),
    ("post", "/api/feature/activations", {"text": "hi", "layer": 2, "feature": 96}, 400, "feature 96 out of range"),
    ("post", "/api/feature/activations", {"text": "hi", "layer": 2, "feature": -1}, 400, "out of range"),
    ("get", "/api/feature/2/96", None, 404, "features 0..95"),
    ("get", "/api/feature/9/1", None, 404, "not served"),
    ("get", "/api/feature/2/abc", None, 422, "feature must be a whole number"),
    ("post", "/api/search/contrast", {"positive": [], "negative": ["a"], "layer": 1}, 422, "positive"),
    ("post", "/api/search/contrast", {"positive": ["a"] * 17, "negative": ["a"], "layer": 1}, 422, "positive"),
    ("post", "/api/search/contrast", {"positive": ["a"], "negative": ["b"], "layer": 1, "by": "x"}, 422, "by must be 'mean' or 'rate'"),
    ("post", "/api/compare", {"text_a": "a", "text_b": "b", "layers": [5]}, 400, "layer 5"),
    ("post", "/api/steer", {**STEER, "edits": [{"feature": 3, "strength": 1e6}]}, 422, "strength"),
    ("post", "/api/steer", {**STEER, "edits": [{"feature": 300, "strength": 2}]}, 400, "feature 300 out of range"),
    ("post", "/api/steer/stream", {**STEER, "edits": [{"feature": 300, "strength": 2}]}, 400, "out of range"),
    ("post", "/api/steer", {**STEER, "edits": [{"feature": 3, "strength": 2, "mode": "mul"}]}, 422, "mode"),
    ("post", "/api/steer", {**STEER, "edits": [{"feature": 3, "strength": None}]}, 422, "edits[0].strength must be a number"),
    ("post", "/api/steer", {**STEER, "edits": [{"feature": 3}]}, 422, "edits[0].strength is required"),
    ("post", "/api/steer", {**STEER, "sweep": [1, 2, 3, 4, 5]}, 422, "sweep takes at most 4 items"),
    ("post", "/api/steer", {**STEER, "max_new_tokens": 100000}, 422, "max_new_tokens"),
    ("post", "/api/steer", {**STEER, "edits": []}, 422, "edits"),
    ("post", "/api/steer", {**STEER, "layer": 0}, 400, "not served"),
    ("get", "/api/search/explanations?q=" + "a" * 201, None, 422, "q"),
    ("get", "/api/features/2?order=sideways", None, 422, "order must be 'frequent', 'rare', 'strongest' or 'random'"),
    ("get", "/api/browse/2?max_density=2", None, 422, "max_density must be at most 1"),
    ("get", "/api/browse/1", None, 404, "no feature store for layer 1"),
    ("get", "/api/feature/2/96/summary", None, 404, "out of range"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_clear_4xx(client, method, path, body, status, message):
    r = client.request(method.upper(), path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_no_endpoint_reads_a_path_it_is_sent(client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    opened = []

    def audit(event, args):
        if event == "open" and args and str(args[0]).endswith("secret.txt"):
            opened.append(args[0])

    sys.addaudithook(audit)  # cannot be removed; it only records opens of this one file
    for r in (client.post("/api/inspect", json={"text": str(secret), "layer": 2}),
              client.post("/api/search/text", json={"text": f"file://{secret}", "layer": 2}),
              client.post("/api/steer", json={**STEER, "prompt": str(secret)}),
              client.get(f"/static/..%2F..%2F..%2F..%2F{secret}"), client.get("/static/../app.py")):
        assert "TOPSECRET" not in r.text
    assert client.get("/static/../app.py").status_code == 404
    assert opened == []


# ---------------------------------------------------------------------------- concurrency on loopback
@pytest.fixture(scope="module")
def live_url(served):
    with live_server(create_app(*served)) as port:
        yield f"http://127.0.0.1:{port}"


def test_concurrent_requests_equal_sequential(live_url):
    steer_b = {**STEER, "prompt": "A dog", "edits": [{"feature": 11, "strength": -15}], "layer": 1}
    jobs = [("stream", STEER), ("stream", steer_b), ("post", "/api/steer", steer_b),
            ("post", "/api/inspect", {"text": "The cat sat on the mat.", "layer": 2}),
            ("post", "/api/compare", {"text_a": "A dog ran.", "text_b": "The cat sat."}),
            ("get", "/api/feature/2/7", None), ("get", "/api/feature/1/9", None)]

    def run(job):
        kind, *rest = job
        with httpx.Client(base_url=live_url, timeout=60) as c:
            if kind == "stream":
                with c.stream("POST", "/api/steer/stream", json=rest[0]) as r:
                    return _sse("".join(r.iter_text()))
            r = c.post(rest[0], json=rest[1]) if kind == "post" else c.get(rest[0])
            assert r.status_code == 200, r.text
            return r.json()

    sequential = [run(j) for j in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(run, jobs * 2))
    assert concurrent == sequential * 2
    assert sequential[0] != sequential[1]  # the two streams really differ, so mixing would show


def test_oversized_body_is_refused_before_parsing(client):
    r = client.post("/api/inspect", content=b'{"text": "' + b"a" * 300_000 + b'", "layer": 2}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["detail"]


def test_serve_cli_help_and_layer_parsing():
    import typer
    from typer.testing import CliRunner

    from qscope.cli import serve
    from qscope.errors import QScopeError

    app = typer.Typer()
    serve.register(app)
    app.command("noop")(lambda: None)  # two commands, so `serve` is a sub-command as in `qscope`
    out = CliRunner().invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "Example: qscope serve" in out.output and "--layers" in out.output
    assert serve.parse_layers("24, 6,15") == [6, 15, 24] and serve.parse_layers(None) is None
    with pytest.raises(QScopeError, match="comma-separated"):
        serve.parse_layers("6;15")
    with pytest.raises(QScopeError, match="--layers is needed"):
        serve.load_served("default", "some/other-sae", None, [])
