"""A tiny built feature store (random SAE on a tiny model, a few labelled texts, two explanations)
for the store exporters' tests."""

import pytest

from qscope import SAE, SAEConfig
from qscope.features.store import FeatureStore, build_store
from tiny import SENTENCES

TEXTS = [("code" if j % 3 == 0 else "prose", " ".join(SENTENCES[(j * 3 + i) % 8] for i in range(1 + j % 4)))
         for j in range(12)]


@pytest.fixture(scope="session")
def store_path(tiny_lm_copy, tmp_path_factory):
    lm = tiny_lm_copy("llama", seed=2)
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=6, layer=2), seed=4)
    path = tmp_path_factory.mktemp("store") / "s.sqlite"
    build_store(lm, sae, TEXTS, path, top_n=4, batch_size=4, max_length=48).close()
    with FeatureStore(path) as st:
        fired = st.top_features_by_density(3)
        st.add_explanation(fired[0].feature, "the word 'the'", "manual")
        st.add_explanation(fired[0].feature, "articles", "some-llm")
    return path
