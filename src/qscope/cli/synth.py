"""`qscope synth`: feature coverage of a data set, and synthesis for the features it misses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from ..errors import QScopeError
from ..parse import int_list
from .common import (
    DeviceOpt,
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

app = typer.Typer(
    help="Feature-driven data synthesis: coverage of target features, generate for the gaps.", no_args_is_help=True
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="synth")


def _targets(
    lm: LM, sae: SAE, targets: str | None, contrast_pos: str | None, contrast_neg: str | None, n: int, limit: int
) -> list[int]:
    from ..datatools.synth import targets_from_contrast

    if targets and (contrast_pos or contrast_neg):
        raise QScopeError("give either --targets or --contrast-pos/--contrast-neg, not both")
    if targets:
        path = Path(targets)
        spec = path.read_text(encoding="utf-8") if path.is_file() else targets
        return int_list(spec, "--targets", "12,345 (or a file of them)")
    if contrast_pos and contrast_neg:
        with console.status("finding target features by contrast"):
            return targets_from_contrast(lm, sae, read_texts(contrast_pos, limit), read_texts(contrast_neg, limit), n=n)
    raise QScopeError("give --targets IDS (or a file) or both --contrast-pos and --contrast-neg")


TargetsOpt = typer.Option(None, "--targets", help="Target feature ids, comma-separated, or a file of ids.")
PosOpt = typer.Option(None, "--contrast-pos", help="Targets = features firing more on these texts ...")
NegOpt = typer.Option(None, "--contrast-neg", help="... than on these texts.")
NOpt = typer.Option(50, "--n-targets", min=1, help="Targets taken from the contrast.")


@app.command("coverage")
def coverage_cmd(
    texts: str = typer.Option(..., "--texts", help="The data set: file, folder or corpus name."),
    targets: Optional[str] = TargetsOpt,
    contrast_pos: Optional[str] = PosOpt,
    contrast_neg: Optional[str] = NegOpt,
    n_targets: int = NOpt,
    limit: int = typer.Option(1000, min=1, help="At most this many texts per input."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the coverage JSON here."),
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Which target features the data set covers (some text fires them) and which it misses.

    Example: qscope synth coverage --layer 15 --texts seeds.jsonl --targets 12,345,678
    """
    from ..datatools.synth_runs import run_coverage
    from ..io import write_json
    from ..provenance import record

    loaded = load_models(model, sae, layer, device)
    lm, sae_ = loaded.lm, loaded.sae
    ids = _targets(lm, sae_, targets, contrast_pos, contrast_neg, n_targets, limit)
    items = read_texts(texts, limit)
    with progress_bar() as bar:
        job = bar.add_task("encoding", total=len(items))
        cov = run_coverage(lm, sae_, items, ids, progress=lambda n: bar.advance(job, n))
    if out:
        write_json(out, cov.to_dict(), provenance=record())
    if json:
        emit_json(cov)
        return
    console.print(f"coverage {len(cov.covered)}/{len(cov.targets)} = {cov.fraction:.1%} over {cov.n_texts} texts")
    console.print("uncovered: " + (" ".join(map(str, cov.uncovered)) or "none"))


@app.command("generate")
def generate_cmd(
    seed_texts: str = typer.Option(..., "--seed-texts", help="The seed data set whose gaps are filled."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL of kept candidates with provenance."),
    targets: Optional[str] = TargetsOpt,
    contrast_pos: Optional[str] = PosOpt,
    contrast_neg: Optional[str] = NegOpt,
    n_targets: int = NOpt,
    limit: int = typer.Option(1000, min=1, help="At most this many texts per input."),
    per_target: int = typer.Option(4, min=1, help="Candidates generated per uncovered target (the budget)."),
    strength: float = typer.Option(
        60.0, help="Local steering strength: multiple of the target's decoder direction added at every position."
    ),
    max_new_tokens: int = typer.Option(40, min=1, help="Tokens per local candidate."),
    examples: Optional[str] = typer.Option(
        None,
        help="Describe each target by its top-activating texts from this pool "
        "and prompt with them (instead of steering); random = random texts.",
    ),
    endpoint: Optional[str] = typer.Option(
        None, help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) instead of the local model."
    ),
    endpoint_model: str = typer.Option("gpt-4o-mini", help="Model name sent to the endpoint."),
    template: Optional[str] = typer.Option(
        None, help="Endpoint prompt with {description} (default: a user-request template)."
    ),
    random_baseline: bool = typer.Option(
        True, "--random/--no-random", help="Also run untargeted generation at the same budget."
    ),
    report: Optional[Path] = typer.Option(
        None, help="Write the coverage report JSON here (default: <out>.report.json)."
    ),
    seed: int = typer.Option(0, min=0, help="Sampling seed."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: LayerOpt = None,
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Generate data for the target features a seed set misses, and compare with random generation.

    Candidates are kept only if they fire their target; the random baseline samples the same
    generator without a target, at the same number of generations.

    Example: qscope synth generate --layer 15 --seed-texts seeds.jsonl --targets targets.txt --out synth.jsonl
    Example: qscope synth generate --layer 15 --seed-texts seeds.jsonl --targets 1,2 --examples pool.jsonl --out s.jsonl
    Example: qscope synth generate --layer 15 --seed-texts seeds.jsonl --targets 1,2 --endpoint http://localhost:8000/v1 --out s.jsonl
    """
    from ..datatools.synth import write_jsonl
    from ..datatools.synth_runs import SynthConfig, run_synthesis
    from ..io import write_json
    from ..provenance import record

    loaded = load_models(model, sae, layer, device)
    lm, sae_ = loaded.lm, loaded.sae
    ids = _targets(lm, sae_, targets, contrast_pos, contrast_neg, n_targets, limit)
    pool = read_texts(examples, limit) if examples else None
    seeds = read_texts(seed_texts, limit)
    cfg = SynthConfig(per_target=per_target, seed=seed, random_baseline=random_baseline, strength=strength,
                      max_new_tokens=max_new_tokens, endpoint=endpoint, endpoint_model=endpoint_model,
                      template=template)
    with progress_bar() as bar:
        jobs: dict[str, int] = {}

        def tick(what: str, n: int, total: int) -> None:
            if what not in jobs:
                jobs[what] = bar.add_task(what, total=total)
            bar.advance(jobs[what], n)

        result = run_synthesis(lm, sae_, seeds, ids, cfg, examples=pool, progress=tick)
    rep, synth, rand = result.report, result.synthesised, result.random
    kept = write_jsonl(synth, out)
    if random_baseline:
        write_jsonl(rand, out.with_name(out.stem + ".random.jsonl"), kept_only=False)
    write_json(report or out.with_name(out.name + ".report.json"), rep.to_dict(), provenance=record(seeds=seed))
    if json:
        emit_json(result)
        return
    table = Table(
        "",
        "generated",
        "added",
        "newly covered",
        "coverage of uncovered",
        "coverage total",
        title=f"layer {rep.layer}: {len(rep.targets)} targets, seed set covers {rep.seed.fraction:.1%}",
    )
    for name, s in (("feature-driven", rep.feature_driven), ("random", rep.random)):
        if s:
            table.add_row(
                name,
                str(s["generated"]),
                str(s["added"]),
                str(len(s["newly_covered"])),
                f"{s['coverage_of_uncovered']:.1%}",
                f"{s['coverage_total']:.1%}",
            )
    console.print(table)
    console.print(f"{kept} kept candidates -> {out}")
