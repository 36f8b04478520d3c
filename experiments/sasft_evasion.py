"""Does a SASFT-trained model still use the penalised features when it writes Chinese?

For each arm of experiments/sasft_codeswitch.py (checkpoints in <run>/models/<arm>, sampled
responses in <run>/responses_<arm>.json): take the Chinese part of every response that switched
(from its first Han character), run it through that arm's own model, and report for each
penalised feature its mean PRE-activation (what SASFT pushes below alpha) and how often it fires
(is in the SAE's top-k). If SASFT drove the penalty to ~0 while the arm still writes Chinese,
these numbers say whether the model wrote Chinese *without* the features (it routed around them).

    .venv/bin/python experiments/sasft_evasion.py runs/posttrain/sasft
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from qscope import load_model
from qscope.io import write_json
from qscope.data.language import SCRIPT_PATTERNS
from qscope.provenance import record
from qscope.sae import SAE

ROOT = Path(__file__).resolve().parents[1]


def chinese_parts(responses_json: Path, n: int) -> list[str]:
    """Each switched response from its first Han character on (at most `n`)."""
    responses = json.loads(responses_json.read_text())
    return [r[m.start():] for r in responses if (m := SCRIPT_PATTERNS["han"].search(r))][:n]


@torch.no_grad()
def feature_use(lm, saes: dict, feats: dict, texts: list[str]) -> dict:
    out = {}
    for layer, sae in saes.items():
        cap = lm.capture(texts, layers=[layer], max_length=64)
        h = cap.valid(layer, skip_first=True)
        ids = feats[layer]
        pre = sae.pre_acts(h)[:, ids]
        fires = sae.encode(h)[:, ids] > 0
        out[str(layer)] = {"features": ids, "mean_pre": pre.mean(0).tolist(), "fire_rate": fires.float().mean(0).tolist(),
                           "n_tokens": int(h.shape[0])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="output folder of experiments/sasft_codeswitch.py")
    ap.add_argument("--max-texts", type=int, default=120)
    ap.add_argument("--out", default=None, help="JSON path (default: docs/posttrain/<run name>_evasion.json)")
    args = ap.parse_args()
    run = Path(args.run)
    feats_json = json.loads((run / "features.json").read_text())["layers"]
    feats = {int(k): v["features"] for k, v in feats_json.items()}
    alphas = {k: v["alphas"] for k, v in feats_json.items()}
    saes = {layer: SAE.load("default", layer=layer) for layer in feats}
    result = {"run": str(run), "alphas": alphas, "arms": {}}
    for models in sorted((run / "models").iterdir()):
        arm = models.name
        zh = chinese_parts(run / f"responses_{arm}.json", args.max_texts)
        if not zh:
            continue
        lm = load_model(str(models), dtype="float32")
        result["arms"][arm] = {"n_texts": len(zh), "layers": feature_use(lm, saes, feats, zh)}
        print(arm, json.dumps(result["arms"][arm]["layers"]), file=sys.stderr, flush=True)
    base = load_model("default", dtype="float32")  # the untuned model reading the sft arm's Chinese, for reference
    zh = chinese_parts(run / "responses_sft.json", args.max_texts)
    result["base_on_sft_text"] = {"n_texts": len(zh), "layers": feature_use(base, saes, feats, zh)}
    write_json(args.out or ROOT / f"docs/posttrain/{run.name}_evasion.json", result, provenance=record())


if __name__ == "__main__":
    main()
