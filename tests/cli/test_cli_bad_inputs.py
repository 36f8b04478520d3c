"""Bad input on every command group: exit code 2, one line on stderr naming the input, no traceback,
no file left behind. Runs the CLI in-process (`qscope.cli.run`) on a tiny model, so the table is fast.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from qscope import SAE, SAEConfig
from qscope.cli import run

# A device this machine lacks: CUDA on a CPU-only PyTorch, else a GPU index past the last one.
MISSING_GPU = "cuda:99" if torch.cuda.is_available() else "cuda"
WORDS = " ".join(["cat"] * 400)  # 800 tokens: past the tiny model's 512-token context


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny model, a tiny SAE (layer 1) and one file per kind of bad input."""
    import tiny

    root = tmp_path_factory.mktemp("bad-inputs")
    lm = tiny.tiny_lm("llama")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    sae = SAE.random(SAEConfig(d_model=32, d_sae=64, k=4, layer=1, model_name="tiny"))
    sae.save(root / "sae" / "layer1")
    (root / "good.txt").write_text("The cat sat on the mat.\n\nA dog ran in the park.\n")
    (root / "bad_utf8.jsonl").write_bytes(b'{"text": "caf\xe9 au lait"}\n')
    (root / "not_gzip.jsonl.gz").write_bytes(b'{"text": "plain, not gzip"}\n')
    (root / "bad.toml").write_text("layers = [1,\n")
    (root / "bad_k.json").write_text(json.dumps({"k": "many", "layers": [1]}))
    for name, change in {"d_in": {"d_in": "abc"}, "k": {"k": "many"}, "metadata": {"metadata": []},
                         "qscope": {"qscope": "x"}, "hook_layer": {"hook_layer": "abc", "qscope": {}}}.items():
        folder = root / f"cfg_{name}"
        shutil.copytree(root / "sae" / "layer1", folder)
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, **change}))
    raw = {"W_enc": sae.W_enc.T.contiguous(), "W_dec": sae.W_dec.T.contiguous(), "b_enc": sae.b_enc.data,
           "b_dec": sae.b_dec.data}
    (root / "qwen").mkdir()
    torch.save(raw, root / "qwen" / "layer1.sae.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"x": Evil()}, root / "evil.sae.pt")
    (root / "done_run").mkdir()  # an earlier run's output folder
    (root / "done_run" / "config.json").write_text("{}")
    (root / "done_run" / "metrics.jsonl").write_text("")
    (root / "no_ckpt").mkdir()  # a run killed before its first checkpoint
    (root / "no_ckpt" / "config.json").write_text(json.dumps({"layers": [1], "model": str(root / "model")}))
    return root


M = ["--model", "{model}"]
MS = ["--model", "{model}", "--sae", "{sae}", "--layer", "1"]

# (command line, a fragment the single stderr line must contain). {x} are paths inside `work`.
BAD = [
    # models
    (["models", "pull", "{work}/missing.gguf"], "missing.gguf"),
    (["models", "pull", "{work}/good.txt"], "good.txt"),
    # data
    (["data", "show", "{work}/bad_utf8.jsonl"], "not UTF-8"),
    (["data", "show", "{work}/not_gzip.jsonl.gz"], "not a gzip file"),
    (["data", "show", "{work}/missing.txt"], "no such file"),
    (["data", "show", "{work}/good.txt", "--limit", "0"], "--limit"),
    (["data", "pull", "nosuchcorpus"], "unknown corpus"),
    (["data", "export-mix", "{work}/mix.txt", "--chars", "10"], ".jsonl.gz"),
    (["data", "export-mix", "{work}/mix.jsonl.gz", "--chars", "0"], "--chars"),
    # train
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", *M, "--layers", "1", "--out", "{work}/done_run"], "--overwrite"),
    (["train", "--resume", "{work}/no_ckpt"], "no checkpoint"),
    (["train", "--resume", "{work}/missing_run"], "no run to resume"),
    (["train", "--resume", "{work}/done_run", "--overwrite"], "give one of them"),
    (["train", "--config", "{work}/bad.toml", "--out", "{work}/new_run"], "not valid TOML"),
    (["train", "--config", "{work}/bad_k.json", "--out", "{work}/new_run"], "'k'"),
    (["train", "--layers", "a,b", "--out", "{work}/new_run"], "comma-separated"),
    (["train", "--tokens", "2X", "--out", "{work}/new_run"], "not a count"),
    (["train", *M, "--layers", "1", "--out", "{work}/new_run", "--device", MISSING_GPU], "--device cuda"),
    (["train", *M, "--layers", "1", "--out", "{work}/new_run", "--lr", "-1"], "lr must be positive"),
    (["train", *M, "--layers", "1", "--out", "{work}/new_run", "--data", "{work}/bad_utf8.jsonl", "--batch-size", "64",
      "--tokens", "640", "--ctx-len", "16", "--device", "cpu", "--no-progress"], "not UTF-8"),
    (["train", "cache", *M, "--layers", "1", "--out", "{work}/cache", "--ctx-len", "0"], "--ctx-len"),
    # sae
    (["sae", "info", "{work}/cfg_d_in"], "'d_in' must be a whole number"),
    (["sae", "info", "{work}/cfg_k"], "'k' must be a whole number"),
    (["sae", "info", "{work}/cfg_metadata"], "'metadata' must be a JSON object"),
    (["sae", "info", "{work}/cfg_qscope"], "'qscope' must be a JSON object"),
    (["sae", "info", "{work}/cfg_hook_layer"], "'hook_layer' must be a whole number"),
    (["sae", "info", "{work}/qwen/layer1.sae.pt"], "does not record k"),
    (["sae", "info", "{work}/qwen/layer1.sae.pt:k=abc"], ":k=<k>"),
    (["sae", "info", "{work}/evil.sae.pt"], "refused to unpickle"),
    (["sae", "eval", "{sae}", *M, "--n-texts", "0"], "--n-texts"),
    # encode
    (["encode", *MS, "--top", "0", "hi"], "--top"),
    (["encode", *MS, "--top", "-3", "hi"], "--top"),
    (["encode", *MS, "--device", MISSING_GPU, "hi"], "--device cuda"),
    (["encode", *MS, "   "], "empty text"),
    (["encode", "--model", "{model}", "--sae", "{sae}", "--layer", "2", "hi"], "not layer 2"),
    # demo
    (["demo", "--top", "0"], "--top"),
    (["demo", "--layer", "5"], "no default SAE for layer 5"),
    # features
    (["features", "contrast", "--pos", "{work}/bad_utf8.jsonl", "--neg", "{work}/good.txt", *MS], "not UTF-8"),
    (["features", "build", *MS, "--corpus", "{work}/bad_utf8.jsonl", "--out", "{work}/store.sqlite"], "not UTF-8"),
    (["features", "build", *MS, "--n-texts", "0"], "--n-texts"),
    (["features", "show", "3", "--store", "{work}/missing.sqlite"], "no feature store"),
    (["features", "tokens", *MS, "--top", "0", " cat"], "--top"),
    # steer
    (["steer", "run", *MS, "-f", "5:nan", "hi"], "finite"),
    (["steer", "run", *MS, "-f", "5:1", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
    (["steer", "run", *MS, "-f", "5:1", "--max-new-tokens", "-5", "hi"], "--max-new-tokens"),
    (["steer", "run", *MS, "-f", "five", "hi"], "FEATURE:STRENGTH"),
    (["steer", "run", *MS, "-f", "500:1", "hi"], "feature 500 out of range"),
    (["steer", "run", *MS, "-f", "5:1", "--no-chat", WORDS], "context length"),
    (["steer", "eval", *MS, "-f", "5", "--strengths", "1,nan"], "finite"),
    # evals
    (["evals", "footprint", "--limit", "-1"], "--limit"),
    (["evals", "accuracy", "--batch-size", "0"], "--batch-size"),
    # classify
    (["classify", "discover", "--n-discovery", "0"], "--n-discovery"),
    # synth
    (["synth", "coverage", "--n-targets", "0"], "--n-targets"),
    # posttrain
    (["posttrain", "sasft", "--steps", "0"], "--steps"),
    (["posttrain", "grpo", "--group", "0"], "--group"),
    # uncertainty
    (["uncertainty", "report", "--folds", "0"], "--folds"),
    # compare
    (["compare", "{sae}", "{work}/missing_sae"], "no such file"),
    (["compare", "{sae}", "{sae}", "--n-texts", "0"], "--n-texts"),
    # serve
    (["plan", "-r", "nosuch/release"], "unknown SAE release"),
    (["plan", "--task", "capture"], "give --model or --release"),
    (["plan", "-r", "default", "--layers", "99"], "out of range"),
    (["serve", "--port", "99999"], "--port"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--layers", "6;15"], "comma-separated"),
    # the command line itself
    (["nosuchcommand"], "No such command"),
    (["encode", "--nosuchoption", "hi"], "No such option"),
]


def _tree(*roots: Path) -> set[str]:
    return {str(p) for root in roots if root.exists() for p in root.rglob("*")}


@pytest.fixture(autouse=True)
def _quiet_loading():
    """transformers' "Loading weights" bar is progress, not an error line; keep stderr to the error."""
    transformers.utils.logging.disable_progress_bar()
    yield
    transformers.utils.logging.enable_progress_bar()


@pytest.mark.parametrize("argv, fragment", BAD, ids=[" ".join(a[:3]) + f"-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_exits_2_with_one_line(work, argv, fragment, capsys, monkeypatch):
    monkeypatch.chdir(work)
    home = Path(os.environ["QSCOPE_HOME"])
    args = [a.format(work=work, model=work / "model", sae=work / "sae" / "layer1") for a in argv]
    before = _tree(work, home)
    code = run(args)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out.err
    assert len(lines) == 1, out.err
    assert fragment in lines[0] and "Traceback" not in out.err
    assert "weights_only" not in out.err  # never tell anyone to unpickle with code execution on
    assert _tree(work, home) == before, "the failed command left files behind"


def test_table_covers_every_command_group():
    from qscope.cli import COMMAND_MODULES

    groups = {argv[0] for argv, _ in BAD}
    names = {"sae_cmd": "sae", "sae_eval": "sae"}
    assert len(BAD) >= 40
    assert {names.get(m, m).replace("_", "-") for m in COMMAND_MODULES} <= groups


def test_internal_error_is_one_line_with_a_trace_file(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("qscope.sae.SAE.load", broken)
    assert run(["sae", "info", "default", "--layer", "6"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ZeroDivisionError: a bug" in err[0] and "Traceback" not in err[0]
    trace = Path(err[0].split("full traceback in ")[1].split(";")[0])
    assert "Traceback" in trace.read_text() and "broken" in trace.read_text()
    assert run(["--debug", "sae", "info", "default", "--layer", "6"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_json_output_has_no_bare_nan(capsys):
    from qscope.cli.common import emit_json

    emit_json({"x": float("nan"), "y": [1.0, float("inf")]})
    assert json.loads(capsys.readouterr().out) == {"x": None, "y": [1.0, None]}


def test_truncation_is_said_on_stderr(work, capsys):
    transformers.utils.logging.disable_progress_bar()
    code = run(["encode", "--model", str(work / "model"), "--sae", str(work / "sae" / "layer1"), "--layer", "1",
                "--json", " ".join(["cat sat"] * 300)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "cut to their first 512" in out.err
    assert json.loads(out.out)["tokens"]
