"""A tiny offline language guesser, for scoring steered text ("is this answer in French?").

Non-Latin languages are told apart by Unicode script (zh/ja/ko/ru/ar); Latin-script text by
stopword counts (en/fr/de/es). It is meant for whole answers of a sentence or more, where it is
right almost always, not for single words; no model or download is needed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from ..errors import QScopeError

# (language, [(first, last) code point ranges])
SCRIPTS: dict[str, list[tuple[int, int]]] = {
    "han": [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)],
    "kana": [(0x3040, 0x309F), (0x30A0, 0x30FF)],
    "ko": [(0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)],
    "ru": [(0x0400, 0x04FF)],
    "ar": [(0x0600, 0x06FF), (0x0750, 0x077F)],
}

STOPWORDS: dict[str, set[str]] = {
    "en": set(["the", "and", "is", "are", "was", "were", "of", "to", "in", "that", "it", "this", "with", "for", "you", "not", "be", "have", "has", "on", "from", "they", "which", "what", "there", "their", "can", "will", "would", "an", "by", "at", "as", "or", "i", "we"]),
    "fr": set(["le", "la", "les", "des", "est", "et", "un", "une", "du", "que", "qui", "dans", "pour", "pas", "sur", "avec", "ce", "je", "vous", "nous", "il", "elle", "sont", "au", "aux", "ne", "mais", "ou", "son", "sa", "ses", "cette", "c", "qu", "l", "d", "j", "n", "s"]),
    "de": set(["der", "die", "das", "und", "ist", "nicht", "ein", "eine", "ich", "sie", "mit", "zu", "den", "dem", "auf", "für", "es", "sich", "auch", "von", "wir", "ist", "sind", "wird", "werden", "oder", "aber", "bei", "nach", "im"]),
    "es": set(["el", "la", "los", "las", "es", "y", "un", "una", "que", "en", "por", "con", "para", "no", "se", "del", "lo", "su", "como", "está", "son", "muy", "pero", "al", "sus", "más", "este", "esta", "hay"]),
}
LANGUAGES = ("en", "fr", "de", "es", "zh", "ja", "ko", "ru", "ar")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def script_counts(text: str) -> Counter:
    """Letters per script: han, kana, ko, ru, ar and latin (everything else alphabetic)."""
    counts: Counter = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        cp = ord(ch)
        for script, ranges in SCRIPTS.items():
            if any(lo <= cp <= hi for lo, hi in ranges):
                counts[script] += 1
                break
        else:
            counts["latin"] += 1
    return counts


def detect_language(text: str, min_share: float = 0.3) -> str:
    """Best guess of the text's language: one of LANGUAGES, or "und" (undetermined).

    A non-Latin script wins when it holds >= `min_share` of the letters (Han with some kana is
    Japanese); otherwise the Latin language with the most stopwords wins (ties: "und")."""
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
    words = [w.lower() for w in _WORD.findall(text)]
    scores = {lang: sum(w in stops for w in words) for lang, stops in STOPWORDS.items()}
    best = max(scores.values())
    winners = [lang for lang, s in scores.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else "und"


def language_detector(lang: str) -> Callable[[str], bool]:
    """A detector text -> bool: "is this text in `lang`?" (for `evaluate_steering`)."""
    if lang not in LANGUAGES:
        raise QScopeError(f"unknown language {lang!r}; the detector knows {', '.join(LANGUAGES)}")

    def detector(text: str) -> bool:
        return detect_language(text) == lang

    detector.__name__ = f"is_{lang}"
    return detector
