"""Straight-through estimator (STE) over perturb-and-MAP.

Forward: z = MAP(θ + τ·ε), N samples per instance (``[B·N, *S]``). Backward: the solver is
treated as the identity, so ∂L/∂θ = (1/N) Σ_n dy_n ``[B, *S]``. For a minimising solver the
identity is taken on −θ (the solution of min⟨θ, z⟩ is the solution of max⟨−θ, z⟩), so the
gradient is −(1/N) Σ_n dy_n; the reference STE has no minimisation mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import (
    Estimator,
    SolverFunction,
    check_temperature,
    mean_over_samples,
)
from .noise import NoiseLike, make_noise

__all__ = ["STE"]


class _STEFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, theta: Tensor, estimator: STE, solver: SolverFunction, minimize: bool
    ) -> Tensor:
        ctx.estimator, ctx.minimize = estimator, minimize
        _, _, z = estimator._perturb_and_map(
            solver, theta, estimator.noise, estimator.temperature, minimize
        )
        return z  # [B·N, *S]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None, None, None]:
        estimator: STE = ctx.estimator
        gradient = mean_over_samples(dy, estimator.samples)  # [B, *S]
        if ctx.minimize:
            gradient = -gradient
        estimator._record(gradient, None)
        return gradient, None, None, None


class STE(Estimator):
    """Straight-through estimator: perturb-and-MAP forward, identity backward.

    Args:
        noise: perturbation noise (default none: plain MAP).
        temperature: τ, the noise scale.
        samples: N, samples per instance.
        minimizer_noise: for a minimising solver, ``"negate"`` (perturb θ − τε: the
            maximiser's distribution on −θ; default) or ``"add"`` (θ + τε, the reference code's
            convention, which the grid recipe keeps: it trains better there).
        generator: optional ``torch.Generator`` for the noise.
    """

    name = "ste"

    def __init__(
        self,
        noise: NoiseLike = None,
        temperature: float = 1.0,
        samples: int = 1,
        minimizer_noise: str = "negate",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(samples=samples, generator=generator, minimizer_noise=minimizer_noise)
        self.noise = make_noise(noise)
        self.temperature = check_temperature("temperature", temperature)

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        return _STEFunction.apply(theta, self, solver, minimize)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "noise": None if self.noise is None else self.noise.config(),
            "temperature": self.temperature,
            "samples": self.samples,
            "minimizer_noise": self.minimizer_noise,
        }
