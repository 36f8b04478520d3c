"""SAE math (Qwen-Scope semantics), every file format, and clear errors on bad files."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from qscope import SAE, SAEConfig
from qscope.errors import QScopeError
from qscope.sae.registry import QWEN_SCOPE, find_release
from tiny import tiny_lm


def make_sae(activation="topk", d_model=16, d_sae=64, k=4, seed=0, layer=2):
    sae = SAE.random(SAEConfig(d_model=d_model, d_sae=d_sae, activation=activation, k=k, layer=layer), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if activation == "jumprelu":
            sae.threshold.fill_(0.2)
    return sae


def qwen_scope_dict(sae):
    """The official file layout: W_enc (d_sae, d_model), W_dec (d_model, d_sae)."""
    return {"W_enc": sae.W_enc.detach().T.contiguous(), "W_dec": sae.W_dec.detach().T.contiguous(),
            "b_enc": sae.b_enc.detach().clone(), "b_dec": sae.b_dec.detach().clone()}


# ---------------------------------------------------------------------------- semantics
def test_topk_is_qwen_scope_encode():
    sae = make_sae()
    x = torch.randn(10, 16)
    pre = x @ sae.W_enc + sae.b_enc  # no b_dec subtraction
    vals, idx = pre.topk(4, dim=-1)
    want = torch.zeros(10, 64).scatter(-1, idx, vals.relu())
    assert torch.allclose(sae.encode(x), want, atol=1e-6)
    assert torch.allclose(sae.pre_acts(x), pre, atol=1e-6)
    v, i = sae.encode_topk(x)
    assert torch.allclose(torch.zeros(10, 64).scatter(-1, i, v), want, atol=1e-6)


@pytest.mark.parametrize("width,k", [(9216, 50), (512, 4), (96, 3), (100, 7)])
def test_staged_top_k_equals_torch_topk(width, k):
    """`top_k`'s staged selection (used where rows are wide) keeps exactly torch.topk's values,
    ties included (small integers make many), at distinct indices that hold those values."""
    from qscope.sae.activations import top_k

    gen = torch.Generator().manual_seed(width + k)
    for pre in (torch.randn(3, 5, width, generator=gen), torch.randint(-4, 5, (40, width), generator=gen).float(),
                torch.randn(6, width, generator=gen).bfloat16()):
        vals, idx = top_k(pre, k)
        assert vals.shape == idx.shape == (*pre.shape[:-1], k)
        want = pre.topk(k, dim=-1).values
        assert torch.equal(vals.sort(-1, descending=True).values, want)
        assert torch.equal(pre.gather(-1, idx), vals)
        assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct


def test_topk_relu_zeroes_negative_kept_values():
    sae = make_sae()
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # every pre-activation negative
    assert sae.encode(torch.randn(3, 16)).count_nonzero() == 0


def test_sparse_decode_equals_dense_decode():
    sae = make_sae()
    x = torch.randn(5, 7, 16)
    assert torch.allclose(sae(x), sae.decode(sae.encode(x)), atol=1e-5)
    assert sae(x).shape == x.shape


def test_b_dec_subtraction_only_when_configured():
    sae = make_sae()
    x = torch.randn(4, 16)
    sae.cfg.apply_b_dec_to_input = True
    assert torch.allclose(sae.pre_acts(x), (x - sae.b_dec) @ sae.W_enc + sae.b_enc, atol=1e-6)


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_other_activations(activation):
    sae = make_sae(activation, k=None)
    x = torch.randn(6, 16)
    pre = x @ sae.W_enc + sae.b_enc
    want = pre * (pre > 0.2) if activation == "jumprelu" else pre.relu()
    assert torch.allclose(sae.encode(x), want, atol=1e-6)
    v, _ = sae.encode_topk(x, k=3)
    assert torch.allclose(v, want.topk(3).values, atol=1e-6)


# ---------------------------------------------------------------------------- formats
def test_qwen_scope_file_roundtrip(tmp_path):
    sae = make_sae(d_model=16, d_sae=64)
    path = tmp_path / "SAE-Res-Tiny-W64-L0_4" / "layer2.sae.pt"
    path.parent.mkdir()
    torch.save(qwen_scope_dict(sae), path)
    loaded = SAE.load(path)
    assert loaded.cfg.layer == 2 and loaded.cfg.k == 4 and not loaded.cfg.apply_b_dec_to_input
    x = torch.randn(8, 16)
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-6)
    folder_loaded = SAE.load(path.parent, layer=2)
    assert torch.equal(folder_loaded.W_enc, loaded.W_enc)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_qscope_folder_roundtrip_is_saelens_layout(tmp_path, activation):
    sae = make_sae(activation, k=4 if activation == "topk" else None)
    sae.cfg.model_name, sae.cfg.metadata = "tiny", {"tokens": 123}
    sae.save(tmp_path / "s")
    assert sorted(os.listdir(tmp_path / "s")) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 64 and cfg["metadata"]["model_name"] == "tiny"
    loaded = SAE.load(tmp_path / "s")
    assert loaded.cfg.to_dict() == sae.cfg.to_dict()
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_fingerprint_keeps_feature_stores_valid(tmp_path):
    """The id feature stores were built with (SHA-1 of every (d_sae // 64)-th decoder row): stable
    through save/load, moved by a change of one hashed row."""
    import hashlib

    sae = make_sae(d_sae=256)
    rows = sae.W_dec.detach()[::4].float().contiguous().numpy()
    assert sae.fingerprint() == hashlib.sha1(rows.tobytes()).hexdigest()[:16]
    sae.save(tmp_path / "sae")
    assert SAE.load(tmp_path / "sae").fingerprint() == sae.fingerprint()
    other = make_sae(d_sae=256)
    with torch.no_grad():
        other.W_dec[4] += 1e-3  # every (256 // 64) = 4th row is hashed
    assert other.fingerprint() != sae.fingerprint()


def test_fp16_save_loads_as_fp32(tmp_path):
    sae = make_sae()
    sae.save(tmp_path / "s", dtype=torch.float16)
    loaded = SAE.load(tmp_path / "s")
    assert loaded.W_enc.dtype == torch.float32
    assert torch.allclose(loaded.W_enc, sae.W_enc, atol=1e-3)


def test_saelens_foreign_folder(tmp_path):
    sae = make_sae()
    cfg = {"architecture": "topk", "d_in": 16, "d_sae": 64, "k": 4, "apply_b_dec_to_input": False,
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.5.hook_resid_post"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, str(tmp_path / "sae_weights.safetensors"))
    loaded = SAE.load(tmp_path)
    assert loaded.cfg.layer == 5 and loaded.cfg.model_name == "gpt2"
    x = torch.randn(3, 16)
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-6)


def test_sparsify_folder_subtracts_b_dec(tmp_path):
    sae = make_sae()
    folder = tmp_path / "layers.3"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"k": 4, "expansion_factor": 4, "d_in": 16}))
    save_file({"encoder.weight": sae.W_enc.detach().T.contiguous(), "encoder.bias": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}, str(folder / "sae.safetensors"))
    loaded = SAE.load(tmp_path, layer=3)
    assert loaded.cfg.apply_b_dec_to_input and loaded.cfg.layer == 3
    x = torch.randn(3, 16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    v, i = pre.topk(4)
    assert torch.allclose(loaded.encode(x), torch.zeros(3, 64).scatter(-1, i, v.relu()), atol=1e-6)


def test_registry_has_the_14_releases():
    assert len(QWEN_SCOPE) == 14
    rel = find_release("Qwen/SAE-Res-Qwen3.5-2B-Base-W32K-L0_50")
    assert (rel.model, rel.d_model, rel.d_sae, rel.k, rel.n_layers) == ("Qwen/Qwen3.5-2B-Base", 2048, 32768, 50, 24)
    assert find_release("Qwen/SAE-Res-Qwen3-30B-A3B-Base-W128K-L0_100").d_sae == 131072


def test_release_layer_checked_before_download():
    with pytest.raises(QScopeError, match="out of range"):
        SAE.load("Qwen/SAE-Res-Qwen3.5-2B-Base-W32K-L0_50", layer=24)
    with pytest.raises(QScopeError, match="which layer"):
        SAE.load("Qwen/SAE-Res-Qwen3.5-2B-Base-W32K-L0_50")


# ---------------------------------------------------------------------------- bad input
class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARKER', '/tmp/qscope-pwned')}",))


def test_pickle_with_code_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "layer0.sae.pt"
    torch.save({"W_enc": torch.zeros(4, 2), "evil": Evil()}, path)
    with pytest.raises(QScopeError, match="refused to unpickle"):
        SAE.load(path)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "layer1.sae.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(QScopeError, match="not a readable"):
        SAE.load(bad)
    with pytest.raises(QScopeError, match="no such file"):
        SAE.load(tmp_path / "missing.sae.pt")
    (tmp_path / "cfg.json").write_text("{broken")
    (tmp_path / "sae_weights.safetensors").write_bytes(b"xx")
    with pytest.raises(QScopeError, match="not valid JSON"):
        SAE.load(tmp_path)


def test_wrong_keys_and_shapes(tmp_path):
    sae = make_sae()
    d = qwen_scope_dict(sae)
    torch.save({k: v for k, v in d.items() if k != "b_dec"}, tmp_path / "layer0.sae.pt")
    with pytest.raises(QScopeError, match="expected a dict with tensors"):
        SAE.load(tmp_path / "layer0.sae.pt")
    d["W_dec"] = torch.zeros(16, 63)
    torch.save(d, tmp_path / "layer1.sae.pt")
    with pytest.raises(QScopeError, match="W_dec has shape"):
        SAE.load(tmp_path / "layer1.sae.pt")


def test_sae_model_mismatch_is_caught():
    lm = tiny_lm()  # d_model 32, 4 layers
    with pytest.raises(QScopeError, match="does not match"):
        lm.check_sae(make_sae(d_model=16))
    with pytest.raises(QScopeError, match="out of range"):
        lm.check_sae(make_sae(d_model=32, layer=7))
    assert lm.check_sae(make_sae(d_model=32, layer=3)) == 3


def test_save_is_atomic(tmp_path, monkeypatch):
    sae = make_sae()
    sae.save(tmp_path / "s")
    import qscope.sae.formats as formats

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats, "save_file", boom)
    with pytest.raises(RuntimeError):
        make_sae(seed=1).save(tmp_path / "s")
    # the old folder is intact and nothing half-written is left beside it
    assert torch.equal(SAE.load(tmp_path / "s").W_enc, sae.W_enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
