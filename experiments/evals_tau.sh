#!/usr/bin/env bash
# Performance-based redundancy (tau) vs feature-based redundancy (R_hat) on 12 multiple-choice
# benchmarks x 100 items, over every model available offline: the default model, Gemma-3-270M,
# and the fine-tuned checkpoints written by experiments/sasft_codeswitch.py (one per SFT arm).
# Every step caches per item (QSCOPE_HOME/accuracy, QSCOPE_HOME/footprints), so a rerun resumes.
#
#   bash experiments/evals_tau.sh            # after experiments/sasft_codeswitch.py has run
set -euo pipefail
cd "$(dirname "$0")/.."
Q=.venv/bin/qscope
BENCH="arc_easy arc_challenge hellaswag boolq piqa winogrande openbookqa csqa siqa sciq truthfulqa mmlu"
N=${N:-100}
GEMMA=${GEMMA:-$HOME/.cache/qscope/models/gemma-3-270m}
CKPT=runs/posttrain/sasft/models
[ -d "$CKPT/sft" ] || { echo "no checkpoints in $CKPT: run experiments/sasft_codeswitch.py first" >&2; exit 2; }
[ -d "$GEMMA" ] || { echo "no Gemma-3-270M folder at $GEMMA (set GEMMA=...)" >&2; exit 2; }
for m in default "$GEMMA" "$CKPT"/*/; do
  m=${m%/}; $Q evals accuracy $BENCH --model "$m" --limit "$N" --out docs/evals/accuracy
done
# footprints of all 18 benchmarks (docs/evals.md); tau uses the 12 that have accuracy files
$Q evals footprint $BENCH gsm8k math triviaqa nq_open mbpp humaneval --layers 6,15,24 --position both --limit "$N" --out runs/evals/F$N
for L in 6 15 24; do
  $Q evals redundancy -f runs/evals/F$N/L$L/footprints.json --accuracy docs/evals/accuracy --items "$N" \
     --out docs/evals/tau-L$L
done
