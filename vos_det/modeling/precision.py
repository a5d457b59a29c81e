"""Full precision inside mixed-precision training and inference."""
import contextlib

import torch

__all__ = ["full_precision"]


def full_precision(device: torch.device):
    """A context in which autocast is off for ``device``'s kind (CUDA, CPU, ...).

    detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``) runs the model under
    ``torch.autocast``, which computes matrix products in float16 / bfloat16. The VOS
    maths must not follow: class Gaussians and their Cholesky factor, outlier synthesis,
    nearest-neighbour similarities (NPOS), energies and the uncertainty loss, and the
    post-hoc scores run inside this context, on explicitly float32 (or float64) inputs.

    Args:
        device (torch.device): the device of the tensors computed inside.
    """
    if device.type not in ("cuda", "cpu", "xpu", "mps"):
        # Devices without autocast (e.g. "meta"): nothing to turn off.
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
