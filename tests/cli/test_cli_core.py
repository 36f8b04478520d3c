"""The CLI's contract: --help everywhere, --json on stdout, one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

from qscope import SAE, SAEConfig


def qscope(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qscope", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def saved_sae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae") / "layer3"
    SAE.random(SAEConfig(d_model=16, d_sae=64, k=4, layer=3, model_name="tiny")).save(folder)
    return folder


def test_help_lists_commands_with_examples():
    out = qscope("--help")
    assert out.returncode == 0
    for command in ("encode", "models", "sae", "demo"):
        assert command in out.stdout
    assert "Example" in qscope("encode", "--help").stdout


def test_sae_info_json(saved_sae):
    out = qscope("sae", "info", str(saved_sae), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["d_model"], info["d_sae"], info["k"], info["layer"]) == (16, 64, 4, 3)
    assert info["tensors"]["W_enc"] == [16, 64]


def test_sae_list_json():
    rows = json.loads(qscope("sae", "list", "--json").stdout)
    assert len(rows) == 15 and rows[0]["repo"] == "default"


@pytest.mark.parametrize("args, message", [
    (["sae", "info", "/nonexistent/layer3.sae.pt"], "no such file"),
    (["sae", "info", "Qwen/SAE-Res-Qwen3-8B-Base-W64K-L0_50", "--layer", "99"], "out of range"),
])
def test_bad_input_is_one_line(args, message):
    out = qscope(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr


def test_pickle_refused_on_cli(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"x": Evil()}, tmp_path / "layer0.sae.pt")
    out = qscope("sae", "info", str(tmp_path / "layer0.sae.pt"))
    assert out.returncode == 2 and "refused to unpickle" in out.stderr and "ran code" not in out.stdout + out.stderr
