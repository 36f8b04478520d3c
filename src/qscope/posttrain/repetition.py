"""Repetition features (for SAE-guided RL) and the repetition-ratio metric.

A repetition feature fires more on a token's later repeats than on its first occurrence.
`repetition_features` compares, over texts with repeated n-grams, each feature's mean
activation at the first occurrence of every recurring n-gram (its last token) with the mean
at that n-gram's later repeats, and ranks by the increase. `causal_check` then amplifies and
suppresses the top features while generating and measures `repetition_ratio`.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import QScopeError

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

_TOKEN = re.compile(r"[\u3400-\u9fff]|[^\W_]+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (each CJK character and each punctuation mark on its own)."""
    return [t.lower() for t in _TOKEN.findall(text)]


def repetition_ratio(text: str, n: int = 3) -> float:
    """1 - distinct-n: the fraction of the text's word n-grams that repeat an earlier one
    (0 for text with no repeated n-gram or fewer than n words)."""
    toks = words(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def mean_repetition_ratio(texts: Sequence[str], n: int = 3) -> float:
    return sum(repetition_ratio(t, n) for t in texts) / max(len(texts), 1)


def repetitive_corpus(texts: Sequence[str], n: int = 200, seed: int = 0, min_words: int = 6) -> list[str]:
    """Texts with repeats: constructed ones (a sentence or phrase repeated 2-4 times, a
    passage repeated after some other text, a list with recurring items) from sentences of
    `texts`, plus the given texts that repeat naturally (repetition ratio of 3-grams > 0.05)."""
    rng = random.Random(seed)
    sents = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) >= min_words]
    sents = [s for s in sents if len(s) < 300]
    if len(sents) < 4:
        raise QScopeError("repetitive_corpus needs texts with at least 4 sentences of 6+ words")
    out = [t for t in texts if repetition_ratio(t) > 0.05][: n // 4]
    while len(out) < n:
        kind = rng.randrange(4)
        a, b, c = rng.sample(sents, 3)
        if kind == 0:
            out.append(" ".join([a] * rng.randint(2, 4)))
        elif kind == 1:
            out.append(f"{a} {b} {a} {c} {a}")
        elif kind == 2:
            phrase = " ".join(a.split()[: rng.randint(3, 6)])
            out.append(" ".join([phrase] * rng.randint(3, 6)))
        else:
            out.append(f"{a} {b} {c} {a} {b}")
    return out[:n]


def repeat_positions(ids: Sequence[int], n: int = 2) -> tuple[list[int], list[int]]:
    """(first, repeat) positions: the last token of the first occurrence of each n-gram that
    recurs later, and the last token of each later occurrence."""
    seen: dict[tuple, int] = {}
    first_of: dict[tuple, int] = {}
    repeats: list[int] = []
    for end in range(n - 1, len(ids)):
        gram = tuple(ids[end - n + 1:end + 1])
        if gram in seen:
            repeats.append(end)
            first_of[gram] = seen[gram]
        else:
            seen[gram] = end
    return sorted(set(first_of.values())), repeats


@dataclass
class RepetitionFeature:
    feature: int
    score: float
    mean_first: float
    mean_repeat: float
    rate_first: float
    rate_repeat: float


@dataclass
class RepetitionFeatures:
    layer: int
    ngram: int
    n_texts: int
    n_first: int
    n_repeat: int
    features: list[RepetitionFeature] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [f.feature for f in self.features]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def repetition_features(lm: LM, sae: SAE, texts: Sequence[str], layer: int | None = None, top: int = 20, ngram: int = 2,
                        max_length: int = 128, batch_size: int = 8, progress=None) -> RepetitionFeatures:
    """Features ranked by mean activation at repeats minus mean at first occurrences."""
    layer = lm.check_sae(sae, layer)
    d = sae.cfg.d_sae
    sums = {k: torch.zeros(d, dtype=torch.float64) for k in ("first", "repeat")}
    fires = {k: torch.zeros(d, dtype=torch.float64) for k in ("first", "repeat")}
    counts = {"first": 0, "repeat": 0}
    texts = [t for t in texts if t.strip()]
    for start in range(0, len(texts), batch_size):
        cap = lm.capture(texts[start:start + batch_size], [layer], max_length=max_length, batch_size=batch_size)
        for row in range(cap.input_ids.shape[0]):
            m = cap.mask[row]
            ids = cap.input_ids[row][m].tolist()
            first, repeat = repeat_positions(ids, ngram)
            first = [p for p in first if p > 0]
            if not first or not repeat:
                continue
            codes = sae.encode(cap.acts[layer][row][m].float())
            for key, pos in (("first", first), ("repeat", repeat)):
                c = codes[pos]
                sums[key] += c.double().sum(0)
                fires[key] += (c > 0).double().sum(0)
                counts[key] += len(pos)
        if progress:
            progress()
    if not counts["first"] or not counts["repeat"]:
        raise QScopeError("no repeated n-grams found in the texts: pass repetitive texts (see repetitive_corpus)")
    mf, mr = sums["first"] / counts["first"], sums["repeat"] / counts["repeat"]
    score = mr - mf
    order = score.argsort(descending=True)[:top].tolist()
    feats = [RepetitionFeature(f, float(score[f]), float(mf[f]), float(mr[f]), float(fires["first"][f] / counts["first"]),
                               float(fires["repeat"][f] / counts["repeat"])) for f in order]
    return RepetitionFeatures(layer, ngram, len(texts), counts["first"], counts["repeat"], feats)


@dataclass
class CausalCheck:
    layer: int
    features: list[int]
    strengths: list[float]
    repetition: list[float]  # mean repetition ratio per strength
    n_prompts: int
    samples: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def causal_check(lm: LM, sae: SAE, features: Sequence[int], prompts: Sequence[str],
                 strengths: Sequence[float] = (-8.0, 0.0, 8.0),
                 max_new_tokens: int = 48, seed: int = 0, n: int = 3, batch_size: int = 32, do_sample: bool = True,
                 progress=None) -> CausalCheck:
    """Mean repetition ratio of generations with each strength added to all `features`
    (negative suppresses, 0 = unsteered): amplify -> more repetition if the features are causal."""
    from ..steer import Steering

    reps, samples = [], {}
    for s in strengths:
        steer = Steering.add(sae, {int(f): float(s) for f in features}) if s else None
        outs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            outs += lm.generate(list(prompts[start:start + batch_size]), max_new_tokens=max_new_tokens, steer=steer, chat=True,
                                do_sample=do_sample, seed=seed + start)
            if progress:
                progress()
        reps.append(mean_repetition_ratio(outs, n))
        samples[str(s)] = outs[:3]
    return CausalCheck(lm.check_sae(sae), [int(f) for f in features], [float(s) for s in strengths], reps, len(prompts), samples)
