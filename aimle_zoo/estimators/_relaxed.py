"""Continuous relaxations: the Gumbel-softmax family (Gumbel-softmax, SoftSub, SST).

Instead of estimating the gradient of a discrete solver, a relaxation replaces it in training
by a smooth surrogate ``relax(θ, τ)`` that tends to the solver's solution as τ → 0:

    z̃ = relax(θ + ε, τ)        ε ~ Gumbel (or any noise), N samples per instance, [B·N, *S]

and backpropagates through it exactly. With ``hard=True`` (straight-through) the forward value
is the discrete ``MAP(θ + ε)`` and only the gradient is the relaxation's:
``z = MAP(θ + ε) + z̃ − stop_gradient(z̃)``.

The surrogate comes from the solver: a solver that has one defines ``relax(theta,
temperature)`` (built-ins: top-k, Xie and Ermon's continuous subset; spanning trees, the
stochastic-softmax-trick edge marginals). A relaxation passed to the estimator overrides it.
For a minimising solver the noise is subtracted (``argmin(θ − ε) = argmax(−θ + ε)``) and the
solver's ``relax`` is expected to follow the solver's own sense.

References:
    Jang, Gu, Poole. Categorical Reparameterization with Gumbel-Softmax. ICLR 2017.
    Xie, Ermon. Reparameterizable Subset Sampling via Continuous Relaxations. IJCAI 2019.
    Paulus, Choi, Tarlow, Krause, Maddison. Gradient Estimation with Stochastic Softmax
    Tricks. NeurIPS 2020.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..solvers import solver_method
from ._base import (
    Estimator,
    SolverFunction,
    call_solver,
    check_flag,
    check_positive,
    expand_samples,
    solver_name,
)
from .noise import NoiseLike, make_noise

__all__ = ["Relaxation", "RelaxationError", "Relaxed"]

#: A smooth surrogate of a solver: ``relax(theta [B, *S], temperature) -> z̃ [B, *S]``.
Relaxation = Callable[[Tensor, float], Tensor]


class RelaxationError(TypeError):
    """The solver lacks what the estimator needs: a continuous relaxation (``relaxed``, none
    given) or an exact sampler and marginals (``simple``)."""


def _mean_over_samples(grad: Tensor, samples: int) -> Tensor:
    """∂L/∂z̃ divided by N, so that θ receives the mean over its N samples.

    The mean is a convention of the estimators, not the derivative of the forward (which sums
    the samples' contributions), so no scaling node gives correct higher derivatives: a graph
    built for one (``create_graph=True``) is refused rather than silently off by 1/N on some
    of its terms.
    """
    if torch.is_grad_enabled():  # a backward with create_graph=True
        raise RuntimeError(
            f"Relaxed(samples={samples}) averages its samples' gradients, a convention that has "
            "no exact higher derivatives; for second derivatives (create_graph=True) use "
            "samples=1, and average the loss over repeated calls if you need more samples"
        )
    return grad / samples


class Relaxed(Estimator):
    """Relaxation estimator: backpropagate through ``relax(θ + ε, τ)``.

    With N samples the gradient reaching θ is the mean over them, as for every estimator
    (autograd through the N copies of θ alone would sum them).

    Args:
        noise: perturbation noise (default ``"gumbel"``; ``None`` for a deterministic
            relaxation).
        temperature: τ > 0 of the relaxation (lower: closer to the discrete solution, higher
            variance gradients).
        samples: N, samples per instance.
        hard: straight-through: forward the discrete ``MAP(θ + ε)``, backward the relaxation.
        relaxation: ``relax(theta, temperature) -> z̃`` to use instead of the solver's own
            ``relax`` method (not part of :meth:`config`).
        generator: optional ``torch.Generator`` for the noise.
    """

    name = "relaxed"

    def __init__(
        self,
        noise: NoiseLike = "gumbel",
        temperature: float = 0.5,
        samples: int = 1,
        hard: bool = False,
        *,
        relaxation: Relaxation | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(samples=samples, generator=generator)
        if relaxation is not None and not callable(relaxation):
            raise TypeError(
                "relaxation must be a callable relax(theta, temperature) -> z, "
                f"got {type(relaxation).__name__}"
            )
        self.noise = make_noise(noise)
        self.temperature = check_positive("Relaxed: temperature", temperature)
        self.hard = check_flag("Relaxed: hard", hard)
        self.relaxation = relaxation

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        relax = self.relaxation_of(solver)
        theta_tiled = expand_samples(theta, self.samples)  # [B·N, *S]
        eps = self._sample_noise(self.noise, theta_tiled)
        perturbed = theta_tiled if eps is None else theta_tiled + (-eps if minimize else eps)
        relaxed = relax(perturbed, self.temperature)  # [B·N, *S]
        if not isinstance(relaxed, Tensor) or relaxed.shape != perturbed.shape:
            got = tuple(relaxed.shape) if isinstance(relaxed, Tensor) else type(relaxed).__name__
            raise RelaxationError(
                f"the relaxation of {solver_name(solver)} returned {got} for input shape "
                f"{tuple(perturbed.shape)}; relax(theta, temperature) must return a tensor of "
                "theta's shape"
            )
        if self.samples > 1 and relaxed.requires_grad:
            relaxed.register_hook(functools.partial(_mean_over_samples, samples=self.samples))
        if not self.hard:
            return relaxed
        discrete = call_solver(solver, perturbed.detach())
        return discrete + relaxed - relaxed.detach()

    def relaxation_of(self, solver: SolverFunction) -> Relaxation:
        """The relaxation used for ``solver``: the one given, else ``solver.relax``.

        Raises:
            RelaxationError: neither exists (the message names the ways out).
        """
        if self.relaxation is not None:
            return self.relaxation
        relax = solver_method(solver, "relax")
        if relax is not None:
            return relax
        raise RelaxationError(
            f"{solver_name(solver)} has no continuous relaxation, so the 'relaxed' estimator "
            "cannot use it. Give the solver a method relax(theta, temperature) -> z (smooth, "
            "tending to the solution as temperature -> 0), pass Relaxed(relaxation=...), or "
            "use an estimator that only calls the solver (aimle, imle, ste, perturbed, "
            "blackbox)."
        )

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "noise": None if self.noise is None else self.noise.config(),
            "temperature": self.temperature,
            "samples": self.samples,
            "hard": self.hard,
        }
