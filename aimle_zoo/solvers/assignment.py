"""Linear assignment (bipartite matching) as a batched tensor program (the Hungarian method).

Given weights ``θ [B, m, n]``, the solver returns the 0/1 matrix ``z [B, m, n]`` of

    z* = argmax_{z} Σ_ij θ_ij z_ij   over z ∈ {0,1}^{m×n} with one 1 in every row (m ≤ n)
                                          or one 1 in every column (m ≥ n), at most one in the other

(argmin for the minimum variant). For m = n, z is a permutation matrix: learning to match,
to sort or to rank (with ``θ_ij = s_i w_j`` the solution sorts the scores ``s`` onto the
positions ``w``).

The algorithm is the shortest-augmenting-path Hungarian method (Kuhn–Munkres in the O(m²n)
form of Jonker and Volgenant) run on the whole batch at once, with no per-example Python
loop. Row i joins in phase i; each step of a phase labels the unlabelled column with the
smallest reduced cost ``c_ij − u_i − v_j`` and moves the dual potentials ``u, v`` by it, until
that column is free; the phase then flips the matching along the path it found. Phase i takes
at most i steps. Instances that finish early wait with a zero step (nothing changes), so each
instance's result is the same alone as in any batch. The loops are ``while`` loops that stop
when every instance has finished a phase, so ``torch.jit.script`` compiles the solver and the
TorchScript-based ONNX exporter keeps them as ONNX ``Loop`` s with dynamic m and n.

The arithmetic runs in float64 (float32 on devices without it, such as Apple's MPS): the
potentials are sums and differences of weights, so the solution is optimal up to float64
rounding of those sums (a common offset of 1e9 does not hide differences of 1e-3).

Tie-breaking (deterministic): among columns of equal reduced cost the lowest index is labelled
first. The result depends only on θ's values, so it is the same on every device and in every
export.
"""

# No "from __future__ import annotations": TorchScript reads annotations at run time.
from typing import Any

import torch
from torch import Tensor

from ._base import (
    Solver,
    SolverInputError,
    check_relax_temperature,
    check_theta,
    checks_enabled,
)
from ._registry import register_solver


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the potentials, float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _hungarian_columns(cost: Tensor) -> Tensor:
    """Minimum-cost assignment of every row: ``c [B, m, n]`` (m ≤ n) -> ``row [B, n]``.

    ``row[b, j]`` is the row (1-based) assigned column j, or 0 for a column left free. Indices
    are 1-based so that position 0 of the padded tensors is the virtual column each phase starts
    from (its owner is the joining row) and the virtual row of free columns.

    A labelled column's slack is +inf from then on, so that the reduced costs need no mask to
    leave it alone and ``slack − δ`` moves only the unlabelled ones; an instance whose phase is
    over scans with +inf reduced costs and moves its potentials by δ = 0. The rows whose
    potential rises by δ, the owners of labelled columns, are kept as a mask beside them.
    """
    batch, rows, cols = cost.shape[0], cost.shape[1], cost.shape[2]
    device = cost.device
    dtype = _work_dtype(device)
    inf = float("inf")
    # [B·(m+1), n+1]: row b·(m+1) + i holds the costs of row i of instance b (row 0 virtual)
    flat_costs = torch.nn.functional.pad(cost.to(dtype), (1, 0, 1, 0)).reshape(-1, cols + 1)
    row_offsets = (torch.arange(batch, device=device) * (rows + 1)).unsqueeze(1)  # [B, 1]
    row_dual = torch.zeros(batch, rows + 1, dtype=dtype, device=device)  # u
    col_dual = torch.zeros(batch, cols + 1, dtype=dtype, device=device)  # v
    owner = torch.zeros(batch, cols + 1, dtype=torch.long, device=device)  # row of each column
    first = torch.zeros(batch, 1, dtype=torch.long, device=device)
    row_index = torch.arange(rows + 1, device=device).unsqueeze(0)  # [1, m+1]
    col_index = torch.arange(cols + 1, device=device).unsqueeze(0)  # [1, n+1]
    for joining in range(1, rows + 1):
        owner = torch.where(col_index == 0, joining, owner)  # the virtual column's row
        column = first  # [B, 1]: the column whose owner is scanned next
        labelled = (col_index == 0).expand(batch, cols + 1)  # [B, n+1]
        row_labelled = (row_index == joining).expand(batch, rows + 1)  # owners of labelled
        slack = torch.full((batch, cols + 1), inf, dtype=dtype, device=device)  # [B, n+1]
        came_from = torch.zeros(batch, cols + 1, dtype=torch.long, device=device)
        done = torch.zeros(batch, 1, dtype=torch.bool, device=device)
        steps = 0
        while steps < joining and not bool(done.all()):
            scanned = owner.gather(1, column)  # [B, 1] the row to scan
            scanned_costs = flat_costs.index_select(0, (scanned + row_offsets).squeeze(1))
            reduced = scanned_costs - row_dual.gather(1, scanned) - col_dual  # [B, n+1]
            reduced = reduced.masked_fill(labelled | done, inf)
            closer = reduced < slack
            slack = torch.minimum(slack, reduced)
            came_from = torch.where(closer, column, came_from)
            delta, nearest = slack.min(dim=1, keepdim=True)  # [B, 1], lowest index on ties
            delta = delta.masked_fill(done, 0.0)
            row_dual = row_dual + row_labelled.to(dtype) * delta  # [B, m+1]
            col_dual = col_dual - labelled.to(dtype) * delta  # [B, n+1]
            newly = col_index == nearest  # [B, n+1]
            slack = torch.where(newly, inf, slack - delta)
            labelled = labelled | newly
            row_labelled = row_labelled | (row_index == owner.gather(1, nearest))
            column = torch.where(done, column, nearest)
            done = done | (owner.gather(1, column) == 0)
            steps += 1
        steps = 0
        while steps < joining and bool((column != 0).any()):  # flip the augmenting path
            previous = came_from.gather(1, column)
            owner = torch.where(col_index == column, owner.gather(1, previous), owner)
            column = previous
            steps += 1
    return owner


def _assignment_matrix(weights: Tensor, maximum: bool) -> Tensor:
    """``θ [B, m, n] -> z [B, m, n]``: the optimal assignment as a 0/1 matrix in θ's dtype.

    For m > n the method runs on θᵀ (every column of θ gets a row) and reads z off its result
    without a transpose.
    """
    batch, rows, cols = weights.shape[0], weights.shape[1], weights.shape[2]
    cost = -weights if maximum else weights
    if rows > cols:
        owner = _hungarian_columns(cost.transpose(1, 2)).reshape(batch, rows + 1)[:, 1:]
        targets = torch.arange(1, cols + 1, device=weights.device).view(1, 1, cols)
        return (owner.unsqueeze(2) == targets).to(weights.dtype)  # [B, m, n]
    owner = _hungarian_columns(cost).reshape(batch, cols + 1)[:, 1:]  # [B, n] row of column
    sources = torch.arange(1, rows + 1, device=weights.device).view(1, rows, 1)
    return (owner.unsqueeze(1) == sources).to(weights.dtype)  # [B, m, n]


def sorting_weights(scores: Tensor, descending: bool = False) -> Tensor:
    """Assignment weights that sort: ``s [*, n] -> θ [*, n, n]``, ``θ_ij = s_i · w_j``.

    With positions ``w = (1, …, n)`` the maximum assignment of θ puts item i at its rank in
    ascending order of s (the rearrangement inequality); ``descending=True`` uses
    ``w = (n, …, 1)``, the largest score first. ``z.argmax(-1)`` then reads each item's
    position and ``z.transpose(-2, -1) @ x`` the items in sorted order. Ties in s are
    broken by the solver's rule (lowest index first).
    """
    n = scores.shape[-1]
    positions = torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)
    if descending:
        positions = positions.flip(0)
    return scores.unsqueeze(-1) * positions  # [*, n, n]


def sinkhorn_assignment(theta: Tensor, temperature: float, iterations: int = 20) -> Tensor:
    """Entropic relaxation of the maximum assignment: ``θ [*, m, n] -> z̃ [*, m, n]`` in [0, 1].

    Sinkhorn's balancing in log space (Mena et al., 2018) of ``θ / τ``, padded to a square with
    rows (or columns) of zeros that are dropped afterwards:

        log α ← log α − logsumexp_j log α,   log α ← log α − logsumexp_i log α   (``iterations``×)

    For m ≤ n the rows of z̃ sum to 1 and its columns to at most 1 (exactly after the last
    column step, up to the unconverged rows). As τ → 0 (and with enough iterations, more as τ
    shrinks) z̃ tends to the optimal assignment; with Gumbel noise on θ it is the
    Gumbel–Sinkhorn estimator. Differentiable in θ.
    """
    rows, cols = theta.shape[-2], theta.shape[-1]
    size = max(rows, cols)
    log_alpha = torch.nn.functional.pad(theta / temperature, (0, size - cols, 0, size - rows))
    for _ in range(iterations):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()[..., :rows, :cols]


def _assignment_example(
    batch_size: int, generator: torch.Generator
) -> tuple[dict[str, Any], Tensor]:
    """Standard normal weights of 5 × 5 assignments ``[B, 5, 5]`` (default parameters)."""
    return {}, torch.randn(batch_size, 5, 5, generator=generator)


_ASSIGNMENT_CONSTRAINTS = (
    "m <= n: every row gets one column; m > n: every column gets one row",
    "weights finite",
)


@register_solver(
    "linear_assignment",
    sense="max",
    exportable=True,
    input_shape="[B, m, n]",
    constraints=_ASSIGNMENT_CONSTRAINTS,
    description="maximum-weight assignment / permutation matrix (batched Hungarian method)",
    aliases=("permutation", "bipartite_matching", "max_weight_matching"),
    example=_assignment_example,
)
class LinearAssignment(Solver):
    """Optimal assignment: ``θ [B, m, n] -> z [B, m, n]`` 0/1 with min(m, n) ones.

    ``z = argmax Σ_ij θ_ij z_ij`` (``argmin`` if ``maximum=False``) over matchings that cover
    every row (m ≤ n) or every column (m ≥ n); a permutation matrix when m = n. θ's dtype and
    device; deterministic tie-breaking (module docstring). Exact to float64 rounding: at most
    a few ulps of ``Σ|θ|`` from the optimum (checked against scipy's
    ``linear_sum_assignment``).

    Args:
        maximum: maximum (default) or minimum total weight. The instance's ``sense`` follows it,
            so ``LinearAssignment(maximum=False)`` and "minimum_assignment" are interchangeable.
        sinkhorn_iterations: balancing rounds of the relaxation (:meth:`relax`), ≥ 1.
    """

    def __init__(self, maximum: bool = True, sinkhorn_iterations: int = 20) -> None:
        super().__init__()
        name = self._solver_name()
        if not isinstance(maximum, bool):
            raise SolverInputError(f"{name}: maximum must be True or False, got {maximum!r}.")
        if (
            isinstance(sinkhorn_iterations, bool)
            or not isinstance(sinkhorn_iterations, int)
            or sinkhorn_iterations < 1
        ):
            raise SolverInputError(
                f"{name}: sinkhorn_iterations must be an int >= 1, got {sinkhorn_iterations!r}."
            )
        self.maximum = maximum
        self.sense = "max" if maximum else "min"
        self.sinkhorn_iterations = sinkhorn_iterations

    def forward(self, theta: Tensor) -> Tensor:
        """``θ [B, m, n] -> z [B, m, n]``: the optimal assignment."""
        if not torch.jit.is_scripting():
            self._check_input(theta)
        return _assignment_matrix(theta, self.maximum)

    @torch.jit.unused
    def relax(self, theta: Tensor, temperature: float) -> Tensor:
        """Smooth surrogate of :meth:`forward`: :func:`sinkhorn_assignment` at τ > 0."""
        temperature = check_relax_temperature(temperature, solver=self._solver_name())
        self._check_input(theta)
        signed = theta if self.maximum else -theta
        return sinkhorn_assignment(signed, temperature, self.sinkhorn_iterations)

    @torch.jit.unused
    def _check_input(self, theta: Tensor) -> None:
        if checks_enabled():
            check_theta(
                theta,
                solver=self._solver_name(),
                ndim=3,
                shape_hint="[B, m, n] weights (row i, column j)",
            )

    def extra_repr(self) -> str:
        return f"maximum={self.maximum}, sinkhorn_iterations={self.sinkhorn_iterations}"


@register_solver(
    "minimum_assignment",
    sense="min",
    exportable=True,
    input_shape="[B, m, n]",
    constraints=_ASSIGNMENT_CONSTRAINTS,
    description="minimum-cost assignment / permutation matrix (batched Hungarian method)",
    aliases=("min_cost_assignment", "linear_sum_assignment"),
    example=_assignment_example,
)
class MinimumAssignment(LinearAssignment):
    """Minimum-cost assignment: :class:`LinearAssignment` with ``maximum=False`` and sense "min".

    Args:
        sinkhorn_iterations: balancing rounds of the relaxation, ≥ 1.
    """

    def __init__(self, sinkhorn_iterations: int = 20) -> None:
        super().__init__(maximum=False, sinkhorn_iterations=sinkhorn_iterations)
