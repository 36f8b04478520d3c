"""Automatic feature labels: a short offline description from what the store already holds.

Why: a fresh install has no LLM explanations, and a list of bare ids says nothing. The label
reads like a person skimming the dashboard would: the language or kind of text the top
contexts share, the tokens the feature fires on most strongly, and the tokens its decoder
direction promotes. It is marked as automatic (`AUTO`) wherever it is shown; an explanation
(written by hand or by an LLM) replaces it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from ..data.language import detect_language

AUTO = "auto"  # the source of an automatic label
LANGUAGE_NAMES = {"fr": "French", "de": "German", "es": "Spanish", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
                  "ru": "Russian", "ar": "Arabic"}
CODE_CORPORA = {"code": "code", "pydocs": "Python docs"}
MAJORITY = 0.6  # share of top contexts that must agree before the label names their language / corpus
N_TOKENS = 3  # tokens named on each side


def shown_token(token: str) -> str:
    """A token as a label shows it: surrounding spaces dropped, newlines and tabs as visible marks."""
    return token.replace("\n", "↵").replace("\t", "⇥").strip() or ("␣" if token else "")


def _distinct(tokens: Iterable[str], n: int) -> list[str]:
    out, seen = [], set()
    for tok in tokens:
        shown = shown_token(tok)
        if shown and shown.lower() not in seen:
            seen.add(shown.lower())
            out.append(shown)
        if len(out) == n:
            break
    return out


def text_language(text: str, chars: int = 400) -> str:
    """The language of a stored text, judged on its start (enough for stopwords and scripts, and
    cheap: labels need it for every text of a store)."""
    return detect_language(text[:chars])


def context_kind(languages: Sequence[str], corpora: Sequence[str | None]) -> str | None:
    """'French text', 'code' ... when most top contexts' texts share a language or a code corpus."""
    if len(languages) < 2:
        return None
    lang, count = Counter(languages).most_common(1)[0]
    if lang in LANGUAGE_NAMES and count >= MAJORITY * len(languages):
        return f"{LANGUAGE_NAMES[lang]} text"
    kind, count = Counter(CODE_CORPORA.get(c or "") for c in corpora).most_common(1)[0]
    if kind and count >= MAJORITY * len(corpora):
        return kind
    return None


def auto_label(focus_tokens: Sequence[str], promoted: Sequence[str], languages: Sequence[str] = (),
               corpora: Sequence[str | None] = ()) -> str:
    """One line from the tokens a feature fires on (strongest context first), the tokens it
    promotes (strongest first), and the languages and corpus labels of its top contexts' texts."""
    parts = []
    kind = context_kind(languages, corpora)
    if kind:
        parts.append(kind)
    ranked = [tok for tok, _ in Counter(focus_tokens).most_common()]  # ties keep activation order
    fires = _distinct(ranked, N_TOKENS)
    if fires:
        parts.append("fires on " + ", ".join(fires))
    promotes = _distinct(promoted, N_TOKENS)
    if promotes:
        parts.append("promotes " + ", ".join(promotes))
    return "; ".join(parts) or "never fired"
