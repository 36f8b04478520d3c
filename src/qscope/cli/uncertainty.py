"""`qscope uncertainty`: label a benchmark with the model's right/wrong answers, then see which
confidence scores (logits, traces, Feature Rivalry, probes) predict them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import QScopeError
from ..parse import int_list
from .common import DeviceOpt, JsonOpt, ModelOpt, console, emit_json

app = typer.Typer(help="Predict when the model is wrong: labelled sets and confidence scores.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="uncertainty")


BenchArg = typer.Argument(..., help="Benchmark: arc_easy, boolq, mmlu:<subject>, triviaqa ... (see "
                                    "`qscope evals benchmarks`) or a .jsonl file.")
LimitOpt = typer.Option(300, min=1, help="Items (a seeded random subset; smaller limits are prefixes of larger ones).")
SplitOpt = typer.Option(None, help="Split (default: the benchmark's first).")
SeedOpt = typer.Option(0, min=0, help="Seed of the item subset, the folds and the bootstrap.")
McScoringOpt = typer.Option("letter", help="Multiple choice: 'letter' (log-likelihood of the choice letter after a "
                                          "lettered prompt) or 'cloze' (log-likelihood of each choice's text; what "
                                          "small models are usually scored with).")
McTraceOpt = typer.Option(0, min=0, help="Letter scoring: tokens generated after the prompt for the uncertainty trace.")
NewTokensOpt = typer.Option(24, min=1, help="Open answers: tokens generated (the first line is graded).")
ChatOpt = typer.Option(False, help="Wrap prompts in the model's chat template (letter scoring and open answers).")


def _parse_layers(spec: str | None, n_layers: int | None, option: str = "--layers") -> list[int] | None:
    """Layers of a spec ('all' -> None, 'none' -> []), checked against `n_layers` when given."""
    if spec is None or spec.strip().lower() == "all":
        return None
    if spec.strip().lower() == "none":
        return []
    layers = int_list(spec, option, "6,15,24 (or all, none)")
    bad = [x for x in layers if n_layers is not None and not 0 <= x < n_layers]
    if bad:
        raise QScopeError(f"layer {bad[0]} out of range: the model has layers 0..{n_layers - 1}")
    return layers


def _label(benchmark: str, limit: int, split: str | None, seed: int, model: str, device: str | None, mc_scoring: str,
           mc_trace: int, new_tokens: int, chat: bool, sae: str = "none", sae_layers: list[int] | None = None):
    """(lm, {layer: SAE}, labelled set); the SAEs of `sae_layers` are loaded with the model."""
    from rich.progress import Progress

    from ..data.benchmarks import load_benchmark
    from ..model import load, load_model
    from ..uncertainty import LabelConfig, run_label

    with console.status("loading benchmark and model"):
        items = load_benchmark(benchmark, split=split, limit=limit, seed=seed)
        if sae_layers:
            lm, saes = load(model, sae, sae_layers, device=device)
        else:
            lm, saes = load_model(model, device=device), {}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"labelling {benchmark}", total=len(items))
        cfg = LabelConfig(max_new_tokens=new_tokens, mc_scoring=mc_scoring, mc_trace_tokens=mc_trace, chat=chat)
        data = run_label(lm, items, cfg, benchmark=benchmark, progress=lambda n: bar.advance(task, n))
    return lm, saes, data


@app.command("label")
def label_cmd(
    benchmark: str = BenchArg,
    limit: int = LimitOpt,
    split: Optional[str] = SplitOpt,
    seed: int = SeedOpt,
    model: ModelOpt = "default",
    mc_scoring: str = McScoringOpt,
    mc_trace_tokens: int = McTraceOpt,
    max_new_tokens: int = NewTokensOpt,
    chat: bool = ChatOpt,
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Run the model on a benchmark and record which answers are right (cached per item).

    Shows the class balance: pick benchmarks where accuracy is neither near 0 nor near 1.

    Example: qscope uncertainty label arc_easy --limit 300 --mc-scoring cloze
    """
    _, _, data = _label(benchmark, limit, split, seed, model, device, mc_scoring, mc_trace_tokens, max_new_tokens, chat)
    if json:
        emit_json(data)
        return
    console.print(f"{benchmark}: {int(data.labels.sum())}/{len(data.items)} right (accuracy {data.accuracy:.1%})")


@app.command("report")
def report_cmd(
    benchmark: str = BenchArg,
    limit: int = LimitOpt,
    split: Optional[str] = SplitOpt,
    seed: int = SeedOpt,
    model: ModelOpt = "default",
    sae: str = typer.Option("default", "--sae", "-s", help="SAE source for rivalry and the SAE probe ('none' to skip)."),
    layers: str = typer.Option("6,15,24", help="SAE layers, comma-separated."),
    probe_layers: str = typer.Option("all", help="Layers of the raw-residual probe: 'all', 'none' or e.g. '6,15,24'."),
    folds: int = typer.Option(5, min=1, help="Cross-validation folds of the learned scores."),
    n_boot: int = typer.Option(1000, min=1, help="Bootstrap resamples for the CIs."),
    mc_scoring: str = McScoringOpt,
    mc_trace_tokens: int = McTraceOpt,
    max_new_tokens: int = NewTokensOpt,
    chat: bool = ChatOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for <name>.json and the PNGs."),
    name: Optional[str] = typer.Option(None, help="File name stem inside --out (default: the benchmark)."),
    all_layers: bool = typer.Option(False, help="Show every probe layer in the table (default: SAE layers + best)."),
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """All confidence scores side by side on the same items: AUROC [95% CI] for predicting a
    right answer, and the paired difference to the max-prob baseline.

    Example: qscope uncertainty report arc_easy --limit 300 --mc-scoring cloze --layers 6,15,24 --out docs/uncertainty
    """
    from ..provenance import record
    from ..uncertainty import ReportConfig, run_report, summary_rows, write_report

    sae_layers = [] if sae.lower() == "none" else _parse_layers(layers, None) or []
    lm, saes, data = _label(benchmark, limit, split, seed, model, device, mc_scoring, mc_trace_tokens, max_new_tokens,
                            chat, sae, sae_layers)
    with console.status("scoring") as status:
        probe = _parse_layers(probe_layers, lm.n_layers, "--probe-layers")
        cfg = ReportConfig(probe_layers=None if probe is None else tuple(probe), folds=folds, seed=seed, n_boot=n_boot)
        report = run_report(lm, saes, data, cfg, progress=lambda msg: status.update(f"scoring: {msg}"))
    if out is not None:
        paths = write_report(report, out, name, provenance=record(seeds=seed))
        console.print("wrote " + ", ".join(str(p) for p in paths))
    if json:
        emit_json(report)
        return
    table = Table("score", "family", "layer", "AUROC [95% CI]", f"Δ vs {report.reference} [95% CI]",
                  title=f"{benchmark}: {report.n_correct}/{report.n_items} right ({report.accuracy:.1%}), "
                        f"{report.label_method}")
    for row in summary_rows(report, all_layers):
        table.add_row(*row)
    console.print(table)
