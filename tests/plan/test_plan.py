"""`qscope plan`: shapes, FLOPs and memory terms checked against real (tiny or meta-device) models."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from qscope.cli import _register, app
from qscope.errors import QScopeError
from qscope.plan import TASKS, Workload, arch_from_config, hardware, load_arch, plan, shipped_configs, transformers_config
from qscope.sae import SAE, SAEConfig
from qscope.sae.registry import QWEN_SCOPE, Release
from tiny import ARCHS

_register()


@pytest.mark.parametrize("model", list(shipped_configs()))
def test_parameter_count_matches_the_model_transformers_builds(model):
    """Exact for every shipped config (built on the meta device: no memory, real shapes)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(transformers_config(model))
    assert load_arch(model).params == sum(p.numel() for p in built.parameters())


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe", "qwen3_next"])
def test_forward_flops_match_torch_flop_counter(arch):
    """The matmul FLOPs of a full forward (routed experts, linear attention included) equal what
    torch counts; the counter skips CPU SDPA, so the softmax-attention core is left out."""
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    if hasattr(model, "set_experts_implementation") and getattr(model.config, "num_experts_per_tok", 0):
        model.set_experts_implementation("eager")  # the counter does not see grouped_mm
    a = arch_from_config(model.config.to_dict())
    batch, seq = 2, 64  # a multiple of the delta-rule chunk
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.randint(2, 300, (batch, seq)), use_cache=False)
    softmax_core = batch * seq * a.n_full * 4.0 * a.n_heads * a.head_dim * seq / 2
    predicted = a.forward_flops(batch * seq, seq / 2, logits=batch * seq) - softmax_core
    assert predicted == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_memory_terms_equal_real_tensor_bytes(tmp_path):
    """Weights from a config.json on disk, SAE bytes from a built SAE: both exact."""
    torch.manual_seed(0)
    model = ARCHS["qwen3_5_moe"]()
    model.config.save_pretrained(tmp_path)
    a = load_arch(tmp_path / "config.json")
    release = Release("tiny/sae", "tiny", a.n_layers, a.d_model, 128, 4)
    work = Workload("capture", layers=[1, 2], dtype="fp32", sae_dtype="fp32", batch=2, seq=16, tokens=64)
    result = plan(a, [release], work, hardware("h100"))
    terms = {t.name: t.value for t in result.memory}
    assert terms["model weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
    sae = SAE.random(SAEConfig(d_model=a.d_model, d_sae=128, activation="topk", k=4))
    assert terms["SAEs tiny/sae"] == 2 * sum(p.numel() * p.element_size() for p in sae.parameters())


@pytest.mark.parametrize("release", QWEN_SCOPE, ids=lambda r: r.repo.split("/")[-1])
def test_every_release_gets_a_plan_for_every_task(release):
    a = load_arch(release.model)  # the -Base repos resolve to the shipped config
    assert a.d_model == release.d_model and a.n_layers == release.n_layers
    for task in TASKS:
        result = plan(a, [release], Workload(task, layers=list(release.layers)), hardware("h200"))
        assert result.memory_total > a.params * 2 and result.time_total > 0
        assert all(t.value >= 0 and t.formula for t in result.memory + result.time)


def test_fit_follows_memory_and_device_count():
    a = load_arch("Qwen/Qwen3.5-35B-A3B")
    wide = next(r for r in QWEN_SCOPE if r.model.startswith("Qwen/Qwen3.5-35B") and r.d_sae == 131072)
    work = Workload("capture", layers=list(wide.layers))
    one, two = plan(a, [wide], work, hardware("h100")), plan(a, [wide], work, hardware("h100", count=2))
    assert one.per_device > one.capacity and not one.fits  # weights + 40 fp32 W128K SAEs > 80 GB
    assert two.per_device < one.per_device
    half = plan(a, [wide], Workload("capture", layers=list(wide.layers), sae_dtype="bf16"), hardware("h100"))
    sae = lambda p: next(t.value for t in p.memory if t.name.startswith("SAEs"))  # noqa: E731
    assert sae(half) == sae(one) / 2


def test_time_scales_with_rate_and_stop_layer():
    a = load_arch("Qwen/Qwen3-8B")
    early, late = (plan(a, [], Workload("capture", layers=[n]), hardware("h100"), tflops=100) for n in (8, 35))
    assert early.time_total < late.time_total / 3
    fast = plan(a, [], Workload("capture", layers=[35]), hardware("h100"), tflops=200)
    assert fast.time_total == pytest.approx(late.time_total / 2)


def test_bad_inputs_are_user_errors():
    a = load_arch("Qwen/Qwen3-1.7B")
    with pytest.raises(QScopeError, match="task"):
        plan(a, [], Workload("dance", layers=[0]), hardware("h100"))
    with pytest.raises(QScopeError, match="d_model"):
        plan(a, [QWEN_SCOPE[2]], Workload("capture", layers=[0]), hardware("h100"))  # a Qwen3-8B release
    with pytest.raises(QScopeError, match="known"):
        load_arch("Qwen/Qwen9-1T")
    with pytest.raises(QScopeError, match="tflops"):
        plan(a, [], Workload("capture", layers=[0]), hardware(None, memory_gib=24))


def test_cli_json_and_errors():
    runner = CliRunner()
    repo = "Qwen/SAE-Res-Qwen3.5-35B-A3B-Base-W32K-L0_50"
    out = runner.invoke(app, ["plan", "-r", repo, "--layers", "0,20", "--task", "steer", "--gpu", "h200", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["fits"] is True and data["workload"]["layers"] == [0, 20]
    assert {t["name"] for t in data["memory"]} >= {"model weights", f"SAEs {repo}"}
    bad = runner.invoke(app, ["plan", "-r", "Qwen/nope"])
    assert bad.exit_code != 0
