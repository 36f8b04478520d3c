"""SAE quality metrics on a tiny random llama with an offline word-level tokenizer (no downloads)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qscope.errors import QScopeError
from qscope.metrics import _density_summary, _Moments, _norm_keep, evaluate_sae, text_perplexity
from qscope.model.lm import LM
from qscope.sae import SAE, SAEConfig

WORDS = ("the a cat dog sat on mat ran fast slow big small red blue green tree house river sun moon "
         "and but then is was it they we you i he she of to in at by with from up down").split()
TEXTS = [
    "the cat sat on the mat and the dog ran fast",
    "a big red house by the river",
    "she was in the house then they ran up the tree",
    "the sun and the moon",
    "we sat by the green river and it was slow",
    "i ran down to the blue tree with a small dog",
    "he is big",
    "you and i sat at the house of the sun",
    "they ran",
]
D_MODEL = 16


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def _tiny_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=D_MODEL, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    tokenizer = _tokenizer()
    return LM(_tiny_model(len(tokenizer)), tokenizer, name="tiny-llama")


def _sae(activation="relu", d_sae=2 * D_MODEL, k=None, layer=1) -> SAE:
    return SAE(SAEConfig(d_model=D_MODEL, d_sae=d_sae, activation=activation, k=k, layer=layer, model_name="tiny"))


def perfect_sae(layer=1) -> SAE:
    """ReLU on +/- pairs: f = [relu(x), relu(-x)], x_hat = relu(x) - relu(-x) = x exactly."""
    sae = _sae(layer=layer)
    eye = torch.eye(D_MODEL)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def _expected_counted(lm, texts):
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in texts]
    return sum(n - 1 for n in lengths), sum(lengths)


def test_perfect_sae(tiny):
    seen = []
    res = evaluate_sae(tiny, perfect_sae(), TEXTS, batch_size=4, progress=lambda done, total: seen.append((done, total)))
    batches = -(-res.n_texts // 4)
    assert seen == [(done, batches) for done in range(batches + 1)]
    assert res.fvu == pytest.approx(0.0, abs=1e-6)
    assert res.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert res.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert res.kl == pytest.approx(0.0, abs=1e-6)
    assert res.ce_sae == pytest.approx(res.ce_clean, abs=1e-5)
    assert res.ce_zero > res.ce_clean  # zero-ablating a residual hurts the model
    assert res.cosine == pytest.approx(1.0, abs=1e-5)
    # position 0 and padding are excluded, and the counts say so
    counted, real = _expected_counted(tiny, TEXTS)
    assert (res.n_tokens, res.n_tokens_real, res.n_skipped_first) == (counted, real, len(TEXTS))
    assert res.n_kl_tokens == counted
    assert res.n_ce_tokens == counted - len(TEXTS)  # the last token of each text has no target
    assert res.position0_clean
    d = res.to_dict()
    json.dumps(d)
    assert "densities" not in d and d["layer"] == 1


def test_batching_does_not_change_results(tiny):
    a = evaluate_sae(tiny, perfect_sae(), TEXTS, batch_size=2)
    b = evaluate_sae(tiny, perfect_sae(), TEXTS, batch_size=16)
    assert a.n_tokens == b.n_tokens
    assert a.ce_clean == pytest.approx(b.ce_clean, rel=1e-5)
    assert a.ce_zero == pytest.approx(b.ce_zero, rel=1e-5)


def test_zero_sae_recovers_nothing(tiny):
    sae = _sae()  # all-zero weights: x_hat = 0, the same as zero-ablation
    res = evaluate_sae(tiny, sae, TEXTS, layer=2)
    assert res.layer == 2
    assert res.ce_recovered == pytest.approx(0.0, abs=1e-4)
    assert res.ce_sae == pytest.approx(res.ce_zero, abs=1e-5)
    assert res.kl > 0
    assert res.fvu > 1  # sum ||x||^2 >= sum ||x - mean||^2
    assert res.l0 == 0 and res.dead_fraction == 1.0 and res.n_dead == 2 * D_MODEL


def test_topk_l0_equals_k(tiny):
    k = 5
    sae = SAE.random(SAEConfig(d_model=D_MODEL, d_sae=64, activation="topk", k=k, layer=0), seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every kept pre-activation is positive, so exactly k fire
    res = evaluate_sae(tiny, sae, TEXTS)
    assert res.l0 == pytest.approx(k)
    assert 0 <= res.dead_fraction < 1
    assert sum(row["count"] for row in res.density_hist) == 64  # "dead" row + decades of live features
    assert res.densities.sum().item() == pytest.approx(k)


def test_dead_fraction_constructed(tiny):
    # ReLU SAE, zero encoder: features 0-4 have bias -1 (never fire), 5-7 bias +1 (always fire).
    sae = _sae(d_sae=8)
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor([-1.0] * 5 + [1.0] * 3))
    res = evaluate_sae(tiny, sae, TEXTS)
    assert res.n_dead == 5 and res.dead_fraction == pytest.approx(5 / 8)
    assert res.l0 == pytest.approx(3)
    assert res.densities.tolist() == [0.0] * 5 + [1.0] * 3
    hist = {row["range"]: row["count"] for row in res.density_hist}
    assert hist["dead"] == 5 and hist[">=0.1"] == 3


def test_jumprelu_and_include_first(tiny):
    sae = _sae(activation="jumprelu")
    eye = torch.eye(D_MODEL)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.threshold.fill_(0.0)  # = ReLU: perfect again
    res = evaluate_sae(tiny, sae, TEXTS, skip_first=False)
    counted, real = _expected_counted(tiny, TEXTS)
    assert res.n_tokens == real and res.n_skipped_first == 0 and not res.position0_clean
    assert res.fvu == pytest.approx(0.0, abs=1e-6)


def test_norm_filter():
    norms = torch.tensor([1.0, 1.1, 0.9, 1.0, 500.0])
    keep, median = _norm_keep(norms, 100.0)
    assert median == 1.0 and keep.tolist() == [True, True, True, True, False]
    keep, _ = _norm_keep(norms, None)
    assert keep.all()


def test_norm_filter_end_to_end(tiny):
    res = evaluate_sae(tiny, perfect_sae(), TEXTS, norm_mult=1.0)  # drops the tokens above each batch median
    assert res.n_filtered > 0 and res.n_tokens + res.n_filtered == _expected_counted(tiny, TEXTS)[0]
    assert res.n_tokens > 0 and res.norm_mult == 1.0


def test_moments_match_direct():
    torch.manual_seed(0)
    x = torch.randn(100, 7) * 3 + 50  # large mean: the naive formula would cancel badly in fp32
    m = _Moments()
    for part in x.split([1, 30, 69]):
        m.add(part)
    direct = float(((x.double() - x.double().mean(0)) ** 2).sum())
    assert m.n == 100 and m.m2 == pytest.approx(direct, rel=1e-10)


def test_density_summary():
    counts = torch.tensor([0, 0, 1, 50, 1000])
    hist, q = _density_summary(counts, 1000)
    table = {row["range"]: row["count"] for row in hist}
    assert table["dead"] == 2 and table["0.001-0.01"] == 1 and table["0.01-0.1"] == 1 and table[">=0.1"] == 1
    assert q["max"] == 0.0


def test_errors(tiny):
    with pytest.raises(QScopeError, match="layer"):
        evaluate_sae(tiny, perfect_sae(layer=None), TEXTS)
    with pytest.raises(QScopeError, match="out of range"):
        evaluate_sae(tiny, perfect_sae(), TEXTS, layer=9)
    with pytest.raises(QScopeError, match="no non-empty"):
        evaluate_sae(tiny, perfect_sae(), ["  "])
    wrong = SAE(SAEConfig(d_model=8, d_sae=16, activation="relu", layer=0))
    with pytest.raises(QScopeError, match="d_model"):
        evaluate_sae(tiny, wrong, TEXTS)


def test_cli_eval(tiny, tmp_path):
    import typer
    from typer.testing import CliRunner

    from qscope.cli import sae_eval

    model_dir = tmp_path / "model"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    sae_dir = perfect_sae().save(tmp_path / "sae")
    data = tmp_path / "texts.txt"
    data.write_text("\n\n".join(TEXTS) + "\n")  # one text per paragraph

    app = typer.Typer()
    sae_eval.register(app)  # no `sae` group yet: register creates it
    out = tmp_path / "res.json"
    result = CliRunner().invoke(app, ["sae", "eval", str(sae_dir), "--model", str(model_dir), "--data", str(data),
                                      "--json", "--out", str(out), "--n-texts", "5"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["n_texts"] == 5 and got["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert json.loads(out.read_text())["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert got["data"] == str(data)

    table = CliRunner().invoke(app, ["sae", "eval", str(sae_dir), "--model", str(model_dir), "--data", str(data)])
    assert table.exit_code == 0, table.output


def test_text_perplexity_matches_token_mean_and_batching(tiny):
    texts = ["the cat sat on the mat", "a dog", "hello world hello world again"]
    total, n = 0.0, 0
    for t in texts:  # one text at a time: exp(mean NLL) over all predicted tokens
        enc = tiny.tokenize([t], max_length=16)
        logits = tiny.model(**enc).logits[0, :-1]
        ids = enc["input_ids"][0, 1:]
        total += float(torch.nn.functional.cross_entropy(logits, ids, reduction="sum"))
        n += len(ids)
    expected = math.exp(total / n)
    assert text_perplexity(tiny, texts, max_length=16, batch_size=1) == pytest.approx(expected, rel=1e-4)
    assert text_perplexity(tiny, texts, max_length=16, batch_size=3) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(QScopeError):
        text_perplexity(tiny, [])
