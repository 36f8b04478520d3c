"""Training math, activation store, cache, trainer loop and the `qscope train` CLI (tiny, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
import typer
from typer.testing import CliRunner

from qscope.errors import QScopeError
from qscope.sae import SAE, SAEConfig
from qscope.train import (
    ActivationStore,
    CacheSource,
    LMSource,
    TopKTrainer,
    TrainConfig,
    Trainer,
    TrainProgress,
    build_cache,
    evaluate_saes,
    lr_at,
    parse_count,
    parse_layers,
    read_cache_meta,
    sparse_decode,
    sparse_encode,
    write_cache,
)
from qscope.train.topk import auxk_loss, fvu, group_by_latent, sampled_dots, scatter_rows
from qscope.train.trainer import merge_for_resume

TEXTS = [s + " " + t for s in tiny.SENTENCES for t in tiny.SENTENCES]



# --------------------------------------------------------------------------- sparse math


def _dense_reference(x, W_enc, b_enc, W_dec, k, dead, k_aux):
    """The same loss with plain autograd through dense (N, d_sae) codes."""
    pre = x @ W_enc + b_enc
    vals, idx = pre.topk(k, sorted=False)
    x_hat = torch.zeros_like(pre).scatter(1, idx, vals.relu()) @ W_dec
    masked = torch.full_like(pre, -float("inf"))
    masked[:, dead] = pre[:, dead]
    aux_vals, aux_idx = masked.topk(k_aux, sorted=False)
    e_hat = torch.zeros_like(pre).scatter(1, aux_idx, aux_vals.relu()) @ W_dec
    return fvu(x, x_hat) + 0.5 * auxk_loss(x - x_hat, e_hat)


def test_sparse_backward_equals_dense_reference_float64():
    gen = torch.Generator().manual_seed(0)
    n, d, s, k, k_aux = 48, 12, 96, 6, 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    W_enc = torch.randn(d, s, generator=gen, dtype=torch.float64).requires_grad_()
    b_enc = (0.1 * torch.randn(s, generator=gen, dtype=torch.float64)).requires_grad_()
    W_dec = torch.randn(s, d, generator=gen, dtype=torch.float64).requires_grad_()
    dead = torch.arange(1, s, 4)

    vals, idx, aux_vals, aux_idx = sparse_encode(x, W_enc, b_enc, k, dead, k_aux)
    x_hat = sparse_decode(vals, idx, W_dec)
    ours = fvu(x, x_hat) + 0.5 * auxk_loss(x - x_hat, sparse_decode(aux_vals, aux_idx, W_dec))
    grads = torch.autograd.grad(ours, [W_enc, b_enc, W_dec])
    ref = _dense_reference(x, W_enc, b_enc, W_dec, k, dead, k_aux)
    ref_grads = torch.autograd.grad(ref, [W_enc, b_enc, W_dec])
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    assert set(aux_idx.unique().tolist()) <= set(dead.tolist())


def test_gpu_style_backward_equals_dense_reference_on_cpu(monkeypatch):
    """The CUDA code path (dense scattered encoder gradient, embedding_bag decoder backward),
    forced on CPU tensors, against the same float64 reference."""
    from qscope.train import topk

    monkeypatch.setattr(topk, "dense_backward", lambda t: True)
    test_sparse_backward_equals_dense_reference_float64()


def _float32_problem(n=600, d=16, s=512, seed=3):
    """Wide enough (s = 512, k = 4) for the staged top-k, and n > ENCODE_CHUNK rows (two chunks)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) + 0.5
    W_enc = (torch.randn(d, s, generator=gen) / 4).requires_grad_()
    b_enc = (0.1 * torch.randn(s, generator=gen)).requires_grad_()
    W_dec = (torch.randn(s, d, generator=gen) / 4).requires_grad_()
    return x, W_enc, b_enc, W_dec


def _sparse_loss_grads(x, W_enc, b_enc, W_dec, dead, matmul="fp32"):
    vals, idx, aux_vals, aux_idx = sparse_encode(x, W_enc, b_enc, 4, dead, 6, matmul)
    x_hat = sparse_decode(vals, idx, W_dec)
    loss = fvu(x, x_hat) + 0.5 * auxk_loss(x - x_hat, sparse_decode(aux_vals, aux_idx, W_dec))
    return torch.autograd.grad(loss, [W_enc, b_enc, W_dec]), idx


def test_sparse_gradient_path_equals_dense_paths_float32(monkeypatch):
    """The CPU path (staged top-k, latent-grouped weight gradients, sampled dot products) gives
    the gradients of plain autograd through dense codes, and of the dense CUDA-style path,
    within 1e-5 in float32."""
    from qscope.train import topk

    x, W_enc, b_enc, W_dec = _float32_problem()
    dead = torch.arange(0, 512, 3)
    ours, idx = _sparse_loss_grads(x, W_enc, b_enc, W_dec, dead)
    ref = torch.autograd.grad(_dense_reference(x, W_enc, b_enc, W_dec, 4, dead, 6), [W_enc, b_enc, W_dec])
    monkeypatch.setattr(topk, "dense_backward", lambda t: True)
    dense, _ = _sparse_loss_grads(x, W_enc, b_enc, W_dec, dead)
    assert idx.shape == (600, 4)
    for g, r, d in zip(ours, ref, dense):
        assert g.abs().max() > 1e-4  # not vacuous
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5)
        assert torch.allclose(g, d, rtol=1e-4, atol=1e-5)


def test_latent_grouped_products_match_direct_sums():
    gen = torch.Generator().manual_seed(4)
    idx = torch.rand(20, 40, generator=gen).topk(6, dim=1).indices  # distinct latents per token
    rows, table = torch.randn(20, 5, generator=gen), torch.randn(40, 5, generator=gen)
    groups = group_by_latent(idx, 40)
    assert torch.allclose(sampled_dots(groups, table, rows), (table[idx] * rows[:, None, :]).sum(-1), atol=1e-5)
    assert torch.equal(groups.starts[1:] - groups.starts[:-1], torch.bincount(idx.reshape(-1), minlength=40))


def test_bf16_matmul_picks_latents_and_keeps_exact_values():
    """matmul="bf16": the kept latents' values are the fp32 pre-activations (ReLU'd), the
    gradients flow in fp32, and most latents agree with the fp32 choice."""
    x, W_enc, b_enc, W_dec = _float32_problem()
    vals, idx, _, _ = sparse_encode(x, W_enc, b_enc, 4, matmul="bf16")
    exact = (x @ W_enc + b_enc).gather(1, idx).relu()
    assert vals.dtype == torch.float32 and torch.allclose(vals, exact, atol=1e-5)
    _, idx32, _, _ = sparse_encode(x, W_enc, b_enc, 4)
    same = (idx.sort(1).values == idx32.sort(1).values).all(1).float().mean()
    assert same > 0.8
    grads, _ = _sparse_loss_grads(x, W_enc, b_enc, W_dec, torch.arange(0, 512, 3), "bf16")
    assert all(g.dtype == torch.float32 and g.abs().max() > 0 for g in grads)


def test_sparse_functions_pass_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(6, 20, generator=gen, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(20, generator=gen, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(20, 6, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, W_enc, b_enc, W_dec):
        vals, idx, _, _ = sparse_encode(x, W_enc, b_enc, 4)
        return sparse_decode(vals, idx, W_dec)

    assert torch.autograd.gradcheck(f, (x, W_enc, b_enc, W_dec))


def test_scatter_rows_matches_index_add():
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 30, (16, 5), generator=gen)
    coeff, rows = torch.randn(16, 5, generator=gen), torch.randn(16, 7, generator=gen)
    ref = torch.zeros(30, 7).index_add_(0, idx.reshape(-1), (coeff[..., None] * rows[:, None, :]).reshape(-1, 7))
    assert torch.allclose(scatter_rows(group_by_latent(idx, 30), coeff, rows), ref, atol=1e-5)


# --------------------------------------------------------------------------- trainer step


def _dictionary_data(d=16, m=32, seed=1):
    dic = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    dic /= dic.norm(dim=1, keepdim=True)

    def sample(n, gen):
        return (torch.rand(n, m, generator=gen) * 5 * (torch.rand(n, m, generator=gen) < 0.15)) @ dic

    return sample


def test_step_reduces_loss_keeps_l0_k_and_unit_decoder_rows():
    data = _dictionary_data()
    sae = SAE.random(SAEConfig(d_model=16, d_sae=64, k=4), seed=0)
    trainer = TopKTrainer(sae, k=4, lr=1e-2, dead_after_tokens=10**9)
    gen = torch.Generator().manual_seed(0)
    trainer.init_from_batch(data(128, gen))
    first = [float(trainer.step(data(128, gen))["fvu"]) for _ in range(5)]
    for _ in range(150):
        stats = trainer.step(data(128, gen))
    assert float(stats["fvu"]) < 0.5 * sum(first) / 5
    assert float(stats["l0"]) == pytest.approx(4.0, abs=0.05)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    _, idx = sae.encode_topk(data(8, gen))
    assert idx.shape == (8, 4)


def _fvu_after_training(matmul: str, steps: int = 150) -> float:
    data = _dictionary_data(d=32, m=256)
    sae = SAE.random(SAEConfig(d_model=32, d_sae=512, k=8), seed=0)
    trainer = TopKTrainer(sae, k=8, lr=5e-3, dead_after_tokens=2048, matmul=matmul)
    gen = torch.Generator().manual_seed(0)
    trainer.init_from_batch(data(256, gen))
    for _ in range(steps):
        trainer.step(data(256, gen))
    held = data(2048, torch.Generator().manual_seed(99))
    with torch.no_grad():
        return float(fvu(held, sae.decode_sparse(*sae.encode_topk(held))))


def test_bf16_matmul_trains_to_the_fp32_fvu():
    fp32, bf16 = _fvu_after_training("fp32"), _fvu_after_training("bf16")
    start = _fvu_after_training("fp32", steps=0)
    assert fp32 < 0.6 * start  # it trained
    assert abs(bf16 - fp32) < 0.005


def _auxk_case(alpha: float) -> tuple[float, float]:
    """4 latents hold the top-k through a large bias; the other 60 have small positive
    pre-activations and never fire, so they die. Only AuxK gives them a gradient."""
    data = _dictionary_data()
    sae = SAE.random(SAEConfig(d_model=16, d_sae=64, k=4), seed=0)
    trainer = TopKTrainer(sae, k=4, lr=1e-2, auxk_alpha=alpha, dead_after_tokens=256)
    gen = torch.Generator().manual_seed(0)
    trainer.init_from_batch(data(128, gen))
    with torch.no_grad():
        sae.W_enc[:, :4] = 0
        sae.b_enc[:4] = 3.0
        sae.W_enc[:, 4:] *= 0.05
        sae.b_enc[4:] = 0.3
    for _ in range(200):
        stats = trainer.step(data(128, gen))
    return trainer.dead_fraction(), float(stats["fvu"])


def test_auxk_revives_dead_latents():
    dead_aux, fvu_aux = _auxk_case(1 / 32)
    dead_plain, fvu_plain = _auxk_case(0.0)
    assert dead_plain > 0.7
    assert dead_aux < dead_plain - 0.2
    assert fvu_aux < fvu_plain


def test_aux_gradient_reaches_only_dead_latents():
    sae = SAE.random(SAEConfig(d_model=8, d_sae=32, k=2), seed=0)
    trainer = TopKTrainer(sae, k=2, lr=1e-3, auxk_alpha=1.0, k_aux=4, dead_after_tokens=1)
    dead = torch.arange(16, 32)
    trainer.since_fired[dead] = 10  # latents 16.. count as dead
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) + 1.0
    vals, idx, aux_vals, aux_idx = sparse_encode(x, sae.W_enc, sae.b_enc, 2, trainer.dead_latents(), 4)
    x_hat = sparse_decode(vals, idx, sae.W_dec).detach() + sae.b_dec
    aux = auxk_loss(x - x_hat, sparse_decode(aux_vals, aux_idx, sae.W_dec))
    (g_enc, g_dec) = torch.autograd.grad(aux, [sae.W_enc, sae.W_dec])
    assert g_dec[:16].abs().sum() == 0 and g_enc[:, :16].abs().sum() == 0
    assert g_dec[16:].abs().sum() > 0


def test_lr_schedule_warmup_and_decay():
    assert lr_at(0, 1.0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(50, 1.0, 100, 10, decay_frac=0.2) == 1.0
    assert lr_at(90, 1.0, 100, 10, decay_frac=0.2) == pytest.approx(0.5)
    assert lr_at(99, 1.0, 100, 10, decay_frac=0.2) == pytest.approx(0.05)


# --------------------------------------------------------------------------- store


class _StubLM:
    """An LM whose layer-n residual encodes (position, token id); token 7 is an 'attention sink'."""

    SINK = 7

    def __init__(self):
        self.tokenizer = tiny.tokenizer()
        self.name, self.d_model, self.device = "stub", 4, torch.device("cpu")
        self.calls: list[torch.Tensor] = []

    def check_layers(self, layers):
        return [int(x) for x in layers]

    def run_to_layers(self, ids, mask, layers):
        self.calls.append(ids.clone())
        b, t = ids.shape
        pos = torch.arange(t).expand(b, t).float() / t
        sink = (ids == self.SINK).float()
        acts = torch.stack([pos, sink, torch.ones(b, t), torch.full((b, t), 2.0)], dim=-1)
        acts[ids == self.SINK] *= 1000.0
        acts[:, 0] *= 500.0
        return {layer: acts * (layer + 1) for layer in layers}


def test_store_packs_with_eos_and_drops_position0_and_huge_norms():
    lm = _StubLM()
    texts = ["The cat sat on the mat.", "A dog ran in the park."] * 20
    source = LMSource(lm, [0, 2], texts, ctx_len=8, lm_batch=4, norm_mult=10.0, dtype="float32")
    chunk = source.next_chunk()
    ids = lm.calls[0]
    assert ids.shape == (4, 8)
    eos = lm.tokenizer.eos_token_id
    stream = [i for t in texts[:6] for i in lm.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]]
    assert ids.reshape(-1).tolist() == stream[:32]
    rest = ids[:, 1:]
    n_sink = int((rest == _StubLM.SINK).sum())
    assert source.stats["dropped_first"] == 4
    assert source.stats["dropped_norm"] == n_sink
    for layer in (0, 2):
        rows = chunk[layer]
        assert rows.shape == (4 * 7 - n_sink, 4)
        assert (rows[:, 0] > 0).all()  # no position-0 row
        assert (rows[:, 1] == 0).all()  # no sink token
        assert rows.norm(dim=1).max() < 10 * (layer + 1)


def test_store_yields_float32_batches_and_state_roundtrip():
    lm = tiny.tiny_lm("llama")
    store = ActivationStore.from_lm(lm, [1, 3], TEXTS, batch_size=32, ctx_len=16, lm_batch=4, buffer_tokens=128,
                                    seed=3)
    for _ in range(5):
        batch = next(store)
    assert set(batch) == {1, 3} and batch[1].dtype == torch.float32 and batch[1].shape == (32, 32)
    state = store.state_dict()
    expected = [next(store) for _ in range(6)]
    again = ActivationStore.from_lm(lm, [1, 3], TEXTS, batch_size=32, ctx_len=16, lm_batch=4, buffer_tokens=128,
                                    seed=99)
    again.load_state_dict(state)
    for want in expected:
        got = next(again)
        assert all(torch.equal(got[layer], want[layer]) for layer in (1, 3))
    assert store.stats["dropped_first"] > 0


def test_cache_build_resume_and_read(tmp_path):
    lm = tiny.tiny_lm("llama")
    folder = tmp_path / "cache"
    meta = build_cache(lm, [1, 2], TEXTS, folder, total_tokens=300, ctx_len=16, lm_batch=4, shard_tokens=100)
    assert meta["complete"] and meta["tokens"] == 300 and len(meta["shards"]) == 3
    # Extending the request continues from the recorded source position.
    more = build_cache(lm, [1, 2], TEXTS, folder, total_tokens=500, ctx_len=16, lm_batch=4, shard_tokens=100)
    assert more["tokens"] == 500 and [s["file"] for s in more["shards"]][:3] == [s["file"] for s in meta["shards"]]
    with pytest.raises(QScopeError, match="other settings"):
        build_cache(lm, [1, 2], TEXTS, folder, total_tokens=600, ctx_len=32, lm_batch=4)
    # The same tokens, live vs cached (fp16 both ways).
    live = LMSource(lm, [1, 2], TEXTS, ctx_len=16, lm_batch=4)
    first = live.next_chunk()
    from safetensors.torch import load_file

    shard0 = load_file(str(folder / more["shards"][0]["file"]))
    assert torch.equal(shard0["layer1"][:50], first[1][:50])
    source = CacheSource(folder, [2], seed=0, epochs=2)
    chunks = []
    while (c := source.next_chunk()) is not None:
        chunks.append(c[2])
    assert sum(c.shape[0] for c in chunks) == 1000 and chunks[0].dtype == torch.float16
    assert source.order(0) != source.order(1) or len(source.shards) < 3


# --------------------------------------------------------------------------- trainer


def _random_cache(folder: Path, n=4096, d=16, layers=(5,), shard_tokens=512, seed=0) -> Path:
    data = _dictionary_data(d=d)
    gen = torch.Generator().manual_seed(seed)
    write_cache(folder, {layer: data(n, gen) for layer in layers}, shard_tokens=shard_tokens, model="synthetic")
    return folder


class _Recorder(TrainProgress):
    """Every progress call of a run, in order."""

    def __init__(self):
        self.calls = []

    def start(self, total_steps, done_steps):
        self.calls.append(("start", total_steps, done_steps))

    def logged(self, row):
        self.calls.append(("logged", row))

    def advance(self, step):
        self.calls.append(("advance", step))

    def close(self):
        self.calls.append(("close",))


def test_trainer_on_tiny_lm_saves_loadable_saes(tmp_path):
    lm = tiny.tiny_lm("llama")
    cfg = TrainConfig(model="tiny", layers=[1, 3], out_dir=str(tmp_path / "run"), batch_size=64,
                      total_tokens=64 * 30, ctx_len=16, lm_batch=4, buffer_tokens=256, expansion=4, k=4,
                      ckpt_every=10, log_every=5, save_dtype="float16")
    progress = _Recorder()
    summary = Trainer(cfg, lm=lm, texts=TEXTS, progress=progress).run()
    assert summary["steps"] == 30 and summary["tokens"] == 64 * 30
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    # the display saw the run as it went: every step, each metrics row as written, then the end
    assert progress.calls[0] == ("start", 30, 0) and progress.calls[-1] == ("close",)
    assert [c[1] for c in progress.calls if c[0] == "advance"] == list(range(1, 31))
    logged = [c[1] for c in progress.calls if c[0] == "logged"]
    assert [(r["step"], r["layers"]) for r in logged] == [(r["step"], r["layers"]) for r in rows]
    assert rows[-1]["layers"]["1"]["fvu"] < rows[0]["layers"]["1"]["fvu"]
    sae = SAE.load(tmp_path / "run" / "layer3")
    assert sae.cfg.d_sae == 128 and sae.cfg.k == 4 and sae.cfg.layer == 3 and sae.cfg.model_name == "tiny-llama"
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "run" / "layer3" / "sae_weights.safetensors"))["W_dec"].dtype == torch.float16
    meta = sae.cfg.metadata
    assert meta["tokens"] == 64 * 30 and meta["steps"] == 30 and meta["seed"] == 0 and "final_fvu" in meta
    assert (tmp_path / "run" / "final.json").is_file()


def test_trainer_from_cache_with_holdout(tmp_path):
    cache = _random_cache(tmp_path / "cache", layers=(5, 6))
    cfg = TrainConfig(cache_dir=str(cache), out_dir=str(tmp_path / "run"), batch_size=128, total_tokens=128 * 80,
                      expansion=4, k=4, holdout_shards=2, log_every=20, ckpt_every=40, lr=5e-3)
    summary = Trainer(cfg).run()
    assert set(summary["layers"]) == {"5", "6"} and summary["heldout"]["5"]["tokens"] == 1024
    assert summary["heldout"]["5"]["fvu"] < 0.6
    saes = {5: SAE.load(tmp_path / "run" / "layer5")}
    held = [s["file"] for s in read_cache_meta(cache)["shards"][-2:]]
    again = evaluate_saes(saes, CacheSource(cache, [5], shards=held, epochs=1))
    assert again["5"]["fvu"] == pytest.approx(summary["heldout"]["5"]["fvu"], abs=1e-5)


def test_config_parsing_files_and_resume_rules(tmp_path):
    assert parse_count("2M") == 2_000_000 and parse_count("200k") == 200_000 and parse_count("1.5B") == 1_500_000_000
    assert parse_layers("3, 15,24") == [3, 15, 24]
    with pytest.raises(QScopeError):
        parse_count("lots")
    (tmp_path / "c.toml").write_text('layers = [3, 15]\ntotal_tokens = "4M"\nk = 32\nout_dir = "x"\n')
    cfg = TrainConfig.from_file(tmp_path / "c.toml")
    assert cfg.layers == [3, 15] and cfg.total_tokens == 4_000_000 and cfg.k == 32
    (tmp_path / "c.json").write_text('{"layers": "1,2", "bogus": 1}')
    with pytest.raises(QScopeError, match="bogus"):
        TrainConfig.from_file(tmp_path / "c.json")
    saved = cfg.resolve(d_model=64).to_dict()
    assert saved["d_sae"] == 1024 and saved["k_aux"] == 32
    assert merge_for_resume(saved, cfg.replace(total_tokens=8_000_000)).total_tokens == 8_000_000
    with pytest.raises(QScopeError, match="k=32"):
        merge_for_resume(saved, cfg.replace(k=16))


# --------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    from qscope.cli import train as train_cli

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    train_cli.register(app)
    return app


def test_cli_train_from_cache_json_and_resume(tmp_path):
    cache = _random_cache(tmp_path / "cache")
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--cache", str(cache), "--out", str(out), "--tokens", "4k", "--batch-size", "128",
            "--expansion", "2", "--k", "4", "--log-every", "8", "--no-progress", "--json"]
    res = runner.invoke(_app(), args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["steps"] == 31 and summary["layers"]["5"]["l0"] <= 4
    # Extend the finished run by resuming it with more tokens, under the live view (stderr).
    res = runner.invoke(_app(), ["train", "--resume", str(out), "--tokens", "6k", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["steps"] == 46
    assert "46/46" in res.stderr and "tok/s" in res.stderr
    res = runner.invoke(_app(), ["train", "--resume", str(out), "--k", "8", "--no-progress"])
    assert isinstance(res.exception, QScopeError)
    help_text = runner.invoke(_app(), ["train", "--help"]).output
    assert "--layers 3,15,24" in help_text and "train cache" in help_text


def test_cli_train_cache_builds_from_saved_tiny_model(tmp_path):
    model_dir = tmp_path / "tiny-model"
    lm = tiny.tiny_lm("llama")
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(TEXTS))
    from qscope import data

    if not hasattr(data, "iter_texts"):
        pytest.skip("qscope.data.iter_texts not available yet")
    res = CliRunner().invoke(_app(), ["train", "cache", "--model", str(model_dir), "--layers", "0,2", "--tokens",
                                      "200", "--out", str(tmp_path / "cache"), "--data", str(corpus), "--ctx-len", "16", "--lm-batch", "4",
                                      "--shard-tokens", "100", "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout[res.stdout.index("{"):])
    assert meta["tokens"] == 200 and meta["layers"] == [0, 2] and len(meta["shards"]) == 2


# --------------------------------------------------------------------------- CUDA (run where a GPU exists)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_sparse_backward_equals_dense_reference():
    gen = torch.Generator().manual_seed(0)
    n, d, s, k, k_aux = 256, 32, 512, 8, 16
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).cuda()
    W_enc = torch.randn(d, s, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    b_enc = (0.1 * torch.randn(s, generator=gen, dtype=torch.float64)).cuda().requires_grad_()
    W_dec = torch.randn(s, d, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    dead = torch.arange(1, s, 3, device="cuda")
    vals, idx, aux_vals, aux_idx = sparse_encode(x, W_enc, b_enc, k, dead, k_aux)
    x_hat = sparse_decode(vals, idx, W_dec)
    ours = fvu(x, x_hat) + 0.5 * auxk_loss(x - x_hat, sparse_decode(aux_vals, aux_idx, W_dec))
    grads = torch.autograd.grad(ours, [W_enc, b_enc, W_dec])
    ref_grads = torch.autograd.grad(_dense_reference(x, W_enc, b_enc, W_dec, k, dead, k_aux), [W_enc, b_enc, W_dec])
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-11)


@cuda
def test_cuda_trainer_tiny_lm_and_resume(tmp_path):
    lm = tiny.tiny_lm("llama")
    lm.model.to("cuda")
    cfg = TrainConfig(model="tiny", layers=[1, 3], out_dir=str(tmp_path / "a"), batch_size=256, total_tokens=256 * 40,
                      ctx_len=32, lm_batch=8, buffer_tokens=1024, expansion=8, k=8, ckpt_every=10, log_every=5,
                      device="cuda")

    def crash(trainer):
        if trainer.step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, lm=lm, texts=TEXTS, on_step=crash).run()
    summary = Trainer(cfg, lm=lm, texts=TEXTS).run()
    reference = Trainer(cfg.replace(out_dir=str(tmp_path / "b")), lm=lm, texts=TEXTS).run()
    assert summary["steps"] == reference["steps"] == 40
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 45, 5))
    assert rows[-1]["layers"]["1"]["fvu"] < rows[0]["layers"]["1"]["fvu"]
    a, b = SAE.load(tmp_path / "a" / "layer1"), SAE.load(tmp_path / "b" / "layer1")
    # CUDA atomics (index_add_, sparse products) may reorder float sums: close, maybe not bit-equal.
    assert torch.allclose(a.W_dec, b.W_dec, atol=1e-4)
