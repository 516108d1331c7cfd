"""Implicit MLE (I-MLE; Niepert, Minervini and Franceschi, NeurIPS 2021).

Forward (perturb-and-MAP), N = S·M samples per instance, noise ε kept for the backward pass:

    z = MAP(θ + τ_in·ε)                                          # [B·N, *S]

Backward, with a fixed λ and dy = ∂L/∂z:

    z' = MAP(θ − λ·dy + τ_t·ε)
    ∂L/∂θ ≈ (1/S) Σ_s (z_s − z'_s) / λ                           # [B, *S]

(z and z' averaged over the M marginal samples of each group first). For a minimising solver
the target is θ + λ·dy and the result is negated.

Unlike AIMLE's forward difference, the first term is always the forward sample, drawn with
τ_in; with τ_in = τ_t the two estimators agree exactly.

Differences from the reference implementations: the gradient is divided by λ by default
(``scale_gradient=True``); torch-adaptive-imle's ``TargetDistribution`` and torch-imle do not
scale by default, so their gradients grow with λ (torch-imle issue #3). λ must be > 0, so the
reference's division by 1e-7 at λ = 0 cannot happen. The autograd Function is defined once.
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
    check_count,
    check_incoming_gradient,
    check_positive,
    check_temperature,
    combine_differences,
    expand_samples,
    perturb,
    skipped_gradient,
)
from .noise import NoiseLike, make_noise
from .targets import FixedTarget, times_step

__all__ = ["IMLE"]


class _IMLEFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, theta: Tensor, estimator: IMLE, solver: SolverFunction, minimize: bool
    ) -> Tensor:
        _, eps, z = estimator._perturb_and_map(
            solver, theta, estimator.noise, estimator.input_temperature, minimize
        )  # [B·N, *S] each
        ctx.estimator, ctx.solver, ctx.minimize = estimator, solver, minimize
        ctx.save_for_backward(theta, eps, z)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None, None, None]:
        estimator: IMLE = ctx.estimator
        theta, eps, z = ctx.saved_tensors
        if not check_incoming_gradient(dy, "imle"):
            return skipped_gradient(theta, tuple(theta.shape)), None, None, None
        theta_tiled = expand_samples(theta, estimator.samples)  # [B·N, *S]
        step = estimator.target.step_size(theta_tiled, dy)  # λ
        move = times_step(step if ctx.minimize else -step, dy)  # ∓λ·dy
        z_target = call_solver(
            ctx.solver, perturb(theta_tiled + move, eps, estimator.target_temperature)
        )
        gradient = combine_differences(
            z - z_target,
            batch=theta.shape[0],
            samples=estimator.samples // estimator.marginal_samples,
            marginal_samples=estimator.marginal_samples,
            process=lambda g: estimator.target.process(g, step),
            minimize=ctx.minimize,
        )
        estimator._record(gradient, step)
        return gradient.to(theta.dtype), None, None, None


class IMLE(Estimator):
    """Implicit MLE with a fixed target step λ.

    Args:
        lambda_: the target step λ > 0.
        scale_gradient: divide the gradient by λ. The reference implementations default to no
            scaling; it is on here so that the gradient's scale does not depend on λ.
        noise: perturbation noise (``"gumbel"``, ``"sog"`` with k, ``"gaussian"``, ``None``, a
            :class:`~aimle_zoo.estimators.noise.Noise` or a config dict). The I-MLE paper uses
            Sum-of-Gamma noise with k the number of ones per solution:
            ``noise={"name": "sog", "k": k}``.
        samples: S, perturbation samples per instance.
        marginal_samples: M, samples averaged inside each group (N = S·M outputs per instance).
        input_temperature: τ_in, noise scale of the forward sample.
        target_temperature: τ_t, noise scale of the target solution.
        minimizer_noise: for a minimising solver, ``"negate"`` (perturb θ − τε: the
            maximiser's distribution on −θ; default) or ``"add"`` (θ + τε, the reference code's
            convention, which the grid recipe keeps: it trains better there).
        generator: optional ``torch.Generator`` for the noise.

    References:
        Niepert, Minervini, Franceschi. Implicit MLE: Backpropagating Through Discrete
        Exponential Family Distributions. NeurIPS 2021, arXiv:2106.01798.
    """

    name = "imle"

    def __init__(
        self,
        lambda_: float = 10.0,
        scale_gradient: bool = True,
        noise: NoiseLike = "gumbel",
        samples: int = 1,
        marginal_samples: int = 1,
        input_temperature: float = 1.0,
        target_temperature: float = 1.0,
        minimizer_noise: str = "negate",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        groups = check_count("samples", samples)
        self.marginal_samples = check_count("marginal_samples", marginal_samples)
        super().__init__(
            samples=groups * self.marginal_samples,
            generator=generator,
            minimizer_noise=minimizer_noise,
        )
        self.target = FixedTarget(check_positive("IMLE: lambda_", lambda_), scale_gradient)
        self.noise = make_noise(noise)
        self.input_temperature = check_temperature("input_temperature", input_temperature)
        self.target_temperature = check_temperature("target_temperature", target_temperature)

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        return _IMLEFunction.apply(theta, self, solver, minimize)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lambda_": self.target.lambda_,
            "scale_gradient": self.target.scale_gradient,
            "noise": None if self.noise is None else self.noise.config(),
            "samples": self.samples // self.marginal_samples,
            "marginal_samples": self.marginal_samples,
            "input_temperature": self.input_temperature,
            "target_temperature": self.target_temperature,
            "minimizer_noise": self.minimizer_noise,
        }
