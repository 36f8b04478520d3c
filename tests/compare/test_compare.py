"""SAE vs SAE comparison: known answers for identical, permuted, planted and random SAEs."""

import json

import numpy as np
import pytest
import torch
import typer
from tiny import SENTENCES, permuted_sae
from typer.testing import CliRunner

from qscope import SAE, SAEConfig
from qscope.compare import activation_correlation, compare_saes, hungarian, write_report
from qscope.compare.match import sparse_codes, unit_rows
from qscope.errors import QScopeError


def _cfg(d_model=64, d_sae=128, k=8, layer=2):
    return SAEConfig(d_model=d_model, d_sae=d_sae, k=k, layer=layer)


def test_identical_saes_share_everything():
    a = SAE.random(_cfg(), seed=1)
    r = compare_saes(a, a, examples=0)
    assert r.decoder.mmcs_ab == pytest.approx(1.0) and r.decoder.mmcs_ba == pytest.approx(1.0)
    assert r.encoder.mmcs_ab == pytest.approx(1.0)
    assert r.decoder.shared == {"0.5": 1.0, "0.7": 1.0, "0.9": 1.0}
    assert r.shared_both["0.9"] == 1.0 and r.shared_fraction == 1.0
    assert (r.arrays["dec_partner"] == np.arange(128)).all()


def test_permuted_copy_is_matched_back_exactly(tiny_lm_copy):
    lm = tiny_lm_copy("llama", seed=1)
    a = SAE.random(_cfg(d_model=lm.d_model, d_sae=64, k=4), seed=1)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    b = permuted_sae(a, perm)
    r = compare_saes(a, b, lm, SENTENCES * 3, max_tokens=400, examples=3)
    inverse = perm.argsort().numpy()
    assert (r.arrays["dec_partner"] == inverse).all() and (r.arrays["enc_partner"] == inverse).all()
    act = r.activation
    live = ~np.isnan(r.arrays["act_best_ab"])
    assert live.sum() == 64 - act.rare_a and act.rare_a == act.rare_b and act.dead_a <= act.rare_a
    assert (r.arrays["act_partner_ab"][live] == inverse[live]).all()
    assert act.mean_best_ab == pytest.approx(1.0) and act.agrees_with_decoder == 1.0
    assert r.matched and all(e.promotes == e.partner_promotes for e in r.matched)
    assert not r.orphans_a and not r.orphans_b


def test_random_saes_share_little():
    a, b = SAE.random(_cfg(d_sae=256), seed=1), SAE.random(_cfg(d_sae=256), seed=2)
    r = compare_saes(a, b, examples=0)
    assert r.decoder.mmcs_ab < 0.6 and r.decoder.shared["0.7"] == 0.0 and r.shared_both["0.5"] < 0.05


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_planted_subset_across_widths(method):
    """B (wider) holds A's first half among noise; both solvers recover the planted pairs."""
    a = SAE.random(_cfg(d_sae=96), seed=3)
    b = SAE.random(_cfg(d_sae=160), seed=4)
    slots = torch.randperm(160, generator=torch.Generator().manual_seed(1))[:48]
    with torch.no_grad():
        b.W_dec[slots] = a.W_dec[:48]
        b.W_enc[:, slots] = a.W_enc[:, :48]
    r = compare_saes(a, b, method=method, examples=0)
    assert r.decoder.method == method
    assert (r.arrays["dec_partner"][:48] == slots.numpy()).all()
    assert r.decoder.shared["0.9"] == pytest.approx(48 / 96)
    assert r.decoder.mmcs_ba < r.decoder.mmcs_ab  # B's extra noise features have no partner


def test_sparse_solver_close_to_dense_on_random():
    a, b = unit_rows(torch.randn(300, 16)), unit_rows(torch.randn(260, 16))
    dense, sparse_ = hungarian(a, b, "dense"), hungarian(a, b, "sparse", neighbours=16)
    assert len(sparse_.rows) == len(dense.rows) == 260
    assert sparse_.cos.sum() <= dense.cos.sum() + 1e-6
    assert sparse_.cos.sum() > 0.99 * dense.cos.sum()


def test_activation_correlation_known_answers():
    # 6 tokens, A has 3 features, B has 3; B0 = 2 * A0 (corr 1), A2 never fires (dead).
    va = torch.tensor([[1.0, 0], [0, 2.0], [3.0, 0], [0, 1.0], [2.0, 0], [0, 3.0]])
    ia = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]])
    vb = torch.tensor([[2.0, 0], [0, 1.0], [6.0, 0], [0, 1.0], [4.0, 0], [0, 1.0]])
    ib = torch.tensor([[0, 2], [0, 2], [0, 2], [0, 2], [0, 2], [0, 2]])
    best_a, best_b = activation_correlation(sparse_codes(va, ia, 3), sparse_codes(vb, ib, 3))
    assert best_a.corr[0] == pytest.approx(1.0) and best_a.partner[0] == 0
    assert best_a.partner[1] == 2 and np.isnan(best_a.corr[2]) and best_a.dead.tolist() == [False, False, True]
    assert best_b.dead.tolist() == [False, True, False] and best_b.frequency[0] == pytest.approx(0.5)
    # features firing on fewer than min_fires tokens are not judged, on either side
    rare_a, _ = activation_correlation(sparse_codes(va, ia, 3), sparse_codes(vb, ib, 3), min_fires=4)
    assert rare_a.rare.tolist() == [True, True, True] and np.isnan(rare_a.corr).all()
    with pytest.raises(QScopeError, match="different tokens"):
        activation_correlation(sparse_codes(va, ia, 3), sparse_codes(vb[:3], ib[:3], 3))


def test_bad_input_and_report_files(tmp_path):
    with pytest.raises(QScopeError, match="d_model"):
        compare_saes(SAE.random(_cfg(d_model=32)), SAE.random(_cfg(d_model=64)))
    with pytest.raises(QScopeError, match="method"):
        compare_saes(SAE.random(_cfg()), SAE.random(_cfg()), method="greedy")
    r = compare_saes(SAE.random(_cfg(), seed=1), SAE.random(_cfg(), seed=2), examples=2)
    paths = write_report(r, tmp_path, per_feature=True)
    data = json.loads(paths[0].read_text())
    assert len(data["per_feature"]["dec_partner"]) == 128 and data["activation"] is None
    assert paths[1].read_bytes()[:4] == b"\x89PNG"


def test_cli_compares_across_formats(tmp_path):
    """A qscope folder vs the same SAE permuted and written as a Qwen-Scope .pt file."""
    from qscope.cli.compare import register

    a = SAE.random(_cfg(d_sae=64), seed=5)
    b = permuted_sae(a, torch.randperm(64))
    a.save(tmp_path / "a")
    torch.save({"W_enc": b.W_enc.T.contiguous(), "W_dec": b.W_dec.T.contiguous(), "b_enc": b.b_enc.data,
                "b_dec": b.b_dec.data}, tmp_path / "layer2.sae.pt")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `compare` a named sub-command
    out = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), f"{tmp_path / 'layer2.sae.pt'}:k=8", "--no-activations",
                                   "--examples", "0", "--json", "--out", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["shared_fraction"] == 1.0 and data["b"]["layer"] == 2
    assert (tmp_path / "out" / "compare.png").exists()
    assert "Example" in CliRunner().invoke(app, ["compare", "--help"]).output
