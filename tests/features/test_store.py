"""Feature store: dashboards match a brute-force pass, builds resume exactly, explanations round-trip."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qscope import SAE, SAEConfig
from qscope.cli.dashboard import dashboard_text, histogram_png
from qscope.errors import QScopeError
from qscope.features.explain import ask_llm, example_text, explain_feature
from qscope.features.store import FeatureStore, build_store
from qscope.features.store.layout import HIST_EDGES
from fake_llm import FakeChat
from tiny import SENTENCES

LAYER, D_SAE, TOP_N = 2, 96, 5
TEXTS = [" ".join(SENTENCES[(j * 3 + i) % 8] for i in range(1 + j % 4)) for j in range(30)]
LABELS = [("code" if j % 3 == 0 else "prose", t) for j, t in enumerate(TEXTS)]
SETTINGS = dict(top_n=TOP_N, batch_size=4, checkpoint_every=8, max_length=64)


@pytest.fixture(scope="module")
def lm(tiny_lm_copy):
    return tiny_lm_copy("llama", seed=2)


@pytest.fixture(scope="module")
def sae(lm):
    return SAE.random(SAEConfig(d_model=lm.d_model, d_sae=D_SAE, k=6, layer=LAYER), seed=4)


@pytest.fixture(scope="module")
def store(lm, sae, tmp_path_factory):
    return build_store(lm, sae, LABELS, tmp_path_factory.mktemp("store") / "s.sqlite", **SETTINGS)


@pytest.fixture(scope="module")
def brute(lm, sae):
    """Dense codes of every text, one text at a time (position 0 zeroed, as the store skips it)."""
    out = []
    for text in TEXTS:
        cap = lm.capture([text], [LAYER], max_length=64)
        dense = sae.encode(cap.valid(LAYER)).detach()
        dense[0] = 0
        out.append((cap.tokens[0], dense))
    return out


def dump(path: Path) -> dict:
    """Every table's rows, minus timestamps: equal dumps = equal stores."""
    conn = sqlite3.connect(path)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%'")]
    out = {t: sorted(conn.execute(f"SELECT * FROM {t}")) for t in tables}
    out["meta"] = [r for r in out["meta"] if r[0] not in ("created_at", "updated_at")]
    conn.close()
    return out


def test_top_contexts_are_the_top_activations(store, brute):
    per_text_max = torch.stack([dense.max(0).values for _, dense in brute])  # (texts, d_sae)
    for f in range(D_SAE):
        dash = store.dashboard(f)
        expected = [v for v in per_text_max[:, f].sort(descending=True).values[:TOP_N].tolist() if v > 0]
        assert [e.act for e in dash.top] == pytest.approx(expected, abs=1e-5), f
        for ex in dash.top:
            tokens, dense = brute[ex.text_index]
            assert dense[ex.position, f] == pytest.approx(ex.act, abs=1e-5)
            assert dense[:, f].max() == pytest.approx(ex.act, abs=1e-5)  # the text's maximum
            assert ex.tokens == tokens[ex.position - ex.focus: ex.position - ex.focus + len(ex.tokens)]
            window = dense[ex.position - ex.focus: ex.position - ex.focus + len(ex.acts), f]
            assert ex.acts == pytest.approx(window.tolist(), abs=2e-3)  # stored as float16
            assert ex.focus <= 24 and len(ex.tokens) - ex.focus - 1 <= 8
            assert ex.label == LABELS[ex.text_index][0]


def test_stats_and_histogram_match_brute_force(store, brute):
    dense = torch.cat([d for _, d in brute])
    fires = (dense > 0).sum(0)
    n_tokens = sum(len(t) - 1 for t, _ in brute)
    assert store.meta["tokens_done"] == n_tokens and store.meta["texts_done"] == len(TEXTS)
    for f in range(D_SAE):
        dash = store.dashboard(f)
        assert dash.fires == int(fires[f])
        assert sum(c for _, _, c in dash.histogram) == dash.fires
        assert dash.density == pytest.approx(int(fires[f]) / n_tokens)
        if dash.fires:
            on = dense[:, f][dense[:, f] > 0]
            assert dash.max_act == pytest.approx(float(on.max()), abs=1e-5)
            assert dash.mean_act == pytest.approx(float(on.mean()), abs=1e-5)
            assert dash.histogram[0][0] <= float(on.min()) and float(on.max()) < dash.histogram[-1][1]
        for iv in dash.intervals:
            assert 1 <= len(iv.examples) <= 3 and iv.count >= len(iv.examples)
            assert all(iv.low <= ex.act < iv.high for ex in iv.examples)
            assert len({ex.text_index for ex in iv.examples}) == len(iv.examples)
        assert sum(iv.count for iv in dash.intervals) == dash.fires
    assert len(HIST_EDGES) == 49


def test_stored_tokens_are_readable(lm, sae, tmp_path):
    texts = [("zh", "The 猫 sat on the mat, café."), ("en", "The cat sat on the mat.")]
    build_store(lm, sae, texts, tmp_path / "s.sqlite", **SETTINGS)
    rows = sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT n_tokens, tokens FROM texts ORDER BY idx").fetchall()
    for (n, tokens), (_, text) in zip(rows, texts):
        shown = json.loads(tokens)
        assert len(shown) == n and "".join(shown) == text  # multi-byte characters whole, no '\ufffd'


def test_density_ranking_and_token_effects(store):
    top = store.top_features_by_density(5)
    assert [s.fires for s in top] == sorted((s.fires for s in top), reverse=True)
    assert store.top_features_by_density(3, lowest=True)[0].fires <= top[-1].fires
    dash = store.dashboard(top[0].feature)
    assert len(dash.promoted) == 10 and dash.promoted[0][1] >= dash.promoted[-1][1]
    assert dash.suppressed[0][1] <= dash.suppressed[-1][1]
    json.dumps(dash.to_dict())
    assert store.meta["state"] == "complete"


def test_interrupted_build_resumes_identically(lm, sae, store, tmp_path):
    path = tmp_path / "r.sqlite"

    def stop_at(n):
        def progress(done, tokens):
            if done == n:
                raise KeyboardInterrupt
        return progress

    with pytest.raises(KeyboardInterrupt):
        build_store(lm, sae, LABELS, path, progress=stop_at(13), **SETTINGS)
    with FeatureStore(path) as partial:
        assert (partial.meta["texts_done"], partial.meta["state"]) == (8, "building")  # last checkpoint
    with pytest.raises(KeyboardInterrupt):  # a second interruption, mid-way through the resume
        build_store(lm, sae, LABELS, path, progress=stop_at(22), **SETTINGS)
    build_store(lm, sae, LABELS, path, **SETTINGS).close()
    assert dump(path) == dump(store.path)
    build_store(lm, sae, LABELS, path, **SETTINGS).close()  # rerun of a finished build: nothing counted twice
    assert dump(path) == dump(store.path)


def test_killed_build_resumes_identically(lm, sae, store, tmp_path):
    """SIGKILL a build in a subprocess (no cleanup at all), then resume it here."""
    path, weights = tmp_path / "k.sqlite", tmp_path / "sae"
    sae.save(weights)
    script = f"""
import os, signal, sys
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
from qscope import SAE
from qscope.features.store import build_store
from test_store import LABELS, SETTINGS
from tiny import tiny_lm
def progress(done, tokens):
    if done == 19:
        os.kill(os.getpid(), signal.SIGKILL)
build_store(tiny_lm("llama", seed=2), SAE.load({str(weights)!r}), LABELS, {str(path)!r}, progress=progress, **SETTINGS)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with FeatureStore(path) as partial:
        assert partial.meta["texts_done"] == 16
    build_store(lm, sae, LABELS, path, **SETTINGS).close()
    assert dump(path) == dump(store.path)


def test_resume_refuses_other_texts_sae_or_settings(lm, sae, store, tmp_path):
    path = tmp_path / "x.sqlite"
    with pytest.raises(KeyboardInterrupt):
        build_store(lm, sae, LABELS, path,
                    progress=lambda d, t: (_ for _ in ()).throw(KeyboardInterrupt) if d == 9 else None, **SETTINGS)
    with pytest.raises(QScopeError, match="texts differ"):
        build_store(lm, sae, LABELS[::-1], path, **SETTINGS)
    with pytest.raises(QScopeError, match="sae_fingerprint"):
        build_store(lm, SAE.random(sae.cfg, seed=5), LABELS, path, **SETTINGS)
    with pytest.raises(QScopeError, match="top_n"):
        build_store(lm, sae, LABELS, path, **{**SETTINGS, "top_n": 7})
    with pytest.raises(QScopeError, match="layer"):
        build_store(lm, sae, LABELS, path, layer=1, **SETTINGS)
    import fcntl

    with open(f"{path}.lock", "w") as lock:  # as if another build held it
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(QScopeError, match="another build"):
            build_store(lm, sae, LABELS, path, **SETTINGS)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(QScopeError, match="not a qscope feature store"):
        build_store(lm, sae, LABELS, other, **SETTINGS)
    with build_store(lm, sae, LABELS[:5], path, **SETTINGS) as st:  # fewer texts than stored: unchanged
        assert st.meta["texts_done"] == 8


def test_bad_input_errors(store, tmp_path):
    with pytest.raises(QScopeError, match="out of range"):
        store.dashboard(D_SAE)
    with pytest.raises(QScopeError, match="no feature store"):
        FeatureStore(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not sqlite")
    with pytest.raises(QScopeError, match="not a qscope feature store"):
        FeatureStore(tmp_path / "junk.sqlite")
    with pytest.raises(QScopeError, match="layer 2, not layer 3"):
        store.check(layer=3)


def test_explanations_round_trip(store, tmp_path):
    e = store.add_explanation(7, "  Python   for-loops ", "manual")
    assert e.text == "Python for-loops"
    store.add_explanation(8, "100% sure: cats", "gpt-x")
    with FeatureStore(store.path) as again:
        assert [x.text for x in again.dashboard(7).explanations] == ["Python for-loops"]
        assert [x.feature for x in again.search_explanations("python LOOPS")] == [7]
        assert [x.source for x in again.search_explanations("100%")] == ["gpt-x"]
        assert again.search_explanations("_") == []
    with pytest.raises(QScopeError):
        store.add_explanation(7, "   ")


@pytest.fixture
def fake_llm():
    with FakeChat(lambda body: '<think>hmm</think>\n"Sentences about cats."\nmore') as llm:
        yield llm


def test_explainer_against_fake_endpoint(store, fake_llm, monkeypatch):
    feature = store.top_features_by_density(1)[0].feature
    monkeypatch.setenv("FAKE_KEY", "sekret")
    e = explain_feature(store, feature, endpoint=fake_llm.url, api_model="fake-model", api_key_env="FAKE_KEY")
    assert (e.text, e.source) == ("Sentences about cats.", "fake-model")
    path, auth, body = fake_llm.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sekret" and body["model"] == "fake-model"
    prompt = body["messages"][1]["content"]
    top = store.dashboard(feature).top[0]
    assert example_text(top) in prompt and "<<" in prompt
    assert store.dashboard(feature).explanations[-1].text == "Sentences about cats."
    fake_llm.status = 500
    with pytest.raises(QScopeError, match="HTTP 500"):
        ask_llm([{"role": "user", "content": "x"}], fake_llm.url, "fake-model")
    with pytest.raises(QScopeError, match="either"):
        explain_feature(store, feature)


def test_explainer_unreachable_endpoint(store):
    with pytest.raises(QScopeError, match="cannot reach"):
        ask_llm([{"role": "user", "content": "x"}], "http://127.0.0.1:9/v1", "m", timeout=5)


def test_render_and_cli(store, tmp_path):
    from typer.testing import CliRunner

    from qscope.cli.features import app

    feature = store.top_features_by_density(1)[0].feature
    text = dashboard_text(store.dashboard(feature), n_top=3)
    assert f"Feature {feature}" in text and "«" in text and "Top 3 contexts" in text
    assert histogram_png(store.dashboard(feature), tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    runner = CliRunner()
    out = runner.invoke(app, ["show", str(feature), "--store", str(store.path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["feature"] == feature
    out = runner.invoke(app, ["explain", str(feature), "--store", str(store.path), "--text", "zebra stripes", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["text"] == "zebra stripes"
    out = runner.invoke(app, ["show", "--store", str(store.path), "--search", "zebra", "--json"])
    assert [r["feature"] for r in json.loads(out.stdout)] == [feature]
    out = runner.invoke(app, ["show", "--store", str(store.path), "--densest", "2", "--json"])
    assert len(json.loads(out.stdout)) == 2


def test_cli_build_resumes(lm, sae, tmp_path):
    from typer.testing import CliRunner

    from qscope.cli.features import app

    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    sae.save(tmp_path / "sae")
    (tmp_path / "texts.txt").write_text("\n\n".join(TEXTS[:12]))
    args = ["build", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae"), "--corpus",
            str(tmp_path / "texts.txt"), "--out", str(tmp_path / "c.sqlite"), "--batch-size", "4", "--json"]
    out = CliRunner().invoke(app, [*args, "--n-texts", "8"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["texts_done"] == 8
    out = CliRunner().invoke(app, [*args, "--n-texts", "12"])
    info = json.loads(out.stdout)
    assert (info["texts_done"], info["layer"], info["state"]) == (12, LAYER, "complete")
