"""`qscope steer`: generate with and without feature steering, side by side."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

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
    load_models,
    progress_bar,
    read_texts,
)

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

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
        edit = FeatureEdit(int(feature), float(strength), mode, relative, gate)
    except ValueError:
        raise QScopeError(f"--feature {spec!r}: expected FEATURE:STRENGTH, e.g. 1234:8 or 1234:-4") from None
    if not math.isfinite(edit.strength):
        raise QScopeError(f"--feature {spec!r}: the strength must be a finite number, e.g. 1234:8 or 1234:-4")
    return edit


@app.command("run")
def run(
    prompt: str = typer.Argument(..., help="The prompt (a user message with --chat)."),
    feature: list[str] = typer.Option(..., "--feature", "-f", help="FEATURE:STRENGTH, repeatable."),
    mode: str = ModeOpt,
    relative: bool = RelativeOpt,
    gate: int = GateOpt,
    positions: str = PositionsOpt,
    chat: bool = typer.Option(True, help="Wrap the prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(48, min=1, help="Tokens generated."),
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

    edits = [parse_edit(s, mode, relative, gate) for s in feature]  # bad specs fail before the model loads
    loaded = load_models(model, sae, layer, device, dtype)
    lm, sae_ = loaded.lm, loaded.sae
    steering = Steering(sae_, edits, positions, layer)
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
    if not all(math.isfinite(v) for v in values):
        raise QScopeError(f"--strengths {spec!r}: every strength must be a finite number, e.g. 0,10,20,40")
    return values


def make_detector(spec: str | None, judge: str = "lingua"):
    """(primary, second) detectors from a spec: 'fr' (is the answer in French? primary by the
    `judge`, lingua or stopwords, the other one second) or 'contains:zh' (does it contain any
    Chinese? no second judge)."""
    if not spec:
        return None, None
    if judge not in ("lingua", "stopwords"):
        raise QScopeError(f"--judge {judge!r}: expected lingua or stopwords")
    if spec.startswith("contains:"):
        from ..data.language import contains_language

        lang = spec.split(":", 1)[1]
        contains_language("", lang)  # checks the language name

        def detector(text: str) -> bool:
            return contains_language(text, lang)

        detector.__name__ = f"contains_{lang}"
        return detector, None
    from ..data.language import language_detector, language_judge

    pair = (language_judge(spec), language_detector(spec))
    return pair if judge == "lingua" else pair[::-1]


METHOD_NAMES = "sae, sae-gated, diffmean, repe, random-feature, random-direction, prompt"


def parse_methods(spec: str | None) -> list[str]:
    """'sae,diffmean,prompt' -> ['sae', 'diffmean', 'prompt'] (checked)."""
    from ..steer.methods import METHODS

    names = [m.strip() for m in (spec or "").split(",") if m.strip()]
    unknown = [m for m in names if m not in (*METHODS, "prompt")]
    if unknown:
        raise QScopeError(f"--methods: unknown method {unknown[0]!r}; choose from {METHOD_NAMES}")
    return names


@app.command("eval")
def eval_(
    feature: list[int] = typer.Option(..., "--feature", "-f", help="Feature to steer (repeatable: all get the same strength)."),
    strengths: str = typer.Option("0,10,20,40", help="Comma-separated strengths to sweep (negative suppresses)."),
    methods: str = typer.Option(None, help=f"Compare methods at matched edit norms: any of {METHOD_NAMES} (comma-separated)."),
    pos: str = typer.Option(None, help="Positive texts the features stand for (data spec): needed by diffmean and repe."),
    neg: str = typer.Option(None, help="Negative texts (data spec): needed by diffmean and repe."),
    seed: int = typer.Option(0, help="Seed of the random controls (random-feature, random-direction) and repe's pairing."),
    mode: str = ModeOpt,
    relative: bool = RelativeOpt,
    gate: int = GateOpt,
    positions: str = PositionsOpt,
    prompts: str = typer.Option(None, help="Prompts: a file / data spec (one per paragraph or jsonl 'text'); default: built-in neutral prompts."),
    limit: int = typer.Option(None, min=1, help="Use at most this many prompts."),
    detector: str = typer.Option(None, help="Concept detector: a language (en fr de es zh ja ko ru ar: the answer is mostly in it) or contains:LANG."),
    judge: str = typer.Option("lingua", help="Language judge for --detector LANG: lingua (n-gram model) or stopwords; the other is reported beside it."),
    target: int = typer.Option(None, help="Feature whose activation on the outputs measures success (default: the first --feature unless a detector is given)."),
    baseline: list[str] = typer.Option(None, help="Prompting baseline: an instruction put before each prompt (or with a {prompt} slot), e.g. 'Answer in French.' Repeatable."),
    max_new_tokens: int = typer.Option(32, min=1, help="Tokens generated per answer."),
    batch_size: int = typer.Option(8, min=1, help="Prompts per generate call."),
    out: str = typer.Option(None, help="Folder to write steer_eval.json and steer_eval.png into."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    device: DeviceOpt = None,
    dtype: str = typer.Option("float32", help="The LM's dtype; fp32 here by default: greedy answers under bf16 "
                                               "rounding drift from the fp32 ones (docs/benchmarks.md). auto, bfloat16 ..."),
    json: JsonOpt = False,
) -> None:
    """Sweep steering strengths and score concept success (95% Wilson interval), fluency
    (perplexity under the unsteered model) and KL on neutral prompts, against prompting; with
    --methods, compare SAE steering with diffmean / RepE / random controls at matched edit norms.

    Examples:
      qscope steer eval --layer 15 -f 1234 --strengths 0,20,40 --detector fr --baseline "Answer in French."
      qscope steer eval -l 15 -f 7194 -f 6644 --methods sae,diffmean,repe,random-feature,random-direction,prompt
          --pos fr.txt --neg en.txt --strengths 5,10,20,40 --detector fr --baseline "Answer in French." --out runs/m
    """
    from pathlib import Path

    from ..io import write_json
    from ..provenance import record
    from ..steer import Steering
    from ..steer.evaluate import NEUTRAL_PROMPTS, evaluate_steering, n_generations

    values = parse_strengths(strengths)
    names = parse_methods(methods)
    detect, second = make_detector(detector, judge)
    baselines = [b for b in (baseline or []) if b.strip()]
    if "prompt" in names and not baselines:
        raise QScopeError("--methods prompt needs at least one --baseline instruction")
    if names and detect is None:
        raise QScopeError("--methods needs --detector: methods are compared on the same success judge")
    target = target if target is not None else (None if detect else feature[0])
    texts = read_texts(prompts, limit) if prompts else NEUTRAL_PROMPTS[:limit]
    pos_texts = read_texts(pos) if pos else []
    neg_texts = read_texts(neg) if neg else []
    loaded = load_models(model, sae, layer, device, dtype)
    lm, sae_ = loaded.lm, loaded.sae
    Steering(sae_, [parse_edit(f"{f}:0", mode, relative, gate) for f in feature], positions, layer)  # check early

    if names:
        result = _compare(lm, sae_, feature, names, values, texts, detect, second, baselines, pos_texts, neg_texts,
                          seed, positions, layer, max_new_tokens, batch_size)
        plot_name = "steer_methods.png"
    else:
        def factory(strength: float):
            return Steering(sae_, [parse_edit(f"{f}:{strength}", mode, relative, gate) for f in feature], positions, layer)

        total = n_generations(len(texts), len(values), baseline=len(baselines))
        with progress_bar("generating") as bar:
            job = bar.add_task("gen", total=total)
            result = evaluate_steering(lm, factory, texts, values, detector=detect, target_feature=target,
                                       baseline_prompt=baselines, sae=sae_, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, progress=lambda n: bar.advance(job, n),
                                       second_detector=second)
        plot_name = "steer_eval.png"
    if out:
        folder = Path(out)
        write_json(folder / "steer_eval.json", result.to_dict(with_outputs=True) if names else result.to_dict(),
                   provenance=record(seeds=seed if names else None))
        result.plot(folder / plot_name)
        console.print(f"wrote {folder / 'steer_eval.json'} and {folder / plot_name}")
    if json:
        emit_json(result)
        return
    if names:
        _print_comparison(result)
        return
    table = Table("condition", "success [95% CI]", "target mean", "perplexity", "KL neutral", "tokens",
                  title=f"steering features {', '.join(map(str, feature))} ({mode})")
    for row in result.table():
        table.add_row(row["label"], _fmt_ci(row["success"], row["success_ci"]), _fmt(row["target_mean"]),
                      _fmt(row["perplexity"]), _fmt(row["kl"]), f"{row['mean_tokens']:.1f}")
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _fmt_ci(value, ci) -> str:
    return _fmt(value) if value is None or not ci else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _compare(lm: LM, sae: SAE, features, names, strengths, prompts, detector, second, baselines, pos_texts, neg_texts,
             seed, positions, layer, max_new_tokens, batch_size):
    """Build the methods (matched edit norms) and run them all on the same prompts."""
    from ..features.search import collect_stats
    from ..steer.compare import compare_methods
    from ..steer.directions import mean_residual_norm
    from ..steer.evaluate import NEUTRAL_PROMPTS
    from ..steer.methods import build_methods

    steering_methods = [m for m in names if m != "prompt"] or ["sae"]
    layer = lm.check_sae(sae, layer)
    with console.status("finding directions"):
        norm = mean_residual_norm(lm, layer, NEUTRAL_PROMPTS)
        rates = None
        if "random-feature" in steering_methods:
            rates = collect_stats(lm, sae, (pos_texts + neg_texts) or list(NEUTRAL_PROMPTS), layer).rate
        method_set = build_methods(lm, sae, features, steering_methods, norm, pos_texts, neg_texts, rates, layer,
                                   positions, seed)
    n_strengths = len([s for s in strengths if s != 0])
    total = len(NEUTRAL_PROMPTS) + len(prompts) * (1 + len(baselines) + n_strengths * len(steering_methods))
    with progress_bar("generating") as bar:
        job = bar.add_task("gen", total=total)
        return compare_methods(lm, method_set, strengths, prompts, detector,
                               baselines if "prompt" in names else [], max_new_tokens=max_new_tokens,
                               batch_size=batch_size, second_detector=second, progress=lambda n: bar.advance(job, n))


def _print_comparison(result) -> None:
    table = Table("method", "strength", "edit/||h||", "success [95% CI]", "KL neutral", "perplexity",
                  title="steering methods at matched edit norms")
    for name, rows in result.methods.items():
        for row in rows:
            table.add_row(name, _fmt(row["strength"]), _fmt(row["edit_norm_ratio"]),
                          _fmt_ci(row["success"], row["success_ci"]), _fmt(row["kl"]), _fmt(row["perplexity"]))
    for row in result.prompting:
        table.add_row(row["label"][:40], "-", "-", _fmt_ci(row["success"], row["success_ci"]), _fmt(row["kl"]),
                      _fmt(row["perplexity"]))
    console.print(table)
    for row in result.best_at_kl():
        console.print(f"KL <= {row['kl_budget']}: best = {row['best']}")
