"""Per-instance CPU linear assignment with scipy: test oracle and benchmark baseline.

:func:`linear_assignment_scipy` solves one instance at a time with
``scipy.optimize.linear_sum_assignment`` (a shortest-augmenting-path method in C);
:class:`LinearAssignmentScipy`, registered as ``"linear_assignment_scipy"``, is the same call
as a solver: faster than the tensor solver on a CPU at every size measured, but not
exportable, and with scipy's own choice among tied optima.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .._registry import register_solver
from ..assignment import _ASSIGNMENT_CONSTRAINTS, LinearAssignment, _assignment_example

__all__ = ["LinearAssignmentScipy", "linear_assignment_scipy"]


def linear_assignment_scipy(weights: Tensor, maximum: bool = True) -> Tensor:
    """Optimal assignments ``θ [B, m, n] -> z [B, m, n]`` (0/1, min(m, n) ones), one scipy call
    per instance, in float64; returned in θ's dtype and device."""
    values = weights.detach().cpu().double().numpy()  # [B, m, n]
    solution = np.zeros_like(values)
    for index, instance in enumerate(values):
        rows, cols = linear_sum_assignment(instance, maximize=maximum)
        solution[index, rows, cols] = 1.0
    return torch.from_numpy(solution).to(dtype=weights.dtype, device=weights.device)


@register_solver(
    "linear_assignment_scipy",
    sense="max",
    exportable=False,
    input_shape="[B, m, n]",
    constraints=_ASSIGNMENT_CONSTRAINTS,
    description=(
        "maximum-weight assignment by scipy's linear_sum_assignment, a per-example CPU loop "
        "(benchmark baseline)"
    ),
    aliases=("permutation_scipy",),
    example=_assignment_example,
)
class LinearAssignmentScipy(LinearAssignment):
    """:class:`~aimle_zoo.solvers.LinearAssignment` computed by scipy, one instance at a time.

    Same input contract, checks, relaxation and optimal total weight as the tensor solver (the
    matching itself may differ under ties). Not exportable: it leaves the graph for NumPy.
    Moves data to the CPU and back.

    Args:
        maximum: maximum (default) or minimum total weight.
        sinkhorn_iterations: balancing rounds of the relaxation, ≥ 1.
    """

    def forward(self, theta: Tensor) -> Tensor:
        """``θ [B, m, n] -> z [B, m, n]``: the optimal assignment."""
        self._check_input(theta)
        return linear_assignment_scipy(theta, self.maximum)
