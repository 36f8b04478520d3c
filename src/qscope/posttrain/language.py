"""Language features for SASFT and a code-switch detector.

- `monolinguality`: nu_s = mean activation on language L minus the mean over the other
  languages of their mean activation (per token, position 0 excluded); top features for L.
- `estimate_alphas`: each chosen feature's mean PRE-activation on non-L text.
- detection: Unicode script for zh / ja / ko / ru / ar (and other Cyrillic / Arabic-script
  text), a stopword-ratio test for Latin-script languages (en fr de es it pt nl);
  `code_switch_ratio(responses, unwanted)` = fraction of responses containing any text in
  an unwanted language.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

from ..errors import QScopeError

SCRIPT_PATTERNS = {
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "ja": re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff]"),  # kana (kanji alone reads as zh)
    "ko": re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]"),
    "ru": re.compile(r"[\u0400-\u04ff]"),
    "ar": re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]"),
}

STOPWORDS = {
    "en": "the of and to in is that it for was on are with as be this by at from have not or an they which you but his her".split(),
    "fr": "le la les des et est une un du que qui dans pour pas sur au avec ce il elle sont nous vous être ou aux".split(),
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es ich sie wird oder".split(),
    "es": "el la los las de que y en un una es por con para se del al lo como su más pero sus".split(),
    "it": "il di che la e è per un una non sono del della con si gli le da nel alla anche".split(),
    "pt": "o a os as de que e do da em um uma para com não é se por mais dos das ao".split(),
    "nl": "de het een van en is dat niet op te zijn met voor die ook er aan als bij".split(),
}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_SENT = re.compile(r"(?<=[.!?;:。！？\n])\s*")
LANGS = tuple(SCRIPT_PATTERNS) + tuple(STOPWORDS)


def _check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise QScopeError(f"unknown language {lang!r}; detectable: {', '.join(LANGS)}")
    return lang


def stopword_ratios(text: str) -> dict[str, float]:
    """Fraction of words that are stopwords of each Latin-script language."""
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return {lang: 0.0 for lang in STOPWORDS}
    return {lang: sum(w in set(sw) for w in words) / len(words) for lang, sw in STOPWORDS.items()}


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
    found = {lang for lang, pat in SCRIPT_PATTERNS.items() if pat.search(text)}
    if "ja" in found:
        found.discard("zh")  # kanji + kana is Japanese
    for seg in _SENT.split(text):
        lang = latin_language(seg)
        if lang:
            found.add(lang)
    return found


def contains_language(text: str, lang: str) -> bool:
    """True if any part of `text` is in `lang` (script match, or a sentence whose stopwords say so)."""
    _check_lang(lang)
    if lang in SCRIPT_PATTERNS:
        if lang == "zh":
            return bool(SCRIPT_PATTERNS["zh"].search(text)) and not SCRIPT_PATTERNS["ja"].search(text)
        return bool(SCRIPT_PATTERNS[lang].search(text))
    return any(latin_language(seg) == lang for seg in _SENT.split(text))


def code_switch_ratio(responses: Sequence[str], unwanted: str | Iterable[str]) -> float:
    """Fraction of responses that contain any text in an unwanted language (Qwen-Scope's metric)."""
    unwanted = [unwanted] if isinstance(unwanted, str) else list(unwanted)
    for lang in unwanted:
        _check_lang(lang)
    if not responses:
        return 0.0
    return sum(any(contains_language(r, lang) for lang in unwanted) for r in responses) / len(responses)


def script_token_ids(tokenizer, texts: Sequence[str]) -> list[int]:
    """Token ids used by `texts` whose decoded form has no ASCII character (e.g. CJK characters
    and the byte fragments a byte-level BPE splits them into): the unwanted-output set for an
    unlikelihood baseline."""
    ids: set[int] = set()
    for text in texts:
        ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    keep = []
    for i in sorted(ids):
        s = tokenizer.decode([i])
        if s.strip() and not any(c.isascii() for c in s):
            keep.append(i)
    return keep


# ---------------------------------------------------------------------- features
@dataclass
class LanguageFeatures:
    layer: int
    lang: str
    features: list[int]
    scores: list[float]
    mean_on_lang: list[float]
    mean_on_others: list[float]
    n_texts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def monolinguality(lm, sae, texts_by_lang: Mapping[str, Sequence[str]], lang: str, top: int = 2,
                   layer: int | None = None, max_length: int = 128, batch_size: int = 8, progress=None) -> LanguageFeatures:
    """Top-`top` features by nu = mean act on `lang` - mean over other languages of their mean act."""
    from ..features.search import collect_stats

    if lang not in texts_by_lang:
        raise QScopeError(f"no texts for language {lang!r} (have: {', '.join(texts_by_lang)})")
    others = [k for k in texts_by_lang if k != lang and texts_by_lang[k]]
    if not others:
        raise QScopeError("monolinguality needs texts in at least one other language")
    layer = lm.check_sae(sae, layer)
    means = {k: collect_stats(lm, sae, list(texts_by_lang[k]), layer, batch_size, max_length, progress).mean
             for k in [lang, *others]}
    other_mean = torch.stack([means[k] for k in others]).mean(0)
    nu = means[lang] - other_mean
    order = nu.argsort(descending=True)[:top].tolist()
    return LanguageFeatures(layer, lang, order, [float(nu[f]) for f in order], [float(means[lang][f]) for f in order],
                            [float(other_mean[f]) for f in order], {k: len(texts_by_lang[k]) for k in [lang, *others]})


@torch.no_grad()
def estimate_alphas(lm, sae, features: Sequence[int], non_L_texts: Sequence[str], layer: int | None = None,
                    max_length: int = 128, batch_size: int = 8) -> torch.Tensor:
    """Mean pre-activation of each feature over the tokens of `non_L_texts` (position 0 excluded)."""
    layer = lm.check_sae(sae, layer)
    texts = [t for t in non_L_texts if t.strip()]
    if not texts:
        raise QScopeError("estimate_alphas needs at least one non-empty text")
    idx = torch.as_tensor(list(features), dtype=torch.long)
    total = torch.zeros(len(idx), dtype=torch.float64)
    n = 0
    for start in range(0, len(texts), batch_size):
        cap = lm.capture(texts[start:start + batch_size], [layer], max_length=max_length, batch_size=batch_size)
        x = cap.valid(layer, skip_first=True)
        if not len(x):
            continue
        pre = sae.pre_acts(x.float())[:, idx]
        total += pre.double().sum(0)
        n += len(x)
    return (total / max(n, 1)).float()
