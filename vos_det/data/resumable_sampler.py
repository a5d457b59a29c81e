"""A training sampler that can resume at any position of its infinite index stream."""
import itertools

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's :class:`TrainingSampler`, starting ``start_position`` indices into its stream.

    The stream is ``shuffle(range(size)) + shuffle(range(size)) + ...`` drawn from ``seed``,
    and rank r of W takes every W-th index from position ``start_position + r``. A run
    resumed at iteration i with ``start_position = i * total_batch_size`` therefore sees the
    images that the uninterrupted run would have seen from iteration i on.
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None, start_position: int = 0):
        """
        Args:
            size, shuffle, seed: as for :class:`TrainingSampler`; resuming exactly needs a
                fixed ``seed``.
            start_position: number of indices of the global stream already consumed.
        """
        super().__init__(size, shuffle, seed)
        if start_position < 0:
            raise ValueError(f"start_position must be >= 0, got {start_position}")
        self._start_position = start_position

    def __iter__(self):
        yield from itertools.islice(
            self._infinite_indices(), self._start_position + self._rank, None, self._world_size
        )
