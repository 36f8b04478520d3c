"""SASFT against unexpected code-switching, set up as Qwen-Scope's L_reduce is (spec section 6).

Unwanted language L = Chinese (zh). Default model (SmolLM2-135M-Instruct), LoRA r=16 on
q/k/v/o/up/down, lr 1e-3, batch 4, 128 tokens, 80 steps, fp32.

0. The switching model. The base model almost never writes Chinese in reply to English prompts
   (0 of 400 before), so there is nothing to reduce. A short LoRA SFT (seed 0, the same schedule)
   on English "Continue this text" prompts whose responses slip into Chinese half the time makes
   one that switches; merged, it is the starting point of every arm (`models/switcher`).
1. Features (`choose_language_features`) on a SELECTION split (half, seeded) of corpus texts kept
   apart from every prompt: zh (HSK) vs en (Brown) + fr/de/es/ru/ja/ko (multilingual); top-2 by
   monolinguality on each of two adjacent late layers (23, 24); alpha = mean pre-activation on
   the clean non-zh selection texts. The held-out half checks that the features still separate.
2. SFT data (every arm trains on the same): (a) the switching model's own prompts where it
   switches (sampled on a probe pool of English prompts), each with a clean English reference
   answer; (b) ordinary English pairs; (c) Chinese prompts with Chinese answers. (a) and (b) must
   be free of zh: SASFT's penalty and the unlikelihood term cover only them; (c) is CE only, so no
   term ever pushes against tokens the CE teaches to be Chinese.
3. Arms, each from the switching model, at training seeds 0,1,2 (LoRA init + batch order): plain
   SFT; SASFT at lambda 1e-3 (the paper's value) and 1e-2; SFT + unlikelihood (weight 1) on
   zh-script tokens. Reference row: the switching model itself.
4. Evaluation on 400 held-out English prompts (never in selection, probe or training), 40
   sampled tokens at T = 0.8 with one sampling seed (123) for every arm and seed, so responses
   pair by (seed, prompt). Code-switch = any Han character (`contains_language`). Rates with
   Wilson 95% intervals, per seed and pooled, mean and sd over seeds. Capability: ARC-Easy and
   SciQ (200 items each, choice-text likelihood); held-out English (Brown) and Chinese (HSK)
   perplexity, the latter to see that Chinese itself is kept.

Pre-registered primary comparison (planned, not yet run): code-switch rate of SASFT lambda 1e-3
vs plain SFT, exact McNemar test over the 1,200 (seed, prompt) pairs, two-sided. Secondary:
SASFT 1e-2 vs SFT and unlikelihood vs SFT. The three p-values are Holm-corrected together.
SASFT counts as reducing code-switching if its Holm-adjusted p < 0.05 AND its rate is below
plain SFT's in every seed. Capability is reported, not tested.

Second design (`--design other-context`), added after the first cell of the run above: plain SFT on
that data took the switching model from 49.5% to 0/400 code-switched answers (seed 0), because its
English pairs share the evaluation's "Continue this text" format and include the switch prompts
themselves, so the CE alone undoes the switch and leaves SASFT nothing to reduce. Here the English
SFT pairs are another task on the same Brown items ("Write the sentence that comes before this
one: ..."), the switch prompts are left out, and the Chinese pairs stay (CE only); evaluation is
unchanged, so the "Continue this text" format is reached only through what the penalty does to the
language features. Same arms, seeds, primary comparison (SASFT 1e-3 vs SFT, McNemar over the
(seed, prompt) pairs of the seeds run, Holm with the two secondaries) and success rule.

Third design (`--switcher-steps 400 --arm-lr 2e-4 --design other-context`), after plain SFT in the
second design also left 1/400: the switch made by 80 LoRA steps is erased by any further 80-step
SFT, whatever its data. Here the switching model trains 5x longer and the arms at a 5x lower
learning rate, so that a switching prior survives plain SFT and there is something for the penalty
to remove. Same arms, seeds, primary comparison and success rule as above.

Fourth design (`--switcher-steps 400 --arm-lr 2e-4 --arm-steps 16 --design other-context`), after
plain SFT in the third design also left 1/400 (from 235/400) after 80 steps: the same switching
model, features and data, the arms trained for 16 steps instead of 80 (same lr 2e-4, batch 4), so
that every arm stops while plain SFT has only partly removed the switch, and the question becomes
the one an equal training budget can answer: does the penalty remove more of it than the CE alone?
16 was fixed before running any arm at it (one fifth of the schedule; the eval set was not used to
choose it). Same arms, seeds, primary comparison, Holm correction and success rule; if plain SFT
falls below 5% again, it is reported the same way.

Fifth run: the fourth design on the two adjacent late layers 23 and 24 (top 2 features each). Only
6/15/24 ship, so layer 23 uses `experiments/saes/smollm2-layer23-cpu1.5M`, trained on a CPU with the
shipped recipe's defaults but 1.5M tokens (`qscope train --model default --layers 23 --tokens 1.5M
--data mix --dtype auto --device cpu --out runs/l23`, seed 0); any other layer-23 SAE is passed the
same way, `--sae-path 23=<folder>`.

    .venv/bin/python experiments/sasft_codeswitch.py --sae-path 23=experiments/saes/smollm2-layer23-cpu1.5M  # the full run
    .venv/bin/python experiments/sasft_codeswitch.py --layers 24 --arms sft,sasft_1e-3 --seeds 0 --steps 2 \\
        --n-eval 6 --n-probe 6 --n-ppl 4 --n-select 16 --bench arc_easy#4,sciq#4 --out runs/posttrain/sasft-smoke \\
        --docs-name sasft_codeswitch_smoke                                                # a smoke run
    .venv/bin/python experiments/sasft_codeswitch.py --layers 24 --top 4 --design other-context \\
        --out experiments/runs/sasft-l24-other --docs-name sasft_l_reduce_l24_other       # the second design, layer 24
    .venv/bin/python experiments/sasft_codeswitch.py --layers 24 --top 4 --design other-context --switcher-steps 400 \\
        --arm-lr 2e-4 --out experiments/runs/sasft-l24-persistent --docs-name sasft_l_reduce_l24_persistent  # the third
    .venv/bin/python experiments/sasft_codeswitch.py --layers 24 --top 4 --design other-context --switcher-steps 400 \\
        --arm-lr 2e-4 --arm-steps 16 --out experiments/runs/sasft-l24-short --docs-name sasft_l_reduce_l24_short  # the fourth
    .venv/bin/python experiments/sasft_codeswitch.py --layers 23,24 --top 2 \\
        --sae-path 23=experiments/saes/smollm2-layer23-cpu1.5M --design other-context --switcher-steps 400 \\
        --arm-lr 2e-4 --arm-steps 16 --arms sft,sasft_1e-3,sasft_1e-2 --out experiments/runs/sasft-l23-24 \\
        --docs-name sasft_l_reduce_l23_24                                                 # the fifth

Each finished cell (arm x seed) is cached in <out>/cells.json and skipped on a rerun; the
summary lands in docs/posttrain/<docs-name>.json with provenance.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import re
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import torch
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from steer_case_studies import JsonCache  # noqa: E402

from qscope import load_model  # noqa: E402
from qscope.data import iter_texts, pull_corpus, texts_by_language  # noqa: E402
from qscope.errors import QScopeError  # noqa: E402
from qscope.features.search import collect_stats  # noqa: E402
from qscope.io import write_json  # noqa: E402
from qscope.data.language import contains_language  # noqa: E402
from qscope.metrics import text_perplexity  # noqa: E402
from qscope.posttrain import (LanguageFeatureSet, SASFTConfig, SFTExample, choose_language_features, run_sasft,  # noqa: E402
                              script_token_ids, selection_split)
from qscope.provenance import record  # noqa: E402
from qscope.sae import SAE  # noqa: E402
from qscope.stats import mcnemar_exact, wilson_interval  # noqa: E402

LANG = "zh"
SAMPLING_SEED = 123


# ---------------------------------------------------------------------- data
def sentences(text: str, zh: bool = False) -> list[str]:
    parts = re.split(r"(?<=[。！？])" if zh else r"(?<=[.!?])\s+", text)
    return [p.strip() for p in parts if p.strip()]


def build_data(n_eval: int, n_probe: int, n_ppl: int, n_select: int = 120, seed: int = 0) -> dict:
    """Disjoint splits: corpus texts for feature selection; English items for the switching
    model's training, the probe pool, the SFT set, evaluation and perplexity; Chinese docs for
    feature selection, the SFT set and perplexity."""
    rng = random.Random(seed)
    brown = list(islice(iter_texts("brown"), 3000))
    rng.shuffle(brown)
    en_select, brown = [t[:600] for t in brown[:n_select]], brown[120:]
    items = [ss for t in brown if len(ss := [s for s in sentences(t) if 6 <= len(s.split()) <= 20]) >= 3]
    zh_docs = list(islice(iter_texts("chinese"), 1000))
    rng.shuffle(zh_docs)
    zh_select, zh_ppl, zh_rest = [t[:300] for t in zh_docs[:n_select]], zh_docs[120:120 + n_ppl], zh_docs[160:]
    zh_sents = [s for t in zh_rest[:300] for s in sentences(t, zh=True) if 6 <= len(s) <= 40]
    zh_pairs = [SFTExample(f"继续写这段文字：{a}", b + c) for a, b, c in zip(zh_sents[0::3], zh_sents[1::3], zh_sents[2::3])][:150]
    cuts = [("ppl", n_ppl), ("eval", n_eval), ("probe", n_probe), ("sft_en", 300), ("switch_train", 400)]
    split, i = {}, 0
    for name, n in cuts:
        split[name], i = items[i:i + n], i + n
    if len(split["switch_train"]) < 400:
        raise QScopeError(f"Brown gave {len(items)} usable items; the splits need {i}")
    prompt = lambda ss: f"Continue this text: {ss[0]}"  # noqa: E731
    switch_train = [(prompt(ss), ss[1] + " " + ("".join(rng.sample(zh_sents, 2)) if k % 2 == 0 else ss[2]))
                    for k, ss in enumerate(split["switch_train"])]
    return {"en_select": en_select, "zh_select": zh_select, "switch_train": switch_train,
            "probe": [(prompt(ss), ss[1] + " " + ss[2]) for ss in split["probe"]],
            "sft_en": [SFTExample(prompt(ss), ss[1] + " " + ss[2]) for ss in split["sft_en"]], "zh_pairs": zh_pairs,
            "sft_en_other": [SFTExample(f"Write the sentence that comes before this one: {ss[1]}", ss[0])
                             for ss in split["sft_en"]],
            "eval_prompts": [prompt(ss) for ss in split["eval"]], "ppl_en": [" ".join(ss) for ss in split["ppl"]],
            "ppl_zh": zh_ppl}


def sample(lm, prompts: list[str], n_tokens: int, seed: int, batch: int = 50) -> list[str]:
    outs = []
    for i in range(0, len(prompts), batch):
        outs += lm.generate(prompts[i:i + batch], max_new_tokens=n_tokens, chat=True, do_sample=True, temperature=0.8,
                            seed=seed + i)
    return outs


# ---------------------------------------------------------------------- stages
def train_and_save(lm, saes, examples, cfg: SASFTConfig, folder: Path, label: str):
    """run_sasft, merge the adapters, save a plain checkpoint (for `qscope evals accuracy` too)."""
    res = run_sasft(lm, saes, examples, cfg, on_step=lambda s: s["step"] % 10 == 0 and print(
        label, s["step"], {k: round(v, 4) for k, v in s.items() if k != "step"}, flush=True))
    lm.model = lm.model.merge_and_unload()
    lm.model.eval()
    lm.name = str(folder)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return res


def claim_cell(out: Path, key: str):
    """An exclusive lock on one cell (None: another process runs it); the OS drops it if we die."""
    (out / "claims").mkdir(parents=True, exist_ok=True)
    handle = open(out / "claims" / (key.replace("/", "_") + ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def switching_model(out: Path, data: dict, args) -> Path:
    """Stage 0: a model that switches into Chinese (trained once, cached)."""
    folder = out / "models" / "switcher"
    if not (folder / "config.json").exists():
        lm = load_model("default", dtype="float32")
        cfg = SASFTConfig(lam=0.0, lr=args.lr, steps=args.switcher_steps or args.steps, batch=args.batch, seed=0,
                          max_length=args.max_length)
        train_and_save(lm, {}, data["switch_train"], cfg, folder, "switcher")
    return folder


def language_features(out: Path, switcher: Path, data: dict, saes: dict, top: int = 2) -> dict:
    """Stage 1: features + alphas on the selection half; activation check on the held-out half."""
    path = out / "features.json"
    if path.exists():
        return json.loads(path.read_text())
    pull_corpus("multilingual")
    other = texts_by_language("multilingual", limit=max(2, len(data["zh_select"]) // 8))
    texts = {LANG: data["zh_select"], "en": data["en_select"], **{c: other[c] for c in ("fr", "de", "es", "ru", "ja", "ko")}}
    selection, held_out = selection_split(texts, fraction=0.5, seed=0)
    lm = load_model(str(switcher), dtype="float32")
    chosen = choose_language_features(lm, saes, selection, LANG, top=top)
    check = {}
    for layer, sae in saes.items():
        feats = chosen.features[layer]
        on_l = collect_stats(lm, sae, held_out[LANG], layer, 8, 64).mean[feats]
        off = torch.stack([collect_stats(lm, sae, v, layer, 8, 64).mean[feats] for k, v in held_out.items() if k != LANG and v])
        check[str(layer)] = {"mean_act_zh": on_l.tolist(), "mean_act_others": off.mean(0).tolist()}
    result = {**chosen.to_dict(), "held_out_check": check,
              "n_selection": {k: len(v) for k, v in selection.items()}, "n_held_out": {k: len(v) for k, v in held_out.items()}}
    write_json(path, result, provenance=record(seeds={"selection_split": 0}))
    return result


def probe_switch_prompts(out: Path, switcher: Path, data: dict, n_tokens: int) -> list[dict]:
    """The switching model's own English prompts where it writes Chinese (cached)."""
    path = out / "switch_prompts.json"
    if path.exists():
        return json.loads(path.read_text())["prompts"]
    lm = load_model(str(switcher), dtype="float32")
    responses = sample(lm, [p for p, _ in data["probe"]], n_tokens, seed=7)
    found = [{"prompt": p, "reference": ref, "switched_response": r}
             for (p, ref), r in zip(data["probe"], responses) if contains_language(r, LANG)]
    write_json(path, {"n_probe": len(responses), "prompts": found}, provenance=record(seeds={"probe_sampling": 7}))
    return found


def arm_config(arm: str, feats: LanguageFeatureSet, ul_ids: list[int], seed: int, args) -> SASFTConfig:
    common = dict(lang=LANG, lr=args.arm_lr or args.lr, steps=args.arm_steps or args.steps, batch=args.batch, seed=seed,
                  max_length=args.max_length)
    if arm == "sft":
        return SASFTConfig(lam=0.0, **common)
    if arm == "unlikelihood":
        return SASFTConfig(lam=0.0, unlikelihood_weight=1.0, unlikelihood_ids=ul_ids, **common)
    if arm.startswith("sasft_"):
        return SASFTConfig(lam=float(arm.split("_", 1)[1]), features=feats.features, alphas=feats.alphas, **common)
    raise QScopeError(f"unknown arm {arm!r} (sft, unlikelihood, sasft_<lambda>)")


def evaluate_cell(lm, data: dict, args) -> tuple[dict, list[str]]:
    responses = sample(lm, data["eval_prompts"], args.tokens, seed=SAMPLING_SEED)
    switched = [contains_language(r, LANG) for r in responses]
    k, n = sum(switched), len(switched)
    cell = {"n_switched": k, "n_responses": n, "code_switch_rate": k / n, "wilson95": wilson_interval(k, n),
            "switched": switched, "ppl_en": text_perplexity(lm, data["ppl_en"]), "ppl_zh": text_perplexity(lm, data["ppl_zh"]),
            "bench": {spec.partition("#")[0]: capability(lm, spec) for spec in filter(None, args.bench.split(","))},
            "examples": responses[:4]}
    return cell, responses


def capability(lm, spec: str) -> dict:
    """Accuracy on a benchmark (choice-text likelihood), `name#items`."""
    from qscope.evals.accuracy import run_accuracy
    from qscope.data.benchmarks import load_benchmark

    name, _, n = spec.partition("#")
    res = run_accuracy(lm, load_benchmark(name, limit=int(n) if n else None, seed=0), benchmark=name)
    return {"n_items": res.n_items, "accuracy": res.accuracy, "wilson95": wilson_interval(round(res.accuracy * res.n_items), res.n_items)}


# ---------------------------------------------------------------------- summary
def summarise(cells: dict, arms: list[str], seeds: list[int]) -> dict:
    from statsmodels.stats.multitest import multipletests

    per_arm = {}
    for arm in ["switcher", *arms]:
        mine = [cells[key] for key in (["switcher"] if arm == "switcher" else [f"{arm}/seed{s}" for s in seeds]) if key in cells]
        if not mine:
            continue
        rates = [c["code_switch_rate"] for c in mine]
        k, n = sum(c["n_switched"] for c in mine), sum(c["n_responses"] for c in mine)
        spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        per_arm[arm] = {"seeds": len(mine), "rate_per_seed": rates, "rate_pooled": k / n, "wilson95_pooled": wilson_interval(k, n),
                        "rate_mean": statistics.mean(rates), "rate_sd": spread(rates),
                        "ppl_en_mean": statistics.mean(c["ppl_en"] for c in mine), "ppl_zh_mean": statistics.mean(c["ppl_zh"] for c in mine),
                        "bench": {b: {"mean": statistics.mean(c["bench"][b]["accuracy"] for c in mine),
                                      "sd": spread([c["bench"][b]["accuracy"] for c in mine])} for b in mine[0]["bench"]}}
    comparisons = {}
    for arm in [a for a in arms if a != "sft"]:
        pairs = [(cells[f"sft/seed{s}"]["switched"], cells[f"{arm}/seed{s}"]["switched"]) for s in seeds
                 if f"sft/seed{s}" in cells and f"{arm}/seed{s}" in cells]
        if pairs:
            test = mcnemar_exact([x for a, _ in pairs for x in a], [x for _, b in pairs for x in b])
            lower = all(sum(b) < sum(a) for a, b in pairs)
            comparisons[f"{arm} vs sft"] = {**test, "n_pairs": sum(len(a) for a, _ in pairs), "lower_in_every_seed": lower}
    if comparisons:
        adjusted = multipletests([c["p"] for c in comparisons.values()], method="holm")[1]
        for c, p in zip(comparisons.values(), adjusted):
            c["p_holm"] = float(p)
    primary = comparisons.get("sasft_1e-3 vs sft")
    verdict = None if primary is None or len(seeds) < 3 else bool(primary["p_holm"] < 0.05 and primary["lower_in_every_seed"])
    return {"arms": per_arm, "comparisons": comparisons, "primary": "sasft_1e-3 vs sft", "primary_reduces_switching": verdict}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", default="sft,sasft_1e-3,sasft_1e-2,unlikelihood")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (LoRA init + batch order)")
    ap.add_argument("--layers", default="23,24", help="two adjacent late layers, as in the paper")
    ap.add_argument("--design", choices=("same-context", "other-context"), default="same-context",
                    help="same-context: the English SFT pairs share the evaluation's 'Continue this text' format and include "
                         "the switching model's own switch prompts; other-context: English pairs of another task only")
    ap.add_argument("--switcher-steps", type=int, default=0, help="steps of the switching model's SFT (0: --steps)")
    ap.add_argument("--arm-lr", type=float, default=0.0, help="learning rate of the arms (0: --lr)")
    ap.add_argument("--arm-steps", type=int, default=0, help="training steps of the arms (0: --steps)")
    ap.add_argument("--top", type=int, default=2, help="features per layer (4 with one layer keeps the paper's 4 features)")
    ap.add_argument("--sae-path", action="append", default=[], help="LAYER=FOLDER for a layer without a shipped SAE")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=128, help="training tokens per example")
    ap.add_argument("--n-eval", type=int, default=400)
    ap.add_argument("--n-probe", type=int, default=300, help="English prompts searched for the switching model's switches")
    ap.add_argument("--n-ppl", type=int, default=40, help="held-out texts per perplexity (en and zh)")
    ap.add_argument("--n-select", type=int, default=120, help="zh and en corpus texts for the feature selection split")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--bench", default="arc_easy#200,sciq#200", help="capability: benchmark#items, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "runs/posttrain/sasft-l-reduce"))
    ap.add_argument("--docs-name", default="sasft_l_reduce")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arms, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
    layers = [int(x) for x in args.layers.split(",")]
    paths = dict(item.split("=", 1) for item in args.sae_path)
    shipped = {6, 15, 24}
    missing = [layer for layer in layers if str(layer) not in paths and layer not in shipped]
    if missing:
        raise QScopeError(f"no SAE for layer(s) {missing}: train one (docs/default-saes.md recipe, --layers {missing[0]}) "
                          f"and pass --sae-path {missing[0]}=<folder>")
    saes = {layer: SAE.load(paths.get(str(layer), "default"), layer=layer) for layer in layers}
    t0 = time.time()
    data = build_data(args.n_eval, args.n_probe, args.n_ppl, args.n_select)
    timings = {}
    switcher = switching_model(out, data, args)
    timings["switcher"] = time.time() - t0
    feats_json = language_features(out, switcher, data, saes, top=args.top)
    feats = LanguageFeatureSet.from_dict(feats_json)
    print("features", {k: (v["features"], [round(a, 2) for a in v["alphas"]]) for k, v in feats_json["layers"].items()}, flush=True)
    switch_prompts = probe_switch_prompts(out, switcher, data, args.tokens)
    timings["features_and_probe"] = time.time() - t0 - timings["switcher"]
    timings["cpu_until_cells"] = time.process_time()
    if args.design == "same-context":
        sft_data = [SFTExample(p["prompt"], p["reference"]) for p in switch_prompts] + data["sft_en"] + data["zh_pairs"]
    else:  # the evaluation's prompt format never appears in training: only the penalty can reach it
        sft_data = data["sft_en_other"] + data["zh_pairs"]
    print(f"SFT set ({args.design}): {len(sft_data) - len(data['zh_pairs'])} English + {len(data['zh_pairs'])} Chinese pairs",
          flush=True)
    ul_ids = script_token_ids(AutoTokenizer.from_pretrained(switcher), data["zh_select"])

    cells = JsonCache(out / "cells.json")
    if "switcher" not in cells:
        t1 = time.time()
        lm = load_model(str(switcher), dtype="float32")
        cell, responses = evaluate_cell(lm, data, args)
        cells["switcher"] = {**cell, "seconds": round(time.time() - t1)}
    for seed in seeds:  # seed-major: an interrupted run leaves whole seeds (every arm) to compare
        for arm in arms:
            key = f"{arm}/seed{seed}"
            cells.refresh()  # another process may run other cells into the same folder
            if key in cells:
                print("cached", key, cells[key]["code_switch_rate"], flush=True)
                continue
            claim = claim_cell(out, key)
            if claim is None:
                print("running elsewhere", key, flush=True)
                continue
            t1, c1 = time.time(), time.process_time()
            lm = load_model(str(switcher), dtype="float32")
            cfg = arm_config(arm, feats, ul_ids, seed, args)
            res = train_and_save(lm, saes, sft_data, cfg, out / "models" / f"{arm}_seed{seed}", key)
            t_train = time.time() - t1
            cell, responses = evaluate_cell(lm, data, args)
            (out / "responses").mkdir(exist_ok=True)
            (out / "responses" / f"{arm}_seed{seed}.json").write_text(json.dumps(responses, ensure_ascii=False, indent=1))
            cells[key] = {**cell, "train": {k: v for k, v in res.to_dict().items() if k != "history"},
                          "l_reduce_first_last": [res.history[0]["l_reduce"], res.final["l_reduce"]],
                          "seconds_train": round(t_train), "seconds": round(time.time() - t1),
                          "cpu_seconds": round(time.process_time() - c1)}
            claim.close()
            print("done", key, cell["code_switch_rate"], f"{time.time() - t1:.0f}s", flush=True)
    summary = {"setup": {**{k: v for k, v in vars(args).items() if k not in ("out", "threads")}, "lang": LANG, "lora_r": 16,
                         "sampling_seed": SAMPLING_SEED, "temperature": 0.8, "n_switch_prompts": len(switch_prompts),
                         "n_sft": len(sft_data), "n_sft_zh_ce_only": len(data["zh_pairs"])},
               "features": feats_json, **summarise(dict(cells), arms, seeds),
               "cells": {k: {kk: vv for kk, vv in v.items() if kk != "switched"} for k, v in cells.items()},
               "timings_s": {**timings, "total": round(time.time() - t0), "cpu_total": round(time.process_time())}}
    write_json(ROOT / f"docs/posttrain/{args.docs_name}.json", summary,
               provenance=record(seeds={"data": 0, "switcher": 0, "training": seeds, "probe_sampling": 7, "sampling": SAMPLING_SEED}))
    print(json.dumps({k: (round(v["rate_pooled"], 4), v["wilson95_pooled"]) for k, v in summary["arms"].items()}), flush=True)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
