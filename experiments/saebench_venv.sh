#!/usr/bin/env bash
# SAEBench in its own venv: sae-bench 0.6.0 pins numpy<2 and datasets<4, which clash with qscope's
# own environment. qscope itself runs there from this checkout's src/ (experiments/saebench_shipped.py
# puts it on the path); only the packages it imports are installed.
#
#   bash experiments/saebench_venv.sh [VENV]          # default: .venv-saebench
#   .venv-saebench/bin/python experiments/saebench_shipped.py --evals core
set -euo pipefail
VENV="${1:-.venv-saebench}"
python3 -m venv "$VENV"
# torch pinned to the CPU build qscope uses (an unpinned torch pulls a multi-GB CUDA build)
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet sae-bench==0.6.0 torch==2.13.0 gguf accelerate typer rich scipy pyarrow
# sae-bench lists torchvision, but none of the evals run here use it, and a torchvision built for
# another torch breaks `import transformers` (operator torchvision::nms does not exist)
"$VENV/bin/pip" uninstall --quiet --yes torchvision
"$VENV/bin/python" -c "import sae_bench, sae_lens, transformer_lens; print('SAEBench venv ready:', '$VENV')"
