"""Nearest-neighbour search in the k-NN score's memory bank: torch (exact) or faiss.

The bank holds unit vectors, so the nearest neighbours of a query are its largest inner
products. Three searches answer the same question (:data:`KNN_SEARCHES`, chosen by
``MODEL.OOD.POST_HOC.KNN.SEARCH``):

* ``"torch"``: exact, one matrix product (or chunks of the bank) and a top-k;
* ``"faiss_flat"``: exact, faiss's ``IndexFlatIP`` (Johnson, Douze and Jegou, "Billion-scale
  similarity search with GPUs", 2019; the CPU library);
* ``"faiss_ivf"``: approximate, faiss's ``IndexIVFFlat``: the bank is split into ``nlist``
  k-means cells (trained on a seeded sample of at most 64 rows per cell), and a query is compared with the rows of its ``nprobe`` nearest cells only.
  Its recall against the exact search depends on the data (``benchmarks/bench_knn.py``
  measures it).

faiss is optional: without it a faiss search falls back to the torch one, with a warning.
The faiss index is built from the bank when first searched and never saved (the fitted
state holds the bank alone).
"""
import logging
import math

import torch

from ...config.choices import KNN_SEARCHES

__all__ = ["KNN_SEARCHES", "build_knn_search", "default_nlist", "faiss_available", "TorchKNNSearch", "FaissKNNSearch"]

logger = logging.getLogger(__name__)

# faiss warns below 39 training points per k-means centroid; the cells are kept at least
# that full.
_MIN_POINTS_PER_CELL = 39
# The IVF k-means is trained on at most this many bank rows per cell (a seeded sample): at
# 10^6 rows, training on all of them took minutes, on 64 per cell seconds.
_TRAIN_POINTS_PER_CELL = 64


def faiss_available() -> bool:
    """Whether the faiss library can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def default_nlist(bank_size: int) -> int:
    """IVF cells for a bank of ``bank_size`` rows: sqrt(M), at most M / 39 and at least 1."""
    return max(1, min(int(math.sqrt(bank_size)), bank_size // _MIN_POINTS_PER_CELL))


def _distances(similarities):
    """||z - z_i|| = sqrt(2 - 2 z.z_i) of unit vectors; a missing neighbour (faiss returns
    -inf-like similarities for it) counts as the farthest possible, distance 2."""
    return (2.0 - 2.0 * similarities.clamp(-1.0, 1.0)).clamp_min(0.0).sqrt()


def _check_k(k: int, bank_size: int):
    if not 1 <= k <= bank_size:
        raise ValueError(f"k must lie in [1, {bank_size}] (the bank size), got {k}")


class TorchKNNSearch:
    """Exact search by matrix products in torch (the bank stays on its device)."""

    name = "torch"

    def __init__(self, bank, chunk_size: int = 0):
        """
        Args:
            bank (Tensor): (M, D) unit vectors.
            chunk_size: bank rows per chunk, with a running top-k; 0 = the whole bank at once.
        """
        self.bank = bank
        self.chunk_size = chunk_size

    def search(self, queries, k: int):
        """The k largest inner products of each query with the bank, and their rows.

        Args:
            queries (Tensor): (N, D) unit vectors.
            k: number of neighbours, 1 <= k <= M.

        Returns:
            tuple[Tensor, Tensor]: (N, k) similarities in decreasing order, (N, k) int64 bank rows.
        """
        _check_k(k, self.bank.shape[0])
        bank = self.bank.to(queries.dtype)
        if self.chunk_size <= 0 or self.chunk_size >= bank.shape[0]:
            return (queries @ bank.T).topk(k, dim=1)
        values = queries.new_empty(queries.shape[0], 0)
        indices = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)
        for start in range(0, bank.shape[0], self.chunk_size):
            chunk = queries @ bank[start : start + self.chunk_size].T
            merged = torch.cat([values, chunk], dim=1)
            top = merged.topk(min(k, merged.shape[1]), dim=1)
            chunk_rows = torch.arange(start, start + chunk.shape[1], device=queries.device).expand(len(queries), -1)
            values, indices = top.values, torch.cat([indices, chunk_rows], dim=1).gather(1, top.indices)
        return values, indices

    def kth_distance(self, queries, k: int):
        """(N,) distance of each query to its k-th nearest bank row, in the queries' dtype."""
        return _distances(self.search(queries, k)[0][:, k - 1])


class FaissKNNSearch:
    """Search by a faiss CPU index of the bank: exact (``IndexFlatIP``) or IVF (``IndexIVFFlat``)."""

    def __init__(self, bank, index: str = "flat", nlist: int = 0, nprobe: int = 32, seed: int = 0):
        """
        Args:
            bank (Tensor): (M, D) unit vectors (copied to the CPU as float32).
            index: "flat" (exact) or "ivf" (approximate).
            nlist: IVF cells; 0 = :func:`default_nlist`.
            nprobe: IVF cells searched per query (capped at nlist).
            seed: seed of the IVF k-means.
        """
        import faiss

        vectors = bank.detach().to("cpu", torch.float32).contiguous().numpy()
        dim = vectors.shape[1]
        if index == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif index == "ivf":
            nlist = nlist or default_nlist(len(vectors))
            if not 1 <= nlist <= len(vectors):
                raise ValueError(f"MODEL.OOD.POST_HOC.KNN.NLIST must lie in [1, {len(vectors)}] (the bank size), got {nlist}")
            # The quantizer must outlive this call: faiss keeps a pointer to it.
            self.quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            sample = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))
            self.index.train(vectors[sample[: _TRAIN_POINTS_PER_CELL * nlist].numpy()])
            self.index.nprobe = min(nprobe, nlist)
        else:
            raise ValueError(f"faiss index must be 'flat' or 'ivf', got {index!r}")
        self.index.add(vectors)
        self.name = f"faiss_{index}"

    def search(self, queries, k: int):
        """As :meth:`TorchKNNSearch.search`; an IVF search that finds fewer than k rows fills
        the rest with row -1 and a similarity far below -1."""
        _check_k(k, self.index.ntotal)
        values, rows = self.index.search(queries.detach().to("cpu", torch.float32).contiguous().numpy(), k)
        return (
            torch.from_numpy(values).to(queries.device, queries.dtype),
            torch.from_numpy(rows).to(queries.device, torch.long),
        )

    def kth_distance(self, queries, k: int):
        """(N,) distance of each query to its k-th nearest bank row found, in the queries' dtype."""
        return _distances(self.search(queries, k)[0][:, k - 1])


def build_knn_search(bank, search: str = "torch", chunk_size: int = 0, nlist: int = 0, nprobe: int = 32, seed: int = 0):
    """The search of :data:`KNN_SEARCHES` named ``search`` over ``bank``.

    Args:
        bank (Tensor): (M, D) unit vectors.
        search: "torch", "faiss_flat" or "faiss_ivf"; a faiss search without faiss installed
            falls back to "torch" (logged).
        chunk_size: rows per chunk of the torch search.
        nlist, nprobe, seed: of "faiss_ivf".

    Returns:
        TorchKNNSearch or FaissKNNSearch.
    """
    if search not in KNN_SEARCHES:
        raise ValueError(f"MODEL.OOD.POST_HOC.KNN.SEARCH must be one of {KNN_SEARCHES}, got {search!r}")
    if search != "torch" and not faiss_available():
        logger.warning("MODEL.OOD.POST_HOC.KNN.SEARCH=%r needs faiss (pip install faiss-cpu): using the torch search", search)
        search = "torch"
    if search == "torch":
        return TorchKNNSearch(bank, chunk_size)
    return FaissKNNSearch(bank, search[len("faiss_") :], nlist=nlist, nprobe=nprobe, seed=seed)
