import copy
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Tests never write into the user's QSCOPE_HOME, except real-model tests that reuse it."""
    if os.environ.get("QSCOPE_TEST_REAL_HOME") != "1":
        monkeypatch.setenv("QSCOPE_HOME", str(tmp_path_factory.getbasetemp() / "qscope_home"))


@pytest.fixture(scope="session")
def tiny_lm_copy():
    """`tiny_lm(arch, seed)` built once per session: each call hands out a deep copy (so a test may
    change weights or hook layers) and leaves torch's RNG where a fresh build leaves it, so seeded
    tests see the same numbers as with a fresh build."""
    from qscope.model import LM
    from tiny import tiny_lm

    built = {}

    def make(arch: str = "llama", seed: int = 0) -> LM:
        if (arch, seed) not in built:
            built[arch, seed] = (tiny_lm(arch, seed), torch.get_rng_state())
        lm, rng_after_build = built[arch, seed]
        torch.set_rng_state(rng_after_build)
        return LM(copy.deepcopy(lm.model), lm.tokenizer, name=lm.name)

    return make
