"""`qscope evals`: what benchmarks test - footprints, redundancy, overlap, ranking, accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import QScopeError
from ..parse import int_list
from ..provenance import record
from .common import (DeviceOpt, DtypeOpt, JsonOpt, LayerOpt, ModelOpt, SaeOpt, console, emit_json, load_models,
                     progress_bar)

app = typer.Typer(help="Evaluation analysis with SAE features (footprints, redundancy, overlap).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="evals")


BenchArgs = typer.Argument(None, help="Benchmarks: names (see `qscope evals benchmarks`), 'mmlu:anatomy', "
                                      "'name@split', 'name#N' (N items), or .jsonl files.")
LimitOpt = typer.Option(300, "--limit", "-n", min=0, help="Items per benchmark (seeded random sample; 0 = all).")
SeedOpt = typer.Option(0, min=0, help="Seed of the item sample and of the Monte-Carlo subsets.")
OutOpt = typer.Option(None, "--out", "-o", help="Folder for JSON results and PNG plots.")
FootprintsOpt = typer.Option(None, "--footprints", "-f", help="Reuse a footprints.json written by "
                                                              "`qscope evals footprint --out` instead of a model run.")
ItemsOpt = typer.Option(None, help="Cut every benchmark to this many items (default: the smallest count; 0: keep all).")
PositionOpt = typer.Option("last", help="'last' token, or 'any' token except position 0 ('both' for footprint).")
TemplateOpt = typer.Option(None, help="For .jsonl benchmarks: prompt template, e.g. 'Q: {question}\\nA:'.")
AnswerFieldOpt = typer.Option(None, help="For .jsonl benchmarks: the gold answer field.")
ChoicesFieldOpt = typer.Option(None, help="For .jsonl benchmarks: the field holding a list of choices.")


def _load_items(benchmarks, limit, seed, template=None, answer_field=None, choices_field=None) -> dict:
    """{name: items} of benchmark specs 'name[:subject][@split][#N]' ('#N' overrides --limit)."""
    from ..data.benchmarks import load_spec, spec_name

    if not benchmarks:
        raise QScopeError("name at least one benchmark")
    names = [spec_name(b) for b in benchmarks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise QScopeError(f"benchmark {', '.join(twice)} named twice")
    return {name: load_spec(b, limit, seed, template=template, answer_field=answer_field, choices_field=choices_field)
            for name, b in zip(names, benchmarks)}


def _run_footprint(lm, saes, items: dict, cfg):
    """`run_footprint` behind a progress bar; prints each benchmark's footprint sizes."""
    from ..evals.footprint import run_footprint

    with progress_bar() as bar:
        tasks: dict[str, int] = {}

        def tick(name: str, n: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"footprint {name}", total=total)
            bar.advance(tasks[name], n)

        result = run_footprint(lm, saes, items, cfg, progress=tick)
    for i, (name, its) in enumerate(items.items()):
        sizes = {label: fps[i].size for label, fps in result.groups.items()}
        shown = ", ".join(f"{label} {size}" for label, size in sizes.items()) if len(sizes) > 1 else sizes.popitem()[1]
        console.print(f"{name}: {len(its)} items, |F(D)| = {shown}")
    return result


def _footprints(benchmarks, footprints_file, model, sae, layer, limit, seed, position, device=None, dtype=None,
                keep=False):
    """Footprints from a saved file, or computed now (per-item cache under QSCOPE_HOME).
    Returns (footprints, lm, sae) - lm/sae are None when read from a file, unless `keep`."""
    from ..data.benchmarks import spec_name
    from ..evals.footprint import POSITIONS, FootprintConfig, load_footprints

    if footprints_file:
        fps = load_footprints(footprints_file)
        if benchmarks:
            by = {f.benchmark: f for f in fps}
            missing = [spec_name(b) for b in benchmarks if spec_name(b) not in by]
            if missing:
                raise QScopeError(f"{footprints_file}: no footprint for {', '.join(missing)} (has {', '.join(by)})")
            fps = [by[spec_name(b)] for b in benchmarks]
        if keep:
            loaded = load_models(model, sae, layer, device, dtype)
            return fps, loaded.lm, loaded.sae
        return fps, None, None
    if not benchmarks:
        raise QScopeError("name at least one benchmark (or pass --footprints FILE)")
    if position not in POSITIONS:
        raise QScopeError(f"--position must be one of {POSITIONS} here, got {position!r}")
    items = _load_items(benchmarks, limit, seed)
    loaded = load_models(model, sae, layer, device, dtype)
    result = _run_footprint(loaded.lm, [loaded.sae], items, FootprintConfig(layer=layer, position=position))
    return next(iter(result.groups.values())), loaded.lm, loaded.sae


def _out(out: Optional[Path]) -> Optional[Path]:
    if out:
        out.mkdir(parents=True, exist_ok=True)
    return out


@app.command("benchmarks")
def benchmarks_cmd(json: JsonOpt = False) -> None:
    """List the benchmarks qscope can load offline.

    Example: qscope evals benchmarks
    """
    from ..data.benchmarks import list_benchmarks

    rows = list_benchmarks()
    if json:
        emit_json(rows)
        return
    table = Table("name", "kind", "splits", "source")
    for r in rows:
        table.add_row(r["name"] + (":<subject>" if r["subjects"] else ""), r["kind"], ", ".join(r["splits"]), r["source"])
    console.print(table)


@app.command("footprint")
def footprint_cmd(
    benchmarks: List[str] = BenchArgs,
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    layers: Optional[str] = typer.Option(None, help="Several layers of one SAE release in one pass, e.g. 6,15,24 "
                                                    "(writes <out>/L<n>/footprints.json, L<n>-any/ for 'any')."),
    limit: int = LimitOpt,
    seed: int = SeedOpt,
    position: str = PositionOpt,
    max_length: int = typer.Option(512, min=1, help="Prompts longer than this keep their last tokens."),
    batch_size: int = typer.Option(8, min=1),
    template: Optional[str] = TemplateOpt,
    answer_field: Optional[str] = AnswerFieldOpt,
    choices_field: Optional[str] = ChoicesFieldOpt,
    out: Optional[Path] = OutOpt,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Feature footprints F(D): features active at the last token of each item, and their union.

    Per-item footprints are cached under QSCOPE_HOME/footprints, so reruns and interrupted runs resume.
    Example: qscope evals footprint gsm8k math arc_easy --layer 15 --limit 300 --out runs/evals/L15
    """
    from ..evals.footprint import FootprintConfig, save_footprints
    from ..io import write_json

    flat = not layers and position != "both"  # one SAE, one position: written straight into --out
    wanted = int_list(layers, "--layers") if layers else [layer]
    items = _load_items(benchmarks, limit, seed, template, answer_field, choices_field)
    loaded = load_models(model, sae, layer if flat else wanted, device, dtype)
    cfg = FootprintConfig(layer=layer if flat else None, position=position, max_length=max_length,
                          batch_size=batch_size)
    result = _run_footprint(loaded.lm, [loaded.sae] if flat else loaded.saes, items, cfg)
    groups = {"": next(iter(result.groups.values()))} if flat else result.groups
    summary = {label: [f.to_dict() for f in fps] for label, fps in groups.items()}
    if _out(out):
        for label, fps in groups.items():
            folder = out / label if label else out
            save_footprints(folder / "footprints.json", fps)
            write_json(folder / "footprint_summary.json", summary[label])
            console.print(f"wrote {folder / 'footprints.json'} and footprint_summary.json")
    if json:
        emit_json(summary if len(summary) > 1 or "" not in summary else summary[""])
        return
    for label, rows in summary.items():
        table = Table("benchmark", "items", "|F(D)|", "% of SAE", "mean |F(x)|",
                      title=f"layer {rows[0]['layer']}, {rows[0]['position']} token")
        for s in rows:
            table.add_row(s["benchmark"], str(s["n_items"]), str(s["footprint_size"]),
                          f"{100 * s['fraction_of_features']:.1f}", f"{s['mean_item_size']:.1f}")
        console.print(table)


@app.command("redundancy")
def redundancy_cmd(
    benchmarks: List[str] = BenchArgs,
    footprints: Optional[Path] = FootprintsOpt,
    accuracy: Optional[Path] = typer.Option(None, help="Folder of `qscope evals accuracy --out` results "
                                                       "(<model>/<benchmark>.json) for tau_n, R and Spearman(R, R_hat)."),
    items: Optional[int] = ItemsOpt,
    samples: int = typer.Option(200, min=1, help="Monte-Carlo permutations per benchmark."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    limit: int = LimitOpt,
    seed: int = SeedOpt,
    position: str = PositionOpt,
    out: Optional[Path] = OutOpt,
    json: JsonOpt = False,
) -> None:
    """Feature-based redundancy R_hat (coverage curves); with --accuracy also tau_n, R and Spearman.

    Example: qscope evals redundancy -f runs/evals/L15-60/L15/footprints.json --accuracy docs/evals/accuracy --out docs/evals
    """
    from ..evals.accuracy import load_accuracy
    from ..evals.redundancy import RedundancyConfig, run_redundancy
    from ..evals.report import items_each, write_redundancy

    fps, _, _ = _footprints(benchmarks, footprints, model, sae, layer, limit, seed, position)
    acc = load_accuracy(accuracy, [f.benchmark for f in fps]) if accuracy else None
    result = run_redundancy(fps, RedundancyConfig(items=items, samples=samples, seed=seed), acc)
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    if _out(out):
        write_redundancy(result, out, provenance=record(seeds=seed))
        console.print(f"wrote {out / 'redundancy.json'} and plots")
    if json:
        emit_json(result)
        return
    perf = result.performance_based or []
    perf_by = {p.benchmark: p for p in perf}
    table = Table("benchmark", "items", "|F(D)|", "R_hat", "n for 50%", "n for 90%", *(["R (tau)"] if perf else []),
                  title=f"redundancy, {items_each(result.items_per_benchmark)}")
    for c in sorted(result.feature_based, key=lambda c: -c.r_hat):
        p = perf_by.get(c.benchmark)
        table.add_row(c.benchmark, str(c.n_items), str(c.footprint_size), f"{c.r_hat:.3f}", str(c.items_for(0.5)),
                      str(c.items_for(0.9)), *([f"{p.r:.3f}" if p else "-"] if perf else []))
    console.print(table)
    if result.agreement:
        a = result.agreement
        console.print(f"Spearman(R, R_hat) = {a['spearman']:.3f} (p={a['p_value']:.3g}) over {a['n_benchmarks']} "
                      f"benchmarks and {perf[0].n_models} models")


@app.command("overlap")
def overlap_cmd(
    benchmarks: List[str] = BenchArgs,
    footprints: Optional[Path] = FootprintsOpt,
    items: Optional[int] = ItemsOpt,
    pair: Optional[List[str]] = typer.Option(None, help="Report A->B and B->A for this pair, e.g. --pair gsm8k,math."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    limit: int = LimitOpt,
    seed: int = SeedOpt,
    position: str = PositionOpt,
    out: Optional[Path] = OutOpt,
    json: JsonOpt = False,
) -> None:
    """Asymmetric overlap |F(A) n F(B)| / |F(A)| and overlap_min between benchmarks (heatmap PNG with --out).

    Example: qscope evals overlap -f runs/evals/L15-60/L15/footprints.json --pair gsm8k,math --out docs/evals
    """
    from ..evals.overlap import OverlapConfig, run_overlap
    from ..evals.report import items_each, write_overlap

    fps, _, _ = _footprints(benchmarks, footprints, model, sae, layer, limit, seed, position)
    pairs = tuple(tuple(p.partition(",")[::2]) for p in pair or [])
    result = run_overlap(fps, OverlapConfig(items=items, pairs=pairs))
    if _out(out):
        write_overlap(result, out, provenance=record(seeds=seed))
        console.print(f"wrote {out / 'overlap.json'}, overlap.png, overlap_min.png")
    if json:
        emit_json(result)
        return
    res = result.matrix
    table = Table("A \\ B", *res.benchmarks, title=f"|F(A) ∩ F(B)| / |F(A)|, {items_each(result.items_per_benchmark)}")
    for b, row in zip(res.benchmarks, res.overlap):
        table.add_row(b, *(f"{x:.2f}" for x in row))
    console.print(table)
    for p in result.pairs:
        console.print(f"{p['a']} -> {p['b']}: {p['a_to_b']:.3f}   {p['b']} -> {p['a']}: {p['b_to_a']:.3f}   "
                      f"overlap_min {p['overlap_min']:.3f}")


@app.command("rank")
def rank_cmd(
    candidates: List[str] = typer.Argument(..., help="Candidate benchmarks to rank."),
    suite: str = typer.Option(..., help="Comma-separated benchmarks of the current suite."),
    footprints: Optional[Path] = FootprintsOpt,
    unique: int = typer.Option(8, min=0, help="Unique features listed per candidate (vs the suite), with promoted tokens."),
    items: Optional[int] = ItemsOpt,
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    limit: int = LimitOpt,
    seed: int = SeedOpt,
    position: str = PositionOpt,
    out: Optional[Path] = OutOpt,
    json: JsonOpt = False,
) -> None:
    """Rank candidate benchmarks by the share of their footprint the suite does not cover (most novel first).

    Example: qscope evals rank humaneval truthfulqa --suite mmlu,gsm8k,arc_easy -f runs/evals/L15-60/L15/footprints.json
    """
    from ..evals.overlap import RankConfig, run_rank
    from ..evals.report import write_result

    suite_names = [s.strip() for s in suite.split(",") if s.strip()]
    names = suite_names + [c for c in candidates if c not in suite_names]
    fps, lm, sae_ = _footprints(names, footprints, model, sae, layer, limit, seed, position, keep=unique > 0)
    result = run_rank(fps, RankConfig(tuple(suite_names), tuple(candidates), unique=unique, items=items), lm, sae_)
    if _out(out):
        write_result(out / "rank.json", result, provenance=record(seeds=seed))
        console.print(f"wrote {out / 'rank.json'}")
    if json:
        emit_json(result)
        return
    table = Table("candidate", "|F|", "new features", "novelty", "top unique features (promoted tokens)",
                  title=f"vs suite {', '.join(suite_names)}")
    for r in result.ranking:
        u = result.unique_features.get(r.benchmark)
        desc = "; ".join(f"{f.feature}: {' '.join(repr(t) for t in f.promoted[:3])}" for f in u.features[:4]) if u else ""
        table.add_row(r.benchmark, str(r.footprint_size), str(r.new_features), f"{r.novelty:.3f}", desc)
    console.print(table)


@app.command("accuracy")
def accuracy_cmd(
    benchmarks: List[str] = BenchArgs,
    model: ModelOpt = "default",
    limit: int = LimitOpt,
    seed: int = SeedOpt,
    batch_size: int = typer.Option(8, min=1),
    max_new_tokens: int = typer.Option(24, min=1, help="Generation length for open answers."),
    mc_method: str = typer.Option("text", help="Multiple choice: 'text' (likelihood of each choice's text per "
                                               "character) or 'letter' (likeliest choice letter)."),
    chat: bool = typer.Option(False, help="Open/math answers: wrap the prompt in the model's chat template."),
    template: Optional[str] = TemplateOpt,
    answer_field: Optional[str] = AnswerFieldOpt,
    choices_field: Optional[str] = ChoicesFieldOpt,
    out: Optional[Path] = OutOpt,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Per-item correctness of a model (MC: choice-text likelihood; open/math: greedy + answer extractor).

    Writes <out>/<model>/<benchmark>.json, the input of `qscope evals redundancy --accuracy <out>`.
    Example: qscope evals accuracy arc_easy boolq triviaqa --model default --limit 300 --out docs/evals/accuracy
    """
    from ..evals.accuracy import AccuracyConfig, run_accuracy
    from ..evals.report import write_result
    from ..model import load_model

    item_sets = _load_items(benchmarks, limit, seed, template, answer_field, choices_field).items()
    with console.status("loading model"):
        lm = load_model(model, device=device, dtype=dtype)
    cfg = AccuracyConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, mc_method=mc_method, chat=chat)
    results = []
    with progress_bar() as bar:
        for name, its in item_sets:
            task = bar.add_task(f"{name}", total=len(its))
            results.append(run_accuracy(lm, its, cfg, benchmark=name, progress=lambda k, t=task: bar.advance(t, k)))
            bar.remove_task(task)
            if _out(out):
                slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in lm.name)
                write_result(out / slug / f"{name}.json", results[-1], provenance=record(seeds=seed))
    if json:
        emit_json([r.to_dict(items=False) for r in results])
        return
    table = Table("benchmark", "items", "accuracy", "method", title=lm.name)
    for r in results:
        table.add_row(r.benchmark, str(r.n_items), f"{r.accuracy:.3f}", r.method)
    console.print(table)
