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

**Multiplicative perturbation.** With ``perturbation="multiplicative"`` (Dalle et al., 2022)
the samples are z_n = MAP(θ ⊙ exp(σZ_n − σ²s²/2)) for Gaussian Z of scale s: every entry keeps
its sign and, on average, its size (the factor has mean one), so positive costs stay positive
for a solver that needs them (a shortest path). The same integration by parts, in log |θ|,
gives

    ∂L/∂θ_b ≈ (1/N) Σ_n (⟨z_bn, dy_bn⟩ − c_bn) · ∇ν(Z_bn) / (σ·θ_b),

so every entry of θ must be non-zero (a zero never moves, and the gradient divides by it).

**Minimisation.** The identity holds for any function of θ + σZ, argmin included, so a
minimising solver uses the same formula with no sign change (z already moves the "right" way).
The noise is added as θ + σZ for either sense (Berthet et al.'s definition); with Gumbel noise a
minimiser's samples therefore do not follow p(z) ∝ exp(−⟨θ, z⟩/σ), as the other estimators'
negated noise makes them do. Solve the maximiser on −θ to get that distribution.

References:
    Berthet, Blondel, Teboul, Cuturi, Vert, Bach. Learning with Differentiable Perturbed
    Optimizers. NeurIPS 2020, arXiv:2002.08676.
    Dalle, Baty, Bouvier, Parmentier. Learning with Combinatorial Optimization Layers: a
    Probabilistic Approach. arXiv:2207.13513, 2022.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..solvers import SolverInputError, format_instances
from ._base import (
    Estimator,
    SolverFunction,
    call_solver,
    check_flag,
    check_positive,
    expand_samples,
)
from .noise import Gaussian, Noise, NoiseLike, make_noise

__all__ = ["PERTURBATIONS", "PerturbedOptimizer"]

#: How the noise enters: θ + σZ, or θ ⊙ exp(σZ − σ²s²/2).
PERTURBATIONS = ("additive", "multiplicative")


class _PerturbedFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        theta: Tensor,
        estimator: PerturbedOptimizer,
        solver: SolverFunction,
        minimize: bool,
    ) -> Tensor:
        if estimator.perturbation == "additive":
            _, eps, z = estimator._perturb_and_map(solver, theta, estimator.noise, estimator.sigma)
        else:
            eps, z = estimator._scale_and_map(solver, theta)
        ctx.estimator = estimator  # eps: Z [B·N, *S]; z = MAP(θ + σZ) or MAP(θ ⊙ e^(σZ − c))
        ctx.save_for_backward(eps, z, theta)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None, None, None]:
        estimator: PerturbedOptimizer = ctx.estimator
        eps, z, theta = ctx.saved_tensors
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
        if estimator.perturbation == "multiplicative":
            gradient = gradient / theta  # the chain rule through log |θ|
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
        perturbation: ``"additive"`` (θ + σZ, Berthet et al.) or ``"multiplicative"``
            (θ ⊙ exp(σZ − σ²s²/2), Gaussian noise only; signs are kept, θ must have no zeros).
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
        perturbation: str = "additive",
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
        if perturbation not in PERTURBATIONS:
            raise ValueError(
                f"PerturbedOptimizer: perturbation must be one of {list(PERTURBATIONS)}, got "
                f"{perturbation!r}"
            )
        if perturbation == "multiplicative" and not isinstance(built, Gaussian):
            raise ValueError(
                "PerturbedOptimizer: the multiplicative perturbation θ ⊙ exp(σZ − σ²s²/2) is "
                f"defined for Gaussian noise (its mean-one factor), got {built.name!r}; use "
                "noise='gaussian'"
            )
        self.noise = built
        self.perturbation = perturbation
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

    def _scale_and_map(self, solver: SolverFunction, theta: Tensor) -> tuple[Tensor, Tensor]:
        """The multiplicative sample: Z ``[B·N, *S]`` and z = MAP(θ ⊙ exp(σZ − σ²s²/2)).

        Raises:
            SolverInputError: θ has zero entries (the perturbation cannot move them and the
                gradient divides by them).
        """
        zeros = (theta == 0).reshape(theta.shape[0], -1).any(dim=1)  # [B]
        if bool(zeros.any()):
            raise SolverInputError(
                "PerturbedOptimizer: the multiplicative perturbation needs every entry of θ "
                f"non-zero, but instance(s) {format_instances(zeros)} have zeros (θ ⊙ e^(σZ) "
                "cannot move them, and the gradient divides by θ); keep the costs away from 0 "
                "(e.g. softplus(x) + 1e-3) or use perturbation='additive'"
            )
        theta_tiled = expand_samples(theta, self.samples)  # [B·N, *S]
        eps = self.noise.sample(
            theta_tiled.shape,
            device=theta_tiled.device,
            dtype=theta_tiled.dtype,
            generator=self.generator,
        )
        scale = cast(Gaussian, self.noise).scale  # Gaussian: checked at construction
        shift = (self.sigma * scale) ** 2 / 2  # E[exp(σZ)] = exp(σ²s²/2)
        return eps, call_solver(solver, theta_tiled * torch.exp(self.sigma * eps - shift))

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "noise": self.noise.config(),
            "sigma": self.sigma,
            "samples": self.samples,
            "baseline": self.baseline,
            "perturbation": self.perturbation,
        }
