"""The shipped default model and SAEs, for real: the main job (`qscope demo`), `encode -l 15`, and
the numbers the shipped SAEs must keep on held-out text. Marked `real_model` (a few seconds each
after one model load)."""

import json
import subprocess
import sys

import pytest
import torch

from qscope.data import held_out_texts
from qscope.metrics import evaluate_sae
from qscope.model import load_model
from qscope.sae import SAE

pytestmark = pytest.mark.real_model

TEXT = "The Eiffel Tower in Paris was finished in 1889."


@pytest.fixture(scope="module")
def lm():
    return load_model("default", dtype="float32")


def _json(args):
    out = subprocess.run([sys.executable, "-m", "qscope", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_demo_runs_on_the_shipped_default():
    out = _json(["demo", TEXT, "--json", "--top", "5"])
    assert "SmolLM2-135M" in out["model"] and out["sae"] == "default layer 15"
    acts = [f["max_activation"] for f in out["features"]]
    assert len(acts) == 5 and all(a > 0 for a in acts) and acts == sorted(acts, reverse=True)
    assert all(f["promotes"] for f in out["features"])  # every feature names the tokens it promotes
    assert "".join(t["token"] for t in out["tokens"]).strip() == TEXT


def test_encode_layer_15_gives_valid_sparse_codes():
    out = _json(["encode", "-l", "15", TEXT, "--json", "--top", "3", "--dtype", "float32"])
    assert out["layer"] == 15 and "".join(t["token"] for t in out["tokens"]) == TEXT
    for tok in out["tokens"]:
        assert 1 <= len(tok["features"]) <= 3
        assert all(0 <= f < 9216 and a > 0 for f, a in tok["features"])
        values = [a for _, a in tok["features"]]
        assert values == sorted(values, reverse=True)


def test_capture_is_the_block_output(lm):
    """What every application reads: the residual after block L equals hidden_states[L + 1]."""
    enc = lm.tokenize([TEXT])
    with torch.no_grad():
        hidden = lm.model(**enc, output_hidden_states=True).hidden_states
    captured = lm.capture(TEXT, [6, 15, 24])
    for layer in (6, 15, 24):
        torch.testing.assert_close(captured.acts[layer][0], hidden[layer + 1][0], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def texts():
    return held_out_texts(n=4)


@pytest.mark.parametrize("layer", [6, 15, 24])
def test_shipped_saes_hold_their_targets_on_held_out_text(lm, texts, layer):
    """The published targets (docs/default-saes.md): FVU <= 0.20 and CE loss recovered >= 85%,
    here on 4 held-out documents."""
    r = evaluate_sae(lm, SAE.load("default", layer=layer), texts, max_length=128)
    assert r.fvu <= 0.20 and r.ce_recovered >= 0.85, (r.fvu, r.ce_recovered)


def test_a_random_sae_misses_the_targets(lm, texts):
    """The floor that makes the targets mean something."""
    r = evaluate_sae(lm, SAE.random(SAE.load("default", layer=15).cfg, seed=0), texts, max_length=128)
    assert r.fvu > 0.5 and r.ce_recovered < 0.85, (r.fvu, r.ce_recovered)
