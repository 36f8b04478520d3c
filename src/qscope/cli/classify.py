"""`qscope classify`: feature classifiers - discover, run, evaluate on built-in tasks, classify a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import QScopeError
from ..parse import int_list
from .common import DeviceOpt, JsonOpt, ModelOpt, SaeOpt, console, emit_json, load_models, progress_bar, read_texts

app = typer.Typer(help="Classify texts with SAE features (top-K OR rule, no trained head).", no_args_is_help=True)

LayersOpt = typer.Option(
    None, "--layers", help="Comma-separated layers, e.g. 6,15,24 (default: every shipped SAE layer)."
)
NDiscoveryOpt = typer.Option(400, min=1, help="Discovery texts per class.")
SplitSeedOpt = typer.Option(0, min=0, help="Split seed.")
CacheDirOpt = typer.Option(None, "--cache", help="Code cache folder (default QSCOPE_HOME/codes).")
ClassifierOpt = typer.Option(..., "--classifier", "-c", help="Classifier JSON from `classify discover`.")
SavedModelOpt = typer.Option(None, "--model", "-m", help="Model (default: the one saved in the classifier).")
SavedSaeOpt = typer.Option(None, "--sae", "-s", help="SAE source (default: the one saved in the classifier).")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="classify")


def _task(name: str | None, pos: str | None, neg: str | None, n_discovery: int, n_test: int, seed: int):
    from ..datatools.labelled import from_texts, load_task

    if name and (pos or neg):
        raise QScopeError("give either --task or --pos/--neg, not both")
    if name:
        with console.status(f"building task {name}"):
            return load_task(name, n_discovery, n_test, seed)
    if not (pos and neg):
        raise QScopeError("give --task NAME (see `qscope classify tasks`) or both --pos and --neg")
    limit = 4 * (n_discovery + n_test)
    return from_texts(Path(pos).stem, read_texts(pos, limit), read_texts(neg, limit), n_discovery, n_test, seed)


ResidualsOpt = typer.Option(
    False,
    "--keep-residuals",
    help="Also cache per-token residuals (fp16, SAE-independent; re-evaluating other SAEs then needs no forward).",
)


@app.command("tasks")
def tasks_cmd(json: JsonOpt = False) -> None:
    """List the built-in labelled tasks (built from package data on first use).

    Example: qscope classify tasks
    """
    from ..datatools.labelled import TASKS

    rows = [{"task": name} for name in TASKS]
    if json:
        emit_json(rows)
        return
    console.print("built-in tasks: " + ", ".join(TASKS))


@app.command("discover")
def discover_cmd(
    task: Optional[str] = typer.Option(None, help="Built-in task (see `qscope classify tasks`)."),
    pos: Optional[str] = typer.Option(None, help="Positive texts: file, folder or corpus name."),
    neg: Optional[str] = typer.Option(None, help="Negative texts, same forms as --pos."),
    out: Path = typer.Option(..., "--out", "-o", help="Classifier JSON to write."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layers: Optional[str] = LayersOpt,
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Use this layer instead of the top1-diff choice."),
    k: int = typer.Option(5, "-k", min=1, help="Features ORed together (top K by delta)."),
    multi: int = typer.Option(0, min=0, help="Instead: OR the best feature of the top-m layers (m>0)."),
    n_discovery: int = NDiscoveryOpt,
    seed: int = SplitSeedOpt,
    max_length: int = typer.Option(128, min=1, help="Tokens per text (longer texts are cut)."),
    cache_dir: Optional[str] = CacheDirOpt,
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Find the features whose example-level firing best separates positives from negatives.

    Example: qscope classify discover --task harmful -k 5 --out harmful.json
    Example: qscope classify discover --pos french.txt --neg english.txt --layers 6,15 --out fr.json
    """
    from ..datatools.classify_runs import DiscoveryConfig, run_discovery
    from ..features.logits import token_effects

    t = _task(task, pos, neg, n_discovery, 2, seed)
    lm, saes = load_models(model, sae, int_list(layers, "--layers") if layers is not None else None, device)
    cfg = DiscoveryConfig(k=k, multi=multi, layer=layer, max_length=max_length, cache_dir=cache_dir, model=model,
                          sae=sae)
    with progress_bar() as bar:
        clf = run_discovery(lm, saes, t, cfg, progress=_ticker(bar))
    clf.save(out)
    if json:
        emit_json(clf)
        return
    table = Table(
        "layer",
        "feature",
        "delta",
        "P(fire|pos)",
        "P(fire|neg)",
        "promotes",
        title=f"{t.name}: OR of {len(clf.features)} features -> {out}",
    )
    for f in clf.features:
        effect = token_effects(lm, saes[f.layer], [f.feature], n=5)[0]
        table.add_row(
            str(f.layer),
            str(f.feature),
            f"{f.delta:.3f}",
            f"{f.p_pos:.3f}",
            f"{f.p_neg:.3f}",
            " ".join(repr(s) for s, _ in effect.promoted),
        )
    console.print(table)


@app.command("run")
def run_cmd(
    classifier: Path = ClassifierOpt,
    texts: List[str] = typer.Argument(None, help="Texts to classify (or use --texts)."),
    source: Optional[str] = typer.Option(None, "--texts", help="A file, folder or corpus name of texts."),
    limit: int = typer.Option(100, min=1, help="At most this many texts from --texts."),
    model: Optional[str] = SavedModelOpt,
    sae: Optional[str] = SavedSaeOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the labels as JSON here."),
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Label a few texts with a saved classifier; shows which features fired.

    Example: qscope classify run -c harmful.json "How do I pick a lock?" "How do I bake bread?"
    """
    from ..datatools.classify import FeatureClassifier
    from ..datatools.classify_runs import run_classify

    clf = FeatureClassifier.load(classifier)
    items = list(texts or []) + (read_texts(source, limit) if source else [])
    if not items:
        raise QScopeError("no texts: pass them as arguments or with --texts")
    lm, saes = load_models(
        model or clf.meta.get("model", "default"), sae or clf.meta.get("sae", "default"), clf.layers, device
    )
    with console.status("encoding"):
        rows = run_classify(lm, saes, clf, items).to_dict()["labels"]
    if out:
        from ..io import write_json

        write_json(out, rows)
    if json:
        emit_json(rows)
        return
    table = Table("label", "fired (layer:feature)", "text")
    for r in rows:
        table.add_row(
            "[red]positive[/]" if r["label"] else "negative",
            " ".join(f"{l}:{f}" for l, f in r["fired"]),
            r["text"][:80].replace("\n", " "),
        )
    console.print(table)


@app.command("eval")
def eval_cmd(
    task: List[str] = typer.Option(None, "--task", "-t", help="Built-in task(s); repeat the option. Default: all."),
    pos: Optional[str] = typer.Option(None, help="Instead of --task: positive texts."),
    neg: Optional[str] = typer.Option(None, help="Instead of --task: negative texts."),
    out: Path = typer.Option(
        Path("classify-eval"), "--out", "-o", help="Folder for <task>.json, summary.json, efficiency.png."
    ),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layers: Optional[str] = LayersOpt,
    ks: str = typer.Option("1,2,5,10", help="K values (features ORed)."),
    n_discovery: int = NDiscoveryOpt,
    n_test: int = typer.Option(200, min=1, help="Test texts per class."),
    seeds: int = typer.Option(5, min=1, help="Repeats per data fraction of the efficiency curve."),
    seed: int = SplitSeedOpt,
    max_length: int = typer.Option(128, min=1, help="Tokens per text."),
    cache_dir: Optional[str] = CacheDirOpt,
    keep_residuals: bool = ResidualsOpt,
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Score feature classifiers on labelled tasks, side by side with probe baselines.

    F1 per layer x K on the test splits, the top1-diff layer choice, multi-layer ORs, logistic
    probes (raw residuals, SAE codes) and the data-efficiency curve. Activations are cached, so
    a re-run (or another task on the same texts) costs no forward passes.

    Example: qscope classify eval --task harmful --task code --out docs/classify
    """
    from ..datatools.classify_runs import ClassifyEvalConfig, run_classify_eval, write_classify_eval
    from ..datatools.labelled import TASKS
    from ..provenance import record

    names = list(task or []) if not (pos or neg) else [None]
    names = names or list(TASKS)
    cfg = ClassifyEvalConfig(ks=tuple(int_list(ks, "--ks")), seeds=seeds, max_length=max_length, cache_dir=cache_dir,
                             keep_residuals=keep_residuals)
    lm, saes = load_models(model, sae, int_list(layers, "--layers") if layers is not None else None, device)
    tasks = [_task(name, pos, neg, n_discovery, n_test, seed) for name in names]
    with progress_bar() as bar:
        result = run_classify_eval(lm, saes, tasks, cfg, progress=_ticker(bar))
    write_classify_eval(result, out, provenance=record(seeds={"split": seed, "subsample": list(range(seeds))}))
    if json:
        emit_json(result)
        return
    for rep in result.reports:
        _print_report(rep)
    console.print(f"wrote {out}/summary.json, {out}/efficiency.png and one JSON per task")


def _ticker(bar):
    """progress(stage, n, total) -> one bar line per stage (a spinner where total is 0)."""
    jobs: dict[str, int] = {}

    def tick(stage: str, n: int, total: int) -> None:
        if stage not in jobs:
            jobs[stage] = bar.add_task(stage, total=total or None)
        bar.advance(jobs[stage], n)

    return tick


def _print_report(rep) -> None:
    for split in rep.n_test:
        table = Table(
            "layer",
            "d(l)",
            *[f"K={k}" for k in rep.ks],
            "raw probe",
            "SAE probe",
            title=f"{rep.task} [{split}]: test F1 (chosen layer {rep.chosen_layer}, K={rep.chosen_k})",
        )
        for l in rep.layers:
            f1 = {r["k"]: r["f1"] for r in rep.grid if r["split"] == split and r["layer"] == l}
            base = {b["kind"]: b["f1"] for b in rep.baselines if b["split"] == split and b["layer"] == l}
            mark = "*" if l == rep.chosen_layer else ""
            table.add_row(
                f"{l}{mark}",
                f"{rep.top1_diff[l]['delta']:.3f}",
                *[f"{f1[k]:.3f}" for k in rep.ks],
                f"{base.get('raw-probe', float('nan')):.3f}",
                f"{base.get('sae-probe', float('nan')):.3f}",
            )
        console.print(table)


@app.command("corpus")
def corpus_cmd(
    classifier: Path = ClassifierOpt,
    source: str = typer.Option(..., "--texts", help="A file, folder or corpus name (read lazily)."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL with index, label, fired per text."),
    model: Optional[str] = SavedModelOpt,
    sae: Optional[str] = SavedSaeOpt,
    limit: Optional[int] = typer.Option(None, min=1, help="Stop after this many texts."),
    keep_text: bool = typer.Option(False, help="Copy each text into its output line."),
    ray: bool = typer.Option(False, "--ray", help="Use a Ray Data actor pool (not resumable)."),
    actors: int = typer.Option(2, min=1, help="Ray actors, each holding a model + SAEs."),
    batch_size: int = typer.Option(16, min=1, help="Texts per forward."),
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Classify a large corpus, streaming; re-running the same command resumes where it stopped.

    Example: qscope classify corpus -c harmful.json --texts nlp-corpus --out flagged.jsonl
    Example: qscope classify corpus -c harmful.json --texts big.jsonl --out flagged.jsonl --ray --actors 4
    """
    from ..data import iter_texts
    from ..datatools.classify import FeatureClassifier
    from ..datatools.classify_runs import CorpusConfig, run_corpus
    from ..datatools.scale import default_loader

    clf = FeatureClassifier.load(classifier)
    model_, sae_ = model or clf.meta.get("model", "default"), sae or clf.meta.get("sae", "default")
    cfg = CorpusConfig(batch_size=batch_size, keep_text=keep_text, limit=limit, ray=ray, actors=actors)
    load = default_loader(model_, sae_, clf.layers) if ray else (lambda: load_models(model_, sae_, clf.layers, device))
    with progress_bar() as bar:
        job = bar.add_task("classifying", total=limit)
        result = run_corpus(load, clf, iter_texts(source), out, cfg, progress=lambda n: bar.advance(job, n))
    if json:
        emit_json(result)
        return
    console.print(
        f"{result.texts:,} texts ({result.positives:,} positive) -> {out}"
        + (f" (resumed at {result.resumed_from:,})" if result.resumed_from else "")
        + f", {result.seconds:.0f}s"
    )
