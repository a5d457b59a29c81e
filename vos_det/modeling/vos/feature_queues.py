"""Per-class FIFO queues of box features and the shared Gaussian fitted to them."""
import torch
from torch import nn

from .distributed import all_gather_variable_length

__all__ = ["ClassFeatureQueues"]


class ClassFeatureQueues(nn.Module):
    """One FIFO queue of ``capacity`` feature vectors per class, kept in buffers.

    Everything is a registered buffer, so the queues follow ``.to()``, are saved in
    checkpoints and resume exactly. Enqueueing is vectorised. Under torch.distributed the
    incoming features are all-gathered first, so every rank holds identical queues.

    Besides the raw queues, the module can keep the sufficient statistics of the shared
    Gaussian of VOS eq. 1-2 (per-class sums and one sum of outer products, float64),
    updated with what enters and leaves the queues. They are only maintained once
    :meth:`gaussian` has been called (i.e. once synthesis has started), and are
    recomputed exactly from the queues every ``recompute_period`` calls of
    :meth:`gaussian` to bound the floating-point drift.

    Float64 is kept where the maths needs it: the running sums, from which the covariance
    is a difference of large numbers (sum h h^T - sum_k n_k mu_k mu_k^T, which cancels when
    the features sit far from the origin relative to their spread), and the covariance and
    its Cholesky factor. Everything else (the queues, the synthesised outliers' logits) is
    float32, and nothing here runs under autocast.

    A training step reads nothing back from the device: the host keeps what it needs to
    know (whether every queue is full, which it stays once it is; whether the sums are up
    to date; the calls since the last exact recompute) in plain attributes, refreshed from
    the buffers when a state dict is loaded.

    Buffers:
        features: (K, capacity, D) float32 queue contents (slot order, not age order).
        counts: (K,) int64 number of valid entries per class.
        write_positions: (K,) int64 slot that the next feature of each class goes to.
        class_sums: (K, D) float64 sum of the queued features of each class.
        outer_product_sum: (D, D) float64 sum of h h^T over all queued features.
        statistics_valid: () bool, whether the two sums above are up to date.
        calls_since_recompute: () int64 :meth:`gaussian` calls since the last exact sums.
    """

    def __init__(self, num_classes: int, capacity: int, feature_dim: int, recompute_period: int = 500):
        """
        Args:
            num_classes: K, the number of classes (background excluded).
            capacity: N, the number of features each class queue holds.
            feature_dim: D, the dimension of a feature vector.
            recompute_period: exact recomputation of the Gaussian statistics every this
                many calls of :meth:`gaussian`.
        """
        super().__init__()
        if num_classes <= 0 or capacity <= 0 or feature_dim <= 0:
            raise ValueError(
                f"ClassFeatureQueues needs positive sizes, got num_classes={num_classes}, "
                f"capacity={capacity}, feature_dim={feature_dim}"
            )
        self.num_classes = num_classes
        self.capacity = capacity
        self.feature_dim = feature_dim
        self.recompute_period = max(1, int(recompute_period))
        self.register_buffer("features", torch.zeros(num_classes, capacity, feature_dim))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("write_positions", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("class_sums", torch.zeros(num_classes, feature_dim, dtype=torch.float64))
        self.register_buffer(
            "outer_product_sum", torch.zeros(feature_dim, feature_dim, dtype=torch.float64)
        )
        self.register_buffer("statistics_valid", torch.zeros((), dtype=torch.bool))
        self.register_buffer("calls_since_recompute", torch.zeros((), dtype=torch.long))
        self._refresh_host_state()

    def _refresh_host_state(self):
        """Read the host's copies of the buffers' flags (one device read, at load time)."""
        full, valid, calls = torch.stack(
            [
                (self.counts == self.capacity).all().long(),
                self.statistics_valid.long(),
                self.calls_since_recompute,
            ]
        ).tolist()
        self._known_full, self._statistics_valid, self._calls_since_recompute = bool(full), bool(valid), calls

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_host_state()

    def all_full(self) -> bool:
        """Whether every class queue holds ``capacity`` features (read from the device
        until it is true once: a full queue stays full)."""
        if not self._known_full:
            self._known_full = bool((self.counts == self.capacity).all())
        return self._known_full

    @torch.no_grad()
    def enqueue(self, features, labels, gather: bool = True):
        """Push features into the queues of their classes, oldest entries leaving first.

        Equivalent to pushing the rows one by one in order: if a batch holds more than
        ``capacity`` features of a class, only its last ``capacity`` ones remain.

        Args:
            features (Tensor): (B, D) features; detached and stored as float32.
            labels (Tensor): (B,) int class indices in [0, K).
            gather: all-gather features and labels from every rank first (no-op when
                torch.distributed is not initialised).
        """
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"enqueue expects features of shape (B, {self.feature_dim}), got {tuple(features.shape)}"
            )
        features = features.detach().to(self.features.dtype)
        labels = labels.to(self.counts.device, torch.long)
        if gather:
            features, labels = all_gather_variable_length(features, labels)
        if labels.numel() == 0:
            return
        try:
            # Checked where the labels are: on a GPU the host does not wait for the answer
            # (a wrong label stops the device's work); on the CPU it raises here.
            torch._assert_async(((labels >= 0) & (labels < self.num_classes)).all())
        except RuntimeError as error:
            raise ValueError(
                f"enqueue labels must lie in [0, {self.num_classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            ) from error

        # Stable sort by class keeps the arrival order within each class.
        labels, order = torch.sort(labels, stable=True)
        features = features[order]
        # bincount would read the largest label back to the host.
        arrivals = torch.zeros_like(self.counts).index_add_(0, labels, torch.ones_like(labels))
        first_of_class = torch.cumsum(arrivals, 0) - arrivals
        rank_in_class = torch.arange(labels.numel(), device=labels.device) - first_of_class[labels]
        slots = (self.write_positions[labels] + rank_in_class) % self.capacity
        # Of more than `capacity` arrivals of a class only the last `capacity` survive, and
        # they write every slot the earlier ones would: the earlier ones are written as
        # zeros added onto the survivors' slots (selecting the survivors would read their
        # number back to the host).
        survives = rank_in_class >= arrivals[labels] - self.capacity
        entering = torch.where(survives[:, None], features, 0.0)

        if self._statistics_valid:
            # With FIFO writes, a slot is occupied iff the queue is full or the slot index
            # wrapped around below the current fill count; each slot leaves once (through
            # its survivor), and the rows that do not leave count as zeros.
            occupied = survives & ((self.counts[labels] == self.capacity) | (slots < self.counts[labels]))
            leaving = torch.where(occupied[:, None], self.features[labels, slots], 0.0).double()
            entering_64 = entering.double()
            self.class_sums.index_add_(0, labels, entering_64)
            self.class_sums.index_add_(0, labels, leaving, alpha=-1.0)
            # Two GEMMs, E^T E and -L^T L. One GEMM over the rows stacked with weights +1 / -1
            # does the same flops (torch has no SYRK) plus the copies that stack and sign the
            # rows: measured equal at 46 rows and 10-15% slower at 512 (D = 1024, 2 cores).
            self.outer_product_sum.addmm_(entering_64.T, entering_64)
            self.outer_product_sum.addmm_(leaving.T, leaving, alpha=-1.0)

        self.features.index_put_((labels, slots), torch.zeros_like(entering))
        self.features.index_put_((labels, slots), entering, accumulate=True)
        self.write_positions.copy_((self.write_positions + arrivals) % self.capacity)
        self.counts.copy_(torch.clamp(self.counts + arrivals, max=self.capacity))

    @torch.no_grad()
    def recompute_statistics(self):
        """Recompute the class sums and the outer-product sum exactly from the queues.

        One class at a time (its valid rows in float64, one GEMM accumulated into the
        outer-product sum), so the peak extra memory is one (capacity, D) float64 block
        instead of a float64 copy of all K queues. Same sums as over all rows at once, up to
        the order of the floating-point additions.
        """
        self.outer_product_sum.zero_()
        for k, count in enumerate(self.counts.tolist()):
            # FIFO writes fill slots 0..count-1 before the queue wraps.
            rows = self.features[k, :count].double()
            self.class_sums[k].copy_(rows.sum(dim=0))
            self.outer_product_sum.addmm_(rows.T, rows)
        self.statistics_valid.fill_(True)
        self.calls_since_recompute.zero_()
        self._statistics_valid, self._calls_since_recompute = True, 0

    @torch.no_grad()
    def gaussian(self):
        """Class means and the one shared covariance of the queued features (VOS eq. 1-2).

        mu_k = mean of queue k; Sigma = (1/N) sum_k sum_i (h_i - mu_k)(h_i - mu_k)^T, with N
        the total number of queued features. Requires every class to have at least one
        entry (in VOS, all queues are full when this is called).

        Returns:
            tuple[Tensor, Tensor]: means (K, D) and covariance (D, D), both float64.
        """
        if not self.all_full() and bool((self.counts == 0).any()):
            empty = torch.nonzero(self.counts == 0).flatten().tolist()
            raise RuntimeError(f"cannot fit class Gaussians: the queues of classes {empty} are empty")
        if not self._statistics_valid or self._calls_since_recompute >= self.recompute_period:
            self.recompute_statistics()
        self.calls_since_recompute += 1
        self._calls_since_recompute += 1
        counts = self.counts.double()
        means = self.class_sums / counts[:, None]
        # sum_k sum_i (h - mu_k)(h - mu_k)^T = sum h h^T - sum_k n_k mu_k mu_k^T
        #                                   = sum h h^T - S^T M (S: class sums, M: means),
        # one addmm. It is not scaled inside the addmm: identical features then cancel
        # exactly (scatter 0), as they do in the unscaled difference.
        scatter = torch.addmm(self.outer_product_sum, self.class_sums.T, means, alpha=-1.0)
        # Sigma = (scatter + scatter^T) / (2 N): symmetrises away the rounding of the
        # incremental updates, exactly (a + b == b + a). A blocked transpose copy then an
        # in-place add and scale: a strided read of scatter^T would be several times slower.
        # 0.5 / N as a float64 tensor: the same number as in Python, not read back to the host.
        covariance = scatter.T.contiguous().add_(scatter).mul_(0.5 / counts.sum())
        return means, covariance
