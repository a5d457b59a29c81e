"""Deep nearest neighbours (Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep
Nearest Neighbors", ICML 2022); also the test-time score of CIDER (Ming et al., ICLR 2023).

The memory bank holds the L2-normalised penultimate features z_i = h_i / ||h_i|| of the
training boxes. A box with normalised feature z is scored by the distance to its k-th
nearest neighbour in the bank,

    s(z) = ||z - z_(k)||,   larger = more OOD.

For unit vectors ||z - z_i||^2 = 2 - 2 z.z_i, so the k-th nearest neighbour is the k-th
largest dot product. The search is exact either way: in one (N, M) matrix product, or, with
``chunk_size`` > 0, over chunks of the bank with a running top-k (memory O(N x (chunk + k))
instead of O(N x M)). ``search`` puts faiss behind the same score (:mod:`.knn_search`): its
exact flat index or its approximate IVF index, the torch search being the fallback when
faiss is not installed.

k: the paper's default is k = 50 for CIFAR-10 (with the full training set); the fit tool
chooses k on ID validation + OOD validation boxes when given them
(``tools/fit_ood_scores.py --val-id ... --val-ood ...``), never on a test split, and records
which in the fitted state (``k_source``).
"""
import torch
from torch.nn import functional as F

from ..config_options import options_from_config
from .base import OOD_SCORE_REGISTRY, PostHocScore
from .knn_search import build_knn_search

__all__ = ["KNNScore", "kth_neighbour_distance", "nearest_similarities", "similarity_to_distance"]

# The paper's k for CIFAR-10 (Sun et al. 2022, sec. 4.1).
PAPER_K = 50


def nearest_similarities(queries, bank, k: int, chunk_size: int = 0):
    """The k largest dot products of each query with the bank rows, in decreasing order.

    Args:
        queries (Tensor): (N, D) unit vectors.
        bank (Tensor): (M, D) unit vectors, M >= k.
        k: how many neighbours.
        chunk_size: bank rows per chunk; 0 = the whole bank at once.

    Returns:
        Tensor: (N, k), in the dtype of ``queries``.
    """
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must lie in [1, {bank.shape[0]}] (the bank size), got {k}")
    bank = bank.to(queries.dtype)
    if chunk_size <= 0 or chunk_size >= bank.shape[0]:
        return (queries @ bank.T).topk(k, dim=1).values
    similarities = queries.new_empty(queries.shape[0], 0)
    for start in range(0, bank.shape[0], chunk_size):
        chunk = queries @ bank[start : start + chunk_size].T
        merged = torch.cat([similarities, chunk], dim=1)
        similarities = merged.topk(min(k, merged.shape[1]), dim=1).values
    return similarities


def similarity_to_distance(similarities):
    """||a - b|| of unit vectors from their dot product: sqrt(2 - 2 a.b)."""
    return (2.0 - 2.0 * similarities).clamp_min(0.0).sqrt()


def kth_neighbour_distance(queries, bank, k: int, chunk_size: int = 0):
    """Euclidean distance of each L2-normalised query to its k-th nearest bank row.

    Args:
        queries (Tensor): (N, D) unit vectors.
        bank (Tensor): (M, D) unit vectors, M >= k.
        k: which neighbour (1 = the nearest).
        chunk_size: bank rows per chunk; 0 = the whole bank at once.

    Returns:
        Tensor: (N,) distances, in the dtype of ``queries``.
    """
    return similarity_to_distance(nearest_similarities(queries, bank, k, chunk_size)[:, k - 1])


@OOD_SCORE_REGISTRY.register()
class KNNScore(PostHocScore):
    """k-th nearest-neighbour distance to the training boxes (fitted: the memory bank, k)."""

    name = "knn"

    def __init__(
        self,
        k: int = 0,
        chunk_size: int = 0,
        max_bank_size: int = 0,
        seed: int = 0,
        search: str = "torch",
        nlist: int = 0,
        nprobe: int = 32,
    ):
        """
        Args:
            k: neighbour rank; 0 = chosen at fit time (see the module docstring).
            chunk_size: bank rows per chunk at inference (0 = one matrix product).
            max_bank_size: keep at most this many training boxes, drawn uniformly without
                replacement with ``seed`` (the paper subsamples ImageNet); 0 = all.
            search: the search at inference, one of
                :data:`~vos_det.modeling.ood_scores.knn_search.KNN_SEARCHES`.
            nlist, nprobe: cells of the "faiss_ivf" index and cells searched per query
                (nlist 0 = sqrt(bank size)).
        """
        super().__init__()
        self.k = k
        self.chunk_size = chunk_size
        self.max_bank_size = max_bank_size
        self.seed = seed
        self.search = search
        self.nlist = nlist
        self.nprobe = nprobe
        # The search over the bank, built when first needed: (bank it was built on, search).
        self._search = None

    @classmethod
    def from_config(cls, cfg):
        options = options_from_config(
            cfg.MODEL.OOD.POST_HOC.KNN, "k", "chunk_size", "max_bank_size", "search", "nlist", "nprobe"
        )
        return cls(seed=max(cfg.SEED, 0), **options)

    def bank_search(self):
        """The search of ``search`` over the fitted bank, built once per bank (a new bank,
        e.g. after ``.to()`` or a refit, gets a new one)."""
        self.require_fitted()
        if self._search is None or self._search[0] is not self.bank:
            search = build_knn_search(self.bank, self.search, self.chunk_size, self.nlist, self.nprobe, self.seed)
            self._search = (self.bank, search)
        return self._search[1]

    def fit(self, data, k: int = 0, k_source: str = ""):
        """Store the normalised features of the training boxes.

        Args:
            k: neighbour rank to use; 0 = the constructor's ``k``, else the paper's 50
                (capped at the bank size).
            k_source: how k was chosen, recorded in the state.
        """
        bank = F.normalize(data.features.float(), dim=1)
        if self.max_bank_size and bank.shape[0] > self.max_bank_size:
            generator = torch.Generator().manual_seed(self.seed)
            bank = bank[torch.randperm(bank.shape[0], generator=generator)[: self.max_bank_size]]
        if k:
            chosen, source = k, k_source or "given"
        elif self.k:
            chosen, source = self.k, "MODEL.OOD.POST_HOC.KNN.K"
        else:
            chosen, source = PAPER_K, "paper default (CIFAR-10)"
        self.fitted_config = {"k": min(chosen, bank.shape[0]), "k_source": source}
        self.set_fitted(bank=bank)
        return self

    def forward(self, features, logits, layer_features=None, logits_of=None):
        queries = F.normalize(features.float(), dim=1)
        return self.bank_search().kth_distance(queries, self.fitted_config["k"])
