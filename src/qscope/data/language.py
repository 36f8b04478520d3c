"""Offline language detection: Unicode scripts + stopwords.

Why: scoring steered text ("is this answer in French?") and measuring code-switching ("does
this answer contain any Chinese?") without downloading a model.

- Non-Latin languages are told apart by Unicode script (`SCRIPTS`): zh (Han), ja (kana; Han
  with kana is Japanese), ko, ru (Cyrillic), ar (Arabic script).
- Latin-script languages by stopwords (`STOPWORDS`: en fr de es it pt nl).

Two questions, two kinds of function:

- "which language is this text in?": `detect_language` (one answer or "und", for whole
  answers of a sentence or more) and `language_detector(lang)` (its text -> bool form);
- "which languages does this text contain?": `detect_languages`, `contains_language` (scripts
  anywhere, Latin languages per sentence) and `code_switch_ratio` (the fraction of responses
  containing an unwanted language).

Every function raises `UnknownLanguage` (a `QScopeError`) for a language it cannot detect.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from ..errors import QScopeError

# script -> [(first, last) code point ranges]; script names are what `script_counts` reports.
SCRIPTS: dict[str, list[tuple[int, int]]] = {
    "han": [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)],
    "kana": [(0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF)],
    "ko": [(0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)],
    "ru": [(0x0400, 0x04FF)],
    "ar": [(0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
}
# the language each script stands for (kanji alone reads as zh; any kana makes it ja)
SCRIPT_LANGUAGES = {"han": "zh", "kana": "ja", "ko": "ko", "ru": "ru", "ar": "ar"}

# lang -> (words both scorers count, words only `detect_language` counts, words only
# `stopword_ratios` counts). The two scorers had separate lists when their results were
# published (steering: docs/steering; code-switching: docs/posttrain); merging them changes some
# answers, so each scorer still counts exactly its old words. Each word is listed once.
_STOPWORD_TABLE: dict[str, tuple[str, str, str]] = {
    "en": ("the of and to in is that it for was on are with as be this by at from have not or an they which you",
           "were has what there their can will would i we", "but his her"),
    "fr": ("le la les des et est une un du que qui dans pour pas sur au avec ce il elle sont nous vous ou aux",
           "je ne mais son sa ses cette c qu l d j n s", "être"),
    "de": ("der die das und ist nicht ein eine zu den von mit sich auf für im dem auch es ich sie wird oder",
           "wir sind werden aber bei nach", "des"),
    "es": ("el la los las que y en un una es por con para se del al lo como su más pero sus",
           "no está son muy este esta hay", "de"),
    "it": ("il di che la e è per un una non sono del della con si gli le da nel alla anche", "", ""),
    "pt": ("o a os as de que e do da em um uma para com não é se por mais dos das ao", "", ""),
    "nl": ("de het een van en is dat niet op te zijn met voor die ook er aan als bij", "", ""),
}
# every known stopword of each Latin-script language
STOPWORDS: dict[str, frozenset[str]] = {lang: frozenset(" ".join(cols).split()) for lang, cols in _STOPWORD_TABLE.items()}
_DOMINANT_WORDS = {lang: frozenset(f"{both} {mine}".split())  # what `detect_language` counts
                   for lang, (both, mine, _) in _STOPWORD_TABLE.items() if lang in ("en", "fr", "de", "es")}
_RATIO_WORDS = {lang: frozenset(f"{both} {mine}".split())  # what `stopword_ratios` counts
                for lang, (both, _, mine) in _STOPWORD_TABLE.items()}

LANGUAGES = ("en", "fr", "de", "es", "zh", "ja", "ko", "ru", "ar")  # what `detect_language` answers
LANGS = tuple(SCRIPT_LANGUAGES.values()) + tuple(STOPWORDS)  # what `contains_language` knows

# one compiled character class per script (e.g. SCRIPT_PATTERNS["han"].search(text))
SCRIPT_PATTERNS = {script: re.compile("[" + "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges) + "]")
              for script, ranges in SCRIPTS.items()}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)  # a word, elisions kept whole: "l'eau"
_SENT = re.compile(r"(?<=[.!?;:。！？\n])\s*")


class UnknownLanguage(QScopeError):
    """A language the offline detector cannot detect."""


def _check(lang: str, known: Sequence[str] = LANGS) -> str:
    if lang not in known:
        raise UnknownLanguage(f"unknown language {lang!r}; the detector knows {', '.join(known)}")
    return lang


def _words(text: str, split_elisions: bool = False) -> list[str]:
    """Lower-cased words; `split_elisions` cuts "l'eau" into "l", "eau"."""
    words = [w.lower() for w in _WORD.findall(text)]
    return [p for w in words for p in w.split("'")] if split_elisions else words


def _has_script(text: str, lang: str) -> bool:
    """True if `text` has a letter of `lang`'s script (zh: Han and no kana)."""
    if lang == "zh":
        return bool(SCRIPT_PATTERNS["han"].search(text)) and not SCRIPT_PATTERNS["kana"].search(text)
    return bool(SCRIPT_PATTERNS["kana" if lang == "ja" else lang].search(text))


def script_counts(text: str) -> Counter:
    """Letters per script: han, kana, ko, ru, ar and latin (everything else alphabetic)."""
    counts: Counter = Counter()
    for ch in text:
        if ch.isalpha():
            counts[next((s for s, pat in SCRIPT_PATTERNS.items() if pat.match(ch)), "latin")] += 1
    return counts


def detect_language(text: str, min_share: float = 0.3) -> str:
    """Best guess of the text's language: one of LANGUAGES, or "und" (undetermined).

    A non-Latin script wins when it holds >= `min_share` of the letters (Han with some kana is
    Japanese); otherwise the language among en/fr/de/es with the most stopword hits wins (ties:
    "und"). As when the steering results were published, only those four languages are scored,
    with this function's own words of `_STOPWORD_TABLE`, and elisions are split ("l'eau" ->
    "l", "eau"); `stopword_ratios` counts a slightly different set, see the table."""
    counts = script_counts(text)
    letters = sum(counts.values())
    if not letters:
        return "und"
    cjk = counts["han"] + counts["kana"]
    if cjk / letters >= min_share:
        return "ja" if counts["kana"] >= 0.1 * cjk else "zh"
    for script in ("ko", "ru", "ar"):
        if counts[script] / letters >= min_share:
            return script
    words = _words(text, split_elisions=True)
    scores = {lang: sum(w in stops for w in words) for lang, stops in _DOMINANT_WORDS.items()}
    best = max(scores.values())
    winners = [lang for lang, s in scores.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else "und"


def language_detector(lang: str) -> Callable[[str], bool]:
    """A detector text -> bool: "is this text in `lang`?" (for `evaluate_steering`)."""
    _check(lang, LANGUAGES)

    def detector(text: str) -> bool:
        return detect_language(text) == lang

    detector.__name__ = f"is_{lang}"
    return detector


def stopword_ratios(text: str) -> dict[str, float]:
    """Fraction of words that are stopwords of each Latin-script language (en fr de es it pt nl;
    this function's own words of `_STOPWORD_TABLE`, as when the code-switch results were
    published; elisions stay whole: "l'eau" is one word)."""
    words = _words(text)
    if not words:
        return {lang: 0.0 for lang in _RATIO_WORDS}
    return {lang: sum(w in sw for w in words) / len(words) for lang, sw in _RATIO_WORDS.items()}


def latin_language(segment: str, min_words: int = 4, min_ratio: float = 0.15) -> str | None:
    """The Latin-script language of a segment by stopword ratio, or None if unsure."""
    words = [w for w in _WORD.findall(segment) if w.isascii() or not any(p.search(w) for p in SCRIPT_PATTERNS.values())]
    if len(words) < min_words:
        return None
    ratios = stopword_ratios(" ".join(words))
    best = max(ratios, key=ratios.get)
    ranked = sorted(ratios.values(), reverse=True)
    if ranked[0] < min_ratio or ranked[0] - ranked[1] < 0.05:
        return None
    return best


def detect_languages(text: str) -> set[str]:
    """Languages present in `text`: scripts anywhere, Latin languages per sentence."""
    found = {lang for lang in SCRIPT_LANGUAGES.values() if _has_script(text, lang)}
    for seg in _SENT.split(text):
        lang = latin_language(seg)
        if lang:
            found.add(lang)
    return found


def contains_language(text: str, lang: str) -> bool:
    """True if any part of `text` is in `lang` (script match, or a sentence whose stopwords say so)."""
    _check(lang)
    if lang in SCRIPT_LANGUAGES.values():
        return _has_script(text, lang)
    return any(latin_language(seg) == lang for seg in _SENT.split(text))


def code_switch_ratio(responses: Sequence[str], unwanted: str | Iterable[str]) -> float:
    """Fraction of responses that contain any text in an unwanted language (Qwen-Scope's metric)."""
    unwanted = [unwanted] if isinstance(unwanted, str) else list(unwanted)
    for lang in unwanted:
        _check(lang)
    if not responses:
        return 0.0
    return sum(any(contains_language(r, lang) for lang in unwanted) for r in responses) / len(responses)


# ---------------------------------------------------------------------------- independent judge
@functools.lru_cache(maxsize=1)
def _lingua():
    """The lingua detector over LANGS, built once (its n-gram models ship in the wheel)."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in LANGS]
    return LanguageDetectorBuilder.from_languages(*langs).build()


def judge_language(text: str) -> str:
    """The text's language by the lingua library (an n-gram model, independent of the stopword
    tables above and better on short and mixed texts): one of LANGS, or "und" when the text has
    no letters."""
    if not any(ch.isalpha() for ch in text):
        return "und"
    found = _lingua().detect_language_of(text)
    return found.iso_code_639_1.name.lower() if found is not None else "und"


def language_judge(lang: str) -> Callable[[str], bool]:
    """A detector text -> bool by `judge_language`: "is this text in `lang`?"."""
    _check(lang)

    def judge(text: str) -> bool:
        return judge_language(text) == lang

    judge.__name__ = f"lingua_is_{lang}"
    return judge


# ------------------------------------------------------------------------- naming any language
@functools.lru_cache(maxsize=1)
def _lingua_every_language():
    """lingua over every language it knows, in its low-accuracy mode (trigrams only: a fraction
    of the memory and time, as accurate on texts of a few hundred characters)."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def identify_languages(texts: Sequence[str]) -> list[str]:
    """Each text's language among all of lingua's (75, e.g. Italian, Catalan, Vietnamese) as an
    ISO 639-1 code, or "und" (no letters, or no clear winner).

    Why beside `detect_language`: that one scores four Latin-script languages, so Italian or
    Catalan come out as French; naming what a text is in (feature labels) needs every language.
    The texts are read in parallel threads."""
    texts = list(texts)
    found = _lingua_every_language().detect_languages_in_parallel_of(texts) if texts else []
    return [lang.iso_code_639_1.name.lower() if lang is not None and any(ch.isalpha() for ch in text) else "und"
            for lang, text in zip(found, texts)]


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code lingua knows ("fr" -> "French"); the code itself otherwise."""
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())).name.title()
    except (AttributeError, ValueError):
        return code
