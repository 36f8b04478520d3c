"""Automatic feature labels: what they say, that builds store them, that older stores get them."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from qscope import SAE, SAEConfig
from qscope.features.labels import AUTO, auto_label, context_kind, text_languages
from qscope.features.store import FeatureStore, build_store
from fake_llm import FakeChat
from tiny import SENTENCES

FRENCH = "Le chat est sur la table et il dort avec le chien de la maison."


def test_auto_label_names_tokens_language_and_code():
    label = auto_label([" de", " la", " de", "\n", " De"], [" les", " des", " les", ""], ["fr", "fr", "fr", "en"],
                       ["multilingual"] * 4)
    assert label == "French text; fires on de, la, ↵; promotes les, des"
    assert context_kind(["en", "en", "und"], ["code", "code", "brown"]) == "code"
    assert context_kind(["en", "fr"], ["brown", "code"]) is None  # no majority: nothing claimed
    assert auto_label([], []) == "never fired"


def test_label_counts_only_strong_contexts():
    """Two strong French contexts and many weak English ones: a French feature in a small store."""
    tokens, langs, corpora = [" le", " la"] + [" the"] * 8, ["fr", "fr"] + ["en"] * 8, ["multilingual"] * 2 + ["brown"] * 8
    acts = [30.0, 25.0] + [6.0] * 8
    assert auto_label(tokens, [], langs, corpora, acts) == "French text; fires on le, la"
    assert auto_label(tokens, [], langs, corpora).startswith("fires on the")  # all twenty: English, unnamed


def test_languages_are_named_among_all_not_four():
    """Italian and Catalan are not French; code is not a language."""
    texts = ["Ogni individuo ha diritto alla vita, alla libertà ed alla sicurezza della propria persona.",
             "Tots els éssers humans neixen lliures i iguals en dignitat i en drets.",
             FRENCH, "def add(a, b):\n    return a + b  # the sum"]
    assert text_languages(texts, ["multilingual"] * 3 + ["code"]) == ["it", "ca", "fr", "und"]
    assert context_kind(["it", "it", "fr"], ["multilingual"] * 3) == "Italian text"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_lm_copy):
    lm = tiny_lm_copy("llama", seed=3)
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=6, layer=2), seed=1)
    texts = [("brown", t) for t in SENTENCES] + [("multilingual", FRENCH)] * 3
    path = tmp_path_factory.mktemp("labels") / "s.sqlite"
    return build_store(lm, sae, texts, path, layer=2, max_length=32, batch_size=4)


def test_build_stores_a_label_for_every_feature(built):
    rows = dict(sqlite3.connect(built.path).execute("SELECT feature, text FROM labels"))
    assert sorted(rows) == list(range(built.d_sae))
    fired = built.top_features_by_density(1)[0].feature
    dash = built.dashboard(fired)
    assert dash.label == rows[fired] == dash.auto_label and dash.label_source == AUTO
    top_token = dash.top[0].tokens[dash.top[0].focus].strip()
    assert top_token and top_token in dash.label  # names a token it fires on


def test_explanation_replaces_label_and_search_covers_both(built):
    fired = [s.feature for s in built.top_features_by_density(3)]
    built.add_explanation(fired[0], "felines on rugs", "manual")
    labels = built.labels(fired)
    assert (labels[fired[0]].text, labels[fired[0]].source) == ("felines on rugs", "manual")
    assert labels[fired[1]].source == AUTO and labels[fired[1]].text == built.auto_labels()[fired[1]]
    assert [(e.feature, e.source) for e in built.search_labels("FELINES")] == [(fired[0], "manual")]
    word = built.auto_labels()[fired[1]].split("fires on ")[-1].split(",")[0].split(";")[0]
    hits = built.search_labels(word)
    assert (fired[1], AUTO) in [(e.feature, e.source) for e in hits]
    assert all(word.lower() in e.text.lower() for e in hits)


def test_store_without_labels_still_opens_and_gets_them(built, tmp_path):
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(built.path) as src, sqlite3.connect(old) as dst:
        src.backup(dst)
    with sqlite3.connect(old) as conn:
        conn.execute("DROP TABLE labels")  # as a store built before labels existed
    with FeatureStore(old) as store:
        assert store.auto_labels() == built.auto_labels()
    assert len(dict(sqlite3.connect(old).execute("SELECT feature, text FROM labels"))) == built.d_sae  # written back


def test_explain_all_batches_resumes_and_stores_the_source(built, monkeypatch):
    """`explain --all` through the openai client against a stand-in server: every fired feature
    once, the model's name as source, a rerun asks for nothing new."""
    from qscope.features.explain import explain_all

    with FakeChat(lambda body: "tiny pattern") as llm:
        fired = int((built.feature_table()["fires"] > 0).sum())
        seen = []
        added = explain_all(built, llm.url, "llm-a", batch_size=3, progress=lambda n, total: seen.append((n, total)))
        assert len(added) == len(llm.requests) == fired and seen[-1] == (fired, fired)
        assert {body["model"] for _, _, body in llm.requests} == {"llm-a"}
        assert {e.source for e in added} == {"llm-a"} and built.labels([added[0].feature])[added[0].feature].source == "llm-a"
        assert explain_all(built, llm.url, "llm-a") == [] and len(llm.requests) == fired  # resumed: nothing asked again


FRENCH_TEXTS = ["Le chat dort sur la table de la cuisine pendant que le chien joue dans le jardin.",
                "Nous allons au marché le samedi matin pour acheter des légumes et du pain frais.",
                "Elle a écrit une lettre à sa grand-mère qui habite dans un petit village de montagne.",
                "Les enfants de l'école apprennent à lire et à compter avec leur nouvelle maîtresse."]


def test_label_search_finds_a_language_feature_by_its_language(tiny_lm_copy, tmp_path):
    """A feature made to fire on French (its encoder row: the mean residual of tokens only the
    French texts have, minus the other texts' mean; its bias: no other text reaches it) is
    labelled French text, and searching labels for "french" finds it and nothing else."""
    lm = tiny_lm_copy("llama", seed=3)
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=6, layer=0), seed=1)
    other_ids = set(lm.tokenize(SENTENCES)["input_ids"].flatten().tolist())
    fr, other = lm.capture(FRENCH_TEXTS, [0]), lm.capture(SENTENCES, [0])
    ids = lm.tokenize(FRENCH_TEXTS)["input_ids"]
    only_french = fr.mask & ~torch.isin(ids, torch.tensor(sorted(other_ids)))
    direction = fr.acts[0][only_french].mean(0) - other.valid(0, skip_first=True).mean(0)
    direction = 100 * direction / direction.norm()
    with torch.no_grad():
        sae.W_enc[:, 5] = direction
        sae.b_enc[5] = -(other.valid(0, skip_first=True) @ direction).max()
    texts = [("brown", t) for t in SENTENCES] + [("multilingual", t) for t in FRENCH_TEXTS]
    store = build_store(lm, sae, texts, tmp_path / "s.sqlite", layer=0, max_length=128, batch_size=4)
    labels = store.auto_labels()
    assert labels[5].startswith("French text; ")
    found = [e.feature for e in store.search_labels("french")]
    assert 5 in found and all(labels[f].startswith("French text") for f in found)
    assert not any("French" in label for f, label in labels.items() if f not in found)
