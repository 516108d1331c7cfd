"""Top-k selection (k-subset MAP): ``z = argmax_{z in {0,1}^n, Σz = k} <θ, z>`` over the last dim.

The maximiser puts ones on the k largest entries of θ. Two tie rules are offered:

* ``"exact"``: exactly k ones. Entries strictly above the k-th largest value are always chosen;
  among the entries equal to it, the ones with the **lowest indices** are chosen. The result is
  the lexicographically smallest optimal index set; it depends only on the values of θ, so it
  is the same on every device and in every export.
* ``"threshold"``: ``z_i = [θ_i >= θ_(k)]`` with θ_(k) the k-th largest value, the rule of the
  reference experiments. Under ties at θ_(k) it returns more than k ones.

Both are a handful of tensor operations (``topk``, comparisons, ``cumsum``) with no
data-dependent Python control flow, so they script and export. Only in eager mode on CPU, where
reading a value costs no device synchronisation, does the exact rule skip its tie handling when
no row has a tie at the k-th largest value (the result is the same).

Eager CPU runs with many short rows (n <= 32 and at least :data:`NETWORK_ENTRIES_PER_COMPARATOR`
entries of θ per comparator: from 840 rows of 20, such as the discrete VAE's 20-way groups)
find the k-th largest value with Batcher's odd-even merge sorting network instead of
``torch.topk``: O(n·log²n) elementwise ``minimum``/``maximum`` operations over the rows'
columns, pruned to the comparators and outputs the k-th largest depends on. It is exact (it
only moves values), so the solution is identical, and at 20,000 rows of 20 the whole solver
takes a fifth of the time of a raw ``torch.topk`` call, whose per-row partial sort dominates.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import Solver, SolverInputError, check_relax_temperature, check_theta, checks_enabled
from ._registry import register_solver
from .subset_distribution import sample_subsets, subset_marginals

TIE_RULES = ("exact", "threshold")


#: Eager CPU top-k uses the sorting network for rows of at most this many items ...
NETWORK_MAX_ITEMS = 32
#: ... when θ has at least this many entries per comparator of the network. Each comparator is
#: one elementwise op over the rows (about 2.5 µs of dispatch at these sizes), while
#: ``torch.topk``'s partial sort costs about 12 ns per entry on new values (its branches
#: mispredict; on values it has just seen it is three times faster, which is how a benchmark
#: repeating one input flatters it). Measured break-even: 540–1,000 rows for 4 to 32 items.
NETWORK_ENTRIES_PER_COMPARATOR = 200


def _kth_largest(theta: Tensor, k: int) -> Tensor:
    """The k-th largest value ``θ_(k)`` of each row ``[*, 1]``."""
    largest = torch.topk(theta, k, dim=-1, sorted=False).values  # [*, k]
    return largest.amin(dim=-1, keepdim=True)


@functools.cache
def merge_sort_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, i < j, of Batcher's odd-even merge sort on ``n`` wires.

    Applying ``(x_i, x_j) <- (min, max)`` in order sorts any input ascending (Knuth, TAOCP 3,
    §5.3.4, the arbitrary-n form); n = 20 takes 103 comparators.
    """
    pairs = []
    span = 1
    while span < n:
        step = span
        while step >= 1:
            for start in range(step % span, n - step, 2 * step):
                for offset in range(min(step, n - start - step)):
                    low = start + offset
                    if low // (2 * span) == (low + step) // (2 * span):
                        pairs.append((low, low + step))
            step //= 2
        span *= 2
    return tuple(pairs)


def _network_pays(theta: Tensor, k: int) -> bool:
    """Whether :func:`_kth_largest_by_network` beats ``torch.topk`` for ``theta`` (eager CPU)."""
    items = theta.shape[-1]
    if items > NETWORK_MAX_ITEMS:
        return False
    comparators = len(selection_network(items, k))
    return theta.numel() >= NETWORK_ENTRIES_PER_COMPARATOR * comparators


@functools.cache
def selection_network(n: int, k: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """The part of :func:`merge_sort_network` that the k-th largest of ``n`` values needs.

    ``(i, j, keep_min, keep_max)`` per comparator, in order: the sorted output wire ``n − k``
    is traced back through the network, comparators that cannot reach it are dropped, and of
    the others only the outputs read later are computed (``x_i <- min`` when ``keep_min``,
    ``x_j <- max`` when ``keep_max``). Wire ``n − k`` ends with the same value as in the full
    network: n = 20, k = 10 takes 149 of its 206 elementwise operations.
    """
    needed = {n - k}  # wires whose current value is read later
    kept = []
    for low, high in reversed(merge_sort_network(n)):
        keep_min, keep_max = low in needed, high in needed
        if keep_min or keep_max:
            kept.append((low, high, keep_min, keep_max))
            needed.update((low, high))
    return tuple(reversed(kept))


def _kth_largest_by_network(theta: Tensor, k: int) -> Tensor:
    """θ_(k) ``[*, 1]`` from :func:`selection_network` run over the columns of the rows.

    Exact: the network only moves values, so the result equals :func:`_kth_largest`'s. The
    first comparators read θ's columns in place (strided); a transposed copy first costs more
    than it saves once θ no longer fits in the cache (2× the time at 40,000 rows of 20).
    """
    items = theta.shape[-1]
    wires = list(theta.reshape(-1, items).unbind(1))  # n × [rows], strided views
    for low, high, keep_min, keep_max in selection_network(items, k):
        smaller = torch.minimum(wires[low], wires[high]) if keep_min else wires[low]
        if keep_max:
            wires[high] = torch.maximum(wires[low], wires[high])
        wires[low] = smaller
    return wires[items - k].reshape(*theta.shape[:-1], 1)  # the k-th largest


def _untied_topk(theta: Tensor, kth: Tensor, chosen: int) -> Tensor | None:
    """The mask ``[θ_i >= θ_(k)]`` when it has exactly ``chosen`` ones (no row has surplus
    ties), else ``None``.

    For float32/float64 θ (checked finite) the mask is min(sign(θ_i − θ_(k)) + 1, 1) in float
    arithmetic, a third of the time of a comparison and a cast on a CPU; its sum (below 2^24)
    is exact.
    """
    if (theta.dtype == torch.float32 or theta.dtype == torch.float64) and theta.numel() < 2**24:
        values = (theta.detach() - kth.detach()).sign_().add_(1.0).clamp_(max=1.0)  # [*, n]
        return values if int(values.sum()) == chosen else None
    at_least = theta >= kth  # [*, n]
    return at_least.to(theta.dtype) if int(torch.count_nonzero(at_least)) == chosen else None


def _topk_lowest_index(theta: Tensor, kth: Tensor, k: int, branch_on_ties: bool = False) -> Tensor:
    """Exactly k ones per row; ties at the k-th largest value ``kth [*, 1]`` go to the lowest
    indices.

    With ``a_i = [θ_i >= θ_(k)]``, ``t_i = [θ_i = θ_(k)]`` and ``m = k − #{θ_i > θ_(k)}`` the
    number of tied entries inside the top k, ``z_i = a_i ∧ ¬(t_i ∧ Σ_{j<=i} t_j > m)``. When no
    row has more than k entries ``>= θ_(k)`` this is ``z = a``; with ``branch_on_ties`` (eager
    CPU only, where reading that count costs no device synchronisation, and θ is checked
    finite) the tie rule is then skipped (:func:`_untied_topk`).
    """
    if branch_on_ties:
        untied = _untied_topk(theta, kth, theta.numel() // theta.shape[-1] * k)
        if untied is not None:
            return untied
    at_least = theta >= kth  # [*, n]
    tied_needed = k - (theta > kth).sum(dim=-1, keepdim=True)  # [*, 1]
    tied = theta == kth  # [*, n]
    surplus = torch.logical_and(tied, tied.cumsum(dim=-1, dtype=torch.int64) > tied_needed)
    return torch.logical_and(at_least, torch.logical_not(surplus)).to(theta.dtype)


def _log_one_minus_softmax(logits: Tensor, probs: Tensor) -> Tensor:
    """``log(1 − a_i)`` over the last dimension, ``a = softmax(x)`` (``probs``, already
    computed from ``logits``), exact where ``a_i`` rounds to 1.

    At most one entry has a_i > 1/2, the largest; for it 1 − a_i = Σ_{j≠i} e^{x_j} / Σ_j e^{x_j},
    a difference of log-sum-exps, and ``log1p(−a_j)`` is exact for the others. ``[*, n] -> [*, n]``.
    """
    top = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).bool()  # [*, n]
    total = torch.logsumexp(logits, dim=-1, keepdim=True)  # [*, 1]
    rest = torch.logsumexp(logits.masked_fill(top, float("-inf")), dim=-1, keepdim=True)
    others = torch.log1p(-probs.masked_fill(top, 0.0))  # [*, n]
    return torch.where(top, rest - total, others)


def relaxed_topk(theta: Tensor, k: int, temperature: float) -> Tensor:
    """Continuous top-k of Xie and Ermon (2019): ``θ [*, n] -> z̃ [*, n]`` ≥ 0 with Σ z̃ = k.

    k rounds of a softmax that removes what the earlier rounds took:

        a⁽ʲ⁾ = softmax(w⁽ʲ⁾ / τ),   w⁽ʲ⁺¹⁾ = w⁽ʲ⁾ + log(1 − a⁽ʲ⁾),   z̃ = Σ_j a⁽ʲ⁾,

    with w⁽¹⁾ = θ. The masking accumulates over the rounds (the published algorithm; a port
    that resets it every round, as the reference L2X code does, is a bug). As τ → 0, z̃ tends to
    the top-k indicator; k = 1 is ``softmax(θ / τ)``. At high τ, or where one entry dominates,
    an entry can exceed 1: the mask leaves e^{w_i}(1 − a_i) = Σ_{j≠i} e^{w_j} at τ = 1, as much
    as all the others together. ``log(1 − a)`` is computed in log space
    (:func:`_log_one_minus_softmax`), so float32 and float64 agree where a rounds to 1
    (clamping 1 − a at the smallest float took the top entry twice in float32).
    Differentiable in θ.
    """
    scores = theta
    relaxed = torch.zeros_like(theta)
    for step in range(k):
        logits = scores / temperature  # [*, n]
        taken = torch.softmax(logits, dim=-1)  # [*, n]
        relaxed = relaxed + taken
        if step < k - 1:
            scores = scores + _log_one_minus_softmax(logits, taken)
    return relaxed


def _topk_objective(theta: Tensor, z: Tensor) -> Tensor:
    """``<θ, z>`` per instance: ``[B, *, n] x [B, *, n] -> [B]``."""
    return (theta * z).flatten(1).sum(dim=1)


def _topk_example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """k = 3 of n = 10 on standard normal scores ``[B, 10]``."""
    return {"k": 3}, torch.randn(batch_size, 10, generator=generator)


@register_solver(
    "topk",
    sense="max",
    exportable=True,
    input_shape="[B, *, n]",
    constraints=("1 <= k <= n", "top-k over the last dimension"),
    description="k largest entries of the last dimension (k-subset selection)",
    aliases=("top_k", "k_subset"),
    example=_topk_example,
    objective=_topk_objective,
)
class TopK(Solver):
    """Top-k indicator over the last dimension: ``θ [B, *, n] -> z [B, *, n]``, Σ_n z = k.

    ``z = argmax_{z in {0,1}^n, Σz = k} <θ, z>`` row by row. Ties: ``ties="exact"`` returns
    exactly k ones and prefers the lowest indices among values equal to the k-th largest;
    ``ties="threshold"`` returns ``[θ >= θ_(k)]`` (the reference rule, can exceed k). The output
    has θ's dtype and device.

    Args:
        k: number of entries to select, ``1 <= k <= n``.
        ties: ``"exact"`` or ``"threshold"``.
    """

    def __init__(self, k: int, ties: str = "exact") -> None:
        super().__init__()
        if (
            isinstance(k, bool)
            or not hasattr(k, "__index__")
            or (isinstance(k, torch.Tensor) and (k.dim() != 0 or k.is_floating_point()))
        ):
            raise SolverInputError(
                f"topk: k must be an int, got {k!r} ({type(k).__name__}); pass e.g. k=10."
            )
        k = operator.index(k)  # a NumPy or 0-d integer tensor too, as a plain int
        if k < 1:
            raise SolverInputError(f"topk: k must be in [1, n], got k={k}; pass k >= 1.")
        if ties not in TIE_RULES:
            raise SolverInputError(
                f"topk: unknown ties rule {ties!r}; choose 'exact' (exactly k ones, lowest "
                "index wins a tie) or 'threshold' (all entries >= the k-th largest)."
            )
        self.k = k
        self.ties = ties

    def forward(self, theta: Tensor) -> Tensor:
        """``θ [B, *, n] -> z [B, *, n]`` in {0, 1}, top-k over the last dimension."""
        eager_cpu = False
        if not torch.jit.is_scripting():  # not compiled by TorchScript
            eager_cpu = self._check(theta)
            if eager_cpu and _network_pays(theta, self.k):
                kth = _kth_largest_by_network(theta, self.k)  # [*, 1]
            else:
                kth = _kth_largest(theta, self.k)
        else:
            kth = _kth_largest(theta, self.k)
        if self.ties == "exact":
            return _topk_lowest_index(theta, kth, self.k, eager_cpu)
        return (theta >= kth).to(theta.dtype)

    @torch.jit.unused
    def relax(self, theta: Tensor, temperature: float) -> Tensor:
        """Smooth surrogate of :meth:`forward`: :func:`relaxed_topk` at temperature τ > 0."""
        temperature = check_relax_temperature(temperature, solver="topk")
        self._check(theta)
        return relaxed_topk(theta, self.k, temperature)

    @torch.jit.unused
    def marginals(self, theta: Tensor, temperature: float = 1.0) -> Tensor:
        """Exact marginals ``μ [B, *, n]`` of p(z) ∝ exp(⟨θ, z⟩/τ) over k-subsets
        (:func:`~aimle_zoo.solvers.subset_distribution.subset_marginals`); differentiable,
        each row sums to k, the top-k indicator as τ → 0 (ties aside)."""
        self._check(theta)
        return subset_marginals(theta, self.k, temperature)

    @torch.jit.unused
    def sample(
        self,
        theta: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        samples: int = 1,
    ) -> Tensor:
        """N = ``samples`` exact draws per instance of p(z) ∝ exp(⟨θ, z⟩/τ) over k-subsets:
        ``z [B·N, *, n]``, sample-minor
        (:func:`~aimle_zoo.solvers.subset_distribution.sample_subsets`)."""
        self._check(theta)
        return sample_subsets(theta, self.k, temperature, generator, samples)

    @torch.jit.unused
    def _check(self, theta: Tensor) -> bool:
        """Validate θ; ``True`` when the forward may branch on the data (eager mode on CPU)."""
        if not checks_enabled():
            return False
        check_theta(
            theta, solver="topk", min_ndim=2, shape_hint="[B, *, n] (top-k over the last dim)"
        )
        n = theta.shape[-1]
        if self.k > n:
            raise SolverInputError(
                f"topk: k={self.k} is out of range for n={n} items (theta.shape[-1]); "
                f"k must be in [1, {n}]. Lower k or pass more items."
            )
        return theta.device.type == "cpu" and not torch.compiler.is_compiling()

    def extra_repr(self) -> str:
        return f"k={self.k}, ties={self.ties!r}"
