"""Language features for SASFT.

- `monolinguality`: nu_s = mean activation on language L minus the mean over the other
  languages of their mean activation (per token, position 0 excluded); top features for L.
- `estimate_alphas`: each chosen feature's mean PRE-activation on non-L text.
- `script_token_ids`: the token ids of non-ASCII text (the unlikelihood baseline's set).

Detecting languages in text (`code_switch_ratio`, `contains_language`, ...) is `qscope.data.language`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from ..errors import QScopeError

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE


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


def monolinguality(lm: LM, sae: SAE, texts_by_lang: Mapping[str, Sequence[str]], lang: str, top: int = 2,
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
def estimate_alphas(lm: LM, sae: SAE, features: Sequence[int], non_L_texts: Sequence[str], layer: int | None = None,
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


# ---------------------------------------------------------------------- the SASFT feature set
def selection_split(texts_by_lang: Mapping[str, Sequence[str]], fraction: float = 0.5,
                    seed: int = 0) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(selection, held_out): a seeded `fraction` of each language's texts for choosing features
    and alphas, the rest kept apart for evaluation."""
    import random

    if not 0 < fraction < 1:
        raise QScopeError(f"selection fraction must be in (0, 1), not {fraction}")
    selection, held_out = {}, {}
    for lang, texts in texts_by_lang.items():
        texts = list(texts)
        random.Random(f"{seed}:{lang}").shuffle(texts)
        cut = max(1, round(len(texts) * fraction))
        selection[lang], held_out[lang] = texts[:cut], texts[cut:]
    return selection, held_out


@dataclass
class LanguageFeatureSet:
    """Features and alphas per layer for SASFT (`SASFTConfig(features=..., alphas=...)`); the
    JSON of `qscope posttrain features language --out` is `to_dict()`."""

    lang: str | None  # None: unknown (then every response is penalised)
    layers: dict[int, LanguageFeatures]
    alphas: dict[int, list[float]]
    n_alpha_texts: int = 0

    @property
    def features(self) -> dict[int, list[int]]:
        return {layer: lf.features for layer, lf in self.layers.items()}

    def to_dict(self) -> dict:
        return {"lang": self.lang, "n_alpha_texts": self.n_alpha_texts,
                "layers": {str(layer): {**lf.to_dict(), "alphas": self.alphas[layer]} for layer, lf in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LanguageFeatureSet":
        try:
            lang = d.get("lang", "")
            layers = {int(k): LanguageFeatures(int(k), v.get("lang", lang), [int(f) for f in v["features"]],
                                               v.get("scores", []), v.get("mean_on_lang", []), v.get("mean_on_others", []),
                                               v.get("n_texts", {}))
                      for k, v in d["layers"].items()}
            alphas = {int(k): [float(a) for a in v["alphas"]] for k, v in d["layers"].items()}
        except (KeyError, TypeError, AttributeError, ValueError):
            raise QScopeError("expected the JSON of `qscope posttrain features language --out` "
                              "({\"lang\": ..., \"layers\": {layer: {\"features\": [...], \"alphas\": [...]}}})") from None
        lang = lang or next((lf.lang for lf in layers.values() if lf.lang), None)
        return cls(lang, layers, alphas, int(d.get("n_alpha_texts", 0)))


def choose_language_features(lm: LM, saes: Mapping[int, SAE], selection: Mapping[str, Sequence[str]], lang: str,
                             top: int = 2, max_length: int = 64) -> LanguageFeatureSet:
    """SASFT's feature set, chosen on a selection split (`selection_split`), never on evaluation text.

    Features: per layer, the top-`top` by monolinguality (mean activation on `lang` minus the
    mean over the other languages; the paper takes the top 2 on two adjacent late layers).
    Alphas (the spec's rule): alpha_s = the MEAN of feature s's pre-activation distribution over
    the tokens of clean non-L text (the other languages' selection texts with no L in them,
    `contains_language`; position 0 excluded), so L_reduce only pushes down the part of a
    pre-activation above its usual level on text that should be free of L."""
    from ..data.language import contains_language

    clean = [t for k, v in selection.items() if k != lang for t in v if not contains_language(t, lang)]
    if not clean:
        raise QScopeError(f"no clean non-{lang} text in the selection split for the alphas")
    layers, alphas = {}, {}
    for layer, sae in sorted(saes.items()):
        res = monolinguality(lm, sae, selection, lang, top=top, layer=layer, max_length=max_length)
        layers[layer] = res
        alphas[layer] = estimate_alphas(lm, sae, res.features, clean, layer=layer, max_length=max_length).tolist()
    return LanguageFeatureSet(lang, layers, alphas, len(clean))
