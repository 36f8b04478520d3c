"""Plot FVU over training tokens from one or more `metrics.jsonl` files of `qscope train`.

    python experiments/plot_training.py docs/training/metrics_main.jsonl docs/training/metrics_seed1.jsonl \
        --out docs/training/fvu.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qscope.io import save_png  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for style, path in zip(["-", "--", ":", "-."] * 4, args.metrics):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for layer in rows[0]["layers"]:
            ax.plot([r["tokens"] / 1e6 for r in rows], [r["layers"][layer]["fvu"] for r in rows],
                    style, label=f"{path.stem.removeprefix('metrics_')} layer {layer}")
    ax.set(xlabel="training tokens (M)", ylabel="FVU (training batches)", yscale="log",
           title="qscope TopK SAEs on SmolLM2-135M-Instruct (16x, k=50)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
