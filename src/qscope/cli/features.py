"""`qscope features`: find features (contrast two text sets, by promoted tokens) and build, show and
explain their dashboards from a feature store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, JsonOpt, LayerOpt, ModelOpt, SaeOpt, console, emit_json, load_models, read_texts

app = typer.Typer(help="Find and describe features.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="features")


@app.command("contrast")
def contrast_cmd(
    pos: str = typer.Option(..., "--pos", help="Positive texts: a file (.txt/.jsonl/...), folder or corpus name."),
    neg: str = typer.Option(..., "--neg", help="Negative texts, same forms as --pos."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    top: int = typer.Option(20, min=1, help="Features listed."),
    by: str = typer.Option("mean", help="Rank by difference of 'mean' activation or firing 'rate'."),
    limit: int = typer.Option(500, min=1, help="At most this many texts per side."),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Features that fire more on the positive texts than on the negative ones (position 0 excluded).

    Example: qscope features contrast --layer 15 --pos french.txt --neg english.txt
    """
    from rich.progress import Progress

    from ..features.logits import token_effects
    from ..features.search import contrast

    pos_texts, neg_texts = read_texts(pos, limit), read_texts(neg, limit)
    loaded = load_models(model, sae, layer, device, dtype)
    lm, sae_ = loaded.lm, loaded.sae
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("encoding texts", total=len(pos_texts) + len(neg_texts))
        result = contrast(lm, sae_, pos_texts, neg_texts, layer, top=top, by=by, progress=lambda: bar.advance(task))
    if json:
        emit_json(result)
        return
    effects = {e.feature: e for e in token_effects(lm, sae_, result.ids, n=5)}
    table = Table("feature", f"Δ{by}", "mean +", "mean -", "rate +", "rate -", "promotes",
                  title=f"layer {result.layer}: {result.n_pos} positive vs {result.n_neg} negative texts")
    for f in result.features:
        table.add_row(str(f.feature), f"{f.score:.3f}", f"{f.mean_pos:.3f}", f"{f.mean_neg:.3f}", f"{f.rate_pos:.3f}",
                      f"{f.rate_neg:.3f}", " ".join(repr(t) for t, _ in effects[f.feature].promoted))
    console.print(table)


@app.command("tokens")
def tokens_cmd(
    tokens: List[str] = typer.Argument(..., help="Single tokens, e.g. ' Paris' (mind the leading space)."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    top: int = typer.Option(20, min=1, help="Features listed."),
    suppress: bool = typer.Option(False, help="Find features that suppress the tokens instead."),
    json: JsonOpt = False,
) -> None:
    """Features whose decoder direction promotes (or suppresses) the given tokens.

    Example: qscope features tokens --layer 24 " Paris" " London"
    """
    from ..features.search import features_for_tokens

    loaded = load_models(model, sae, layer)
    lm, sae_ = loaded.lm, loaded.sae
    rows = features_for_tokens(lm, sae_, tokens, top=top, suppress=suppress)
    if json:
        emit_json([{"feature": f, "score": s} for f, s in rows])
        return
    table = Table("feature", "mean logit effect")
    for f, s in rows:
        table.add_row(str(f), f"{s:+.3f}")
    console.print(table)


StoreOpt = typer.Option(None, "--store", help="Feature store file (default: the one `features build` made for --model/--sae/--layer).")


def _open_store(store: Optional[Path], model: str, sae: str, layer: Optional[int]):
    from ..features.store import FeatureStore, find_store

    return FeatureStore(store or find_store(model, sae, layer)).check(layer)


@app.command("build")
def build_cmd(
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    corpus: str = typer.Option("dashboard", help="'dashboard' = the SAE training mix with 40% other languages (texts "
                               "labelled by corpus; every language's features get top contexts in it), 'mix' = the "
                               "training mix itself, or any text source: a file, folder or corpus name (see `qscope "
                               "data show`)."),
    n_texts: int = typer.Option(1500, "--n-texts", min=1, help="Texts to stream in (a rerun with more continues)."),
    seed: int = typer.Option(0, min=0, help="Seed of the mix's order (part of what a resume checks)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Store file (default: QSCOPE_HOME/stores/"
                                       "<model>-<sae>-layer<L>.sqlite)."),
    max_length: int = typer.Option(128, min=1, help="Tokens per text (longer texts are cut)."),
    batch_size: int = typer.Option(8, min=1, help="Texts per forward pass."),
    top_n: int = typer.Option(20, min=1, help="Top contexts kept per feature."),
    checkpoint_every: int = typer.Option(64, min=1, help="Commit progress every this many texts."),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Build (or resume) the feature store behind every dashboard: one pass over the texts.

    The default texts are the SAE training mix (prose, code, Chinese) with more of its other
    languages, rather than held-out text: dashboards want many and varied contexts, every
    language's features want texts in that language, and the mix labels each text with its corpus. Interrupt it any time; the same command continues from the last checkpoint.

    Example: qscope features build --layer 15 --n-texts 1500
    """
    import json as json_
    import sqlite3
    import time
    from itertools import islice

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..errors import QScopeError
    from ..features.store import build_store, default_store_path

    if n_texts < 1:
        raise QScopeError("--n-texts must be at least 1")
    loaded = load_models(model, sae, layer, device, dtype)
    lm, sae_ = loaded.lm, loaded.sae
    layer_ = lm.check_sae(sae_, layer)
    path = out or default_store_path(model, sae, layer_)
    if corpus in ("dashboard", "mix"):
        from ..data.mix import DASHBOARD_WEIGHTS, mix_records

        texts = islice(mix_records(None, seed, DASHBOARD_WEIGHTS if corpus == "dashboard" else None), n_texts)
    else:
        from ..data import CORPORA, iter_texts

        label = corpus if corpus in CORPORA else None
        texts = ((label, t) for t in iter_texts(corpus, limit=n_texts))
    start_done = 0
    if path.is_file():
        try:
            with sqlite3.connect(path) as conn:
                row = conn.execute("SELECT value FROM meta WHERE key='texts_done'").fetchone()
                start_done = json_.loads(row[0]) if row else 0
        except sqlite3.DatabaseError:
            pass
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    started = time.monotonic()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"layer {layer_} texts", total=n_texts, completed=min(start_done, n_texts), rate="")

        def progress(done: int, tokens: int) -> None:
            speed = (done - start_done) / max(time.monotonic() - started, 1e-9)
            bar.update(task, completed=done, rate=f"{tokens:,} tokens · {speed:.2f} texts/s")

        store = build_store(lm, sae_, texts, path, layer_, max_length=max_length, batch_size=batch_size, top_n=top_n,
                            checkpoint_every=checkpoint_every, sae_name=sae, progress=progress)
    seconds = time.monotonic() - started
    info = store.summary()
    new = info["texts_done"] - start_done
    info.update(seconds=round(seconds, 1), texts_per_s=round(new / max(seconds, 1e-9), 3))
    info.pop("hist_edges", None)
    if json:
        emit_json(info)
        return
    console.print(f"{path}: {info['texts_done']:,} texts, {info['tokens_done']:,} tokens, {info['features_fired']:,} of "
                  f"{info['d_sae']:,} features fired, {info['bytes'] / 2**20:.1f} MiB ({new:,} new texts in {seconds:.0f} s)")


@app.command("show")
def show_cmd(
    feature: Optional[int] = typer.Argument(None, help="Feature id."),
    store: Optional[Path] = StoreOpt,
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    top: int = typer.Option(10, min=0, help="Top contexts shown."),
    intervals: int = typer.Option(2, min=1, help="Samples shown per activation interval."),
    plain: bool = typer.Option(False, help="No colours: mark the activating token «like this»."),
    png: Optional[Path] = typer.Option(None, help="Also write the activation histogram as a PNG."),
    search: Optional[str] = typer.Option(None, help="Instead, list the features whose explanation or automatic "
                                         "label has these words."),
    densest: int = typer.Option(0, min=0, help="Instead, list this many features by firing density."),
    json: JsonOpt = False,
) -> None:
    """A feature's dashboard from a feature store (no model is loaded).

    Density, activation histogram, top contexts, samples per activation interval, promoted and
    suppressed tokens, explanations; or search explanations, or list features by density.

    Example: qscope features show 1234 --layer 15
    """
    from ..errors import QScopeError
    from .dashboard import histogram_png, render_dashboard

    with _open_store(store, model, sae, layer) as st:
        if search is not None or densest:
            rows = st.search_labels(search) if search is not None else st.top_features_by_density(densest)
            if json:
                emit_json([r.to_dict() for r in rows])
                return
            table = Table(*rows[0].to_dict().keys()) if rows else Table("no match")
            for r in rows:
                table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.to_dict().values()))
            console.print(table)
            return
        if feature is None:
            raise QScopeError("give a feature id (or --search / --densest)")
        dash = st.dashboard(feature, n_top=max(top, 0) if not json else None)
    if png:
        histogram_png(dash, png)
    if json:
        emit_json(dash)
        return
    render_dashboard(dash, console, n_top=top, n_interval=intervals, plain=plain)
    if png:
        console.print(f"histogram written to {png}")


@app.command("explain")
def explain_cmd(
    features: Optional[List[int]] = typer.Argument(None, help="Feature ids (or --all)."),
    store: Optional[Path] = StoreOpt,
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    text: Optional[str] = typer.Option(None, "--text", help="Your explanation (stored with source 'manual')."),
    all_: bool = typer.Option(False, "--all", help="Every feature that fired, most frequent first; features the "
                              "--api-model already explained are skipped, so a rerun continues."),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible API base URL, e.g. http://localhost:8000/v1 "
                                           "(vLLM), http://localhost:11434/v1 (Ollama)."),
    api_model: Optional[str] = typer.Option(None, "--api-model", help="Model name the endpoint serves (stored as "
                                            "the explanation's source)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key (if any)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, max=256, help="Requests in flight at once (--all)."),
    json: JsonOpt = False,
) -> None:
    """Attach an explanation to features: by hand, or written by an LLM from the top contexts.

    Until a feature has one, lists show its automatic label (made when the store was built).

    Example: qscope features explain 1234 --layer 15 --endpoint http://localhost:8000/v1 --api-model qwen3-8b
    Example: qscope features explain --all --layer 15 --endpoint http://localhost:11434/v1 --api-model qwen3:8b
    """
    from ..errors import QScopeError
    from ..features.explain import explain_all, explain_feature

    if bool(features) == all_:
        raise QScopeError("give feature ids or --all (not both)")
    done = []
    with _open_store(store, model, sae, layer) as st:
        if all_:
            if not endpoint or not api_model or text is not None:
                raise QScopeError("--all needs --endpoint and --api-model (and no --text)")
            with console.status("explaining") as status:
                done = explain_all(st, endpoint, api_model, api_key_env, batch_size=batch_size,
                                   progress=lambda n, total: status.update(f"explained {n:,} of {total:,}"))
            if not json:
                console.print(f"{len(done):,} features explained by {api_model} in {st.path}")
        else:
            for f in features:
                e = explain_feature(st, f, text=text, endpoint=endpoint, api_model=api_model, api_key_env=api_key_env)
                done.append(e)
                if not json:
                    console.print(f"feature {f}: {e.text}  [dim]({e.source})[/]", highlight=False)
    if json:
        emit_json([e.to_dict() for e in done])


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    format: str = typer.Option("neuronpedia", "--format", help="neuronpedia: a Neuronpedia import folder; "
                               "saedashboard: the data SAEDashboard (sae_vis) renders its HTML dashboard from."),
    store: Optional[Path] = StoreOpt,
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    features: Optional[str] = typer.Option(None, "--features", help="Comma-separated feature ids (default: every "
                                           "feature that fired)."),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="Neuronpedia model id (default: the model's "
                                           "name in lowercase, e.g. smollm2-135m-instruct)."),
    source_set: str = typer.Option("qscope-res", "--source-set", help="Neuronpedia source set; the source id is "
                                   "<layer>-<source set>."),
    release: str = typer.Option("qscope", "--release", help="Neuronpedia release name."),
    creator_id: Optional[str] = typer.Option(None, "--creator-id", help="Neuronpedia user id that owns the rows "
                                             "(default: the bot user every Neuronpedia database is seeded with)."),
    n_layers: Optional[int] = typer.Option(None, "--n-layers", min=1, help="The model's layer count (known for the "
                                           "default model and Qwen-Scope models)."),
    neurons_per_layer: Optional[int] = typer.Option(None, "--neurons-per-layer", min=1, help="The model's width "
                                                    "(likewise)."),
    json: JsonOpt = False,
) -> None:
    """Export a feature store to the format Neuronpedia imports or SAEDashboard renders.

    neuronpedia: features, activations and explanations as a Neuronpedia import folder
    (<out>/<model id>/<layer>-<source set>/), the layout a Neuronpedia instance's importer reads.

    saedashboard: <out>/<store name>/ with sae_vis_data.json (what
    SAEDashboard's SaeVisData.load_json reads), vocab.json, layout.json and
    render.py, which writes SAEDashboard's HTML page where sae-dashboard is
    installed. Every feature lands in that one page: pick them with --features.

    Example: qscope features export --layer 15 --format neuronpedia -o np_export

    Example: qscope features export --layer 15 --format saedashboard --features 3858,6644 -o vis
    """
    from ..errors import QScopeError

    wanted = _feature_list(features)
    with _open_store(store, model, sae, layer) as st:
        if format == "neuronpedia":
            from ..integrations.neuronpedia import NEURONPEDIA_BOT_USER, NeuronpediaTarget, default_model_id, export_neuronpedia

            target = NeuronpediaTarget(model_id or default_model_id(st.meta["model"]), source_set, release,
                                       creator_id=creator_id or NEURONPEDIA_BOT_USER, n_layers=n_layers,
                                       neurons_per_layer=neurons_per_layer)
            folder = export_neuronpedia(st, out, target, wanted)
        elif format == "saedashboard":
            from ..integrations.saedashboard import export_saedashboard

            given = [name for name, value, default in (
                ("--model-id", model_id, None), ("--source-set", source_set, "qscope-res"), ("--release", release, "qscope"),
                ("--creator-id", creator_id, None), ("--n-layers", n_layers, None),
                ("--neurons-per-layer", neurons_per_layer, None)) if value != default]
            if given:
                raise QScopeError(f"{', '.join(given)}: only for --format neuronpedia (saedashboard takes the "
                                  "store and --features)")
            folder = export_saedashboard(st, out, wanted)
        else:
            raise QScopeError(f"--format {format!r}: expected neuronpedia or saedashboard")
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if json:
        emit_json({"format": format, "folder": str(folder), "files": files})
        return
    console.print(f"{folder}: {len(files)} files ({format})")


def _feature_list(spec: Optional[str]) -> Optional[list[int]]:
    """'1,2,3' -> [1, 2, 3]."""
    from ..parse import int_list

    return int_list(spec, "--features", "12,345") if spec else None
