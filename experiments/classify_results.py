"""Feature classifiers on every built-in labelled task, with the random-SAE control: docs/classify/.

    python experiments/classify_results.py                      # all 14 tasks -> results.json, efficiency.png
    python experiments/classify_results.py -t harmful -t code --out /tmp/classify

Same evaluation as `qscope classify eval` (layer by top1-diff, K by discovery F1, probes, data
efficiency) on the default model and the shipped SAEs; then the control: untrained SAEs of the same
shape (`SAE.random(..., seed=layer)`) on the same texts, splits and residuals (stored once, so the
control needs no forward pass), without the probes. Codes and residuals are cached under
QSCOPE_HOME, so a rerun or an interrupted run costs no forward passes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import qscope
from qscope.datatools.cache import CodeCache, ResidualStore
from qscope.datatools.classify import evaluate_task, plot_efficiency
from qscope.datatools.labelled import TASKS, load_task
from qscope.io import write_json
from qscope.provenance import record
from qscope.sae import SAE, SAEConfig

ROOT = Path(__file__).resolve().parents[1]


def random_saes(saes: dict[int, SAE]) -> dict[int, SAE]:
    """Untrained TopK SAEs shaped like `saes`, seeded by layer."""
    return {l: SAE.random(SAEConfig(s.cfg.d_model, s.cfg.d_sae, k=s.cfg.k, layer=l), seed=l) for l, s in saes.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-t", "--task", action="append", help="built-in task (repeat); default: all")
    ap.add_argument("--n-discovery", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="split seed")
    ap.add_argument("--subsamples", type=int, default=5, help="repeats per data fraction of the efficiency curve")
    ap.add_argument("--no-control", action="store_true", help="skip the random-SAE control")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/classify")
    args = ap.parse_args()
    names = args.task or list(TASKS)

    lm, saes = qscope.load()
    store = ResidualStore(lm, sorted(saes), max_length=args.max_length)
    cache = CodeCache(lm, saes, max_length=args.max_length, residuals=store)
    control = random_saes(saes)
    control_cache = CodeCache(lm, control, max_length=args.max_length, residuals=store)
    tasks, reports, random_rows = {}, [], {}
    for name in names:
        task = load_task(name, args.n_discovery, args.n_test, args.seed)
        say = lambda what, name=name: print(f"[{name}] {what}", file=sys.stderr, flush=True)  # noqa: E731
        rep = evaluate_task(task, cache, seeds=args.subsamples, progress=say)
        tasks[name] = dict(rep.to_dict(), data=task.to_dict())
        reports.append(rep)
        if not args.no_control:
            ctl = evaluate_task(task, control_cache, seeds=args.subsamples, baselines=False, progress=say)
            random_rows[name] = {"chosen_layer": ctl.chosen_layer, "chosen_k": ctl.chosen_k, "headline": ctl.headline(),
                                 "top1_diff": {str(l): v["delta"] for l, v in ctl.top1_diff.items()}}
        print(f"[{name}] chosen F1 {rep.headline()}", file=sys.stderr, flush=True)
    layers = sorted(saes)
    first = saes[layers[0]].cfg
    result = {
        "model": lm.name,
        "saes": f"default layers {'/'.join(map(str, layers))}, d_sae {first.d_sae}, k={first.k}",
        "layers": layers,
        "max_length": args.max_length,
        "device": str(lm.device),
        "tasks": tasks,
    }
    if not args.no_control:
        result["random_sae_control"] = {
            "saes": f"SAE.random(SAEConfig({first.d_model}, {first.d_sae}, k={first.k}, layer=l), seed=l) for l in "
                    f"{'/'.join(map(str, layers))}; same texts, splits and residuals; no probes",
            "tasks": random_rows,
        }
    prov = record(seeds={"split": args.seed, "subsample": list(range(args.subsamples)), "random_sae": layers})
    write_json(args.out / "results.json", result, provenance=prov)
    plot_efficiency(reports, args.out / "efficiency.png", provenance=prov)
    print(f"wrote {args.out / 'results.json'} and efficiency.png", file=sys.stderr)


if __name__ == "__main__":
    main()
