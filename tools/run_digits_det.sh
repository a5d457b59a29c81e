#!/usr/bin/env bash
# The main job: install everything, build the digits-det benchmark, train a VOS Faster R-CNN
# (ResNet-18-FPN) on it on the CPU, then print ID detection quality (AP, AP50) and per-box OOD
# detection (FPR95, AUROC, AUPR) on the digits-det OOD split for every OOD score.
# Extra arguments go to tools/train_net.py (e.g. SOLVER.MAX_ITER 300 OUTPUT_DIR output/x).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/install.sh"
py="${VOS_VENV:-$repo/.venv}/bin/python"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$repo/datasets}"
cd "$repo"
"$py" -m vos_det.data.digits_det --root "$DETECTRON2_DATASETS"
"$py" tools/train_net.py --config digits_vos_r18.yaml "$@"
