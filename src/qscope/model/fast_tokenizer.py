"""Converted model folders load their tokenizer straight from tokenizer.json.

A model-specific tokenizer class (GemmaTokenizer, LlamaTokenizer...) reads tokenizer.json into
Python and rebuilds its vocabulary and merges on every load; for Gemma 3's 262k tokens that is most
of a cached load. The generic class (`TokenizersBackend`) hands the file to the Rust library as it
is. A folder is switched to it only where nothing changes: the class adds nothing but its
constructor and class settings (those settings are written into the config), and on `PROBE_TEXTS`
plus the tokenizer's own special and added tokens the generic load gives the same ids, decoded text,
vocabulary, special tokens and chat template as the reference tokenizer (the one the GGUF gave).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import write_json

GENERIC_CLASS = "TokenizersBackend"
# What a tokenizer class may add to the generic one and still be replaced by it: its constructor
# (which only rebuilds what tokenizer.json already holds) and settings copied into the config.
_CARRIED_SETTINGS = ("padding_side", "truncation_side", "model_input_names")
_HARMLESS = {"__init__", "__module__", "__qualname__", "__doc__", "__annotations__", "vocab_files_names", "model",
             "slow_tokenizer_class", *_CARRIED_SETTINGS}

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b  # 1234567890",
    "café naïve façade Größe Ærøskøbing señor",
    "日本語のテキスト、中文字符和标点。한국어 문장",
    "emoji 🤖🎉 👩‍👩‍👧 🇫🇷 ✔️",
    "a  b   c    d\t\te\n\nf\r\n  g",
    "   leading and trailing   ",
    "مرحبا بالعالم שלום עולם",
    "zero\u200bwidth and\u00a0nbsp",
    "",
    " ",
)


def adopt_generic_tokenizer(folder: Path, reference) -> dict:
    """Point `folder`'s tokenizer_config.json at the generic class when it tokenises exactly as
    `reference`; otherwise leave the folder as it was. Returns the decision, for qscope_source.json:
    {"class": loaded class, "saved_as": class the folder named, "why": reason when kept}."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    saved_as = config.get("tokenizer_class")
    if not (folder / "tokenizer.json").is_file():
        return {"class": saved_as, "saved_as": saved_as, "why": "no tokenizer.json"}
    cls = tokenizer_class_from_name(saved_as) if saved_as else None
    if cls is None:
        return {"class": saved_as, "saved_as": saved_as, "why": "unknown tokenizer class"}
    extra = _extra_behaviour(cls)
    if extra:
        return {"class": saved_as, "saved_as": saved_as, "why": f"{saved_as} overrides {', '.join(extra)}"}
    generic = dict(config, tokenizer_class=GENERIC_CLASS)
    for setting in _CARRIED_SETTINGS:
        generic.setdefault(setting, getattr(cls, setting))
    # The added tokens are in tokenizer.json; an explicit map stops transformers from reading that
    # whole file again in Python to rebuild them.
    generic.setdefault("added_tokens_decoder", {})
    write_json(config_path, generic)
    difference = tokenisation_difference(reference, AutoTokenizer.from_pretrained(folder))
    if difference:
        write_json(config_path, config)
        return {"class": saved_as, "saved_as": saved_as, "why": f"the generic class differs: {difference}"}
    return {"class": GENERIC_CLASS, "saved_as": saved_as}


def _extra_behaviour(cls) -> list[str]:
    """Attributes `cls` defines beyond the generic class, other than the harmless ones."""
    from transformers import TokenizersBackend

    if not issubclass(cls, TokenizersBackend):
        return [f"the {TokenizersBackend.__name__} base"]
    extra = []
    for klass in cls.__mro__[: cls.__mro__.index(TokenizersBackend)]:
        extra += [name for name in vars(klass) if name not in _HARMLESS]
    return sorted(set(extra))


def tokenisation_difference(reference, candidate) -> str | None:
    """The first way `candidate` tokenises differently from `reference`, or None."""
    checks = {
        "class settings": lambda t: [getattr(t, s) for s in _CARRIED_SETTINGS],
        "special tokens": lambda t: (t.special_tokens_map, t.all_special_tokens, t.all_special_ids),
        "added tokens": lambda t: {i: (str(a), a.special) for i, a in t.added_tokens_decoder.items()},
        "vocabulary": lambda t: t.get_vocab(),
        "chat template": lambda t: t.chat_template,
    }
    for what, get in checks.items():
        if get(reference) != get(candidate):
            return what
    for text in probe_texts(reference):
        for special in (True, False):
            ids = reference(text, add_special_tokens=special)["input_ids"]
            if candidate(text, add_special_tokens=special)["input_ids"] != ids:
                return f"ids of {text[:40]!r}"
            for skip in (False, True):
                if candidate.decode(ids, skip_special_tokens=skip) != reference.decode(ids, skip_special_tokens=skip):
                    return f"decoding of {text[:40]!r}"
    return None


def probe_texts(tokenizer) -> list[str]:
    """PROBE_TEXTS plus texts made of the tokenizer's special tokens and a sample of its added tokens."""
    added = [str(token) for _, token in sorted(tokenizer.added_tokens_decoder.items())]
    sample = added[:24] + added[-24:]
    specials = list(tokenizer.all_special_tokens)
    return [*PROBE_TEXTS, "".join(specials), " ".join(f"x{token}y" for token in specials),
            "".join(sample), " ".join(sample) + " hello"]
