#!/usr/bin/env bash
# SAEDashboard in its own venv: sae-dashboard 0.8.0 pins transformers<4.57, transformer-lens<3,
# datasets<4 and typer<0.13, which clash with qscope's own environment. Nothing of qscope is
# installed there: an export's render.py needs only sae-dashboard, and
# tests/integrations/test_saedashboard.py runs it with this venv's python when it exists.
#
#   bash experiments/saedashboard_venv.sh [VENV]      # default: .venv-saedash
#   .venv-saedash/bin/python <export folder>/render.py
set -euo pipefail
VENV="${1:-.venv-saedash}"
python3 -m venv "$VENV"
# torch pinned to the CPU build qscope uses (an unpinned torch pulls a multi-GB CUDA build);
# pyarrow < 20 because sae-dashboard's resolve lands on numpy 1.x, which newer pyarrow refuses
"$VENV/bin/pip" install --quiet torch==2.13.0 sae-dashboard==0.8.0 "pyarrow<20"
# pulled in for another torch; a torchvision built for another torch breaks `import transformers`
# (operator torchvision::nms does not exist), and the renderer uses neither
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio
"$VENV/bin/python" -c "import sae_dashboard.sae_vis_data; print('SAEDashboard venv ready:', '$VENV')"
