"""Blackbox differentiation of combinatorial solvers (Vlastelica et al., ICLR 2020).

Forward: the plain solution z = MAP(θ) ``[B, *S]`` (no noise, one sample). Backward, with
dy = ∂L/∂z, one more solver call at a target moved against the loss:

    maximiser:  θ' = θ − λ·dy,   ∂L/∂θ ≈ (z − z') / λ
    minimiser:  θ' = θ + λ·dy,   ∂L/∂θ ≈ −(z − z') / λ = (z' − z) / λ

This is the gradient of the piecewise-linear interpolation of L∘MAP between θ and θ'. For a
maximiser it equals I-MLE without noise and with gradient scaling. The minimiser case is the
original paper's form (it used minimisers such as Dijkstra): raising the cost of the entries
the loss wants switched off turns them off in z', and the returned gradient is negative there,
so a descent step raises their cost too.

Difference from the original code: it returns the gradient for any sense (the original
returned −(z − z')/λ for minimisers only) and batches the instances in one solver call.

References:
    Vlastelica, Paulus, Musil, Martius, Rolínek. Differentiation of Blackbox Combinatorial
    Solvers. ICLR 2020, arXiv:1912.02175.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import (
    Estimator,
    SolverFunction,
    call_solver,
    check_incoming_gradient,
    check_positive,
    skipped_gradient,
)
from .targets import step_dtype, times_step

__all__ = ["Blackbox"]


class _BlackboxFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, theta: Tensor, estimator: Blackbox, solver: SolverFunction, minimize: bool
    ) -> Tensor:
        z = call_solver(solver, theta)  # [B, *S], z = MAP(θ)
        ctx.estimator, ctx.solver, ctx.minimize = estimator, solver, minimize
        ctx.save_for_backward(theta, z)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None, None, None]:
        estimator: Blackbox = ctx.estimator
        theta, z = ctx.saved_tensors
        if not check_incoming_gradient(dy, "blackbox"):
            return skipped_gradient(theta, tuple(theta.shape)), None, None, None
        dtype = step_dtype(theta.dtype)  # float32 for half precision, where λ·dy overflows
        step = torch.full((), estimator.lambda_, device=theta.device, dtype=dtype)  # λ
        move = times_step(step if ctx.minimize else -step, dy)  # ∓λ·dy
        z_target = call_solver(ctx.solver, theta + move)  # z' = MAP(θ')
        gradient = (z - z_target) / step
        if ctx.minimize:
            gradient = -gradient
        estimator._record(gradient, step)
        return gradient.to(theta.dtype), None, None, None


class Blackbox(Estimator):
    """Blackbox differentiation: exact MAP forward, interpolation-gradient backward.

    Args:
        lambda_: the interpolation step λ > 0 (trades gradient informativeness for fidelity).
    """

    name = "blackbox"

    def __init__(self, lambda_: float = 10.0) -> None:
        super().__init__(samples=1)
        self.lambda_ = check_positive("Blackbox: lambda_", lambda_)

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        return _BlackboxFunction.apply(theta, self, solver, minimize)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lambda_": self.lambda_}
