"""Score steering AxBench-style: concept success vs fluency vs side effects, against prompting.

For each strength the same prompts are answered with steering (greedy) and scored on:
- concept success: the share of answers a `detector(text) -> bool` accepts, and/or the target
  feature's mean / max activation when the answer is re-encoded (plain model, then the SAE);
- fluency: perplexity of the answer under the *unsteered* model, given the (plain) prompt;
- side effects: KL(plain || steered) of the next-token distributions along the plain model's own
  answers to neutral prompts (teacher-forced, so every strength is compared on the same tokens).
A prompting baseline (an instruction added to each prompt) gets the same three scores, because
prompting often beats SAE steering (AxBench) and steering is only worth it where it does not.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import QScopeError
from ..model import hooks
from ..stats import bootstrap_ratio_interval, wilson_interval

if TYPE_CHECKING:
    from ..model.lm import LM
    from ..sae import SAE

NEUTRAL_PROMPTS = [
    "What is the capital of Italy?",
    "Give me three tips for a good night's sleep.",
    "How does a bicycle work?",
    "Write one sentence about the weather today.",
    "What should I cook for dinner tonight?",
    "Explain what a computer does in simple words.",
    "Why do people keep dogs as pets?",
    "Describe a quiet morning in a small town.",
]
# A larger set for experiments that want an interval on the KL (the CLI keeps the short one).
NEUTRAL_PROMPTS_LONG = NEUTRAL_PROMPTS + [
    "What is a good way to start learning to cook?",
    "Name three animals that live in the ocean.",
    "How do I keep a houseplant alive?",
    "Tell me something interesting about the moon.",
    "What makes a good birthday present?",
    "How long should I boil an egg?",
    "Why is the grass green?",
    "Write a short note thanking a friend for dinner.",
    "What are the rules of tic-tac-toe?",
    "How can I get better at remembering names?",
    "Describe the smell of fresh bread.",
    "What do bees do all day?",
    "Suggest a name for a small grey cat.",
    "How does a refrigerator keep food cold?",
    "What is the difference between a lake and a pond?",
    "Give me a simple plan for a weekend hike.",
]


@dataclass
class SteerPoint:
    """Scores of one condition (a steering strength, or the prompting baseline)."""

    label: str
    strength: float | None
    success: float | None  # share of outputs the detector accepts
    target_mean: float | None  # target feature: mean activation over output tokens, mean over outputs
    target_max: float | None  # ... max over output tokens, mean over outputs
    perplexity: float  # exp(total NLL / total tokens) of the outputs under the unsteered model
    kl: float  # mean KL(plain || this) per token on neutral prompts (nats)
    mean_tokens: float
    outputs: list[str] = field(default_factory=list)
    success_ci: tuple[float, float] | None = None  # Wilson 95% interval over the prompts
    perplexity_ci: tuple[float, float] | None = None  # bootstrap 95% over prompts
    kl_ci: tuple[float, float] | None = None  # bootstrap 95% over neutral prompts
    success_alt: float | None = None  # the second judge's success (e.g. stopword detector)
    judge_agreement: float | None = None  # share of outputs on which the two judges agree
    edit_norm_ratio: float | None = None  # ||edit|| / mean residual norm at the layer

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SteerEvalResult:
    prompts: list[str]
    detector: str | None
    target_feature: int | None
    baseline_prompt: str | None
    steering: list[dict]  # the steering object per strength (`Steering.to_dict()`)
    points: list[SteerPoint]
    baseline: SteerPoint | None = None
    more_baselines: list[SteerPoint] = field(default_factory=list)  # further prompting instructions
    second_detector: str | None = None

    @property
    def baselines(self) -> list[SteerPoint]:
        return ([self.baseline] if self.baseline else []) + self.more_baselines

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "detector": self.detector, "second_detector": self.second_detector,
                "target_feature": self.target_feature, "baseline_prompt": self.baseline_prompt,
                "steering": self.steering, "points": [p.to_dict() for p in self.points],
                "baseline": self.baseline.to_dict() if self.baseline else None,
                "baselines": [b.to_dict() for b in self.baselines]}

    def table(self) -> list[dict]:
        """The scores without the outputs, one row per condition (baselines last)."""
        return [{k: v for k, v in p.to_dict().items() if k != "outputs"} for p in self.points + self.baselines]

    def plot(self, path: str | Path) -> Path:
        """Success (detector share, else target mean activation) vs perplexity, one point per
        strength, the prompting baseline as a star; written as a PNG."""
        return plot_success_fluency(self, path)


# ------------------------------------------------------------------ scoring helpers
def with_instruction(prompt: str, instruction: str) -> str:
    """The prompting baseline's prompt: `instruction` with a `{prompt}` slot, or put before it."""
    return instruction.format(prompt=prompt) if "{prompt}" in instruction else f"{instruction}\n\n{prompt}"


@torch.no_grad()
def continuation_logprobs(lm: LM, contexts: Sequence[str], continuations: Sequence[str], steer=None,
                          batch_size: int = 8) -> list[torch.Tensor]:
    """Per continuation: (n_tokens, vocab) log-probs of the model predicting each of its tokens
    after its context (contexts are used as given: apply the chat template first if wanted).

    With `steer`, the context forward runs first so the steering hook sees it as the prompt,
    and its 'generated' positions are the continuation, exactly as during `generate`."""
    tok = lm.tokenizer
    out: list[torch.Tensor] = []
    for start in range(0, len(contexts), batch_size):
        ctx = [tok(c)["input_ids"] for c in contexts[start:start + batch_size]]
        cont = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations[start:start + batch_size]]
        width = max(map(len, ctx))
        pad = tok.pad_token_id
        rows, mask = [], []
        for c, n in zip(ctx, cont):
            row = [pad] * (width - len(c)) + c + n
            rows.append(row)
            mask.append([0] * (width - len(c)) + [1] * (len(c) + len(n)))
        total = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (total - len(r)) for r in rows], device=lm.device)
        att = torch.tensor([m + [0] * (total - len(m)) for m in mask], device=lm.device)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        if steer is not None:
            with hooks.edit(lm.layers, lm._edits(steer)):  # fresh hook state: prompt forward, then all
                lm.model(input_ids=ids[:, :width], attention_mask=att[:, :width], position_ids=pos[:, :width],
                         use_cache=False)
                logits = lm.model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False).logits
        else:
            logits = lm.model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False).logits
        logp = torch.log_softmax(logits.float(), -1)
        for row, n in enumerate(cont):
            out.append(logp[row, width - 1:width - 1 + len(n)].cpu())
    return out


def item_nlls(logps: Sequence[torch.Tensor], continuations: Sequence[str], tokenizer) -> list[tuple[float, int]]:
    """Per continuation: (negative log-likelihood of its own tokens, number of tokens)."""
    out = []
    for lp, text in zip(logps, continuations):
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        out.append((-float(lp.gather(-1, ids.unsqueeze(-1)).sum()) if len(ids) else 0.0, len(ids)))
    return out


def nll_and_count(logps: Sequence[torch.Tensor], continuations: Sequence[str], tokenizer) -> tuple[float, int]:
    """Total negative log-likelihood of the continuations' own tokens, and their number."""
    items = item_nlls(logps, continuations, tokenizer)
    return sum(n for n, _ in items), sum(c for _, c in items)


def perplexity_with_interval(lm: LM, contexts: Sequence[str], continuations: Sequence[str],
                             batch_size: int = 8) -> tuple[float, tuple[float, float]]:
    """exp(mean NLL per token) of `continuations` after `contexts` under the model as is (no
    steering), with a 95% bootstrap interval over the continuations; nan if all are empty."""
    keep = [(c, t) for c, t in zip(contexts, continuations) if t.strip()]
    if not keep:
        return float("nan"), (float("nan"), float("nan"))
    ctx, cont = zip(*keep)
    items = item_nlls(continuation_logprobs(lm, ctx, cont, batch_size=batch_size), cont, lm.tokenizer)
    total, count = sum(n for n, _ in items), sum(c for _, c in items)
    if not count:
        return float("nan"), (float("nan"), float("nan"))
    lo, hi = bootstrap_ratio_interval([n for n, _ in items], [c for _, c in items])
    return math.exp(total / count), (math.exp(lo), math.exp(hi))


def perplexity(lm: LM, contexts: Sequence[str], continuations: Sequence[str], batch_size: int = 8) -> float:
    """exp(mean NLL per token) of `continuations` after `contexts` under the model as is
    (no steering); nan if every continuation is empty."""
    return perplexity_with_interval(lm, contexts, continuations, batch_size)[0]


def item_kls(p_logps: Sequence[torch.Tensor], q_logps: Sequence[torch.Tensor]) -> list[tuple[float, int]]:
    """Per item: (sum over its positions of KL(p || q), number of positions); log-prob inputs."""
    return [(float((p.exp() * (p - q)).sum(-1).clamp(min=0).sum()), len(p)) for p, q in zip(p_logps, q_logps)]


def mean_kl(p_logps: Sequence[torch.Tensor], q_logps: Sequence[torch.Tensor]) -> float:
    """Mean over all positions of KL(p || q), inputs as log-probs (nats)."""
    items = item_kls(p_logps, q_logps)
    count = sum(c for _, c in items)
    return sum(k for k, _ in items) / count if count else float("nan")


def kl_with_interval(p_logps: Sequence[torch.Tensor], q_logps: Sequence[torch.Tensor]) -> tuple[float, tuple[float, float]]:
    """`mean_kl` and its 95% bootstrap interval over the items (neutral prompts)."""
    items = item_kls(p_logps, q_logps)
    return mean_kl(p_logps, q_logps), bootstrap_ratio_interval([k for k, _ in items], [c for _, c in items])


@torch.no_grad()
def target_activation(lm: LM, sae: SAE, feature: int, texts: Sequence[str], batch_size: int = 8) -> tuple[float, float]:
    """Mean over texts of the feature's (mean, max) activation over each text's tokens (the
    first token is skipped: it is an attention sink); empty texts are left out."""
    from ..features.codes import iter_text_codes

    texts = [t for t in texts if t.strip()]
    if not texts:
        return float("nan"), float("nan")
    means, maxes = [], []
    for codes in iter_text_codes(lm, sae, texts, batch_size=batch_size, max_length=256):
        start = 1 if len(codes.tokens) > 1 else 0
        act = (codes.values[start:] * (codes.indices[start:] == feature)).sum(-1)
        means.append(float(act.mean()))
        maxes.append(float(act.max()))
    return sum(means) / len(means), sum(maxes) / len(maxes)


# ------------------------------------------------------------------ the evaluation
def _key(label: str, prompts: Sequence[str], max_new_tokens: int, steer_desc) -> str:
    blob = json.dumps([label, list(prompts), max_new_tokens, steer_desc], sort_keys=True, default=str)
    return f"{label}:{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def _generate(lm: LM, prompts, steer, max_new_tokens, batch_size, cache, key, progress) -> list[str]:
    if cache is not None and key in cache:
        if progress:
            progress(len(prompts))
        return list(cache[key])
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        outputs += lm.generate(prompts[start:start + batch_size], max_new_tokens=max_new_tokens, steer=steer, chat=True)
        if progress:
            progress(len(prompts[start:start + batch_size]))
    if cache is not None:
        cache[key] = outputs
    return outputs


def evaluate_steering(lm: LM, steering_factory: Callable[[float], object], prompts: Sequence[str],
                      strengths: Sequence[float], detector: Callable[[str], bool] | None = None,
                      target_feature: int | None = None, neutral_prompts: Sequence[str] = NEUTRAL_PROMPTS,
                      baseline_prompt: str | Sequence[str] | None = None, sae: SAE | None = None,
                      max_new_tokens: int = 32, neutral_tokens: int = 24, batch_size: int = 8,
                      cache: MutableMapping[str, list[str]] | None = None,
                      progress: Callable[[int], None] | None = None,
                      second_detector: Callable[[str], bool] | None = None,
                      edit_norm_ratio: Callable[[float], float] | None = None) -> SteerEvalResult:
    """Sweep `strengths` of `steering_factory(strength) -> Steering` over `prompts` (chat,
    greedy) and score each strength and each prompting baseline (see module doc).

    `baseline_prompt` is one instruction or several (each scored on its own). `target_feature`
    is read with `sae` (default: the steering's SAE). `second_detector` is an independent judge
    whose success and agreement with `detector` are reported beside it. `edit_norm_ratio(s)`
    gives each point's edit size relative to the residual norm. `cache` (a dict, e.g. one that
    saves itself to JSON) keeps generations so an interrupted sweep resumes. `progress(n)` is
    called as n more prompts are generated.
    """
    prompts, neutral_prompts = list(prompts), list(neutral_prompts)
    baselines = [baseline_prompt] if isinstance(baseline_prompt, str) else list(baseline_prompt or [])
    if not prompts:
        raise QScopeError("steering evaluation needs at least one prompt")
    if not strengths and not baselines:
        raise QScopeError("steering evaluation needs at least one strength")
    if not neutral_prompts:
        raise QScopeError("steering evaluation needs at least one neutral prompt (for the KL)")
    if detector is None and target_feature is None:
        raise QScopeError("give a detector or a target feature: without one there is no concept success to measure")
    bad = [s for s in strengths if not math.isfinite(float(s))]
    if bad:
        raise QScopeError(f"steering strength {bad[0]} is not a finite number")
    steers = [steering_factory(float(s)) for s in strengths]
    sae = sae if sae is not None else getattr(steers[0], "sae", None) if steers else None
    if target_feature is not None:
        if sae is None:
            raise QScopeError("target_feature needs an SAE: pass sae=")
        if not 0 <= target_feature < sae.cfg.d_sae:
            raise QScopeError(f"target feature {target_feature} out of range: the SAE has features 0..{sae.cfg.d_sae - 1}")

    chat = [lm.chat_prompt(p) for p in prompts]
    neutral_chat = [lm.chat_prompt(p) for p in neutral_prompts]
    neutral_out = _generate(lm, neutral_prompts, None, neutral_tokens, batch_size, cache,
                            _key("neutral", neutral_prompts, neutral_tokens, None), progress)
    neutral_out = [t if t.strip() else "." for t in neutral_out]
    plain_logps = continuation_logprobs(lm, neutral_chat, neutral_out, batch_size=batch_size)

    def score(label, strength, outputs, kl_logps, ratio=None) -> SteerPoint:
        success = success_ci = alt = agreement = None
        if detector:
            verdicts = [bool(detector(o)) for o in outputs]
            success, success_ci = sum(verdicts) / len(outputs), wilson_interval(sum(verdicts), len(outputs))
            if second_detector:
                others = [bool(second_detector(o)) for o in outputs]
                alt = sum(others) / len(outputs)
                agreement = sum(a == b for a, b in zip(verdicts, others)) / len(outputs)
        t_mean = t_max = None
        if target_feature is not None:
            t_mean, t_max = target_activation(lm, sae, target_feature, outputs, batch_size)
        n_tok = [len(lm.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs]
        ppl, ppl_ci = perplexity_with_interval(lm, chat, outputs, batch_size)
        kl, kl_ci = kl_with_interval(plain_logps, kl_logps)
        return SteerPoint(label, strength, success, t_mean, t_max, ppl, kl, sum(n_tok) / len(n_tok), outputs,
                          success_ci, ppl_ci, kl_ci, alt, agreement, ratio)

    points = []
    for strength, steer in zip(strengths, steers):
        desc = steer.to_dict() if hasattr(steer, "to_dict") else repr(steer)
        outputs = _generate(lm, prompts, steer, max_new_tokens, batch_size, cache,
                            _key(f"steer{strength:g}", prompts, max_new_tokens, desc), progress)
        steered_logps = continuation_logprobs(lm, neutral_chat, neutral_out, steer, batch_size)
        ratio = edit_norm_ratio(float(strength)) if edit_norm_ratio else None
        points.append(score(f"steer {strength:g}", float(strength), outputs, steered_logps, ratio))

    scored_baselines = []
    for instruction in baselines:
        instructed = [with_instruction(p, instruction) for p in prompts]
        outputs = _generate(lm, instructed, None, max_new_tokens, batch_size, cache,
                            _key("baseline", instructed, max_new_tokens, None), progress)
        instructed_neutral = [lm.chat_prompt(with_instruction(p, instruction)) for p in neutral_prompts]
        logps = continuation_logprobs(lm, instructed_neutral, neutral_out, batch_size=batch_size)
        scored_baselines.append(score(f"prompting: {instruction}", None, outputs, logps))

    detector_name = getattr(detector, "__name__", None) if detector else None
    return SteerEvalResult(prompts, detector_name, target_feature, baselines[0] if baselines else None,
                           [s.to_dict() if hasattr(s, "to_dict") else repr(s) for s in steers], points,
                           scored_baselines[0] if scored_baselines else None, scored_baselines[1:],
                           getattr(second_detector, "__name__", None) if second_detector else None)


def n_generations(n_prompts: int, n_strengths: int, n_neutral: int = len(NEUTRAL_PROMPTS),
                  baseline: bool | int = True) -> int:
    """How many prompts `evaluate_steering` generates for (for a progress bar's total);
    `baseline` is whether there is one prompting baseline, or how many there are."""
    return n_neutral + n_prompts * (n_strengths + int(baseline))


def plot_success_fluency(result: SteerEvalResult, path: str | Path) -> Path:
    """PNG: concept success (detector share, else target mean activation) against perplexity
    under the unsteered model; steering points joined in strength order, prompting as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_png

    use_detector = result.detector is not None
    metric = "success" if use_detector else "target_mean"
    ylabel = f"success ({result.detector})" if use_detector else f"feature {result.target_feature} mean activation"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [p.perplexity for p in result.points]
    ys = [getattr(p, metric) for p in result.points]
    ax.plot(xs, ys, "o-", color="tab:blue", label="SAE steering")
    for p, x, y in zip(result.points, xs, ys):
        ax.annotate(f"{p.strength:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for i, base in enumerate(result.baselines):
        ax.plot([base.perplexity], [getattr(base, metric)], "*", ms=14, color=f"C{3 + i}",
                label=base.label[:40])
    ax.set_xscale("log")
    ax.set_xlabel("perplexity under the unsteered model (lower = more fluent)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)
