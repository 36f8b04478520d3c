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
MAX_DETECTION = 20  # excerpts per class when scoring an explanation (each a judge's reading)
MAX_BODY = 256 * 1024  # bytes; 2 x 16 texts x 2000 chars (UTF-8, JSON-escaped) fit well below

BrowseOrder = Literal["frequent", "rare", "strongest", "random"]
SteerMethod = Literal["sae", "diffmean", "repe"]
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
    method: SteerMethod = Field("sae", description="sae: add the `edits` features; diffmean / repe: add `strength` "
                                "times a unit direction found from the `positive` and `negative` texts")
    edits: list[Edit] | None = Field(None, min_length=1, max_length=MAX_EDITS, description="sae: features to steer")
    strength: Strength | None = Field(None, description="diffmean / repe: how far the residual is pushed along the "
                                      "direction (the units of a feature's add strength)")
    positive: list[ListText] | None = Field(None, min_length=1, max_length=MAX_TEXTS, description="diffmean / repe: "
                                            "texts with the wanted property (default: DIRECTION_TEXTS)")
    negative: list[ListText] | None = Field(None, min_length=1, max_length=MAX_TEXTS, description="diffmean / repe: "
                                            "texts without it")
    positions: Literal["all", "prompt", "generated"] = "all"
    chat: bool = True
    max_new_tokens: int = Field(48, ge=1, le=MAX_NEW_TOKENS)
    sweep: list[Strength] | None = Field(None, min_length=1, max_length=MAX_SWEEP, description="strengths for the "
                                         "first edit (or the direction), one steered generation each (instead of "
                                         "its own strength)")


# What a direction method steers towards when no texts are given: cheerful vs gloomy sentences
# (paired in order, as repe pairs them).
DIRECTION_TEXTS = {
    "positive": ["I love this, it is wonderful!", "What a great day, everything went well.",
                 "The food was delicious and the staff were lovely.", "I am so happy to see you again."],
    "negative": ["I hate this, it is awful.", "What a terrible day, everything went wrong.",
                 "The food was disgusting and the staff were rude.", "I am so sad to see you leave."],
}


class DetectionRequest(Strict):
    layer: int
    feature: int
    n: int = Field(8, ge=2, le=MAX_DETECTION, description="excerpts per class: activating and non-activating")
    seed: int = Field(0, ge=0)


LIMITS = {"max_chars": MAX_CHARS, "max_texts": MAX_TEXTS, "max_top": MAX_TOP, "max_edits": MAX_EDITS,
          "max_strength": MAX_STRENGTH, "max_new_tokens": MAX_NEW_TOKENS, "max_tokens": MAX_TOKENS,
          "max_sweep": MAX_SWEEP, "max_detection": MAX_DETECTION,
          "max_body": MAX_BODY}
