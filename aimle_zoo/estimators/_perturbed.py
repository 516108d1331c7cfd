"""Perturbed optimizers (Berthet et al., 2020).

The perturbed optimizer smooths a MAP oracle by averaging it under noise Z with density
μ(Z) ∝ exp(−ν(Z)):

    y_σ(θ) = E_Z[ MAP(θ + σ·Z) ]

Forward returns the N hard samples z_n = MAP(θ + σ·Z_n), ``[B·N, *S]``. Integration by parts
gives the Jacobian ∂y_σ/∂θ = E[ MAP(θ + σZ) ∇ν(Z)ᵀ ] / σ, so with dy = ∂L/∂z the backward
pass returns the Monte-Carlo estimate

    ∂L/∂θ_b ≈ (1/N) Σ_n (⟨z_bn, dy_bn⟩ − c_bn) · ∇ν(Z_bn) / σ         # [B, *S]

with ∇ν(Z) = Z for Gaussian and 1 − e^{−Z} for Gumbel noise.

**Baseline.** Since E[∇ν(Z)] = 0, any c_bn independent of Z_bn keeps the estimate unbiased and
a good one lowers its variance. With ``baseline=True``, c_bn is the mean of ⟨z, dy⟩ over the
*other* N − 1 samples of instance b (leave-one-out). This equals subtracting the plain mean
over all N samples and rescaling by N/(N − 1); the plain mean alone would shrink the estimate
by (N − 1)/N.

**Minimisation.** The identity holds for any function of θ + σZ, argmin included, so a
minimising solver uses the same formula with no sign change (z already moves the "right" way).
The noise is added as θ + σZ for either sense (Berthet et al.'s definition); with Gumbel noise a
minimiser's samples therefore do not follow p(z) ∝ exp(−⟨θ, z⟩/σ), as the other estimators'
negated noise makes them do. Solve the maximiser on −θ to get that distribution.

References:
    Berthet, Blondel, Teboul, Cuturi, Vert, Bach. Learning with Differentiable Perturbed
    Optimizers. NeurIPS 2020, arXiv:2002.08676.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import (
    Estimator,
    SolverFunction,
    check_flag,
    check_positive,
)
from .noise import Noise, NoiseLike, make_noise

__all__ = ["PerturbedOptimizer"]


class _PerturbedFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        theta: Tensor,
        estimator: PerturbedOptimizer,
        solver: SolverFunction,
        minimize: bool,
    ) -> Tensor:
        _, eps, z = estimator._perturb_and_map(solver, theta, estimator.noise, estimator.sigma)
        ctx.estimator = estimator  # eps: Z [B·N, *S]; z = MAP(θ + σZ)
        ctx.save_for_backward(eps, z)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None, None, None]:
        estimator: PerturbedOptimizer = ctx.estimator
        eps, z = ctx.saved_tensors
        samples = estimator.samples
        shape = z.shape[1:]
        batch = z.shape[0] // samples
        entries = math.prod(shape)  # not -1: a batch of 0 has no size to infer it from
        weights = (z * dy).reshape(batch, samples, entries).sum(dim=2)  # [B, N], ⟨z_bn, dy_bn⟩
        if estimator.baseline:
            others = (weights.sum(dim=1, keepdim=True) - weights) / (samples - 1)
            weights = weights - others  # leave-one-out baseline
        score = estimator.noise.density_gradient(eps).reshape(batch, samples, *shape)  # ∇ν(Z)
        weights = weights.reshape(batch, samples, *([1] * len(shape)))
        gradient = (weights * score).mean(dim=1) / estimator.sigma  # [B, *S]
        estimator._record(gradient, None)
        return gradient, None, None, None


class PerturbedOptimizer(Estimator):
    """Perturbed optimizer: N noisy MAP samples forward, noise-integration backward.

    Args:
        noise: ``"gaussian"`` (default) or ``"gumbel"`` (any noise with a closed-form density
            gradient).
        sigma: σ > 0, the noise scale.
        samples: N, samples per instance.
        baseline: subtract a leave-one-out baseline (needs N ≥ 2).
        generator: optional ``torch.Generator`` for the noise.
    """

    name = "perturbed"
    noise: Noise

    def __init__(
        self,
        noise: NoiseLike = "gaussian",
        sigma: float = 1.0,
        samples: int = 10,
        baseline: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(samples=samples, generator=generator)
        built = make_noise(noise)
        if built is None or not built.has_density_gradient:
            raise ValueError(
                f"PerturbedOptimizer needs noise with a known density gradient, got {noise!r}; "
                "use noise='gaussian' or noise='gumbel'"
            )
        self.noise = built
        self.sigma = check_positive("PerturbedOptimizer: sigma", sigma)
        self.baseline = check_flag("PerturbedOptimizer: baseline", baseline)
        if self.baseline and self.samples < 2:
            raise ValueError(
                "PerturbedOptimizer: baseline=True needs samples >= 2 (the baseline is the "
                f"mean over the other samples), got samples={self.samples}; "
                "raise samples or pass baseline=False"
            )

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        return _PerturbedFunction.apply(theta, self, solver, minimize)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "noise": self.noise.config(),
            "sigma": self.sigma,
            "samples": self.samples,
            "baseline": self.baseline,
        }
