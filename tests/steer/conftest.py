"""The steering tests' model and SAE: one tiny Qwen3 and a random SAE on its layer 1."""

import pytest

from qscope import SAE, SAEConfig


@pytest.fixture(scope="module")
def lm(tiny_lm_copy):
    return tiny_lm_copy("qwen3", seed=1)


@pytest.fixture(scope="module")
def sae(lm):
    return SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=8, layer=1), seed=3)
