"""Labelled sets for correctness prediction: run the model on QA items, record right or wrong
plus everything a confidence score could need, cached per item so interrupted runs resume.

One greedy `generate` call per batch yields it all: its prefill gives the residual stream at
the last prompt token for every layer (recorded by hooks on the first call only) and the
next-token logits; its steps give the per-token uncertainty trace of the answer. Correctness:
multiple choice by choice-letter log-likelihood right after the prompt's "Answer:" (small models
ramble when asked to write the letter), or by "cloze" log-likelihood of each choice's text (what
small models are usually evaluated with: SmolLM2-135M answers "A" to every lettered ARC-Easy
question, which makes "correct" merely "the gold letter is A"); open answers by the first generated line containing a
normalised gold alias; math by the final number (graders: `qscope.data.graders`, shared with evals).
SAE codes are NOT cached: they are recomputed from the cached residuals, so new SAEs need no
new model run.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..data.benchmarks import LETTERS, BenchItem, item_key, mc_prompt
from ..data.graders import first_line, grade, letter_token_ids
from ..errors import QScopeError
from ..io import ItemCache
from ..model import hooks
from ..paths import file_slug, home_dir

if TYPE_CHECKING:
    from ..model import LM

MC_SCORING = ("letter", "cloze")


@dataclass
class LabelConfig:
    batch_size: int = 8
    max_length: int = 512  # longer prompts keep their last tokens
    max_new_tokens: int = 24  # generated answer (open); the trace covers its first line
    mc_scoring: str = "letter"  # multiple choice: "letter" (lettered prompt) or "cloze" (choice texts)
    mc_trace_tokens: int = 0  # letter scoring: tokens generated only for the trace (0: none)
    chat: bool = False  # wrap prompts in the model's chat template (letter and open answers)

    def __post_init__(self) -> None:
        if self.mc_scoring not in MC_SCORING:
            raise QScopeError(f"mc_scoring must be one of {MC_SCORING}, got {self.mc_scoring!r}")

    def key(self) -> str:
        """Short hash naming the cache file; fields added later enter it only when not at their
        default, so existing caches keep their names."""
        d = asdict(self)
        if not d["chat"]:
            del d["chat"]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class LabelledItem:
    """One item: correct or not, the next-token distribution summary, the answer trace, and
    the residual at the last prompt token for every layer (fp16, (n_layers, d_model))."""

    id: str
    benchmark: str
    kind: str
    correct: int
    prediction: str
    gold: str
    next_stats: dict[str, float]  # full vocabulary, token after the prompt: maxp, entropy, margin_p, margin_logit
    choice_probs: list[float] = field(default_factory=list)  # MC: the model's distribution over the choices
    choice_scores: list[float] = field(default_factory=list)  # MC: what the decision maximises (letter log-prob
    # or, for cloze, per-character log-likelihood of the choice text)
    trace_p: list[float] = field(default_factory=list)  # per answer token: probability of the chosen token
    trace_h: list[float] = field(default_factory=list)  # per answer token: entropy (nats)
    resid: np.ndarray | None = None

    def to_record(self, prompt_hash: str) -> dict:
        """The item as a cache record (keyed by id and prompt hash; the residual as fp16 base64)."""
        d = {k: v for k, v in asdict(self).items() if k != "resid"}
        d["h"] = prompt_hash
        d["resid"] = {"shape": list(self.resid.shape),
                      "b64": base64.b64encode(self.resid.astype(np.float16).tobytes()).decode()}
        return d

    @classmethod
    def from_record(cls, record: dict) -> "LabelledItem":
        d = {k: v for k, v in record.items() if k not in ("h", "resid")}
        r = record["resid"]
        resid = np.frombuffer(base64.b64decode(r["b64"]), dtype=np.float16).reshape(r["shape"])
        return cls(**d, resid=resid)


@dataclass
class LabelledSet:
    """Items of one benchmark with labels; arrays are views for scoring and probing."""

    benchmark: str
    model: str
    items: list[LabelledItem]
    config: dict = field(default_factory=dict)  # the LabelConfig that produced the labels

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.correct for it in self.items], dtype=int)

    @property
    def accuracy(self) -> float:
        return float(self.labels.mean()) if self.items else float("nan")

    def resid(self, layer: int) -> np.ndarray:
        """(n_items, d_model) float32 residuals at the last prompt token after block `layer`."""
        return np.stack([it.resid[layer] for it in self.items]).astype(np.float32)

    @property
    def n_layers(self) -> int:
        return int(self.items[0].resid.shape[0]) if self.items else 0

    def to_dict(self) -> dict:
        """The summary (class balance); the items themselves live in the per-item cache."""
        return {"benchmark": self.benchmark, "model": self.model, "n_items": len(self.items),
                "n_correct": int(self.labels.sum()), "accuracy": round(self.accuracy, 4),
                "kind": self.items[0].kind if self.items else None}


# ---------------------------------------------------------------------------- model pass
def _dist_stats(logits: torch.Tensor) -> dict[str, float]:
    logp = torch.log_softmax(logits.float(), -1)
    p = logp.exp()
    top = logits.float().topk(2)
    ptop = p.topk(2).values
    return {"maxp": float(ptop[0]), "entropy": float(-(p * logp).sum()), "margin_p": float(ptop[0] - ptop[1]),
            "margin_logit": float(top.values[0] - top.values[1])}


def _trace(lm: LM, logits: list[torch.Tensor], tokens: torch.Tensor, stop_newline: bool) -> tuple[list[float],
           list[float]]:
    """p(chosen token) and entropy per generated token, up to EOS or the end of the first line."""
    ps, hs, text = [], [], ""
    eos = lm.tokenizer.eos_token_id
    for step, tok in enumerate(tokens.tolist()):
        if step >= len(logits) or (tok == eos and step > 0):
            break
        logp = torch.log_softmax(logits[step].float(), -1)
        ps.append(float(logp[tok].exp()))
        hs.append(float(-(logp.exp() * logp).sum()))
        text += lm.tokenizer.decode([tok])
        if tok == eos or (stop_newline and "\n" in text.lstrip("\n") and text.strip()):
            break
    return ps, hs


def question_prompt(item: BenchItem) -> str:
    """A lettered multiple-choice prompt without its choice lines, for cloze scoring."""
    tail = mc_prompt("", item.choices, header="")  # "\nA. ...\nB. ...\nAnswer:"
    if not item.prompt.endswith(tail):
        raise QScopeError(f"{item.id}: cloze scoring needs a prompt ending in its lettered choices and 'Answer:'")
    return item.prompt[: -len(tail)] + "\nAnswer:"


@torch.no_grad()
def label_cloze(lm: LM, items: Sequence[BenchItem], cfg: LabelConfig) -> list[LabelledItem]:
    """Multiple choice by the log-likelihood of each choice's text after the question (no letters
    shown): one right-padded forward over every (question + choice) of the batch, or over the
    questions alone when every choice is a single token. Decision: per-character log-likelihood
    (length-fair; plain log-likelihood when every choice is one token); `choice_probs`: softmax of the total log-likelihoods; the trace runs along the
    chosen answer's tokens (teacher-forced)."""
    tok = lm.tokenizer
    seqs, owners, spans = [], [], []
    for n, it in enumerate(items):
        q = tok(question_prompt(it), add_special_tokens=True)["input_ids"]
        conts = [tok(" " + str(c).strip(), add_special_tokens=False)["input_ids"] for c in it.choices]
        q = q[-max(1, cfg.max_length - max(len(c) for c in conts)):]
        single = all(len(c) == 1 for c in conts)
        for j, c in enumerate([[]] if single else conts):
            seqs.append(q + c)
            owners.append((n, j))
        spans.append((len(q), conts, single))
    width = max(len(x) for x in seqs)
    pad = tok.pad_token_id
    ids = torch.tensor([x + [pad] * (width - len(x)) for x in seqs], device=lm.device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs], device=lm.device)
    qpos = torch.tensor([spans[n][0] - 1 for n, _ in owners])
    with hooks.record(lm.layers, range(len(lm.layers)), stop=False, first_call_only=True, positions=qpos) as resid:
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    stacked = torch.stack([resid[i].float().cpu() for i in range(len(lm.layers))], dim=1).numpy().astype(np.float16)
    logp = torch.log_softmax(logits, -1)
    out = []
    for n, it in enumerate(items):
        qlen, conts, single = spans[n]
        rows = [r for r, (m, _) in enumerate(owners) if m == n]
        totals, per_tok = [], []
        for j, c in enumerate(conts):
            row = rows[0] if single else rows[j]
            lp = logp[row, qlen - 1: qlen - 1 + len(c)]
            per_tok.append((lp, torch.tensor(c)))
            totals.append(float(lp.gather(-1, torch.tensor(c, device=lp.device)[:, None]).sum()))
        norm = totals if single else [t / (len(str(ch).strip()) + 1) for t, ch in zip(totals, it.choices)]
        pick = int(np.argmax(norm))
        lp, c = per_tok[pick]
        trace_p = lp.gather(-1, c.to(lp.device)[:, None]).exp().reshape(-1).tolist()
        trace_h = (-(lp.exp() * lp).sum(-1)).tolist()
        out.append(LabelledItem(it.id, it.benchmark, "mc", int(LETTERS[pick] == it.answer), LETTERS[pick], it.answer,
                                _dist_stats(logits[rows[0], qlen - 1]), torch.softmax(torch.tensor(totals), 0).tolist(),
                                norm, trace_p, trace_h, stacked[rows[0]]))
    return out


@torch.no_grad()
def label_batch(lm: LM, items: Sequence[BenchItem], cfg: LabelConfig) -> list[LabelledItem]:
    """Run one batch (one kind) through the model; see the module docstring."""
    kind = items[0].kind
    if kind == "mc" and cfg.mc_scoring == "cloze":
        return label_cloze(lm, items, cfg)
    prompts = [lm.chat_prompt(it.prompt) if cfg.chat else it.prompt for it in items]
    with lm.left_truncation():
        enc = lm.tokenize(prompts, max_length=cfg.max_length, padding_side="left")
    new = cfg.max_new_tokens if kind != "mc" else max(1, cfg.mc_trace_tokens)
    with hooks.record(lm.layers, range(len(lm.layers)), stop=False, first_call_only=True,
                      positions="last") as resid:  # the prefill's last prompt token (left padding)
        out = lm.model.generate(**enc, max_new_tokens=new, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id,
                                temperature=None, top_p=None, top_k=None)
    stacked = torch.stack([resid[i].float().cpu() for i in range(len(lm.layers))], dim=1).numpy().astype(np.float16)
    gen = out.sequences[:, enc["input_ids"].shape[1]:]
    logits = out.logits  # tuple over steps of (batch, vocab), raw (before any processor)
    result = []
    for row, it in enumerate(items):
        step_logits = [lg[row] for lg in logits]
        first = step_logits[0]
        choice_probs: list[float] = []
        choice_scores: list[float] = []
        if kind == "mc":
            ids = letter_token_ids(lm.tokenizer, len(it.choices))
            logp = torch.log_softmax(first.float(), -1)
            scores = torch.stack([torch.logsumexp(logp[v], 0) for v in ids])
            choice_probs = torch.softmax(scores, 0).tolist()
            choice_scores = scores.tolist()
            prediction = LETTERS[int(scores.argmax())]
            correct = prediction == it.answer
        else:
            text = lm.tokenizer.decode(gen[row], skip_special_tokens=True)
            prediction = text if kind == "math" else first_line(text)
            correct = grade(it, text)
        trace_p, trace_h = ([], [])
        if kind != "mc" or cfg.mc_trace_tokens > 0:
            trace_p, trace_h = _trace(lm, step_logits, gen[row], stop_newline=kind != "math")
        result.append(LabelledItem(it.id, it.benchmark, kind, int(correct), prediction, it.answer, _dist_stats(first),
                                   choice_probs, choice_scores, trace_p, trace_h, stacked[row]))
    return result


# ---------------------------------------------------------------------------- cache
def cache_path(lm: LM, benchmark: str, cfg: LabelConfig, root: Path | None = None) -> Path:
    root = root or home_dir("uncertainty")
    return root / file_slug(lm.name) / f"{file_slug(benchmark)}-{cfg.key()}.jsonl"


def run_label(lm: LM, items: Sequence[BenchItem], config: LabelConfig | None = None, benchmark: str | None = None,
              cache: bool | Path = True, progress: Callable[[int], None] | None = None) -> LabelledSet:
    """Label `items` (one kind) with `lm`; each finished item is appended to the cache at once."""
    cfg = config or LabelConfig()
    if not items:
        raise QScopeError(f"benchmark {benchmark or '?'}: no items to label")
    kinds = {it.kind for it in items}
    if kinds - {"mc", "open", "math"} or len(kinds) > 1:
        raise QScopeError(f"{benchmark or items[0].benchmark}: need items of one kind among mc/open/math, got {sorted(kinds)}")
    benchmark = benchmark or items[0].benchmark or "benchmark"
    path = None
    if cache is not False:
        path = cache_path(lm, benchmark, cfg, None if cache is True else Path(cache))
    found = ItemCache(path)
    keys = [item_key(it) for it in items]
    todo = sorted((j for j, k in enumerate(keys) if k not in found), key=lambda j: len(items[j].prompt))
    if progress and len(items) > len(todo):
        progress(len(items) - len(todo))
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        done = label_batch(lm, [items[j] for j in chunk], cfg)
        found.add(item.to_record(keys[j][1]) for j, item in zip(chunk, done))
        if progress:
            progress(len(chunk))
    return LabelledSet(benchmark, lm.name, [LabelledItem.from_record(found[k]) for k in keys], asdict(cfg))
