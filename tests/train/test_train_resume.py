"""Checkpoint/resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one.

Exact equality holds because the checkpoint carries everything the next step reads: SAE and
Adam states, the shuffle buffer's rows and generator, the text position and unpacked tokens,
the running norm medians and the metric accumulators; and the LM forward of a given batch is
deterministic on one machine with a fixed thread count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file

from qscope.train import TrainConfig, Trainer, write_cache

TEXTS = [s + " " + t for s in tiny.SENTENCES for t in tiny.SENTENCES]

SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from qscope.train import TrainConfig, Trainer
cfg = TrainConfig.from_file(sys.argv[1])
texts = json.loads(open(sys.argv[2]).read())
delay = float(sys.argv[3])
Trainer(cfg, texts=texts, on_step=lambda t: time.sleep(delay)).run()
"""



def _weights(out: Path, layers) -> dict:
    return {layer: load_file(str(out / f"layer{layer}" / "sae_weights.safetensors")) for layer in layers}


def _steps(out: Path) -> list[int]:
    from qscope.train import MetricsLog

    return [row["step"] for row in MetricsLog(out / "metrics.jsonl").rows()]  # skips a line torn mid-write


def _fvus(out: Path) -> list[float]:
    return [json.loads(line)["layers"]["1"]["fvu"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    model_dir = tmp_path / "model"
    lm = tiny.tiny_lm("llama")
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    cfg = TrainConfig(model=str(model_dir), layers=[1, 3], out_dir=str(tmp_path / "killed"), batch_size=64,
                      total_tokens=64 * 40, ctx_len=16, lm_batch=4, buffer_tokens=256, expansion=4, k=4,
                      ckpt_every=8, log_every=3, device="cpu", dead_after_tokens=640)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "cfg.json"),
                             str(tmp_path / "texts.json"), "0.1"], env=env, stderr=subprocess.PIPE)
    out = tmp_path / "killed"
    deadline = time.time() + 600  # generous: a busy CI machine can be very slow to start Python
    try:
        # Kill once the first checkpoint (step 8) exists and a metrics row past it (step 9) was
        # written, so the resume must also drop rows of steps it will redo.
        while not ((out / "checkpoint" / "state.pt").is_file() and max(_steps(out), default=0) > 8):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 600 s"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "layer1").exists()

    resumed = Trainer(cfg, texts=TEXTS).run()
    reference = Trainer(cfg.replace(out_dir=str(tmp_path / "ref")), texts=TEXTS).run()
    assert resumed["steps"] == reference["steps"] == 40
    assert _steps(out) == _steps(tmp_path / "ref") == list(range(3, 40, 3)) + [40]
    assert _fvus(out) == _fvus(tmp_path / "ref")
    got, want = _weights(out, [1, 3]), _weights(tmp_path / "ref", [1, 3])
    for layer in (1, 3):
        for name in want[layer]:
            assert torch.equal(got[layer][name], want[layer][name]), (layer, name)


class _Crash(Exception):
    pass


def test_crash_resume_from_cache_equals_uninterrupted(tmp_path):
    gen = torch.Generator().manual_seed(0)
    write_cache(tmp_path / "cache", {7: torch.randn(3000, 12, generator=gen) + 0.3}, shard_tokens=400)
    cfg = TrainConfig(cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "a"), batch_size=100,
                      total_tokens=100 * 50, expansion=4, k=3, ckpt_every=10, log_every=4, buffer_tokens=300,
                      device="cpu")

    def crash(trainer):
        if trainer.step == 27:
            raise _Crash

    with pytest.raises(_Crash):
        Trainer(cfg, on_step=crash).run()
    assert max(_steps(tmp_path / "a")) == 24
    Trainer(cfg).run()
    Trainer(cfg.replace(out_dir=str(tmp_path / "b"))).run()
    assert _steps(tmp_path / "a") == _steps(tmp_path / "b") == list(range(4, 50, 4)) + [50]
    got, want = _weights(tmp_path / "a", [7]), _weights(tmp_path / "b", [7])
    assert all(torch.equal(got[7][name], want[7][name]) for name in want[7])
    # A finished run asked again does no more steps; asked for more tokens, it extends.
    assert Trainer(cfg).run()["steps"] == 50
    assert Trainer(cfg.replace(total_tokens=100 * 60)).run()["steps"] == 60
