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


def _items(spec: str, limit: int, seed: int, template=None, answer_field=None, choices_field=None):
    """Items of 'name[:subject][@split][#limit]' ('#N' overrides --limit for that benchmark)."""
    from ..data.benchmarks import load_benchmark

    spec, _, own = spec.partition("#")
    if own:
        if not own.isdigit():
            raise QScopeError(f"{spec}#{own}: the part after '#' must be an item count")
        limit = int(own)
    name, _, split = spec.partition("@")
    return load_benchmark(name, split=split or None, limit=limit or None, seed=seed, template=template,
                          answer_field=answer_field, choices_field=choices_field)


def _bench_name(spec: str) -> str:
    name = spec.partition("#")[0].partition("@")[0]
    return Path(name).name.split(".")[0] if name.endswith((".jsonl", ".gz", ".json")) else name


def _footprints(benchmarks, footprints_file, model, sae, layer, limit, seed, position, max_length, batch_size,
                template=None, answer_field=None, choices_field=None, device=None, dtype=None, keep=None):
    """Footprints from a saved file, or computed now (per-item cache under QSCOPE_HOME).
    Returns (footprints, lm, sae) - lm/sae are None when read from a file."""
    from ..evals.footprint import FootprintConfig, compute_footprint, load_footprints

    if footprints_file:
        fps = load_footprints(footprints_file)
        if benchmarks:
            by = {f.benchmark: f for f in fps}
            missing = [_bench_name(b) for b in benchmarks if _bench_name(b) not in by]
            if missing:
                raise QScopeError(f"{footprints_file}: no footprint for {', '.join(missing)} (has {', '.join(by)})")
            fps = [by[_bench_name(b)] for b in benchmarks]
        if keep:
            loaded = load_models(model, sae, layer, device, dtype)
            return fps, loaded.lm, loaded.sae
        return fps, None, None
    if not benchmarks:
        raise QScopeError("name at least one benchmark (or pass --footprints FILE)")
    item_sets = [(_bench_name(b), _items(b, limit, seed, template, answer_field, choices_field)) for b in benchmarks]
    loaded = load_models(model, sae, layer, device, dtype)
    lm, sae_ = loaded.lm, loaded.sae
    cfg = FootprintConfig(layer=layer, position=position, max_length=max_length, batch_size=batch_size)
    out = []
    with progress_bar() as bar:
        for name, items in item_sets:
            task = bar.add_task(f"footprint {name}", total=len(items))
            out.append(compute_footprint(lm, sae_, items, cfg, benchmark=name,
                                         progress=lambda k, t=task: bar.advance(t, k)))
            bar.remove_task(task)
            console.print(f"{name}: {len(items)} items, |F(D)| = {out[-1].size}")
    return out, lm, sae_


def _equalise(fps, items: Optional[int]):
    """Footprints cut to equal item counts (footprint size and R_hat grow with |D|); 0 = keep all."""
    if items == 0:
        return list(fps), None
    n = items or min(len(f.items) for f in fps)
    short = [f.benchmark for f in fps if len(f.items) < n]
    if short:
        raise QScopeError(f"--items {n}: {', '.join(short)} have fewer items")
    return [f.subset(n) for f in fps], n


def _each(n: Optional[int]) -> str:
    return f"{n} items each" if n else "all loaded items"


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
    from ..evals.footprint import save_footprints
    from ..io import write_json

    if layers or position == "both":
        wanted = int_list(layers, "--layers") if layers else [layer]
        groups = _multi_layer_footprints(benchmarks, model, sae, wanted, limit, seed, position, max_length,
                                         batch_size, template, answer_field, choices_field, device, dtype)
    else:
        fps, _, _ = _footprints(benchmarks, None, model, sae, layer, limit, seed, position, max_length, batch_size,
                                template, answer_field, choices_field, device, dtype)
        groups = {"": fps}
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


def _multi_layer_footprints(benchmarks, model, sae, layers, limit, seed, position, max_length, batch_size,
                            template, answer_field, choices_field, device, dtype):
    """{'L15': [...], 'L15-any': [...]}: every layer (and position) from one forward per batch."""
    from ..evals.footprint import FootprintConfig, compute_footprints

    if not benchmarks:
        raise QScopeError("name at least one benchmark")
    item_sets = [(_bench_name(b), _items(b, limit, seed, template, answer_field, choices_field)) for b in benchmarks]
    lm, by_layer = load_models(model, sae, layers, device, dtype)
    layers, saes = list(by_layer), list(by_layer.values())
    positions = ["last", "any"] if position == "both" else [position]
    labels = [f"L{n}" + ("" if p == "last" else f"-{p}") for n in layers for p in positions]
    groups: dict[str, list] = {label: [] for label in labels}
    cfg = FootprintConfig(max_length=max_length, batch_size=batch_size)
    with progress_bar() as bar:
        for name, items in item_sets:
            task = bar.add_task(f"footprint {name}", total=len(items))
            fps = compute_footprints(lm, saes, items, cfg, benchmark=name, positions=positions,
                                     progress=lambda k, t=task: bar.advance(t, k))
            for label, fp in zip(labels, fps):
                groups[label].append(fp)
            bar.remove_task(task)
            console.print(f"{name}: {len(items)} items, |F(D)| = " + ", ".join(
                f"{label} {groups[label][-1].size}" for label in labels))
    return groups


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
    from ..evals.redundancy import coverage_curve, spearman_agreement
    from ..evals.report import coverage_plot, scatter_plot, tau_plot, write_result

    fps, _, _ = _footprints(benchmarks, footprints, model, sae, layer, limit, seed, position, 512, 8)
    fps, n = _equalise(fps, items)
    curves = [coverage_curve(f, samples, seed) for f in fps]
    result: dict = {"items_per_benchmark": n, "layer": fps[0].layer, "position": fps[0].position,
                    "feature_based": [c.to_dict() for c in curves]}
    perf = []
    if accuracy:
        perf = _performance(accuracy, [f.benchmark for f in fps], samples, seed)
        result["performance_based"] = [p.to_dict() for p in perf]
        if perf:
            result["models"] = perf[0].models
            result["n_models"] = perf[0].n_models
        r_hat = {c.benchmark: c.r_hat for c in curves}
        r = {p.benchmark: p.r for p in perf}
        if len([b for b in r_hat if b in r]) >= 3:
            result["agreement"] = spearman_agreement(r_hat, r)
    if _out(out):
        write_result(out / "redundancy.json", result, provenance=record(seeds=seed))
        coverage_plot(curves, out / "coverage.png", title=f"feature coverage, layer {fps[0].layer}, {_each(n)}")
        if perf:
            tau_plot(perf, out / "tau.png")
            scatter_plot({c.benchmark: c.r_hat for c in curves}, {p.benchmark: p.r for p in perf},
                         out / "r_vs_rhat.png", title=f"{perf[0].n_models} models")
        console.print(f"wrote {out / 'redundancy.json'} and plots")
    if json:
        emit_json(result)
        return
    perf_by = {p.benchmark: p for p in perf}
    table = Table("benchmark", "items", "|F(D)|", "R_hat", "n for 50%", "n for 90%", *(["R (tau)"] if perf else []),
                  title=f"redundancy, {_each(n)}")
    for c in sorted(curves, key=lambda c: -c.r_hat):
        p = perf_by.get(c.benchmark)
        table.add_row(c.benchmark, str(c.n_items), str(c.footprint_size), f"{c.r_hat:.3f}", str(c.items_for(0.5)),
                      str(c.items_for(0.9)), *([f"{p.r:.3f}" if p else "-"] if perf else []))
    console.print(table)
    if "agreement" in result:
        a = result["agreement"]
        console.print(f"Spearman(R, R_hat) = {a['spearman']:.3f} (p={a['p_value']:.3g}) over {a['n_benchmarks']} "
                      f"benchmarks and {result['n_models']} models")


def _performance(folder: Path, names: list[str], samples: int, seed: int):
    """tau_n / R per benchmark from per-model accuracy files; benchmarks with < 2 models are skipped."""
    import json as _json

    from ..evals.accuracy import AccuracyResult, accuracy_matrix
    from ..evals.redundancy import performance_redundancy

    if not folder.is_dir():
        raise QScopeError(f"{folder}: not a folder of accuracy results")
    out = []
    for name in names:
        files = sorted(folder.glob(f"*/{name}.json"))
        results = [AccuracyResult.from_dict(_json.loads(f.read_text())) for f in files]
        if len(results) < 2:
            console.print(f"[yellow]{name}: accuracy of {len(results)} model(s) in {folder}; tau needs 2 or more[/]")
            continue
        matrix, _, models = accuracy_matrix(results)
        try:
            out.append(performance_redundancy(matrix, models, name, samples, seed))
        except QScopeError as exc:
            console.print(f"[yellow]{exc}[/]")
    return out


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
    from ..evals.overlap import overlap_matrix
    from ..evals.report import overlap_heatmap, write_result

    fps, _, _ = _footprints(benchmarks, footprints, model, sae, layer, limit, seed, position, 512, 8)
    fps, n = _equalise(fps, items)
    res = overlap_matrix(fps)
    result = {"items_per_benchmark": n, "layer": fps[0].layer, "position": fps[0].position, **res.to_dict()}
    pairs = []
    for p in pair or []:
        a, _, b = p.partition(",")
        if a not in res.benchmarks or b not in res.benchmarks:
            raise QScopeError(f"--pair {p}: both must be among {', '.join(res.benchmarks)}")
        pairs.append({"a": a, "b": b, "a_to_b": round(res.get(a, b), 4), "b_to_a": round(res.get(b, a), 4),
                      "overlap_min": round(res.get(a, b, "overlap_min"), 4)})
    result["pairs"] = pairs
    if _out(out):
        write_result(out / "overlap.json", result, provenance=record(seeds=seed))
        overlap_heatmap(res, out / "overlap.png", title=f"|F(A) ∩ F(B)| / |F(A)|, layer {fps[0].layer}, {_each(n)}")
        overlap_heatmap(res, out / "overlap_min.png", kind="overlap_min")
        console.print(f"wrote {out / 'overlap.json'}, overlap.png, overlap_min.png")
    if json:
        emit_json(result)
        return
    table = Table("A \\ B", *res.benchmarks, title=f"|F(A) ∩ F(B)| / |F(A)|, {_each(n)}")
    for b, row in zip(res.benchmarks, res.overlap):
        table.add_row(b, *(f"{x:.2f}" for x in row))
    console.print(table)
    for p in pairs:
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
    from ..evals.overlap import rank_candidates, unique_features
    from ..evals.report import write_result

    suite_names = [s.strip() for s in suite.split(",") if s.strip()]
    names = suite_names + [c for c in candidates if c not in suite_names]
    fps, lm, sae_ = _footprints(names, footprints, model, sae, layer, limit, seed, position, 512, 8, keep=unique > 0)
    fps, n = _equalise(fps, items)
    by = {f.benchmark: f for f in fps}
    suite_fps = [by[_bench_name(s)] for s in suite_names]
    cand_fps = [by[_bench_name(c)] for c in candidates]
    ranking = rank_candidates(suite_fps, cand_fps)
    uniq = {c.benchmark: unique_features(c, suite_fps, top=unique, lm=lm, sae=sae_) for c in cand_fps} if unique else {}
    result = {"items_per_benchmark": n, "suite": suite_names, "ranking": [r.to_dict() for r in ranking],
              "unique_features": {k: v.to_dict() for k, v in uniq.items()}}
    if _out(out):
        write_result(out / "rank.json", result, provenance=record(seeds=seed))
        console.print(f"wrote {out / 'rank.json'}")
    if json:
        emit_json(result)
        return
    table = Table("candidate", "|F|", "new features", "novelty", "top unique features (promoted tokens)",
                  title=f"vs suite {', '.join(suite_names)}")
    for r in ranking:
        u = uniq.get(r.benchmark)
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
    from ..evals.accuracy import AccuracyConfig, evaluate
    from ..evals.report import write_result
    from ..model import load_model

    if not benchmarks:
        raise QScopeError("name at least one benchmark")
    item_sets = [(_bench_name(b), _items(b, limit, seed, template, answer_field, choices_field)) for b in benchmarks]
    with console.status("loading model"):
        lm = load_model(model, device=device, dtype=dtype)
    cfg = AccuracyConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, mc_method=mc_method, chat=chat)
    results = []
    with progress_bar() as bar:
        for name, its in item_sets:
            task = bar.add_task(f"{name}", total=len(its))
            results.append(evaluate(lm, its, cfg, benchmark=name, progress=lambda k, t=task: bar.advance(t, k)))
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
