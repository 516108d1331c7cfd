"""``DifferentiableSolver``: a solver and an estimator composed into one ``nn.Module`` layer.

In training mode the layer runs ``estimator(solver, theta)`` (noisy samples ``[B·N, *S]`` and
an estimated gradient); in eval mode it runs the plain, noise-free ``solver(theta)``
``[B, *S]``. TorchScript, ONNX export and ``torch.export`` always see the plain solver, so a
model holding the layer exports whatever mode it is in (the estimator's autograd Function is
not exportable).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._aimle import AIMLE
from ._base import Estimator, SolverFunction, build_solver, call_solver, check_minimize
from ._relaxed import Relaxed
from ._simple import SIMPLE
from .registry import build_estimator

__all__ = ["DifferentiableSolver"]


class DifferentiableSolver(nn.Module):
    """A combinatorial solver as a differentiable layer.

    Args:
        solver: an ``nn.Module`` or callable ``theta [B, *S] -> z [B, *S]``, or the name of a
            registered solver (built with ``get_solver(name, **solver_params)``).
        estimator: an :class:`Estimator`, an estimator name (built with defaults), or ``None``
            for ``AIMLE()`` (adaptive target, Gumbel noise, one sample).
        minimize: treat the solver as a minimiser (``True``) or maximiser (``False``); ``None``
            reads its sense (:func:`~aimle_zoo.solvers.solver_sense`). Needed for a wrapper
            such as ``nn.Sequential(preprocess, get_solver("dijkstra"))``, which has none.
        **solver_params: parameters of a named solver, e.g. ``k=5`` for ``"topk"``.

    Example::

        layer = DifferentiableSolver("topk", AIMLE(samples=10), k=5)
        z = layer(logits)          # training: [B·10, n]; eval: [B, n]
    """

    __jit_ignored_attributes__: ClassVar[list[str]] = ["estimator", "minimize"]
    __jit_unused_properties__: ClassVar[list[str]] = ["samples"]

    def __init__(
        self,
        solver: nn.Module | SolverFunction | str,
        estimator: Estimator | str | None = None,
        *,
        minimize: bool | None = None,
        **solver_params: Any,
    ) -> None:
        super().__init__()
        minimize = check_minimize(minimize)
        solver = build_solver(solver, solver_params)
        if estimator is None:
            estimator = AIMLE()
        elif isinstance(estimator, str):
            estimator = build_estimator(estimator)
        elif not isinstance(estimator, Estimator):
            raise TypeError(
                "estimator must be an Estimator, an estimator name or None, "
                f"got {type(estimator).__name__}"
            )
        if isinstance(estimator, Relaxed):
            estimator.relaxation_of(solver)  # fail now, not at the first training step
        if isinstance(estimator, SIMPLE):
            estimator.distribution_of(solver)
        self.solver = solver
        self.estimator = estimator
        self.minimize = minimize

    @property
    def samples(self) -> int:
        """Solutions returned per instance: the estimator's N in training, 1 in eval."""
        return self.estimator.samples if self.training else 1

    def forward(self, theta: Tensor) -> Tensor:
        """``theta [B, *S]`` -> ``z [B·samples, *S]``."""
        if torch.jit.is_scripting():
            return self.solver(theta)
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return self.solver(theta)
        if self.training:
            return self.estimator(self.solver, theta, minimize=self.minimize)
        return call_solver(self.solver, theta)  # checked and cast like the training samples
