"""A kill at every point of the checkpoint swap, then `--resume`: the run continues from the last
complete checkpoint and ends exactly like an uninterrupted one; nothing of the swap is left behind.

The swap (qscope.io.atomic_dir) writes `.checkpoint.*.tmp/`, renames `checkpoint/` to
`.checkpoint.old/`, renames the temp folder to `checkpoint/`, then deletes `.checkpoint.old/`.
A kill is simulated in-process: at the chosen point an exception no handler catches is raised and
from then on nothing is deleted, so the files stay exactly as a SIGKILL would leave them
(tests/train/test_train_resume.py kills a real process with SIGKILL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qscope.io
from qscope.errors import QScopeError
from qscope.train import TrainConfig, Trainer, write_cache

CRASH_STEP = 20  # the second checkpoint (ckpt_every 10): there is an earlier one to fall back to


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` handler sees it."""



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / "cache"
    gen = torch.Generator().manual_seed(0)
    write_cache(folder, {7: torch.randn(3000, 12, generator=gen) + 0.3}, shard_tokens=400)
    return folder


def _cfg(cache: Path, out: Path) -> TrainConfig:
    return TrainConfig(cache_dir=str(cache), out_dir=str(out), batch_size=100, total_tokens=100 * 50, expansion=4, k=3,
                       ckpt_every=10, log_every=4, buffer_tokens=300, device="cpu")


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    Trainer(_cfg(cache, out), resume=False).run()
    return out


class Fault:
    """Kills the run at `point` of the checkpoint swap at CRASH_STEP; afterwards deletes nothing."""

    def __init__(self, point: str, monkeypatch):
        self.point, self.armed, self.dead, self.replaces = point, False, False, 0
        real_os, real_rmtree, real_save = qscope.io.os, qscope.io.shutil.rmtree, torch.save
        fault = self

        class FaultyOS:
            def __getattr__(self, name):
                return getattr(real_os, name)

            @staticmethod
            def replace(src, dst):
                if fault.armed and "checkpoint" in str(dst):
                    fault.replaces += 1
                    if (point, fault.replaces) in (("before-renames", 1), ("between-renames", 2)):
                        fault.kill()
                real_os.replace(src, dst)

        def rmtree(path, *args, **kwargs):
            if fault.dead:
                return  # a killed process cleans nothing up
            if fault.armed and point == "after-renames" and fault.replaces == 2 and str(path).endswith(".checkpoint.old"):
                fault.kill()
            real_rmtree(path, *args, **kwargs)

        def save(obj, path, *args, **kwargs):
            if fault.armed and point == "writing":
                Path(path).write_bytes(b"PK\x03\x04 half a zip")  # cut off mid-write
                fault.kill()
            real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(qscope.io, "os", FaultyOS())
        monkeypatch.setattr(qscope.io.shutil, "rmtree", rmtree)
        monkeypatch.setattr(torch, "save", save)

    def kill(self):
        self.dead = True
        raise Killed

    def on_step(self, trainer):
        self.armed = trainer.step == CRASH_STEP - 1  # the next step writes the checkpoint


def _weights(out: Path) -> dict:
    return load_file(str(out / "layer7" / "sae_weights.safetensors"))


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# point -> (what the kill leaves, the step the resumed run continues from)
POINTS = {
    "writing": ({"checkpoint", ".checkpoint.*.tmp"}, 10),
    "before-renames": ({"checkpoint", ".checkpoint.*.tmp"}, 10),
    "between-renames": ({".checkpoint.old", ".checkpoint.*.tmp"}, 10),
    "after-renames": ({"checkpoint", ".checkpoint.old"}, 20),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_during_checkpoint_swap_then_resume(point, cache, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = _cfg(cache, out)
    with monkeypatch.context() as patch:
        fault = Fault(point, patch)
        with pytest.raises(Killed):
            Trainer(cfg, resume=False, on_step=fault.on_step).run()
    left, resume_from = POINTS[point]
    names = {p.name for p in out.iterdir() if "checkpoint" in p.name}
    assert {n if not n.endswith(".tmp") else ".checkpoint.*.tmp" for n in names} == left
    assert max(_steps(out)) >= CRASH_STEP  # metrics rows past the checkpoint the resume will use

    with pytest.raises(QScopeError, match="--overwrite"):  # a plain fresh start must not clobber it
        Trainer(cfg, resume=False).run()
    first = []
    summary = Trainer(cfg, resume=True, on_step=lambda t: first.append(t.step)).run()
    assert first[0] == resume_from + 1
    assert summary["steps"] == 50
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint"]
    assert _steps(out) == _steps(reference)  # no step lost, none twice
    got, want = _weights(out), _weights(reference)
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_overwrite_replaces_an_earlier_run(cache, reference, tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(cache, out).replace(total_tokens=100 * 10), resume=False).run()
    (out / "layer3").mkdir()  # an SAE folder of an earlier run with other layers
    (out / "layer3" / "cfg.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    Trainer(_cfg(cache, out), resume=False, overwrite=True).run()
    assert _steps(out) == _steps(reference)
    assert not (out / "layer3").exists() and (out / "notes.txt").read_text() == "mine"


def test_resume_without_checkpoint_is_an_error(cache, tmp_path):
    with pytest.raises(QScopeError, match="no checkpoint to resume from"):
        Trainer(_cfg(cache, tmp_path / "nothing"), resume=True).run()
    assert not (tmp_path / "nothing").exists()


def test_failed_fresh_run_leaves_nothing(cache, tmp_path):
    out = tmp_path / "run"

    def fail(trainer):
        if trainer.step == 5:
            raise RuntimeError("data went away")

    with pytest.raises(RuntimeError):
        Trainer(_cfg(cache, out), resume=False, on_step=fail).run()
    assert not out.exists()
    os.makedirs(out)
    with pytest.raises(RuntimeError):
        Trainer(_cfg(cache, out), resume=False, on_step=fail).run()
    assert out.is_dir() and not any(out.iterdir())  # a folder the user made stays, empty
