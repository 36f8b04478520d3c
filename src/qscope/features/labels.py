"""Automatic feature labels: a short offline description from what the store already holds.

Why: a fresh install has no LLM explanations, and a list of bare ids says nothing. The label
reads like a person skimming the dashboard would: the language or kind of text the strong top
contexts share, the tokens the feature fires on there, and the tokens its decoder direction
promotes. It is marked as automatic (`AUTO`) wherever it is shown; an explanation (written by
hand or by an LLM) replaces it.

Only the strong contexts (at least `STRONG` of the feature's top activation) count: a feature
fires weakly on much besides what it is about, and in a small store a language with a handful
of texts fills only the first few of its top contexts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from ..data.language import identify_languages, language_name

AUTO = "auto"  # the source of an automatic label
UNNAMED_LANGUAGES = {"en", "und"}  # English is most of the default texts: naming it would tell nothing
CODE_CORPORA = {"code": "code", "pydocs": "Python docs"}
MAJORITY = 0.6  # share of strong contexts that must agree before the label names their language / corpus
STRONG = 0.5  # a top context counts when its activation is at least this share of the feature's strongest
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


def text_languages(texts: Sequence[str], corpora: Sequence[str | None], chars: int = 400) -> list[str]:
    """The language code of each stored text, judged on its start (plenty for a language model,
    and cheap: labels need it for every text of a store). Texts of code corpora are "und": code
    reads as some language to a detector, and the corpus already says what it is."""
    return [("und" if CODE_CORPORA.get(corpus or "") else lang)
            for lang, corpus in zip(identify_languages([t[:chars] for t in texts]), corpora)]


def strong(acts: Sequence[float]) -> list[bool]:
    """Which top contexts (activations, strongest first) count: those >= STRONG x the strongest."""
    return [a >= STRONG * max(acts) for a in acts] if acts else []


def context_kind(languages: Sequence[str], corpora: Sequence[str | None]) -> str | None:
    """'French text', 'code' ... when most (strong) contexts' texts share a language or a code corpus."""
    if len(languages) < 2:
        return None
    lang, count = Counter(languages).most_common(1)[0]
    if lang not in UNNAMED_LANGUAGES and count >= MAJORITY * len(languages):
        return f"{language_name(lang)} text"
    kind, count = Counter(CODE_CORPORA.get(c or "") for c in corpora).most_common(1)[0]
    if kind and count >= MAJORITY * len(corpora):
        return kind
    return None


def auto_label(focus_tokens: Sequence[str], promoted: Sequence[str], languages: Sequence[str] = (),
               corpora: Sequence[str | None] = (), acts: Sequence[float] | None = None) -> str:
    """One line from the tokens a feature fires on in its top contexts (strongest first), the
    tokens it promotes (strongest first), and the languages and corpus labels of its top
    contexts' texts; with `acts` (the contexts' activations) only the strong contexts count."""
    if acts is not None:
        keep = strong(acts)
        focus_tokens, languages, corpora = ([x for x, k in zip(seq, keep) if k] for seq in (focus_tokens, languages, corpora))
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
