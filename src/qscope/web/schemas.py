"""Request bodies of the web API, with hard limits.

Why limits: the server holds one model behind a lock, so an unbounded request (a novel-length
text, 10k generated tokens) would block every other user. Static limits live here (pydantic
answers 422 with the field); limits that depend on what is served (which layers, how many
features each SAE has) are checked in `app.py` against the loaded SAEs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHARS = 2000  # per text
MAX_TEXTS = 16  # per side of a contrast
MAX_TOP = 50
MAX_EDITS = 8
MAX_STRENGTH = 1000.0  # |strength|: add mode is in raw residual units (norms reach a few hundred)
MAX_NEW_TOKENS = 128
MAX_TOKENS = 256  # texts are truncated to this many tokens before encoding
MAX_SWEEP = 4  # strengths of one sweep (each is a generation)
MAX_BODY = 256 * 1024  # bytes; 2 x 16 texts x 2000 chars (UTF-8, JSON-escaped) fit well below

BrowseOrder = Literal["frequent", "rare", "strongest", "random"]
Strength = Annotated[float, Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH)]
Text = Field(min_length=1, max_length=MAX_CHARS, description=f"1..{MAX_CHARS} characters")
ListText = Annotated[str, Field(min_length=1, max_length=MAX_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class InspectRequest(Strict):
    text: str = Text
    layer: int
    top: int = Field(5, ge=1, le=MAX_TOP)


class ActivationsRequest(Strict):
    text: str = Text
    layer: int
    feature: int


class TextSearchRequest(Strict):
    text: str = Text
    layer: int
    top: int = Field(20, ge=1, le=MAX_TOP)


class ContrastRequest(Strict):
    positive: list[ListText] = Field(min_length=1, max_length=MAX_TEXTS)
    negative: list[ListText] = Field(min_length=1, max_length=MAX_TEXTS)
    layer: int
    top: int = Field(20, ge=1, le=MAX_TOP)
    by: Literal["mean", "rate"] = "mean"


class CompareRequest(Strict):
    text_a: str = Text
    text_b: str = Text
    layers: list[int] | None = Field(None, min_length=1, max_length=8, description="default: every served layer")
    top: int = Field(10, ge=1, le=MAX_TOP)


class Edit(Strict):
    feature: int
    strength: float = Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH)
    mode: Literal["add", "clamp"] = "add"
    relative: bool = False


class SteerRequest(Strict):
    prompt: str = Text
    layer: int
    edits: list[Edit] = Field(min_length=1, max_length=MAX_EDITS)
    positions: Literal["all", "prompt", "generated"] = "all"
    chat: bool = True
    max_new_tokens: int = Field(48, ge=1, le=MAX_NEW_TOKENS)
    sweep: list[Strength] | None = Field(None, min_length=1, max_length=MAX_SWEEP, description="strengths for the "
                                         "first edit, one steered generation each (instead of its own strength)")


LIMITS = {"max_chars": MAX_CHARS, "max_texts": MAX_TEXTS, "max_top": MAX_TOP, "max_edits": MAX_EDITS,
          "max_strength": MAX_STRENGTH, "max_new_tokens": MAX_NEW_TOKENS, "max_tokens": MAX_TOKENS,
          "max_sweep": MAX_SWEEP,
          "max_body": MAX_BODY}
