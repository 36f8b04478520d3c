"""Feature-driven data synthesis: cover the target features a seed set misses.

Coverage c_f = 1 if any seed example fires feature f (example level: max over tokens > 0,
position 0 skipped); Cov(D) = fraction of targets covered. For each uncovered target we generate
candidates - by steering the target up on a neutral prompt with the local model, or by asking an
OpenAI-compatible endpoint with a description of the feature - and keep a candidate only if it
actually fires its target. The baseline is untargeted generation (same generator, no steering /
no description) at the same budget. Every candidate carries its provenance.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

import numpy as np

from ..errors import QScopeError
from ..io import atomic_path
from ..llm import ChatClient
from .cache import encode_examples

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

NEUTRAL_PROMPTS = (
    "Write a short message.",
    "Say something.",
    "Write two sentences about anything you like.",
    "Tell me something.",
    "Write a short request you might send to an assistant.",
    "Continue the text.",
)
ENDPOINT_TEMPLATE = (
    "Write one short, realistic message that a user might send to an AI assistant. "
    "It should be about: {description}. Reply with the message only."
)
UNTARGETED_DESCRIPTION = "anything at all"


# ------------------------------------------------------------------------- coverage
@dataclass
class Coverage:
    targets: list[int]
    covered: list[int]
    n_texts: int

    @property
    def uncovered(self) -> list[int]:
        hit = set(self.covered)
        return [t for t in self.targets if t not in hit]

    @property
    def fraction(self) -> float:
        return len(self.covered) / len(self.targets) if self.targets else 1.0

    def to_dict(self) -> dict:
        return {
            "targets": len(self.targets),
            "covered": len(self.covered),
            "coverage": self.fraction,
            "n_texts": self.n_texts,
            "covered_ids": self.covered,
            "uncovered_ids": self.uncovered,
        }


def check_targets(targets: Sequence[int], d_sae: int) -> list[int]:
    targets = list(dict.fromkeys(int(t) for t in targets))
    if not targets:
        raise QScopeError("no target features given")
    bad = [t for t in targets if not 0 <= t < d_sae]
    if bad:
        raise QScopeError(f"target feature {bad[0]} out of range: this SAE has features 0..{d_sae - 1}")
    return targets


def coverage_from_acts(max_acts, targets: Sequence[int]) -> Coverage:
    """Coverage arithmetic on a (n_texts, d_sae) max-activation matrix (dense or sparse)."""
    targets = check_targets(targets, max_acts.shape[1])
    if max_acts.shape[0] == 0:
        return Coverage(targets, [], 0)
    fired = np.asarray((max_acts[:, targets] > 0).sum(0)).ravel() > 0
    return Coverage(targets, [t for t, on in zip(targets, fired) if on], max_acts.shape[0])


def max_acts_of(
    lm: LM,
    sae: SAE,
    texts: Sequence[str],
    max_length: int = 128,
    batch_size: int = 16,
    chunk: int = 64,
    progress: Callable[[int], None] | None = None,
):
    """(n, d_sae) sparse example-level max activations of `texts` at the SAE's layer."""
    import scipy.sparse as sp

    layer = lm.check_sae(sae)
    parts = []
    for start in range(0, len(texts), chunk):
        batch = list(texts[start : start + chunk])
        parts.append(encode_examples(lm, {layer: sae}, batch, max_length, batch_size).max_acts[layer])
        if progress:
            progress(len(batch))
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)


# ------------------------------------------------------------------------- targets
def targets_from_contrast(
    lm: LM, sae: SAE, positive: Sequence[str], negative: Sequence[str], n: int = 50, by: str = "rate", **kw
) -> list[int]:
    """The n features that fire most more often on `positive` than on `negative` texts."""
    from ..features.search import contrast

    return contrast(lm, sae, positive, negative, top=n, by=by, **kw).ids


def targets_from_text(query: str, n: int = 50, **kw) -> list[int]:
    """Features whose stored explanation matches `query` (needs the feature store)."""
    try:
        from ..features import store
    except ImportError:
        raise QScopeError(
            "targets by explanation need qscope.features.store (not available in this install); "
            "give feature ids or a contrast instead"
        ) from None
    search = getattr(store, "search", None)
    if search is None:
        raise QScopeError("qscope.features.store has no search(); give feature ids or a contrast instead")
    hits = search(query, limit=n, **kw)
    return [int(getattr(h, "feature", h if isinstance(h, int) else h.get("feature"))) for h in hits]


# ------------------------------------------------------------------------- generators
class Generator(Protocol):
    name: str

    def generate(self, target: int | None, n: int, seed: int) -> list[dict]:
        """n candidates for `target` (None = untargeted); dicts with text, prompt and settings."""


@dataclass
class RowSteering:
    """Adds `strength * W_dec[f_i]` to row i of the batch: one generate call serves many targets
    (rows with feature None are left alone). Duck-types `qscope.steer.Steering` for `lm.generate`."""

    sae: SAE
    features: list[int | None]
    strength: float

    def edits(self, lm: LM) -> dict:
        import torch

        layer = lm.check_sae(self.sae)
        rows = torch.stack(
            [self.sae.W_dec[f] if f is not None else torch.zeros_like(self.sae.W_dec[0]) for f in self.features]
        ).detach()

        def fn(h):
            if h.shape[0] != rows.shape[0]:
                raise QScopeError(f"row steering for {rows.shape[0]} rows got a batch of {h.shape[0]}")
            return h + self.strength * rows.to(h.device, h.dtype).unsqueeze(1)

        return {layer: fn}


class _LocalSampler:
    """Batched sampling with the local model, shared by the local generators: a subclass says how
    a batch of targets is prompted (`_batch`) and what a candidate records (`_candidate`)."""

    def generate(self, target: int | None, n: int, seed: int) -> list[dict]:
        return self.generate_batch([target] * n, seed)

    def generate_batch(self, targets: Sequence[int | None], seed: int) -> list[dict]:
        """One candidate per entry of `targets`, `batch` rows per generate call."""
        out: list[dict] = []
        for start in range(0, len(targets), self.batch):
            rows = list(targets[start : start + self.batch])
            prompts, options = self._batch(rows, seed + start)
            texts = self.lm.generate(
                prompts,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                seed=seed + start,
                **options,
            )
            out += [self._candidate(f, p, t.strip(), seed + start) for f, p, t in zip(rows, prompts, texts)]
        return out


@dataclass
class LocalSteered(_LocalSampler):
    """The local model, sampling on neutral prompts with the target's decoder direction added
    at every position (`target=None`: the same sampling unsteered, i.e. the random baseline).
    `generate_batch` serves many targets in one batched generate call."""

    lm: LM
    sae: SAE
    strength: float = 60.0
    prompts: Sequence[str] = NEUTRAL_PROMPTS
    max_new_tokens: int = 40
    temperature: float = 1.0
    chat: bool = True
    batch: int = 64

    @property
    def name(self) -> str:
        return f"local:{self.lm.name}"

    def _batch(self, rows: list[int | None], seed: int) -> tuple[list[str], dict]:
        prompts = [self.prompts[(seed + i) % len(self.prompts)] for i in range(len(rows))]
        steer = RowSteering(self.sae, rows, self.strength) if any(t is not None for t in rows) else None
        return prompts, {"steer": steer, "chat": self.chat}

    def _candidate(self, feature: int | None, prompt: str, text: str, seed: int) -> dict:
        steer = None if feature is None else {"feature": feature, "strength": self.strength}
        return {"text": text, "prompt": prompt, "seed": seed, "steer": steer}


EXAMPLES_TEMPLATE = (
    "Here are some messages that users sent to an AI assistant:\n{description}\n"
    "Write one new message in the same spirit. Reply with the message only."
)


def describe_by_examples(texts: Sequence[str], max_acts, n: int = 3, seed: int = 0) -> Callable[[int | None], str]:
    """Feature -> its n top-activating texts as a bullet list (the feature's "explanation" by
    example); None -> n texts drawn at random from the same pool (the random baseline)."""
    rng = np.random.default_rng(seed)
    acts = max_acts.tocsc()

    def bullets(rows) -> str:
        return "\n".join("- " + texts[int(i)].strip().replace("\n", " ")[:300] for i in rows)

    def describe(feature: int | None) -> str:
        if feature is None:
            return bullets(rng.choice(len(texts), size=min(n, len(texts)), replace=False))
        col = acts[:, feature].toarray().ravel()
        top = [i for i in np.argsort(-col, kind="stable")[:n] if col[i] > 0]
        if not top:
            raise QScopeError(
                f"feature {feature} fires on none of the example texts; give other examples or use steering"
            )
        return bullets(top)

    return describe


@dataclass
class LocalPrompted(_LocalSampler):
    """The local model, sampling from a prompt built from the feature's description (e.g. its
    top-activating examples); `target=None` describes no feature (random baseline)."""

    lm: LM
    describe: Callable[[int | None], str]
    template: str = EXAMPLES_TEMPLATE
    max_new_tokens: int = 40
    temperature: float = 1.0
    batch: int = 64

    @property
    def name(self) -> str:
        return f"local-prompted:{self.lm.name}"

    def _batch(self, rows: list[int | None], seed: int) -> tuple[list[str], dict]:
        return [self.template.format(description=self.describe(t)) for t in rows], {"chat": True}

    def _candidate(self, feature: int | None, prompt: str, text: str, seed: int) -> dict:
        return {"text": text, "prompt": prompt, "seed": seed}


def describe_by_tokens(lm: LM, sae: SAE, n: int = 10) -> Callable[[int], str]:
    """Feature -> text description from the tokens its decoder direction promotes."""
    from ..features.logits import token_effects

    def describe(feature: int) -> str:
        tokens = [t.strip() for t, _ in token_effects(lm, sae, [feature], n=n)[0].promoted if t.strip()]
        return "text involving words like " + ", ".join(repr(t) for t in tokens)

    return describe


@dataclass
class Endpoint:
    """An OpenAI-compatible chat-completions endpoint (`POST {base_url}/chat/completions`)."""

    base_url: str
    model: str
    describe: Callable[[int], str]
    template: str = ENDPOINT_TEMPLATE
    api_key: str | None = None
    temperature: float = 1.0
    max_tokens: int = 80
    timeout: float = 60.0
    describe_untargeted: bool = False  # True: describe(None) gives the random-baseline description

    def __post_init__(self) -> None:
        if "{description}" not in self.template:
            raise QScopeError("the prompt template must contain {description}")
        self.client = ChatClient(self.base_url, self.api_key or os.environ.get("OPENAI_API_KEY"), self.timeout)

    @property
    def name(self) -> str:
        return f"endpoint:{self.model}"

    def _complete(self, prompt: str, seed: int) -> str:
        return self.client.complete([{"role": "user", "content": prompt}], self.model, temperature=self.temperature,
                                    max_tokens=self.max_tokens, seed=seed)

    def generate(self, target: int | None, n: int, seed: int) -> list[dict]:
        description = (
            self.describe(target) if target is not None or self.describe_untargeted else UNTARGETED_DESCRIPTION
        )
        prompt = self.template.format(description=description)
        return [
            {"text": self._complete(prompt, seed + i).strip(), "prompt": prompt, "seed": seed + i} for i in range(n)
        ]


# ------------------------------------------------------------------------- synthesis
@dataclass
class Candidate:
    text: str
    target: int | None
    generator: str
    prompt: str
    activation: float  # the target's example-level max activation (0 = does not fire)
    kept: bool
    hits: list[int]  # every target this text fires
    seed: int
    steer: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _check(
    lm: LM, sae: SAE, rows: list[tuple[int | None, dict]], generator: str, targets: list[int], max_length: int
) -> list[Candidate]:
    """Encode candidates (unsteered) and mark each kept iff it fires its own target."""
    texts = [r["text"] for _, r in rows]
    live = [i for i, t in enumerate(texts) if t.strip()]
    acts = max_acts_of(lm, sae, [texts[i] for i in live], max_length=max_length)
    out = []
    row_of = {i: j for j, i in enumerate(live)}
    for i, (target, r) in enumerate(rows):
        j = row_of.get(i)
        vec = acts[j].toarray().ravel() if j is not None else np.zeros(sae.cfg.d_sae, dtype=np.float32)
        act = float(vec[target]) if target is not None else 0.0
        hits = [t for t in targets if vec[t] > 0]
        kept = act > 0 if target is not None else bool(hits)
        out.append(Candidate(r["text"], target, generator, r["prompt"], act, kept, hits, r["seed"], r.get("steer")))
    return out


def _generate(
    generator: Generator,
    calls: list[tuple[int | None, int, int]],
    batch_seed: int,
    progress: Callable[[int], None] | None,
) -> list[tuple[int | None, dict]]:
    """(target, record) rows for `calls` of (target, n, seed): all in one `generate_batch`
    seeded with `batch_seed` when the generator has it (many targets per forward), else one
    `generate` per call."""
    if hasattr(generator, "generate_batch"):
        wanted = [target for target, n, _ in calls for _ in range(n)]
        rows = list(zip(wanted, generator.generate_batch(wanted, batch_seed)))
        if progress:
            progress(len(wanted))
        return rows
    rows = []
    for target, n, call_seed in calls:
        rows += [(target, r) for r in generator.generate(target, n, call_seed)]
        if progress:
            progress(n)
    return rows


def synthesize(
    lm: LM,
    sae: SAE,
    targets: Sequence[int],
    generator: Generator,
    per_target: int = 4,
    seed: int = 0,
    max_length: int = 128,
    progress: Callable[[int], None] | None = None,
) -> list[Candidate]:
    """`per_target` candidates for each target; each checked for firing its target."""
    targets = check_targets(targets, sae.cfg.d_sae)
    calls = [(target, per_target, seed + 1000 * i) for i, target in enumerate(targets)]
    rows = _generate(generator, calls, seed, progress)
    return _check(lm, sae, rows, generator.name, targets, max_length)


def untargeted(
    lm: LM,
    sae: SAE,
    targets: Sequence[int],
    generator: Generator,
    budget: int,
    seed: int = 0,
    batch: int = 8,
    max_length: int = 128,
    progress: Callable[[int], None] | None = None,
) -> list[Candidate]:
    """The random baseline: `budget` untargeted generations; kept if they fire any target."""
    targets = check_targets(targets, sae.cfg.d_sae)
    calls = [(None, min(batch, budget - start), seed + 7919 * (i + 1))
             for i, start in enumerate(range(0, budget, batch))]
    rows = _generate(generator, calls, seed + 7919, progress)
    return _check(lm, sae, rows, f"random:{generator.name}", targets, max_length)


def write_jsonl(candidates: Iterable[Candidate], path: str | Path, kept_only: bool = True) -> int:
    """Candidates as JSONL with provenance (target, generator, prompt, activation ...), atomically."""
    rows = [c.to_dict() for c in candidates if c.kept or not kept_only]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
