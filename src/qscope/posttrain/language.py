"""Language features for SASFT.

- `monolinguality`: nu_s = mean activation on language L minus the mean over the other
  languages of their mean activation (per token, position 0 excluded); top features for L.
- `estimate_alphas`: each chosen feature's mean PRE-activation on non-L text.
- `script_token_ids`: the token ids of non-ASCII text (the unlikelihood baseline's set).

Detecting languages in text (`code_switch_ratio`, `contains_language`, ...) is `qscope.language`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch

from ..errors import QScopeError


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
