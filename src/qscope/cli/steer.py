"""`qscope steer`: generate with and without feature steering, side by side."""

from __future__ import annotations

import typer
from rich.table import Table

from ..errors import QScopeError
from .common import (
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    LayerOpt,
    ModelOpt,
    SaeOpt,
    console,
    emit_json,
    load_pair,
    progress_bar,
    read_texts,
)

app = typer.Typer(help="Steer generation with SAE features.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="steer")


# The edit options of `run` and `eval`.
ModeOpt = typer.Option("add", help="add: h + s*d · clamp: set the feature's activation to s.")
RelativeOpt = typer.Option(False, help="add mode: strength is a multiple of the residual norm.")
GateOpt = typer.Option(None, help="Edit only where this feature fires (feature-selective steering).")
PositionsOpt = typer.Option("all", help="all, prompt or generated.")


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
    feature: list[str] = typer.Option(..., "--feature", "-f", help="FEATURE:STRENGTH, repeatable."),
    mode: str = ModeOpt,
    relative: bool = RelativeOpt,
    gate: int = GateOpt,
    positions: str = PositionsOpt,
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


def parse_strengths(spec: str) -> list[float]:
    """'0,10,20,-40' -> [0.0, 10.0, 20.0, -40.0]."""
    try:
        values = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise QScopeError(f"--strengths {spec!r}: expected numbers separated by commas, e.g. 0,10,20,40") from None
    if not values:
        raise QScopeError("--strengths: give at least one strength, e.g. 0,10,20,40")
    return values


def make_detector(spec: str | None):
    """'fr' (is the answer mostly French?) or 'contains:zh' (does it contain any Chinese?)."""
    if not spec:
        return None
    if spec.startswith("contains:"):
        from ..language import contains_language

        lang = spec.split(":", 1)[1]
        contains_language("", lang)  # checks the language name

        def detector(text: str) -> bool:
            return contains_language(text, lang)

        detector.__name__ = f"contains_{lang}"
        return detector
    from ..language import language_detector

    return language_detector(spec)


@app.command("eval")
def eval_(
    feature: list[int] = typer.Option(..., "--feature", "-f", help="Feature to steer (repeatable: all get the same strength)."),
    strengths: str = typer.Option("0,10,20,40", help="Comma-separated strengths to sweep (negative suppresses)."),
    mode: str = ModeOpt,
    relative: bool = RelativeOpt,
    gate: int = GateOpt,
    positions: str = PositionsOpt,
    prompts: str = typer.Option(None, help="Prompts: a file / data spec (one per paragraph or jsonl 'text'); default: built-in neutral prompts."),
    limit: int = typer.Option(None, help="Use at most this many prompts."),
    detector: str = typer.Option(None, help="Concept detector: a language (en fr de es zh ja ko ru ar: the answer is mostly in it) or contains:LANG."),
    target: int = typer.Option(None, help="Feature whose activation on the outputs measures success (default: the first --feature unless a detector is given)."),
    baseline: str = typer.Option(None, help="Prompting baseline: an instruction put before each prompt (or with a {prompt} slot), e.g. 'Answer in French.'"),
    max_new_tokens: int = typer.Option(32, help="Tokens generated per answer."),
    batch_size: int = typer.Option(8, help="Prompts per generate call."),
    out: str = typer.Option(None, help="Folder to write steer_eval.json and steer_eval.png into."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Sweep steering strengths and score concept success, fluency (perplexity under the
    unsteered model) and KL on neutral prompts, against a prompting baseline.

    Example: qscope steer eval --layer 15 -f 1234 --strengths 0,20,40 --detector fr --baseline "Answer in French."
    """
    from pathlib import Path

    from ..io import write_json
    from ..provenance import record
    from ..steer import Steering
    from ..steer.evaluate import NEUTRAL_PROMPTS, evaluate_steering, n_generations

    values = parse_strengths(strengths)
    detect = make_detector(detector)
    target = target if target is not None else (None if detect else feature[0])
    texts = read_texts(prompts, limit) if prompts else NEUTRAL_PROMPTS[:limit]
    lm, sae_ = load_pair(model, sae, layer, device, dtype)
    Steering(sae_, [parse_edit(f"{f}:0", mode, relative, gate) for f in feature], positions, layer)  # check early

    def factory(strength: float):
        return Steering(sae_, [parse_edit(f"{f}:{strength}", mode, relative, gate) for f in feature], positions, layer)

    total = n_generations(len(texts), len(values), baseline=bool(baseline))
    with progress_bar("generating") as bar:
        job = bar.add_task("gen", total=total)
        result = evaluate_steering(lm, factory, texts, values, detector=detect, target_feature=target,
                                   baseline_prompt=baseline, sae=sae_, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, progress=lambda n: bar.advance(job, n))
    if out:
        folder = Path(out)
        write_json(folder / "steer_eval.json", result.to_dict(), provenance=record())
        result.plot(folder / "steer_eval.png")
        console.print(f"wrote {folder / 'steer_eval.json'} and {folder / 'steer_eval.png'}")
    if json:
        emit_json(result)
        return
    table = Table("condition", "success", "target mean", "target max", "perplexity", "KL neutral", "tokens",
                  title=f"steering features {', '.join(map(str, feature))} ({mode})")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    for row in result.table():
        table.add_row(row["label"], fmt(row["success"]), fmt(row["target_mean"]), fmt(row["target_max"]),
                      fmt(row["perplexity"]), fmt(row["kl"]), f"{row['mean_tokens']:.1f}")
    console.print(table)
