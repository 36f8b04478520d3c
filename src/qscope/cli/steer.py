"""`qscope steer`: generate with and without feature steering, side by side."""

from __future__ import annotations

from typing import List

import typer
from rich.table import Table

from ..errors import QScopeError
from .common import DeviceOpt, DtypeOpt, JsonOpt, LayerOpt, ModelOpt, SaeOpt, console, emit_json, load_pair

app = typer.Typer(help="Steer generation with SAE features.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="steer")


def parse_edit(spec: str, mode: str, relative: bool, gate: int | None):
    """'FEATURE:STRENGTH' -> FeatureEdit."""
    from ..steer import FeatureEdit

    try:
        feature, strength = spec.split(":")
        return FeatureEdit(int(feature), float(strength), mode, relative, gate)
    except ValueError:
        raise QScopeError(f"--feature {spec!r}: expected FEATURE:STRENGTH, e.g. 1234:8 or 1234:-4") from None


@app.command("run")
def run(
    prompt: str = typer.Argument(..., help="The prompt (a user message with --chat)."),
    feature: List[str] = typer.Option(..., "--feature", "-f", help="FEATURE:STRENGTH, repeatable."),
    mode: str = typer.Option("add", help="add: h + s*d · clamp: set the feature's activation to s."),
    relative: bool = typer.Option(False, help="add mode: strength is a multiple of the residual norm."),
    gate: int = typer.Option(None, help="Edit only where this feature fires (feature-selective steering)."),
    positions: str = typer.Option("all", help="all, prompt or generated."),
    chat: bool = typer.Option(True, help="Wrap the prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(48, help="Tokens generated."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Generate plain and steered continuations of a prompt (greedy) and show them side by side.

    Example: qscope steer run --layer 15 -f 1234:12 "Tell me about your weekend."
    """
    from ..steer import Steering

    lm, sae_ = load_pair(model, sae, layer, device, dtype)
    steering = Steering(sae_, [parse_edit(s, mode, relative, gate) for s in feature], positions, layer)
    with console.status("generating"):
        plain = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat)
        steered = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat, steer=steering)
    result = {"prompt": prompt, "steering": steering.to_dict(), "plain": plain, "steered": steered}
    if json:
        emit_json(result)
        return
    table = Table("plain", "steered: " + ", ".join(feature), title=prompt, show_lines=True)
    table.add_row(plain, steered)
    console.print(table)
