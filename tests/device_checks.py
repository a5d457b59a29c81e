"""What a GPU would refuse or wait for, made visible on a CPU-only machine (test helpers).

* :func:`fake_cuda`: PyTorch's ``FakeTensorMode`` in which ``.to("cuda")`` works without a
  GPU: tensors carry a device and shapes but no data, and an op mixing a CPU tensor with a
  CUDA one raises as on a GPU. For code without data-dependent control flow (loading
  states, scoring, tracing).
* :class:`SimulatedDeviceTensor`: real CPU data that behaves as if it were on a GPU where
  host code touches it: ``.numpy()`` refuses, ``.cpu()`` returns a plain tensor, and an op
  mixing it with a plain (host) tensor of one or more dimensions raises. For code that
  reads values (metrics, plots).
* :class:`HostSyncCounter`: counts, on the CPU, the operations that make the host wait for
  a GPU: tensor -> Python conversions (``item``, ``bool``, ``int``, ``float``, ``tolist``,
  ``numpy``) and ops whose output shape depends on the data (``nonzero``, boolean-mask
  indexing, ``masked_select``, ``unique``), each with the code location that issued it.
"""
import contextlib
import os
import traceback

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import vos_det

aten = torch.ops.aten

_PACKAGE_DIR = os.path.dirname(os.path.abspath(vos_det.__file__))


@contextlib.contextmanager
def fake_cuda():
    """A FakeTensorMode in which real (CPU) tensors may enter, e.g. a loaded state dict."""
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def devices_of(module):
    """The set of devices of a module's parameters and buffers."""
    return {t.device.type for t in list(module.parameters()) + list(module.buffers())}


class SimulatedDeviceTensor(torch.Tensor):
    """CPU data that host code must treat as GPU data (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert a device tensor to numpy: use Tensor.cpu() first")
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].as_subclass(torch.Tensor).clone()
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(isinstance(t, cls) for t in tensors) and any(
            not isinstance(t, cls) and t.dim() > 0 for t in tensors
        ):
            raise RuntimeError(f"{getattr(func, '__name__', func)}: a device tensor mixed with a host tensor")
        return super().__torch_function__(func, types, args, kwargs)


def on_simulated_device(tensor):
    return tensor.as_subclass(SimulatedDeviceTensor)


_CONVERSIONS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
}
_DATA_DEPENDENT_SHAPES = {
    aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.repeat_interleave.Tensor, aten.bincount.default, aten.equal.default,
}


def _issuer(stack):
    """The innermost frame outside torch: (path relative to the package or 'other', function)."""
    for frame in reversed(stack):
        path = os.path.abspath(frame.filename)
        if os.sep + "torch" + os.sep in path or path == os.path.abspath(__file__):
            continue
        if path.startswith(_PACKAGE_DIR):
            return os.path.relpath(path, _PACKAGE_DIR), frame.name
        return "other", frame.name
    return "other", "?"


class _Conversions(TorchFunctionMode):
    def __init__(self, record):
        super().__init__()
        self._record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _CONVERSIONS:
            self._record(func.__name__)
        return func(*args, **(kwargs or {}))


class _Shapes(TorchDispatchMode):
    def __init__(self, record):
        super().__init__()
        self._record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            t is not None and t.dtype == torch.bool for t in args[1]
        )
        if func in _DATA_DEPENDENT_SHAPES or boolean_index:
            self._record(str(func))
        return func(*args, **kwargs)


class HostSyncCounter:
    """Records the host-device synchronisations of the code run inside ``with counter:``.

    Attributes:
        events (list[tuple[str, str, str]]): (what, file relative to vos_det or "other",
            function) per synchronisation.
    """

    def __init__(self):
        self.events = []

    def _record(self, what):
        self.events.append((what, *_issuer(traceback.extract_stack())))

    def __enter__(self):
        self._modes = [_Conversions(self._record), _Shapes(self._record)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False

    def in_package(self, exclude_functions=()):
        """The events issued by vos_det code, except by the functions named."""
        return [e for e in self.events if e[1] != "other" and e[2] not in exclude_functions]
