"""Ranking as a solver: the rank of every entry of a row, a permutation of 1, …, n.

For scores ``θ [B, *, n]`` the solver returns ranks ``z [B, *, n]``, row by row

    z* = argmax_{z ∈ perm(1, …, n)} ⟨θ, z⟩,

the ascending ranks: by the rearrangement inequality the largest rank goes to the largest
score, so ``z_i = 1 + #{j : θ_j < θ_i}`` away from ties. ``descending=True`` solves the argmin
over the same set, rank 1 for the largest score: the convention of retrieval metrics (recall@k,
average precision) and of the ranking solver of blackbox differentiation (Rolínek et al., 2020).
Either way equal scores are ranked in index order (the lower index gets the lower rank), the
ranks of a stable sort, as ``scipy.stats.rankdata(θ, method="ordinal")`` gives them.

The solver is one stable sort and a scatter, O(n log n) a row, so it ranks thousands of items;
ranking through an assignment of sorting weights (:func:`~aimle_zoo.solvers.sorting_weights`)
costs a Hungarian method, O(n³), and n² weights, and returns the permutation matrix instead.
Its solutions are integer vectors, not 0/1 indicators (``values="integer"`` in the registry).

References:
    Rolínek, Musil, Paulus, Vlastelica, Michaelis, Martius. Optimizing Rank-based Metrics with
    Blackbox Differentiation. CVPR 2020, arXiv:1912.03500.
    Qin, Liu, Li. A General Approximation Framework for Direct Optimization of Information
    Retrieval Measures. Information Retrieval 13, 2010 (the sigmoid soft rank of ``relax``).
"""

# No "from __future__ import annotations": TorchScript reads annotations at run time.
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import Solver, SolverInputError, check_relax_temperature, check_theta, checks_enabled
from ._registry import register_solver

__all__ = ["Ranking", "ranks", "ranks_by_unique_keys", "soft_ranks"]


def ranks(theta: Tensor, descending: bool = False) -> Tensor:
    """Ranks 1..n of each row of ``θ [*, n]`` in θ's dtype, ties in index order (no checks).

    ``z[..., order[..., r]] = r + 1`` for the stable sort order of the row.
    """
    order = torch.sort(theta, dim=-1, descending=descending, stable=True).indices  # [*, n]
    return _scatter_positions(theta, order)


def ranks_by_unique_keys(theta: Tensor, descending: bool = False) -> Tensor:
    """:func:`ranks` without a stable sort, for exported graphs: the same ranks, exactly.

    Neither ONNX exporter holds a stable sort, and ONNX ``TopK`` leaves the order of equal
    values to the runtime. So a first sort (any tie order) gives the sorted values and their
    indices o; equal neighbours share a group number g (a running count of value changes), and
    a second sort of the integer keys g·n + o, all distinct, orders each group by index: the
    stable order, whatever either sort does with ties. O(n log n) a row, like :func:`ranks`.
    """
    n = theta.shape[-1]
    values, order = torch.sort(theta, dim=-1, descending=descending)  # [*, n] each
    changes = (values[..., 1:] != values[..., :-1]).long()  # [*, n − 1]
    group = F.pad(changes, (1, 0)).cumsum(-1)  # [*, n], 0 for the first (also for n = 1)
    by_key = torch.sort(group * n + order, dim=-1).indices  # [*, n], keys distinct
    return _scatter_positions(theta, order.gather(-1, by_key))


def _scatter_positions(theta: Tensor, order: Tensor) -> Tensor:
    """``z [*, n]`` with ``z[..., order[..., r]] = r + 1``, in θ's dtype."""
    n = theta.shape[-1]
    positions = torch.arange(1, n + 1, dtype=theta.dtype, device=theta.device)  # [n]
    return torch.zeros_like(theta).scatter(-1, order, positions.expand_as(theta))


def soft_ranks(theta: Tensor, temperature: float, descending: bool = False) -> Tensor:
    """Sigmoid soft ranks of each row of ``θ [*, n]``, differentiable in θ:

        r̃_i = 1/2 + Σ_j σ((θ_i − θ_j)/τ)     (σ((θ_j − θ_i)/τ) for descending ranks),

    the rank 1 + #{j : θ_j < θ_i} with each comparison smoothed (the j = i term is σ(0) = 1/2).
    Each row sums to n(n + 1)/2, as ranks do; as τ → 0 r̃ tends to the ranks, with tied
    entries sharing their average rank. Builds the ``[*, n, n]`` comparisons: O(n²) memory.
    """
    sign = -1.0 if descending else 1.0
    differences = (theta.unsqueeze(-1) - theta.unsqueeze(-2)) * (sign / temperature)  # [*, n, n]
    return torch.sigmoid(differences).sum(dim=-1) + 0.5


def _exact_integer_limit(dtype: torch.dtype) -> int:
    """The largest n such that 1..n are all exact in ``dtype``: 2^(p + 1) for p mantissa bits
    (eps = 2^−p)."""
    return 2 ** (round(-math.log2(torch.finfo(dtype).eps)) + 1)


def _ranking_example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """Ascending ranks of n = 5 standard normal scores ``[B, 5]`` (120 permutations)."""
    return {}, torch.randn(batch_size, 5, generator=generator)


@register_solver(
    "ranking",
    sense="max",
    exportable=True,
    input_shape="[B, *, n]",
    constraints=(
        "ranks over the last dimension",
        "n exact in the dtype (float16 <= 2048, bfloat16 <= 256)",
    ),
    description="rank of every entry in its row, a permutation of 1..n (1 = smallest score)",
    aliases=("rank",),
    example=_ranking_example,
    values="integer",
)
class Ranking(Solver):
    """Ranks over the last dimension: ``θ [B, *, n] -> z [B, *, n]``, each row a permutation of
    1..n in θ's dtype.

    ``z = argmax_{z ∈ perm(1..n)} ⟨θ, z⟩`` (ascending ranks: 1 for the smallest score), or with
    ``descending=True`` the argmin (rank 1 for the largest score; the solver's sense is then
    ``"min"``). Equal scores are ranked in index order.

    Args:
        descending: rank from the largest score down.
    """

    def __init__(self, descending: bool = False) -> None:
        super().__init__()
        if not isinstance(descending, bool):
            raise SolverInputError(f"ranking: descending must be True or False, got {descending!r}")
        self.descending = descending
        self.sense = "min" if descending else "max"

    def forward(self, theta: Tensor) -> Tensor:
        """``θ [B, *, n] -> z [B, *, n]``, the ranks of each row."""
        if not torch.jit.is_scripting():
            self._check(theta)
            if not torch.compiler.is_exporting():
                return ranks(theta, self.descending)
        return ranks_by_unique_keys(theta, self.descending)

    @torch.jit.unused
    def relax(self, theta: Tensor, temperature: float) -> Tensor:
        """Smooth surrogate of :meth:`forward`: :func:`soft_ranks` at temperature τ > 0."""
        temperature = check_relax_temperature(temperature, solver="ranking")
        self._check(theta)
        return soft_ranks(theta, temperature, self.descending)

    @torch.jit.unused
    def _check(self, theta: Tensor) -> None:
        if not checks_enabled():
            return
        check_theta(
            theta, solver="ranking", min_ndim=2, shape_hint="[B, *, n] (ranks over the last dim)"
        )
        n, limit = theta.shape[-1], _exact_integer_limit(theta.dtype)
        if n > limit:
            raise SolverInputError(
                f"ranking: {n} items cannot all be ranked exactly in {theta.dtype} (integers "
                f"above {limit} are rounded); convert theta with theta.float()"
            )

    def extra_repr(self) -> str:
        return f"descending={self.descending}"
