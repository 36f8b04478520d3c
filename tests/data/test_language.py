"""Offline language detection (qscope.data.language): dominant language, languages contained, code-switching."""

import pytest

import qscope.posttrain
from qscope.data import language as d
from qscope.errors import QScopeError
from qscope.data.language import (
    UnknownLanguage,
    code_switch_ratio,
    contains_language,
    detect_language,
    detect_languages,
    language_detector,
    latin_language,
    script_counts,
    stopword_ratios,
)


def test_detector_languages_and_counts():
    cases = {
        "The weather is nice and the children are playing in the park.": "en",
        "Le chat dort sur le canapé et la pluie tombe dans la rue.": "fr",
        "Der Hund ist nicht im Garten und die Katze schläft auf dem Sofa.": "de",
        "El perro está en el jardín y los niños juegan con la pelota.": "es",
        "我今天很高兴，因为天气很好。": "zh",
        "今日はとても良い天気ですね。": "ja",
        "오늘 날씨가 정말 좋네요.": "ko",
        "Сегодня очень хорошая погода.": "ru",
        "الطقس جميل اليوم.": "ar",
        "12345 !!!": "und",
    }
    for text, lang in cases.items():
        assert detect_language(text) == lang, text
    assert script_counts("ab猫") == {"latin": 2, "han": 1}
    assert script_counts("ㇰﻻ") == {"kana": 1, "ar": 1}  # kana extension, Arabic presentation form
    is_fr = language_detector("fr")
    assert is_fr.__name__ == "is_fr"
    outputs = ["Le chat est sur la table.", "The cat is on the table.", "Je ne sais pas."]
    assert sum(map(is_fr, outputs)) == 2
    with pytest.raises(QScopeError, match="unknown language"):
        language_detector("xx")
    with pytest.raises(UnknownLanguage):
        language_detector("it")  # contains_language knows Italian; detect_language does not answer it


def test_code_switch_detector():
    assert contains_language("Hello, 你好 world", "zh")
    assert not contains_language("Hello world, this is fine.", "zh")
    assert contains_language("こんにちは、世界", "ja") and not contains_language("こんにちは、世界", "zh")
    assert contains_language("안녕하세요", "ko")
    assert contains_language("Привет, мир", "ru")
    assert contains_language("مرحبا بالعالم", "ar")
    en = "The weather is nice today and we are going to the park with the children."
    fr = "Le chat est sur la table et il ne veut pas descendre pour manger avec nous."
    de = "Der Hund ist nicht in dem Haus, und er wird auch nicht mit uns spielen."
    assert contains_language(en + " " + fr, "fr")
    assert not contains_language(en, "fr")
    assert contains_language(de, "de") and not contains_language(de, "fr")
    assert "en" in detect_languages(en) and "fr" in detect_languages(en + " " + fr)
    assert detect_languages("漢字とかな") == {"ja"}  # kanji with kana is Japanese, not also Chinese
    responses = [en, en + " " + fr, "OK 好的", en]
    assert code_switch_ratio(responses, "fr") == 0.25
    assert code_switch_ratio(responses, ["fr", "zh"]) == 0.5
    assert code_switch_ratio([], "zh") == 0.0
    for bad in (lambda: code_switch_ratio(responses, "xx"), lambda: contains_language("x", "xx")):
        with pytest.raises(UnknownLanguage, match="unknown language"):
            bad()
    assert qscope.posttrain.code_switch_ratio is code_switch_ratio  # still importable from posttrain


def test_stopword_ratios_and_latin_language():
    r = stopword_ratios("Il est dans la maison.")
    assert set(r) == set(d.STOPWORDS) == {"en", "fr", "de", "es", "it", "pt", "nl"}
    assert r["fr"] == pytest.approx(4 / 5)  # il est dans la and r["en"] == 0.0
    assert stopword_ratios("") == {lang: 0.0 for lang in d.STOPWORDS}
    assert stopword_ratios("l'eau")["fr"] == 0.0  # elisions stay one word here...
    assert detect_language("l'eau l'air d'or") == "fr"  # ...but detect_language splits them
    assert latin_language("Der Hund ist nicht im Haus.") == "de"
    assert latin_language("Der Hund.") is None  # too few words
    assert latin_language("Ciao amico mio, come stai oggi") is None  # no stopwords: unsure


def test_one_stopword_table():
    """Each scorer counts a subset of STOPWORDS; the words only one scorer counts are the pinned
    differences that keep published results unchanged (see _STOPWORD_TABLE)."""
    for lang, words in d._DOMINANT_WORDS.items():
        assert words <= d.STOPWORDS[lang]
    for lang, words in d._RATIO_WORDS.items():
        assert words <= d.STOPWORDS[lang]
    assert "je" in d._DOMINANT_WORDS["fr"] and "je" not in d._RATIO_WORDS["fr"]
    assert "de" in d._RATIO_WORDS["es"] and "de" not in d._DOMINANT_WORDS["es"]
