"""SIMPLE: exact samples forward, the gradient of the exact marginals backward.

For a solver whose exponential family p(z) ∝ exp(⟨θ, z⟩/τ) can be sampled exactly and has
exact marginals μ(θ) = E[z] (top-k: the elementary symmetric polynomials,
:mod:`aimle_zoo.solvers.subset_distribution`; spanning trees: the matrix-tree theorem,
:func:`~aimle_zoo.solvers.spanning_tree.sample_spanning_trees`):

    forward:   z_n ~ p(z; θ),  n = 1 … N              [B·N, *S], no perturb-and-MAP
    backward:  ∂L/∂θ ≈ J_μ(θ)ᵀ (1/N) Σ_n ∂L/∂z_n       [B, *S]

that is, a straight-through estimator whose backward goes through the marginals instead of the
identity. J_μ is the covariance of z over τ, so the gradient is dense and free of noise: the
only randomness is in the forward samples. Computed as ``z + m − stop_gradient(m)`` with
``m = μ/N`` tiled over the samples, so the forward value is z exactly and autograd gives the
backward (higher derivatives included).

It needs the solver's ``sample(theta, temperature, generator, samples)`` (N draws per
instance, ``[B·N, *S]`` sample-minor) and ``marginals(theta, temperature)`` (``[B, *S]``)
(built-in: ``topk`` and the spanning trees), which follow the solver's own sense.

Reference:
    Ahmed, Zeng, Niepert, Van den Broeck. SIMPLE: A Gradient Estimator for k-Subset Sampling.
    ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..solvers import EXACT_DISTRIBUTION_METHODS, solver_method, solver_sense
from ._base import Estimator, SolverFunction, check_positive, expand_samples, solver_name
from ._relaxed import RelaxationError

__all__ = ["SIMPLE"]


class SIMPLE(Estimator):
    """SIMPLE estimator: exact samples of p(z) ∝ exp(⟨θ, z⟩/τ), backward through E[z].

    With N samples the gradient reaching θ is J_μᵀ times the mean of their ∂L/∂z. In eval mode
    a :class:`~aimle_zoo.estimators.DifferentiableSolver` returns the solver's MAP solution.

    Args:
        temperature: τ > 0 of the distribution (lower: samples closer to the MAP solution,
            sharper marginals).
        samples: N, exact samples per instance.
        generator: optional ``torch.Generator`` for the samples (on θ's device).
    """

    name = "simple"

    def __init__(
        self,
        temperature: float = 1.0,
        samples: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(samples=samples, generator=generator)
        self.temperature = check_positive("SIMPLE: temperature", temperature)

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        sample, marginals = self.distribution_of(solver)
        if minimize != (solver_sense(solver) == "min"):
            raise ValueError(
                f"SIMPLE samples the distribution of {solver_name(solver)} in its own sense "
                f"({solver_sense(solver)}); it cannot be overridden with minimize={minimize}"
            )
        expected = (theta.shape[0] * self.samples, *theta.shape[1:])
        with torch.no_grad():
            z = sample(theta.detach(), self.temperature, self.generator, self.samples)
        if not isinstance(z, Tensor) or z.shape != expected:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise RelaxationError(
                f"the sampler of {solver_name(solver)} returned {got} for input shape "
                f"{tuple(theta.shape)} and samples={self.samples}; sample(theta, temperature, "
                f"generator, samples) must return {expected}, the draws of instance b in rows "
                "b·samples … b·samples + samples − 1"
            )
        z = z.to(device=theta.device, dtype=theta.dtype)
        if not theta.requires_grad or not torch.is_grad_enabled():
            return z
        mu = marginals(theta, self.temperature)  # [B, *S]
        share = expand_samples(mu, self.samples) / self.samples  # [B·N, *S]
        return z + (share - share.detach())

    def distribution_of(
        self, solver: SolverFunction
    ) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
        """The solver's exact ``sample`` and ``marginals`` methods.

        Raises:
            RelaxationError: the solver lacks one of them (the message names the ways out).
        """
        methods = {name: solver_method(solver, name) for name in EXACT_DISTRIBUTION_METHODS}
        missing = [name for name, method in methods.items() if method is None]
        if missing:
            raise RelaxationError(
                f"{solver_name(solver)} has no exact {' and '.join(missing)}, so the 'simple' "
                "estimator cannot use it. SIMPLE needs sample(theta, temperature, generator, "
                "samples) -> z and marginals(theta, temperature) -> E[z] of p(z) ∝ "
                "exp(<theta, z>/temperature) (the built-in topk and spanning trees have both); "
                "for other solvers use aimle, imle, ste, perturbed, blackbox or relaxed."
            )
        sample, marginals = methods["sample"], methods["marginals"]
        assert sample is not None and marginals is not None  # none missing
        return sample, marginals

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "temperature": self.temperature, "samples": self.samples}
