"""Benchmark: what running the LM in bf16 does to the shipped SAEs (the SAE math stays fp32).

    python bench/bf16_sae.py [--layers 6,15,24] [--n-texts 64] [--max-length 256]

Same held-out texts as `qscope sae eval` (the mix's held-out split), the default model loaded
twice, fp32 and bf16; for each shipped SAE (layers 6 / 15 / 24):
- `qscope.metrics.evaluate_sae` under each dtype (the numbers `qscope sae eval --dtype ...`
  prints): FVU, CE loss recovered, KL(clean || SAE), CE clean;
- top-k agreement: the residuals of the same tokens captured in both dtypes, each encoded by
  the fp32 SAE; mean share of the k active features the two codes have in common, share of
  tokens with the same top-1 feature, and the relative error of the bf16 residual;
- the clean model itself: KL(p_fp32 || p_bf16) of next-token distributions and how often the
  greedy next token is the same (what decides whether greedy generations stay identical);
- bf16 weights under training: the share of the model's weights that an AdamW step of size lr
  (Adam's first step moves every weight by exactly lr) changes at all once rounded to bf16.
Position 0 and padding are left out as in `sae eval`. Writes bench/results/bf16_sae.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import add_options, describe, print_machine  # noqa: E402
from qscope.cli.sae_eval import HELD_OUT, read_texts  # noqa: E402
from qscope.io import write_json  # noqa: E402
from qscope.metrics import evaluate_sae  # noqa: E402
from qscope.model import load_model  # noqa: E402
from qscope.sae import SAE  # noqa: E402

DTYPES = ("float32", "bfloat16")
EVAL_KEYS = ("fvu", "ce_clean", "ce_sae", "ce_recovered", "kl", "l0")


@torch.no_grad()
def agreement(lms: dict, saes: dict, texts: list[str], max_length: int, batch_size: int) -> dict:
    """Top-k agreement per layer and the clean model's next-token agreement, fp32 vs bf16."""
    layers = sorted(saes)
    stats = {layer: {"overlap": 0.0, "same_set": 0, "top1": 0, "err2": 0.0, "norm2": 0.0} for layer in layers}
    kl_sum, same_next, n = 0.0, 0, 0
    for start in range(0, len(texts), batch_size):
        enc = lms["float32"].tokenize(texts[start:start + batch_size], max_length=max_length)
        counted = enc["attention_mask"].bool().clone()
        counted[:, 0] = False
        acts, logits = {}, {}
        for name, lm in lms.items():
            captured = {}
            hooks = [lm.layers[layer].register_forward_hook(
                lambda mod, args, out, layer=layer: captured.__setitem__(layer, (out[0] if isinstance(out, tuple) else out)[counted].float()))
                for layer in layers]
            try:
                logits[name] = lm.model(**enc, use_cache=False).logits[counted].float()
            finally:
                for hook in hooks:
                    hook.remove()
            acts[name] = captured
        logp = {name: F.log_softmax(v, -1) for name, v in logits.items()}
        kl_sum += float(F.kl_div(logp["bfloat16"], logp["float32"], log_target=True, reduction="sum"))
        same_next += int((logits["float32"].argmax(-1) == logits["bfloat16"].argmax(-1)).sum())
        n += int(counted.sum())
        for layer in layers:
            x32, x16 = acts["float32"][layer], acts["bfloat16"][layer]
            v32, i32 = saes[layer].encode_topk(x32)
            v16, i16 = saes[layer].encode_topk(x16)
            k = i32.shape[-1]
            common = (i32.unsqueeze(-1) == i16.unsqueeze(-2)).any(-1).sum(-1)
            s = stats[layer]
            s["overlap"] += float(common.sum()) / k
            s["same_set"] += int((common == k).sum())
            s["top1"] += int((i32.gather(-1, v32.argmax(-1, keepdim=True)) == i16.gather(-1, v16.argmax(-1, keepdim=True))).sum())
            s["err2"] += float(((x16 - x32) ** 2).sum())
            s["norm2"] += float((x32**2).sum())
    per_layer = {layer: {"topk_overlap": s["overlap"] / n, "same_topk_set": s["same_set"] / n, "same_top1": s["top1"] / n,
                         "resid_rel_error": (s["err2"] / s["norm2"]) ** 0.5} for layer, s in stats.items()}
    return {"n_tokens": n, "next_token_kl": kl_sum / n, "same_greedy_next_token": same_next / n, "layers": per_layer}


def adam_step_survival(lm, lrs=(1e-5, 1e-4, 1e-3)) -> dict:
    """Share of the weights that change when moved by +lr and rounded to bf16 (Adam's first step)."""
    out = {}
    weights = [p.detach().float().flatten() for p in lm.model.parameters()]
    for lr in lrs:
        changed = total = 0
        for w in weights:
            w16 = w.bfloat16()
            changed += int(((w16.float() + lr).bfloat16() != w16).sum())
            total += w.numel()
        out[str(lr)] = changed / total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_options(ap, "bf16_sae", layers="6,15,24", n_texts=64, max_length=256, batch_size=8).parse_args()

    machine = describe("cpu")
    print_machine(machine)
    texts, where = read_texts(HELD_OUT, args.n_texts)
    lms = {name: load_model("default", device="cpu", dtype=name) for name in DTYPES}
    layers = [int(x) for x in args.layers.split(",")]
    saes = {layer: SAE.load("default", layer=layer) for layer in layers}
    start = time.time()
    evals = {}
    for layer in layers:
        for name, lm in lms.items():
            res = evaluate_sae(lm, saes[layer], texts, layer=layer, max_length=args.max_length, batch_size=args.batch_size)
            evals.setdefault(layer, {})[name] = {key: getattr(res, key) for key in EVAL_KEYS} | {"n_tokens": res.n_tokens}
            print(f"layer {layer} {name}: FVU {res.fvu:.4f} CE recovered {res.ce_recovered:.4f}", file=sys.stderr, flush=True)
    agree = agreement(lms, saes, sorted(texts, key=len, reverse=True), args.max_length, args.batch_size)
    survival = adam_step_survival(lms["float32"])

    print(f"\nbf16 vs fp32 LM, fp32 SAEs, {where} ({len(texts)} texts, {agree['n_tokens']} tokens, position 0 excluded)")
    print(f"{'layer':>5} {'FVU fp32':>9} {'FVU bf16':>9} {'dFVU':>8} {'CE rec fp32':>12} {'CE rec bf16':>12} {'dCE rec':>8} "
          f"{'top-k overlap':>14} {'same set':>9} {'same top1':>10} {'resid err':>10}")
    for layer in layers:
        a, b, g = evals[layer]["float32"], evals[layer]["bfloat16"], agree["layers"][layer]
        print(f"{layer:>5} {a['fvu']:9.4f} {b['fvu']:9.4f} {b['fvu'] - a['fvu']:+8.4f} {a['ce_recovered']:12.4f} "
              f"{b['ce_recovered']:12.4f} {b['ce_recovered'] - a['ce_recovered']:+8.4f} {g['topk_overlap']:14.1%} "
              f"{g['same_topk_set']:9.1%} {g['same_top1']:10.1%} {g['resid_rel_error']:10.2%}")
    print(f"clean model: KL(fp32 || bf16) {agree['next_token_kl']:.4f} nats/token, same greedy next token "
          f"{agree['same_greedy_next_token']:.1%}; CE clean fp32 {evals[layers[0]]['float32']['ce_clean']:.4f} "
          f"bf16 {evals[layers[0]]['bfloat16']['ce_clean']:.4f}")
    print("weights an AdamW step of lr changes once stored in bf16: "
          + ", ".join(f"lr {lr}: {share:.1%}" for lr, share in survival.items()))
    write_json(args.out, {"bench": "bf16_sae", "machine": machine, "args": vars(args), "data": where,
                          "n_texts": len(texts), "eval": {str(k): v for k, v in evals.items()},
                          "agreement": {**agree, "layers": {str(k): v for k, v in agree["layers"].items()}},
                          "adam_step_survival_bf16": survival, "seconds": time.time() - start})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
