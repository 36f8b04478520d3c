"""The default store, for real: searching its labels for "French" finds the French feature.

Feature 15/6644 of the shipped layer-15 SAE is one of the three French features of the steering
evidence (docs/steering/french_features_layer15.json). Uses the store
`qscope features build --layer 15` wrote into QSCOPE_HOME (run with QSCOPE_TEST_REAL_HOME=1);
skipped when there is none, as building it takes minutes."""

import os

import pytest

from qscope.features.store import FeatureStore, default_store_path

pytestmark = pytest.mark.real_model

FRENCH_FEATURE = 6644


def test_label_search_for_french_finds_the_french_feature():
    if os.environ.get("QSCOPE_TEST_REAL_HOME") != "1":
        pytest.skip("reads the default store in QSCOPE_HOME: set QSCOPE_TEST_REAL_HOME=1")
    path = default_store_path("default", "default", 15)
    if not path.is_file():
        pytest.skip(f"no default store at {path}: build it with `qscope features build --layer 15`")
    with FeatureStore(path) as store:
        found = store.search_labels("French")
        assert FRENCH_FEATURE in [e.feature for e in found[:5]], [(e.feature, e.text) for e in found[:5]]
        assert store.labels([FRENCH_FEATURE])[FRENCH_FEATURE].text.startswith("French text")
