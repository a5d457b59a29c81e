"""All-gather of per-rank tensors whose first dimension differs between ranks."""
import torch
import torch.distributed as dist

__all__ = ["all_gather_variable_length"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_variable_length(*tensors):
    """Concatenate, in rank order, the tensors of every rank along dimension 0.

    All tensors given on one rank must have the same length B_r (which may differ between
    ranks, and may be zero). Works with NCCL (CUDA tensors) and gloo (CPU tensors).
    Without an initialised process group, returns the inputs unchanged.

    Args:
        *tensors: tensors of shape (B_r, ...), same trailing shapes and dtypes on every rank.

    Returns:
        tuple[Tensor]: tensors of shape (sum_r B_r, ...), identical on every rank.
    """
    world_size = _world_size()
    if world_size == 1:
        return tensors
    length = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    lengths = torch.cat(lengths).tolist()  # one read back to the host for all ranks
    max_length = max(lengths)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((max_length,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, lengths)]))
    return tuple(gathered)
