"""SASFT vs plain SFT vs an unlikelihood baseline on an SFT set that teaches code-switching.

Setup (CPU scale): SmolLM2-135M-Instruct + LoRA; the SFT set pairs English "continue this text"
instructions (Brown corpus) with English continuations, half of which slip into Chinese midway
(HSK sentences from the `chinese` corpus). Language features: top-2 zh features by
monolinguality at layer 24 (the only late layer with a shipped SAE), alpha = mean
pre-activation on non-zh text. Metrics: code-switch ratio (any Chinese) over N sampled
responses to held-out English prompts, and held-out English perplexity (Brown).

    .venv/bin/python experiments/sasft_codeswitch.py            # cached per method, resumable
    .venv/bin/python experiments/sasft_codeswitch.py --methods base,sft,unlikelihood,sasft_1e-3,sasft_1e-2,sasft_3e-2
    .venv/bin/python experiments/sasft_codeswitch.py --layers 6,15,24 --n-features 8 --methods sft,sasft_1e-2 \
        --out runs/posttrain/sasft-ml --docs-name sasft_codeswitch_multilayer   # more features, three layers
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from itertools import islice
from pathlib import Path

import torch

from qscope import load_model
from qscope.data import iter_texts, pull_corpus, texts_by_language
from qscope.io import write_json
from qscope.metrics import text_perplexity
from qscope.language import contains_language
from qscope.posttrain import (SASFTPenalty, add_lora, build_sft_batch, estimate_alphas, monolinguality, script_token_ids,
                              sft_step)
from qscope.provenance import record
from qscope.sae import SAE

ROOT = Path(__file__).resolve().parents[1]


def sentences(text: str, zh: bool = False) -> list[str]:
    parts = re.split(r"(?<=[。！？])" if zh else r"(?<=[.!?])\s+", text)
    return [p.strip() for p in parts if p.strip()]


def build_data(seed: int = 0):
    rng = random.Random(seed)
    brown = list(islice(iter_texts("brown"), 1500))
    zh_docs = [t for t in islice(iter_texts("chinese"), 400)]
    zh_sents = [s for t in zh_docs for s in sentences(t, zh=True) if 6 <= len(s) <= 40]
    en_items = []
    for t in brown:
        ss = [s for s in sentences(t) if 6 <= len(s.split()) <= 20]
        if len(ss) >= 3:
            en_items.append(ss)
    rng.shuffle(en_items)
    held_ppl = [" ".join(ss) for ss in en_items[:40]]
    eval_items, train_items = en_items[40:440], en_items[440:]
    train = []
    for i, ss in enumerate(train_items[:600]):
        prompt = f"Continue this text: {ss[0]}"
        resp = ss[1]
        if i % 2 == 0:  # slip into Chinese midway
            resp = resp + " " + "".join(rng.sample(zh_sents, 2))
        else:
            resp = resp + " " + ss[2]
        train.append((prompt, resp))
    eval_prompts = [f"Continue this text: {ss[0]}" for ss in eval_items]
    return train, eval_prompts, held_ppl, zh_docs, brown


def sample(lm, prompts, n_tokens, seed, batch=50):
    outs = []
    for i in range(0, len(prompts), batch):
        outs += lm.generate(prompts[i:i + batch], max_new_tokens=n_tokens, chat=True, do_sample=True, temperature=0.8, seed=seed + i)
    return outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-eval", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--layers", default="24")
    ap.add_argument("--n-features", type=int, default=2, help="zh features per layer (top by monolinguality)")
    ap.add_argument("--methods", default="base,sft,unlikelihood,sasft_1e-3,sasft_1e-2")
    ap.add_argument("--out", default=str(ROOT / "runs/posttrain/sasft"))
    ap.add_argument("--max-length", type=int, default=128, help="training tokens per example")
    ap.add_argument("--docs-name", default="sasft_codeswitch", help="basename of the JSON written under docs/posttrain")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", default="arc_easy#200", help="capability check: benchmark[#items], '' to skip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, eval_prompts, held_ppl, zh_docs, brown = build_data()
    eval_prompts = eval_prompts[: args.n_eval]
    layers = [int(x) for x in args.layers.split(",")]
    t0 = time.time()

    feat_path = out / "features.json"
    if feat_path.exists():
        feats = json.loads(feat_path.read_text())
    else:
        lm = load_model("default")
        pull_corpus("multilingual")
        other = texts_by_language("multilingual", limit=8)
        by_lang = {"zh": zh_docs[:40], "en": brown[-60:][:40], **{code: other[code] for code in ("fr", "de", "es", "ru", "ja", "ko")}}
        feats = {"layers": {}}
        for layer in layers:
            sae = SAE.load("default", layer=layer)
            res = monolinguality(lm, sae, by_lang, "zh", top=args.n_features, layer=layer, max_length=64)
            non_zh = [t for k, v in by_lang.items() if k != "zh" for t in v]
            alphas = estimate_alphas(lm, sae, res.features, non_zh, layer=layer, max_length=64)
            # typical pre-activation on the Chinese parts of the training responses, for scale
            zh_pre = estimate_alphas(lm, sae, res.features, zh_docs[40:60], layer=layer, max_length=64)
            feats["layers"][str(layer)] = {**res.to_dict(), "alphas": alphas.tolist(), "mean_pre_on_zh": zh_pre.tolist()}
        write_json(feat_path, feats)
        del lm
    print("features", json.dumps(feats), flush=True)

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for method in args.methods.split(","):
        if method in results:
            print("cached", method, results[method]["code_switch_ratio"], flush=True)
            continue
        t1 = time.time()
        lm = load_model("default")
        torch.manual_seed(0)
        losses = []
        if method != "base":
            add_lora(lm, r=16, alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
            penalty = ul_ids = None
            if method.startswith("sasft"):
                lam = float(method.split("_")[1])
                saes = {l: SAE.load("default", layer=l) for l in layers}
                penalty = SASFTPenalty(lm, saes, {l: feats["layers"][str(l)]["features"] for l in layers},
                                       {l: torch.tensor(feats["layers"][str(l)]["alphas"]) for l in layers}, lam=lam)
            if method == "unlikelihood":
                ul_ids = script_token_ids(lm.tokenizer, zh_docs[:200])
            opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=args.lr)
            rng = random.Random(1)
            for step in range(args.steps):
                pairs = rng.sample(train, args.batch)
                batch = build_sft_batch(lm.tokenizer, pairs, max_length=args.max_length)
                s = sft_step(lm.model, batch, opt, penalty=penalty, unlikelihood_ids=ul_ids)
                losses.append(s)
                if step % 10 == 0:
                    print(method, step, {k: round(v, 4) for k, v in s.items()}, f"{time.time() - t1:.0f}s", flush=True)
            lm.model = lm.model.merge_and_unload()  # a plain checkpoint: saved for `qscope evals accuracy`
            lm.model.eval()
            lm.name = str(out / "models" / method)
            lm.model.save_pretrained(lm.name)
            lm.tokenizer.save_pretrained(lm.name)
        responses = sample(lm, eval_prompts, args.tokens, seed=123)
        n_switched = sum(contains_language(r, "zh") for r in responses)  # = code_switch_ratio(responses, "zh") * n
        ratio = n_switched / len(responses)
        ppl = text_perplexity(lm, held_ppl)
        bench = capability(lm, args.bench) if args.bench else None
        results[method] = {"code_switch_ratio": ratio, "n_switched": n_switched,
                           "n_responses": len(responses), "heldout_ppl_en": ppl, "benchmark": bench,
                           "final_losses": losses[-1] if losses else None,
                           "mean_ce_last10": sum(x["ce"] for x in losses[-10:]) / 10 if losses else None,
                           "seconds": round(time.time() - t1), "examples": responses[:4]}
        (out / f"responses_{method}.json").write_text(json.dumps(responses, ensure_ascii=False, indent=1))
        write_json(results_path, results)
        print("done", method, ratio, ppl, flush=True)
    summary = {"setup": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "lora_r": 16, "layers": layers, "n_features": args.n_features,
                         "n_train_pairs": len(train), "frac_train_with_zh": 0.5, "n_eval_prompts": len(eval_prompts),
                         "max_new_tokens": args.tokens, "temperature": 0.8, "max_length": args.max_length},
               "features": feats, "results": results}
    if "sft" in results:
        base = results["sft"]["code_switch_ratio"]
        summary["relative_reduction_vs_sft"] = {m: (1 - r["code_switch_ratio"] / base) if base else None
                                                for m, r in results.items() if m not in ("sft", "base")}
        summary["fisher_p_vs_sft"] = {m: fisher_p(results["sft"], r) for m, r in results.items() if m != "sft"}
    write_json(ROOT / f"docs/posttrain/{args.docs_name}.json", summary,
               provenance=record(seeds={"data": 0, "init": 0, "batches": 1, "sampling": 123}))
    print(json.dumps({m: (r["code_switch_ratio"], round(r["heldout_ppl_en"], 2)) for m, r in results.items()}), flush=True)
    print(f"total {time.time() - t0:.0f}s")


def fisher_p(a: dict, b: dict) -> float:
    """Two-sided Fisher exact p for 'same code-switch rate' between two arms."""
    from scipy.stats import fisher_exact

    table = [[a["n_switched"], a["n_responses"] - a["n_switched"]], [b["n_switched"], b["n_responses"] - b["n_switched"]]]
    return float(fisher_exact(table).pvalue)


def capability(lm, spec: str) -> dict:
    """Accuracy on a small benchmark (choice-text likelihood), cached per checkpoint name."""
    from qscope.evals.accuracy import evaluate
    from qscope.evals.benchmarks import load_benchmark

    name, _, n = spec.partition("#")
    items = load_benchmark(name, limit=int(n) if n else None, seed=0)
    res = evaluate(lm, items, benchmark=name)
    return {"name": name, "n_items": res.n_items, "accuracy": res.accuracy}


if __name__ == "__main__":
    main()
