"""Multi-process training on CPUs (gloo) as well as on GPUs (NCCL).

detectron2's ``launch`` already starts gloo processes on a machine without CUDA, but

* its ``DefaultTrainer`` wraps the model with ``create_ddp_model(model)``, whose default
  ``device_ids=[local_rank]`` DistributedDataParallel refuses for a CPU model;
* on a machine with CUDA it always picks NCCL and one GPU per process, even for a config
  with ``MODEL.DEVICE cpu``, whose CPU tensors NCCL cannot all-gather.

:func:`create_ddp_model` and :func:`cpu_ddp_in_default_trainer` fix the first (the vos_det
``Trainer`` builds itself inside the latter); :func:`launch` the second, by hiding CUDA from
the worker processes of a CPU run.
"""
import contextlib
import functools
import os

import torch
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT

from ..config import load_config

__all__ = ["create_ddp_model", "cpu_ddp_in_default_trainer", "is_cpu_device", "launch", "launch_from_args"]

_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


def is_cpu_device(device: str) -> bool:
    """Whether a ``MODEL.DEVICE`` value trains on the CPU (explicitly, or for want of CUDA)."""
    return torch.device(device).type == "cpu" or not torch.cuda.is_available()


def create_ddp_model(model, **kwargs):
    """detectron2's :func:`create_ddp_model`; a model on the CPU is wrapped without device_ids.

    Args:
        model (nn.Module): the model, already on its device.
        kwargs: arguments of ``create_ddp_model`` (``fp16_compression``, those of
            DistributedDataParallel).

    Returns:
        nn.Module: ``model`` itself in a single process, else its DistributedDataParallel.
    """
    parameter = next(model.parameters(), None)
    if "device_ids" not in kwargs and parameter is not None and parameter.device.type == "cpu":
        kwargs["device_ids"] = None
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


@contextlib.contextmanager
def cpu_ddp_in_default_trainer():
    """Inside this context ``DefaultTrainer.__init__`` wraps CPU models as :func:`create_ddp_model`.

    ``DefaultTrainer.__init__`` calls the ``create_ddp_model`` of its own module; this swaps
    it for the CPU-aware one while the trainer is built, so that the rest of its
    construction (optimizer, loader, checkpointer, hooks) is detectron2's, unchanged.
    """
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


@contextlib.contextmanager
def _cuda_hidden():
    """CUDA invisible to the processes started inside this context (the variable is
    restored when it exits)."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if previous is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def _run_with_threads(num_threads, main_func, *args):
    """Run by every CPU worker: its share of the cores for torch's intra-op threads."""
    torch.set_num_threads(num_threads)
    return main_func(*args)


def launch(
    main_func,
    num_processes_per_machine: int,
    *,
    device: str = "cuda",
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """detectron2's :func:`~detectron2.engine.launch`, also for training on CPU processes.

    On GPUs this is detectron2's launch (NCCL, one GPU per process). When ``device`` is the
    CPU, or the machine has no CUDA, the ``num_processes_per_machine`` workers of each
    machine use gloo and see no CUDA device, and each sets torch's intra-op threads to its
    share of the machine's cores. With the vos_det ``Trainer``, DDP then wraps the CPU
    model without ``device_ids`` and the VOS class queues are all-gathered as on GPUs.

    Args:
        main_func: called as ``main_func(*args)`` in every process.
        num_processes_per_machine (int): processes per machine (``--num-gpus``); on GPUs at
            most the number of GPUs.
        device (str): the ``MODEL.DEVICE`` of the run ("cuda", "cpu", ...).
        num_machines, machine_rank, dist_url, args, timeout: as for detectron2's launch.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size == 1 or not is_cpu_device(device):
        d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
        return
    num_threads = max(1, torch.get_num_threads() // num_processes_per_machine)
    worker = functools.partial(_run_with_threads, num_threads, main_func)
    with _cuda_hidden():
        d2_launch(worker, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)


def launch_from_args(main_func, args, device=None):
    """Run ``main_func(args)`` on the processes a command line asks for.

    The device decides between GPU (NCCL) and CPU (gloo) processes, see :func:`launch`.

    Args:
        main_func: called as ``main_func(args)`` in every process.
        args (argparse.Namespace): ``num_gpus`` (processes per machine), ``num_machines``,
            ``machine_rank`` and ``dist_url``; without ``device`` also ``config_file`` and
            ``opts``.
        device (str, optional): the device of the run; default ``MODEL.DEVICE`` of the
            config file with the command-line overrides.
    """
    if device is None:
        device = load_config(args.config_file, args.opts).MODEL.DEVICE
    launch(
        main_func,
        args.num_gpus,
        device=device,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
