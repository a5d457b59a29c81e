"""The tests that compare with values recorded on another machine also pass on other CPU kernels.

torch, MKL, OpenBLAS and NumPy choose their SIMD kernels at run time, so a float computed here
may differ in its last bits on another CPU model (the fixtures of
test_checkpoint_compat.py, compared bitwise, failed on an Intel Xeon). The tests marked
``stored_expectation`` run a second time in a subprocess forced onto other kernel paths, so an
expectation that holds only on this machine's kernels fails here, not on a user's machine.
"""
import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# torch's portable kernels: no SIMD beyond the compiler's baseline.
PORTABLE_CAPABILITY = "default"


def _numpy_dispatched_features():
    """The SIMD features NumPy found on this CPU beyond its baseline (those it dispatches to)."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            umath = importlib.import_module(module)
        except ImportError:
            continue
        return [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]
    return []


def other_kernel_path_env():
    """This process's environment with every math library forced off the kernels it uses here.

    torch: ``ATEN_CPU_CAPABILITY=default`` (this machine's AVX2 / AVX512 kernels otherwise);
    NumPy: its dispatched SIMD features disabled; on x86 also MKL's conditional-numerical-
    reproducibility mode ``COMPATIBLE`` (SSE2 code paths) and OpenBLAS's Prescott kernels.
    """
    env = dict(os.environ, ATEN_CPU_CAPABILITY=PORTABLE_CAPABILITY)
    features = _numpy_dispatched_features()
    if features:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(features)
    if platform.machine().lower() in ("x86_64", "amd64"):
        env.update(MKL_CBWR="COMPATIBLE", OPENBLAS_CORETYPE="Prescott")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def test_the_other_path_is_another_torch_capability():
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    other = subprocess.run(
        [sys.executable, "-c", probe], env=other_kernel_path_env(), capture_output=True, text=True, check=True
    )
    # Here torch runs its SIMD kernels (AVX2 / AVX512), unless this CPU has none: then only
    # MKL, OpenBLAS and NumPy change paths.
    assert other.stdout.strip() == PORTABLE_CAPABILITY.upper()


def _modules_with_stored_expectations():
    """The test files that mark tests ``stored_expectation`` (only these are collected again)."""
    here = Path(__file__).resolve()
    return sorted(
        str(path.relative_to(REPO))
        for path in here.parent.glob("test_*.py")
        if path != here and "pytest.mark.stored_expectation" in path.read_text()
    )


def test_stored_expectations_hold_on_other_cpu_kernels():
    modules = _modules_with_stored_expectations()
    assert "tests/test_checkpoint_compat.py" in modules and "tests/test_digits_det.py" in modules
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "stored_expectation", *modules],
        cwd=REPO,
        env=other_kernel_path_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, f"on other CPU kernels: {summary}\n{result.stdout[-6000:]}"
    assert " passed" in summary and "failed" not in summary, summary
