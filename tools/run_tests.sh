#!/usr/bin/env bash
# Install everything (as tools/install.sh) and run the test suite on the CPU.
# Extra arguments go to pytest (e.g. -k queues -x).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/install.sh"
cd "$repo"
"${VOS_VENV:-$repo/.venv}/bin/python" -m pytest -q tests "$@"
