"""DDP on CPU (gloo, 2 processes): ranks read disjoint shards, end with identical weights,
the loss goes down, and a crashed DDP run resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qscope.train import TrainConfig, Trainer, write_cache


class _Crash(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        root_path = Path(root)
        cfg = TrainConfig(cache_dir=str(root_path / "cache"), out_dir=str(root_path / "ref"), batch_size=128,
                          total_tokens=128 * 40, expansion=4, k=4, log_every=5, ckpt_every=10, lr=5e-3,
                          buffer_tokens=512, device="cpu")
        trainer = Trainer(cfg)
        trainer.run()
        result = {"state": {layer: t.sae.state_dict() for layer, t in trainer.trainers.items()},
                  "shards": trainer.store.source.order(0)}

        def crash(t):
            if t.step == 23:
                raise _Crash

        try:
            Trainer(cfg.replace(out_dir=str(root_path / "resumed")), on_step=crash).run()
        except _Crash:
            pass
        resumed = Trainer(cfg.replace(out_dir=str(root_path / "resumed")))
        resumed.run()
        result["resumed"] = {layer: t.sae.state_dict() for layer, t in resumed.trainers.items()}
        torch.save(result, root_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_agree_and_learn(tmp_path):
    gen = torch.Generator().manual_seed(0)
    dic = torch.randn(24, 12, generator=gen)
    acts = (torch.rand(4096, 24, generator=gen) * (torch.rand(4096, 24, generator=gen) < 0.2)) @ dic
    write_cache(tmp_path / "cache", {4: acts}, shard_tokens=512)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in r0["state"][4].items():
        assert torch.equal(value, r1["state"][4][name]), name
        assert torch.equal(r0["resumed"][4][name], value), name  # resumed DDP run == uninterrupted one
    assert set(r0["shards"]).isdisjoint(r1["shards"]) and r0["shards"] and r1["shards"]
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert rows[-1]["layers"]["4"]["fvu"] < 0.6 * rows[0]["layers"]["4"]["fvu"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]
    assert (tmp_path / "ref" / "layer4" / "sae_weights.safetensors").is_file()
