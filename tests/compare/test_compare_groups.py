"""Two SAE groups over several layers: focus features follow their partners, missing layers are named."""

import json

import numpy as np
import pytest
from tiny import SENTENCES, permuted_sae

from qscope import SAE, SAEConfig
from qscope.compare.groups import compare_groups, focus_matches, write_group_report
from qscope.errors import QScopeError


def _sae(layer, seed, d_model=64, d_sae=96):
    return SAE.random(SAEConfig(d_model=d_model, d_sae=d_sae, k=8, layer=layer), seed=seed)


def test_focus_features_follow_a_permutation_and_not_a_random_sae():
    a1, a2 = _sae(1, 1), _sae(2, 2)
    perm = np.random.default_rng(0).permutation(96)
    group = compare_groups({1: a1, 2: a2}, {1: permuted_sae(a1, perm), 2: _sae(2, 7), 3: _sae(3, 8)},
                           focus={1: [0, 5, 17], 2: [0, 5, 17]}, examples=0)
    assert group.layers == [1, 2, 3] and set(group.results) == {1, 2}
    assert "A" in group.missing[3]
    inverse = np.argsort(perm)
    assert [m.partner for m in group.focus[1]] == [int(inverse[f]) for f in (0, 5, 17)]
    assert group.focus_survival(1) == 1.0
    assert group.focus_survival(2) == 0.0  # random SAEs in 64 dims share no direction at cos > 0.7
    d = group.to_dict()
    assert d["per_layer"]["1"]["focus_survival"] == 1.0 and d["per_layer"]["1"]["shared_fraction"] == 1.0
    assert d["missing"] == {"3": "no SAE at layer 3 in A"}
    assert [r[0] for r in group.summary_rows()] == ["1", "2", "3"] and group.focus_survival(1, "function") is None


def test_focus_with_activations_and_report(tmp_path, tiny_lm_copy):
    lm = tiny_lm_copy()
    a = _sae(1, 1, d_model=lm.d_model)
    group = compare_groups({1: a}, {1: a}, lm, SENTENCES, focus={1: [3]}, examples=0, max_tokens=200, min_fires=1)
    (m,) = group.focus[1]
    assert m.partner == 3 and m.survives and m.decoder_cos == pytest.approx(1.0, abs=1e-5)
    assert m.frequency is not None and m.fires_alike and group.focus_survival(1, "function") == 1.0
    paths = write_group_report(group, tmp_path, name="g", provenance={"command": "test"})
    data = json.loads(paths[0].read_text())
    assert data["provenance"] == {"command": "test"} and paths[1].stat().st_size > 0


def test_bad_focus_and_empty_groups_are_refused():
    a = _sae(1, 1)
    r = compare_groups({1: a}, {1: a}, examples=0).results[1]
    with pytest.raises(QScopeError, match="out of range"):
        focus_matches(r, [500])
    with pytest.raises(QScopeError, match="empty"):
        compare_groups({}, {})
