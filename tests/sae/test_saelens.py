"""Round trip with the real SAELens package: qscope-written SAEs load in SAELens and encode the same, and
SAELens-written SAEs load in qscope and encode the same. Skipped where sae-lens is not installed."""

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="the SAELens round trip needs the sae-lens package "
                               "(pip install 'qscope[bench]')")

from qscope import SAE, SAEConfig  # noqa: E402

D_MODEL, D_SAE, K = 16, 64, 4


def qscope_sae(activation: str, apply_b_dec_to_input: bool = False) -> SAE:
    cfg = SAEConfig(d_model=D_MODEL, d_sae=D_SAE, activation=activation, k=K if activation == "topk" else None,
                    layer=3, model_name="tiny", apply_b_dec_to_input=apply_b_dec_to_input)
    sae = SAE.random(cfg, seed=1)
    with torch.no_grad():  # non-zero biases and thresholds, so every term of encode is exercised
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)
        if activation == "jumprelu":
            sae.threshold.uniform_(0.0, 0.4)
    return sae


def inputs() -> torch.Tensor:
    return torch.randn(2, 7, D_MODEL, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("activation,b_dec_in", [("topk", False), ("topk", True), ("jumprelu", False), ("relu", False)])
def test_qscope_folder_loads_in_saelens(tmp_path, activation, b_dec_in):
    ours = qscope_sae(activation, b_dec_in)
    ours.save(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    assert theirs.cfg.d_in == D_MODEL and theirs.cfg.d_sae == D_SAE
    assert theirs.cfg.apply_b_dec_to_input is b_dec_in
    x = inputs()
    with torch.no_grad():
        codes = theirs.encode(x)
        assert torch.allclose(codes, ours.encode(x), atol=1e-5)
        assert (codes > 0).sum(-1).max() <= (K if activation == "topk" else D_SAE)
        assert torch.allclose(theirs.decode(codes), ours.decode(codes), atol=1e-5)
    if activation == "topk":
        assert theirs.cfg.k == K and type(theirs).__name__ == "TopKSAE"


def _saelens_sae(kind: str, **cfg):
    classes = {"topk": ("TopKSAE", "TopKSAEConfig"), "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig"),
               "standard": ("StandardSAE", "StandardSAEConfig")}
    model_cls, cfg_cls = (getattr(sae_lens, name) for name in classes[kind])
    torch.manual_seed(5)
    sae = model_cls(cfg_cls(d_in=D_MODEL, d_sae=D_SAE, **cfg))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name in ("b_enc", "b_dec"):
                param.normal_(0, 0.3)
            if name == "threshold":
                param.uniform_(0.0, 0.4)
    return sae


@pytest.mark.parametrize("kind,cfg", [
    ("topk", dict(k=K, apply_b_dec_to_input=True)),
    ("topk", dict(k=K, apply_b_dec_to_input=False)),
    ("topk", dict(k=K, apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=True)),
    ("jumprelu", dict(apply_b_dec_to_input=False)),
    ("standard", dict(apply_b_dec_to_input=True)),
])
def test_saelens_folder_loads_in_qscope(tmp_path, kind, cfg):
    theirs = _saelens_sae(kind, **cfg)
    if cfg.get("rescale_acts_by_decoder_norm"):
        with torch.no_grad():  # decoder rows of unequal norms, so the rescaling matters
            theirs.W_dec.mul_(torch.rand(D_SAE, 1, generator=torch.Generator().manual_seed(2)) + 0.5)
    theirs.save_model(tmp_path / "sae")
    ours = SAE.load(tmp_path / "sae")
    assert ours.cfg.apply_b_dec_to_input is cfg["apply_b_dec_to_input"]
    assert ours.cfg.activation == {"topk": "topk", "jumprelu": "jumprelu", "standard": "relu"}[kind]
    x = inputs()
    with torch.no_grad():
        codes = theirs.encode(x)
        assert torch.allclose(ours.encode(x), codes, atol=1e-5)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_shipped_sae_loads_in_saelens():
    from qscope.sae.registry import default_sae_root

    theirs = sae_lens.SAE.load_from_disk(default_sae_root() / "layer15", dtype="float32")
    ours = SAE.load("default", layer=15)
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == 50 and not theirs.cfg.apply_b_dec_to_input
    x = torch.randn(32, ours.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 5
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-4)
