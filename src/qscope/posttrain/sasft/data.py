"""SFT examples for SASFT: (prompt, response) plus whether the response must be free of L.

The flag is what keeps the penalty off the tokens the cross-entropy teaches to be L: a Chinese
answer to a Chinese question is ordinary SFT data (CE only), an English answer to an English
question (or to a prompt where the model tends to switch) must be free of Chinese (CE + penalty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from ...errors import QScopeError
from ...data.language import contains_language


@dataclass(frozen=True)
class SFTExample:
    """prompt, response, penalise: True = the response must be free of L (the penalty covers its
    tokens); False = CE only (e.g. a response written in L); None = decide by detecting L in the
    response (`resolve_examples`)."""

    prompt: str
    response: str
    penalise: bool | None = None


ExampleLike = Union[SFTExample, tuple[str, str]]


def resolve_examples(data: Sequence[ExampleLike], lang: str | None) -> list[SFTExample]:
    """Examples with every flag decided. With `lang` (the unwanted language): an unflagged
    response is penalised iff it has no L text, and a response flagged True that contains L is
    an error (the penalty would fight the CE). Without `lang`, unflagged responses are penalised."""
    out = []
    for i, item in enumerate(data):
        ex = item if isinstance(item, SFTExample) else SFTExample(*item)
        has_lang = lang is not None and contains_language(ex.response, lang)
        if ex.penalise is None:
            ex = SFTExample(ex.prompt, ex.response, not has_lang)
        elif ex.penalise and has_lang:
            raise QScopeError(f"example {i}: the response contains {lang} text but is marked penalise=true; "
                              f"the penalty only covers responses that must be free of {lang}")
        out.append(ex)
    return out


def build_sft_batch(tokenizer, examples: Sequence[ExampleLike], max_length: int = 128, chat: bool = True) -> dict:
    """Tokenise examples: labels are -100 on the prompt and on padding; `penalty_mask` marks the
    response tokens of the examples whose flag is not False (the tokens SASFT penalises).

    With `chat`, the prompt is wrapped in the tokenizer's chat template (if it has one) and
    the response ends with the EOS token."""
    ids_list, lab_list, flags = [], [], []
    for item in examples:
        ex = item if isinstance(item, SFTExample) else SFTExample(*item)
        if chat and getattr(tokenizer, "chat_template", None):
            p = tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False,
                                              add_generation_prompt=True)
        else:
            p = ex.prompt
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + (
            [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        ids_list.append((p_ids + r_ids)[:max_length])
        lab_list.append(([-100] * len(p_ids) + r_ids)[:max_length])
        flags.append(ex.penalise is not False)
    if not ids_list:
        raise QScopeError("build_sft_batch needs at least one example")
    width = max(len(x) for x in ids_list)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids_list), width), pad, dtype=torch.long)
    labels = torch.full((len(ids_list), width), -100, dtype=torch.long)
    attn = torch.zeros((len(ids_list), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(ids_list, lab_list)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    penalty_mask = (labels != -100) & torch.tensor(flags)[:, None]
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels, "penalty_mask": penalty_mask}
