"""Detection scoring of an explanation: does it tell where the feature fires?

As in Eleuther's autointerp and SAEBench: a judge reads the explanation and a shuffled mix of
excerpts, some where the feature fires and some where it does not, and says which fire. The
score is the balanced accuracy (mean of the hit rates on the two classes: 0.5 is chance, 1 is
perfect), so it does not reward always answering yes. The activating excerpts are held out: the
top contexts the explainer was shown (`explain.N_EXAMPLES`) are left out, the rest of the top
contexts and the samples across activation intervals are used. The non-activating excerpts are
random windows of the store's texts on which the feature, read through the model, never fires.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import QScopeError
from ..llm import ChatClient
from .explain import N_EXAMPLES, ask_llm, example_text

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

SYSTEM = ("You check explanations of sparse-autoencoder features of a language model. Given an explanation of "
          "what a feature detects and numbered text excerpts, say in which excerpts the feature fires.")


class Judge(Protocol):
    name: str  # shown beside the score

    def __call__(self, explanation: str, excerpts: list[str]) -> list[bool]:
        """Does the feature fire on each excerpt, going by the explanation?"""


@dataclass
class Judged:
    text: str
    fires: bool  # the truth
    predicted: bool  # the judge's answer
    act: float


@dataclass
class DetectionScore:
    feature: int
    explanation: str
    source: str  # who wrote the explanation ("auto": the automatic label)
    judge: str
    balanced_accuracy: float
    hit_rate_fires: float  # share of activating excerpts the judge picked
    hit_rate_quiet: float  # share of non-activating excerpts the judge left out
    excerpts: list[Judged]

    def to_dict(self) -> dict:
        return asdict(self)


class LLMJudge:
    """An LLM behind an OpenAI-compatible endpoint (`explain.ask_llm`) as the judge: one request
    per scoring, the excerpts numbered, the reply the numbers of those that fire."""

    def __init__(self, endpoint: str, api_model: str, api_key: str | None = None, timeout: float = 120):
        self.client = ChatClient(endpoint, api_key, timeout)  # a malformed URL is refused now, not at the first scoring
        self.endpoint, self.api_model = endpoint, api_model
        self.name = api_model

    def messages(self, explanation: str, excerpts: Sequence[str]) -> list[dict]:
        lines = [f"Explanation: {explanation}", "Excerpts:"]
        lines += [f"{i}. {text}" for i, text in enumerate(excerpts, 1)]
        lines.append("Reply with the numbers of the excerpts where this feature fires, separated by commas, "
                     "or 'none'. Nothing else.")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]

    def __call__(self, explanation: str, excerpts: list[str]) -> list[bool]:
        reply = ask_llm(self.messages(explanation, excerpts), self.endpoint, self.api_model, max_tokens=512,
                        client=self.client)
        return picked(reply, len(excerpts))


def picked(reply: str, n: int) -> list[bool]:
    """'1, 4 and 7' -> [True, False, False, True, ...] for excerpts 1..n (other numbers ignored)."""
    chosen = {int(x) for x in re.findall(r"\d+", reply)}
    return [i in chosen for i in range(1, n + 1)]


def activating_excerpts(dash, n: int, rng: random.Random) -> list[tuple[str, float]]:
    """Up to `n` held-out (excerpt, activation) pairs of `dash`'s feature: top contexts after the
    ones an explainer sees, then interval samples, one per (text, position)."""
    seen = {(ex.text_index, ex.position) for ex in dash.top[:N_EXAMPLES]}
    pool = []
    for ex in [*dash.top[N_EXAMPLES:], *(ex for iv in dash.intervals for ex in iv.examples)]:
        if (ex.text_index, ex.position) not in seen:
            seen.add((ex.text_index, ex.position))
            pool.append((example_text(ex, "", ""), ex.act))
    return rng.sample(pool, min(n, len(pool)))


def quiet_excerpts(store, lm: LM, sae: SAE, feature: int, n: int, rng: random.Random, tries: int = 4) -> list[str]:
    """Up to `n` random windows of the store's texts on which `feature` does not fire anywhere
    (read alone through the model; position 0, the attention sink, left out)."""
    from .codes import iter_text_codes

    found: list[str] = []
    for _ in range(tries):
        windows = [text for _, text in store.random_windows(2 * n, rng.randrange(2**31))]
        for text, codes in zip(windows, iter_text_codes(lm, sae, windows, store.layer, max_length=64)):
            line = text.replace("\r", "").replace("\n", "↵")  # as `example_text` writes the activating ones
            if float(codes.dense_max(sae.cfg.d_sae)[feature]) <= 0 and text.strip() and line not in found:
                found.append(line)
        if len(found) >= n:
            break
    return found[:n]


def detection_score(store, lm: LM, sae: SAE, feature: int, judge: Judge, n: int = 8, seed: int = 0,
                    run_model: Callable = lambda fn, *a, **k: fn(*a, **k)) -> DetectionScore:
    """Score `feature`'s label in `store` (its newest explanation, else its automatic label) by
    detection on `n` activating and `n` non-activating excerpts. `run_model(fn, *args)` runs the
    model reads (a server passes its lock); the judge is called outside it."""
    dash = store.dashboard(feature)
    if not dash.label:
        raise QScopeError(f"feature {feature} has no explanation or label to score")
    rng = random.Random(seed)
    fires = activating_excerpts(dash, n, rng)
    if len(fires) < 2:
        raise QScopeError(f"feature {feature}: {len(fires)} activating excerpts beyond the {N_EXAMPLES} an explainer "
                          f"sees; a store with more texts (or a larger --top-n) is needed to score it")
    quiet = run_model(quiet_excerpts, store, lm, sae, feature, len(fires), rng)
    if len(quiet) < 2:
        raise QScopeError(f"feature {feature} fires on nearly every excerpt of the store's texts: "
                          "no non-activating excerpts to score against")
    items = [(text, True, act) for text, act in fires] + [(text, False, 0.0) for text in quiet]
    rng.shuffle(items)
    predicted = judge(dash.label, [text for text, _, _ in items])
    judged = [Judged(text, truth, bool(p), round(act, 4)) for (text, truth, act), p in zip(items, predicted)]
    hits = [sum(j.predicted == j.fires for j in judged if j.fires == cls) / sum(j.fires == cls for j in judged)
            for cls in (True, False)]
    return DetectionScore(feature, dash.label, dash.label_source, judge.name, round(sum(hits) / 2, 4),
                          round(hits[0], 4), round(hits[1], 4), judged)
