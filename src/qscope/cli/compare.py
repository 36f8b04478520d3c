"""`qscope compare A B`: how many features two SAEs of the same model and layer share."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import QScopeError
from .common import DeviceOpt, JsonOpt, ModelOpt, console, emit_json, progress_bar


def register(root: typer.Typer) -> None:
    root.command("compare")(compare_cmd)


def _texts(spec: str, n: int) -> list[str]:
    if spec == "held-out":
        from ..data import held_out_texts

        return held_out_texts(n=n)
    from .common import read_texts

    return read_texts(spec, limit=n)


def compare_cmd(
    a: str = typer.Argument(..., help="SAE A: 'default', a layer<n>.sae.pt, a SAELens/sparsify/qscope folder, a hub repo id."),
    b: str = typer.Argument(..., help="SAE B, same forms as A (width and format may differ)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer of both SAEs (for sources holding several)."),
    layer_b: Optional[int] = typer.Option(None, "--layer-b", help="Layer of B when it differs from --layer."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Compare the two groups over these layers, e.g. 6,15,24 "
                                                                "(layers one side lacks are listed, not compared)."),
    focus: Optional[Path] = typer.Option(None, help="With --layers: an uncertainty report JSON (`qscope uncertainty "
                                                    "--out`); its probe's top features per layer are followed into B."),
    model: ModelOpt = "default",
    texts: str = typer.Option("held-out", help="Texts for activation matching: 'held-out' (the training mix's "
                                               "held-out split), a file, folder or corpus name."),
    n_texts: int = typer.Option(400, min=1, help="At most this many texts."),
    max_tokens: int = typer.Option(20000, min=1, help="At most this many shared tokens for activation correlation."),
    activations: bool = typer.Option(True, help="Also match by activation correlation (runs the model)."),
    min_fires: int = typer.Option(10, min=0, help="Features firing on fewer tokens are not judged by activation."),
    method: str = typer.Option("auto", help="Hungarian solver: auto, dense (exact) or sparse (top-neighbour candidates)."),
    examples: int = typer.Option(10, min=0, help="Matched and orphan features listed with their promoted tokens."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for <name>.json and <name>.png."),
    name: str = typer.Option("compare", help="File name stem inside --out."),
    per_feature: bool = typer.Option(False, help="Include per-feature arrays (partners, cosines) in the JSON."),
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Compare two SAEs: decoder/encoder MMCS, Hungarian matching with the fraction shared at
    cos > 0.5/0.7/0.9, activation-correlation matching on shared tokens, orphan features.

    Examples:
      qscope compare default experiments/saes/smollm2-layer15-seed1 --layer 15 --out docs/compare
      qscope compare default experiments/saes/smollm2-layer15-seed1 --layers 6,15,24 --focus docs/uncertainty/arc_easy.json
    """
    if layers is not None:
        return _compare_groups(a, b, layers, focus, model, texts, n_texts, max_tokens, activations, min_fires,
                               method, out, name, per_feature, device, json)
    if focus is not None:
        raise QScopeError("--focus goes with --layers")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..compare import compare_saes, summary_rows, write_report
    from ..sae import SAE

    with console.status("loading SAEs"):
        sae_a = SAE.load(a, layer=layer)
        sae_b = SAE.load(b, layer=layer_b if layer_b is not None else layer)
    lm = None
    text_list = None
    need_lm = activations or examples > 0
    if need_lm:
        from ..model import load_model

        with console.status("loading model"):
            lm = load_model(model, device=device)
        if activations:
            text_list = _texts(texts, n_texts)
    layers = (layer if layer is not None else sae_a.cfg.layer,
              layer_b if layer_b is not None else (layer if layer is not None else sae_b.cfg.layer))
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("comparing", total=1)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        result = compare_saes(sae_a, sae_b, lm, text_list, layers=layers, names=(a, b), method=method,
                              max_tokens=max_tokens, min_fires=min_fires, examples=examples, progress=progress)
    if _written_or_json(result, write_report, out, name, per_feature, json):
        return
    table = Table("metric", "value", title=f"shared fraction (decoder & encoder, cos > 0.7): {result.shared_fraction:.1%}")
    for key, value in summary_rows(result):
        table.add_row(key, value)
    console.print(table)
    for title, rows in (("matched", result.matched), ("orphans of A", result.orphans_a), ("orphans of B", result.orphans_b)):
        if rows:
            t = Table("feature", "partner", "cos", "corr", "freq", "promotes", "partner promotes", title=title)
            for e in rows:
                t.add_row(str(e.feature), "" if e.partner is None else str(e.partner), f"{e.decoder_cos:.2f}",
                          "" if e.act_corr is None else f"{e.act_corr:.2f}",
                          "" if e.frequency is None else f"{e.frequency:.4f}",
                          " ".join(repr(x) for x in e.promotes), " ".join(repr(x) for x in e.partner_promotes))
            console.print(t)


def _written_or_json(result, write, out: Path | None, name: str, per_feature: bool, json: bool) -> bool:
    """Write the report files (with --out) and print JSON (with --json); True when JSON was printed."""
    from ..provenance import record

    if out is not None:
        paths = write(result, out, name=name, per_feature=per_feature, provenance=record())
        console.print("wrote " + ", ".join(str(p) for p in paths))
    if json:
        emit_json(result.to_dict(per_feature=per_feature))
    return json


def focus_features(path: Path, layers: list[int]) -> dict[int, list[int]]:
    """The features an uncertainty report's SAE probes weight most, per layer."""
    import json as _json

    try:
        report = _json.loads(Path(path).read_text(encoding="utf-8"))
        probes = report["sae_probes"]
        return {l: [int(f["feature"]) for f in probes[str(l)]["features"]] for l in layers if str(l) in probes}
    except FileNotFoundError:
        raise QScopeError(f"--focus {path}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise QScopeError(f"--focus {path}: not an uncertainty report (no sae_probes.<layer>.features)") from None


def _load_group(source: str, layers: list[int]) -> dict:
    """The SAEs of `source` at the given layers; a layer it does not hold is left out."""
    from ..sae import SAE

    group = {}
    for layer in layers:
        try:
            group[layer] = SAE.load(source, layer=layer)
        except QScopeError:
            if len(layers) == 1:
                raise
    if not group:
        raise QScopeError(f"{source}: no SAE at layers {','.join(map(str, layers))}")
    return group


def _compare_groups(a, b, layers_spec, focus, model, texts, n_texts, max_tokens, activations, min_fires, method, out,
                    name, per_feature, device, json) -> None:
    from ..compare.groups import compare_groups, write_group_report
    from ..parse import int_list

    layers = int_list(layers_spec, "--layers")
    if not layers:
        raise QScopeError("--layers needs at least one layer, e.g. 6,15,24")
    focus_ids = focus_features(focus, layers) if focus is not None else None
    with console.status("loading SAEs"):
        group_a, group_b = _load_group(a, layers), _load_group(b, layers)
    lm = text_list = None
    if activations:
        from ..model import load_model

        with console.status("loading model"):
            lm = load_model(model, device=device)
        text_list = _texts(texts, n_texts)
        for group in (group_a, group_b):
            for layer, sae in group.items():
                sae.to(lm.layer_device(lm.check_sae(sae, layer)))
    with progress_bar() as bar:
        task = bar.add_task("layers", total=len(layers))

        def on_layer(layer: int, done: int, total: int) -> None:
            bar.update(task, description=f"layer {layer}", completed=done)

        result = compare_groups(group_a, group_b, lm, text_list, focus=focus_ids, names=(a, b), on_layer=on_layer,
                                method=method, max_tokens=max_tokens, min_fires=min_fires, examples=0)
    if _written_or_json(result, write_group_report, out, name, per_feature, json):
        return
    table = Table("layer", "shared (dec & enc cos > 0.7)", "focus: decoder cos > 0.7", "focus: activation corr > 0.7",
                  "note",
                  title=f"{a} vs {b}")
    for row in result.summary_rows():
        table.add_row(*row)
    console.print(table)
