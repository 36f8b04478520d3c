"""Grading a model's answer to a benchmark item: right or wrong, the same way everywhere.

Multiple choice: the predicted letter equals the gold letter. Open answers (TriviaQA, NQ): the
first line of the answer contains a normalised gold alias. Math: the final number (GSM8K) or
last \\boxed{} (MATH) equals the gold answer. Accuracy runs (`qscope.evals.accuracy`) and
correctness labels (`qscope.uncertainty.dataset`) both grade with these functions.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

from ..errors import QScopeError
from .benchmarks import LETTERS, BenchItem


def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    text = text.strip()
    for stop in ("\n", "Question:", "Q:"):
        text = text.split(stop)[0]
    return text.strip()


def open_correct(prediction: str, answers: Sequence[str]) -> bool:
    pred = f" {normalize(first_line(prediction))} "
    return any(normalize(a) and f" {normalize(a)} " in pred for a in answers)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _number(text: str) -> str | None:
    text = text.replace("$", "").replace(",", "")
    try:
        value = float(text.strip().rstrip("."))
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else str(value)


def extract_math(prediction: str) -> str:
    """The final answer of a worked solution: last \\boxed{...}, else after "answer is", else the last number."""
    boxed = _last_boxed(prediction)
    if boxed is not None:
        return boxed.strip()
    m = re.search(r"answer is[:\s]*\$?([^\n$]+)", prediction, flags=re.I)
    if m:
        return m.group(1).strip().rstrip(".")
    nums = _NUMBER.findall(prediction.split("Question:")[0])
    return nums[-1] if nums else ""


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def math_correct(prediction: str, gold: str) -> bool:
    pred = extract_math(prediction)
    a, b = _number(pred), _number(gold)
    if a is not None and b is not None:
        return a == b
    squash = lambda s: re.sub(r"\s|\$|\\left|\\right|\\!|\\,", "", s).rstrip(".")  # noqa: E731
    return bool(pred) and squash(pred) == squash(gold)


def grade(item: BenchItem, prediction: str) -> bool:
    """Whether `prediction` (a choice letter, or generated text) answers `item` correctly."""
    if item.kind == "mc":
        return prediction == item.answer
    if item.kind == "math":
        return math_correct(prediction, item.answer)
    return open_correct(prediction, item.aliases or [item.answer])


def letter_token_ids(tokenizer, n: int) -> list[list[int]]:
    """Token ids that spell each of the first `n` choice letters as the next token (" A" and "A")."""
    out = []
    for letter in LETTERS[:n]:
        ids = {ids[0] for ids in (tokenizer.encode(v, add_special_tokens=False) for v in (f" {letter}", letter))
               if len(ids) == 1}
        if not ids:
            raise QScopeError(f"the tokenizer has no single token for the choice letter {letter!r}")
        out.append(sorted(ids))
    return out
