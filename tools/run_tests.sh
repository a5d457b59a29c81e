#!/usr/bin/env bash
# Install everything (as tools/install.sh) and run the test suite on the CPU.
# Extra arguments go to pytest (e.g. -k queues -x). tests/test_kernel_paths.py reruns the tests
# marked stored_expectation on other CPU kernels (ATEN_CPU_CAPABILITY=default, MKL_CBWR, NumPy
# and OpenBLAS without this CPU's SIMD), so an expectation that holds only here fails here.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/install.sh"
cd "$repo"
"${VOS_VENV:-$repo/.venv}/bin/python" -m pytest -q tests "$@"
