"""Per-item correctness (0/1) of a model on benchmark items: the input of performance redundancy.

Multiple choice, two ways. "text" (default): the choice whose own text, continuing the item's
stem (the question without lettered choices), has the highest log-likelihood per character -
the "RC" scoring small models are evaluated with (OLMES), one shared-prefix forward per item.
"letter": one forward, the letter whose token (" A" or "A") is likeliest after "Answer:" - the
cheapest, but models of this size (SmolLM2-135M, Gemma-3-270M) answer one fixed letter and
score at chance that way (measured: docs/evals.md), which ranks nothing. Open answers (TriviaQA, NQ): greedy generation,
first line, correct if a normalised gold alias occurs in it. Math: greedy generation, the final
number (GSM8K) or last \\boxed{} (MATH) against the gold answer. Code would need running model
output against tests, which qscope does not do. Results are cached per item, so runs resume.
The graders live in `qscope.data.graders` (shared with correctness prediction).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..data.benchmarks import LETTERS, BenchItem, item_key, resume_order
from ..data.graders import first_line, grade, letter_token_ids
from ..errors import QScopeError
from ..io import append_lines
from ..paths import file_slug, home_dir

if TYPE_CHECKING:
    from ..model import LM


@dataclass
class AccuracyConfig:
    batch_size: int = 8
    max_length: int = 512  # longer prompts keep their last tokens
    max_new_tokens: int = 24  # open answers
    max_new_tokens_math: int = 256
    mc_method: str = "text"  # "text" (choice likelihood per character) or "letter"
    chat: bool = False  # wrap generation prompts in the chat template (instruct models answer better)

    def __post_init__(self) -> None:
        if self.mc_method not in ("text", "letter"):
            raise QScopeError(f"mc_method must be 'text' or 'letter', got {self.mc_method!r}")


@dataclass
class AccuracyResult:
    benchmark: str
    model: str
    n_items: int
    accuracy: float
    method: str
    item_ids: list[str]
    correct: list[int]
    predictions: list[str]

    def to_dict(self, items: bool = True) -> dict:
        d = asdict(self)
        d["accuracy"] = round(self.accuracy, 4)
        if not items:
            for key in ("item_ids", "correct", "predictions"):
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AccuracyResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


# ---------------------------------------------------------------------------- scoring
@torch.no_grad()
def choose_letters(lm: LM, items: Sequence[BenchItem], max_length: int = 512) -> list[str]:
    """For each multiple-choice item, the letter with the highest next-token log-probability."""
    with lm.left_truncation():
        enc = lm.tokenize([it.prompt for it in items], max_length=max_length)
    logits = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False).logits
    last = enc["attention_mask"].sum(1) - 1
    logp = torch.log_softmax(logits[torch.arange(len(items)), last].float(), -1)
    out = []
    for row, it in zip(logp, items):
        ids = letter_token_ids(lm.tokenizer, len(it.choices))
        scores = [torch.logsumexp(row[v], 0).item() for v in ids]
        out.append(LETTERS[int(np.argmax(scores))])
    return out


@torch.no_grad()
def choice_scores(lm: LM, stem: str, choices: Sequence[str], max_length: int = 512) -> list[float]:
    """Log-likelihood per character of each " choice" continuing `stem`: the stem runs once and
    its KV cache is shared by all choices (batched, right-padded)."""
    tok = lm.tokenizer
    stem_ids = tok(stem, add_special_tokens=True)["input_ids"][-max_length:]
    conts = [tok(" " + str(c).strip(), add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for c in choices]
    dev = lm.device
    # Only the stem's last position is scored: skip the vocabulary projection everywhere else
    # (for large vocabularies, e.g. Gemma's 262k, that projection outweighs the decoder).
    out = lm.model(input_ids=torch.tensor([stem_ids], device=dev), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(choices))
    width = max(len(c) for c in conts)
    ids = torch.full((len(choices), width), tok.pad_token_id or 0, dtype=torch.long, device=dev)
    mask = torch.zeros((len(choices), len(stem_ids) + width), dtype=torch.long, device=dev)
    mask[:, :len(stem_ids)] = 1
    for i, c in enumerate(conts):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, len(stem_ids):len(stem_ids) + len(c)] = 1
    logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                      use_cache=True).logits.float(), -1)
    scores = []
    for i, (c, text) in enumerate(zip(conts, choices)):
        total = first[c[0]] + sum(logp[i, j - 1, c[j]] for j in range(1, len(c)))
        scores.append(float(total) / max(len(" " + str(text).strip()), 1))
    return scores


def choose_texts(lm: LM, items: Sequence[BenchItem], max_length: int = 512) -> list[str]:
    """For each multiple-choice item, the letter of the choice whose text is likeliest per character."""
    out = []
    for it in items:
        if not it.stem:
            raise QScopeError(f"{it.id}: no stem to score choice texts against; use mc_method='letter'")
        out.append(LETTERS[int(np.argmax(choice_scores(lm, it.stem, it.choices, max_length)))])
    return out


def _predict(lm: LM, items: Sequence[BenchItem], cfg: AccuracyConfig) -> list[str]:
    if items[0].kind == "mc":
        pick = choose_texts if cfg.mc_method == "text" else choose_letters
        return pick(lm, items, cfg.max_length)
    new = cfg.max_new_tokens_math if items[0].kind == "math" else cfg.max_new_tokens
    out = lm.generate([it.prompt for it in items], max_new_tokens=new, chat=cfg.chat)
    return [o if items[0].kind == "math" else first_line(o) for o in out]


# ---------------------------------------------------------------------------- run with cache
def run_accuracy(lm: LM, items: Sequence[BenchItem], config: AccuracyConfig | None = None, benchmark: str | None = None,
                 cache: bool | Path = True, progress: Callable[[int], None] | None = None) -> AccuracyResult:
    """Score `lm` on `items` -> per-item 0/1 (in item order); cached per model and benchmark."""
    cfg = config or AccuracyConfig()
    if not items:
        raise QScopeError(f"benchmark {benchmark or '?'}: no items")
    kinds = {it.kind for it in items}
    if "code" in kinds:
        raise QScopeError(f"{benchmark or items[0].benchmark}: code benchmarks need their tests run on model output; "
                          "qscope does not execute generated code")
    if len(kinds) > 1:
        raise QScopeError(f"{benchmark}: items mix kinds {sorted(kinds)}; score one kind at a time")
    benchmark = benchmark or items[0].benchmark or "benchmark"
    path = None
    if cache is not False:
        root = home_dir("accuracy") if cache is True else Path(cache)
        method = f".{cfg.mc_method}" if items[0].kind == "mc" else (".chat" if cfg.chat else "")
        path = root / file_slug(lm.name) / f"{file_slug(benchmark)}{method}.jsonl"
    keys = [item_key(it) for it in items]
    found: dict[tuple[str, str], tuple[str, int]] = {}
    if path and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                found[(rec["id"], rec["h"])] = (rec["pred"], int(rec["correct"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    todo = resume_order([j for j, k in enumerate(keys) if k not in found], items, cfg.batch_size)
    if progress and len(items) > len(todo):
        progress(len(items) - len(todo))
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        preds = _predict(lm, [items[j] for j in chunk], cfg)
        lines = []
        for j, p in zip(chunk, preds):
            found[keys[j]] = (p, int(grade(items[j], p)))
            lines.append(json.dumps({"id": keys[j][0], "h": keys[j][1], "pred": p, "correct": found[keys[j]][1]},
                                    ensure_ascii=False))
        if path:
            append_lines(path, lines)
        if progress:
            progress(len(chunk))
    correct = [found[k][1] for k in keys]
    method = {"mc": "choice-text log-likelihood per character" if cfg.mc_method == "text"
              else "choice-letter log-likelihood", "math": "greedy generation, final answer"}.get(
        items[0].kind, "greedy generation, alias match")
    return AccuracyResult(benchmark, lm.name, len(items), float(np.mean(correct)), method, [k[0] for k in keys],
                          correct, [found[k][0] for k in keys])


def accuracy_matrix(results: Sequence[AccuracyResult]) -> tuple[np.ndarray, list[str], list[str]]:
    """(items x models) 0/1 matrix over the items every model was scored on, plus item ids and models."""
    if not results:
        raise QScopeError("no accuracy results given")
    benches = {r.benchmark for r in results}
    if len(benches) > 1:
        raise QScopeError(f"accuracy results of several benchmarks mixed: {sorted(benches)}")
    common = set(results[0].item_ids).intersection(*(r.item_ids for r in results[1:]))
    ids = [i for i in results[0].item_ids if i in common]
    if not ids:
        raise QScopeError(f"{results[0].benchmark}: the models were scored on no common items")
    cols = [dict(zip(r.item_ids, r.correct)) for r in results]
    return np.array([[c[i] for c in cols] for i in ids], dtype=float), ids, [r.model for r in results]


def load_accuracy(folder: str | Path, benchmarks: Sequence[str]) -> dict[str, list[AccuracyResult]]:
    """{benchmark: one result per model} from a folder of `<model>/<benchmark>.json` files (as
    `qscope evals accuracy --out` writes them), models in file-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QScopeError(f"{folder}: not a folder of accuracy results")
    out = {}
    for name in benchmarks:
        files = sorted(folder.glob(f"*/{name}.json"))
        out[name] = [AccuracyResult.from_dict(json.loads(f.read_text())) for f in files]
    return out
