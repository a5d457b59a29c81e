#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything
# vos_det needs: torch/torchvision, detectron2, its dependencies, and vos_det itself
# (editable). Safe to run again: every step is skipped when already satisfied.
#
# Environment:
#   VOS_VENV   where to put the environment (default: <repo>/.venv)
#   PYTHON     the interpreter that creates it (default: python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VOS_VENV:-$repo/.venv}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[install] creating virtual environment in $venv"
    "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)

if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
    echo "[install] torch and torchvision"
    "${pip[@]}" install "torch==2.14.1" "torchvision==0.29.1"
fi

echo "[install] detectron2 dependencies and test tools"
"${pip[@]}" install -r "$repo/requirements.txt"

# Detectron2 is not published on PyPI by its authors. A user who already has a working
# build keeps it; otherwise we install the pure-Python part of the sal-detectron2 wheel
# (upstream detectron2 code; its compiled _C targets CPython 3.10 and is never loaded).
if (cd / && "$py" -c "import detectron2.modeling") 2>/dev/null; then
    echo "[install] detectron2 already importable: $("$py" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
    echo "[install] detectron2 (sal-detectron2==0.7.2, Python code only)"
    purelib="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "${pip[@]}" install --no-deps --python-version 3.10 --only-binary=:all: \
        --target "$purelib" --upgrade sal-detectron2==0.7.2
    "$py" -c "import detectron2.modeling" || {
        echo "[install] error: detectron2 was installed into $purelib but does not import" >&2
        exit 1
    }
fi

# Checked from / so that the repo folder itself (the working directory) does not count.
if ! (cd / && "$py" -c "import vos_det") 2>/dev/null; then
    echo "[install] vos_det (editable)"
    "${pip[@]}" install --no-deps --no-build-isolation -e "$repo"
fi
echo "[install] done: $venv"
