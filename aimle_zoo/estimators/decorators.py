"""Decorators turning any batched MAP function ``theta -> z`` into a differentiable one.

Both forms work::

    @aimle(samples=10)
    def topk(theta):                 # [B, n] -> [B, n]
        ...

    differentiable_topk = aimle(topk, samples=10)

``relaxed`` also needs the function's continuous relaxation (``relaxation=`` or a ``relax``
method on the function), and ``simple`` its exact ``sample`` and ``marginals`` methods (a
registered solver such as ``get_solver("topk", k=3)`` has them).

The result is a :class:`DifferentiableFunction`: calling it returns ``[B·N, *S]`` solutions
and its ``.estimator`` holds the estimator (diagnostics, adaptive state, ``state_dict``).
``minimize`` overrides the solver's declared sense (``"max"`` for an undeclared function);
``minimizer_noise`` and ``generator`` are the estimators' own (see their classes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import overload

import torch
from torch import Tensor

from ._aimle import AIMLE
from ._base import Estimator, SolverFunction
from ._blackbox import Blackbox
from ._imle import IMLE
from ._perturbed import PerturbedOptimizer
from ._relaxed import Relaxation, Relaxed
from ._simple import SIMPLE
from ._ste import STE
from .noise import NoiseLike
from .targets import TargetLike

__all__ = [
    "DifferentiableFunction",
    "aimle",
    "blackbox",
    "imle",
    "perturbed",
    "relaxed",
    "simple",
    "ste",
]

Decorator = Callable[[SolverFunction], "DifferentiableFunction"]


class DifferentiableFunction:
    """``function`` made differentiable by ``estimator``; call it like the function.

    Attributes:
        function: the wrapped batched MAP function.
        estimator: the :class:`~aimle_zoo.estimators.Estimator` used on every call.
        minimize: the sense override (``None``: the function's declared sense).
    """

    def __init__(
        self, function: SolverFunction, estimator: Estimator, minimize: bool | None = None
    ) -> None:
        if not callable(function):
            raise TypeError(f"expected a callable theta -> z, got {type(function).__name__}")
        self.function = function
        self.estimator = estimator
        self.minimize = minimize
        functools.update_wrapper(self, function, updated=())

    def __call__(self, theta: Tensor) -> Tensor:
        """``theta [B, *S]`` -> ``z [B·N, *S]``, differentiable through the estimator."""
        return self.estimator(self.function, theta, minimize=self.minimize)

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", type(self.function).__name__)
        return f"DifferentiableFunction({name}, estimator={self.estimator!r})"


def _wrap(
    function: SolverFunction | None, estimator: Estimator, minimize: bool | None
) -> DifferentiableFunction | Decorator:
    if function is None:
        return lambda fn: DifferentiableFunction(fn, estimator, minimize)
    return DifferentiableFunction(function, estimator, minimize)


@overload
def aimle(
    function: SolverFunction,
    *,
    target: TargetLike = ...,
    noise: NoiseLike = ...,
    samples: int = ...,
    marginal_samples: int = ...,
    input_temperature: float = ...,
    target_temperature: float = ...,
    symmetric: bool = ...,
    minimizer_noise: str = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def aimle(
    function: None = None,
    *,
    target: TargetLike = ...,
    noise: NoiseLike = ...,
    samples: int = ...,
    marginal_samples: int = ...,
    input_temperature: float = ...,
    target_temperature: float = ...,
    symmetric: bool = ...,
    minimizer_noise: str = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def aimle(
    function: SolverFunction | None = None,
    *,
    target: TargetLike = None,
    noise: NoiseLike = "gumbel",
    samples: int = 1,
    marginal_samples: int = 1,
    input_temperature: float = 1.0,
    target_temperature: float = 1.0,
    symmetric: bool = False,
    minimizer_noise: str = "negate",
    generator: torch.Generator | None = None,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` with :class:`~aimle_zoo.estimators.AIMLE` (same arguments)."""
    estimator = AIMLE(
        target=target,
        noise=noise,
        samples=samples,
        marginal_samples=marginal_samples,
        input_temperature=input_temperature,
        target_temperature=target_temperature,
        symmetric=symmetric,
        minimizer_noise=minimizer_noise,
        generator=generator,
    )
    return _wrap(function, estimator, minimize)


@overload
def imle(
    function: SolverFunction,
    *,
    lambda_: float = ...,
    scale_gradient: bool = ...,
    noise: NoiseLike = ...,
    samples: int = ...,
    marginal_samples: int = ...,
    input_temperature: float = ...,
    target_temperature: float = ...,
    minimizer_noise: str = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def imle(
    function: None = None,
    *,
    lambda_: float = ...,
    scale_gradient: bool = ...,
    noise: NoiseLike = ...,
    samples: int = ...,
    marginal_samples: int = ...,
    input_temperature: float = ...,
    target_temperature: float = ...,
    minimizer_noise: str = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def imle(
    function: SolverFunction | None = None,
    *,
    lambda_: float = 10.0,
    scale_gradient: bool = True,
    noise: NoiseLike = "gumbel",
    samples: int = 1,
    marginal_samples: int = 1,
    input_temperature: float = 1.0,
    target_temperature: float = 1.0,
    minimizer_noise: str = "negate",
    generator: torch.Generator | None = None,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` with :class:`~aimle_zoo.estimators.IMLE` (same arguments)."""
    estimator = IMLE(
        lambda_=lambda_,
        scale_gradient=scale_gradient,
        noise=noise,
        samples=samples,
        marginal_samples=marginal_samples,
        input_temperature=input_temperature,
        target_temperature=target_temperature,
        minimizer_noise=minimizer_noise,
        generator=generator,
    )
    return _wrap(function, estimator, minimize)


@overload
def ste(
    function: SolverFunction,
    *,
    noise: NoiseLike = ...,
    temperature: float = ...,
    samples: int = ...,
    minimizer_noise: str = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def ste(
    function: None = None,
    *,
    noise: NoiseLike = ...,
    temperature: float = ...,
    samples: int = ...,
    minimizer_noise: str = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def ste(
    function: SolverFunction | None = None,
    *,
    noise: NoiseLike = None,
    temperature: float = 1.0,
    samples: int = 1,
    minimizer_noise: str = "negate",
    generator: torch.Generator | None = None,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` with the straight-through :class:`~aimle_zoo.estimators.STE`."""
    estimator = STE(
        noise=noise,
        temperature=temperature,
        samples=samples,
        minimizer_noise=minimizer_noise,
        generator=generator,
    )
    return _wrap(function, estimator, minimize)


@overload
def perturbed(
    function: SolverFunction,
    *,
    noise: NoiseLike = ...,
    sigma: float = ...,
    samples: int = ...,
    baseline: bool = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def perturbed(
    function: None = None,
    *,
    noise: NoiseLike = ...,
    sigma: float = ...,
    samples: int = ...,
    baseline: bool = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def perturbed(
    function: SolverFunction | None = None,
    *,
    noise: NoiseLike = "gaussian",
    sigma: float = 1.0,
    samples: int = 10,
    baseline: bool = True,
    generator: torch.Generator | None = None,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` with :class:`~aimle_zoo.estimators.PerturbedOptimizer`."""
    estimator = PerturbedOptimizer(
        noise=noise, sigma=sigma, samples=samples, baseline=baseline, generator=generator
    )
    return _wrap(function, estimator, minimize)


@overload
def blackbox(
    function: SolverFunction,
    *,
    lambda_: float = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def blackbox(
    function: None = None,
    *,
    lambda_: float = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def blackbox(
    function: SolverFunction | None = None,
    *,
    lambda_: float = 10.0,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` with blackbox differentiation (:class:`Blackbox`)."""
    return _wrap(function, Blackbox(lambda_=lambda_), minimize)


@overload
def relaxed(
    function: SolverFunction,
    *,
    relaxation: Relaxation | None = ...,
    noise: NoiseLike = ...,
    temperature: float = ...,
    samples: int = ...,
    hard: bool = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def relaxed(
    function: None = None,
    *,
    relaxation: Relaxation | None = ...,
    noise: NoiseLike = ...,
    temperature: float = ...,
    samples: int = ...,
    hard: bool = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def relaxed(
    function: SolverFunction | None = None,
    *,
    relaxation: Relaxation | None = None,
    noise: NoiseLike = "gumbel",
    temperature: float = 0.5,
    samples: int = 1,
    hard: bool = False,
    generator: torch.Generator | None = None,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` through ``relaxation(theta, temperature)`` (:class:`Relaxed`);
    without one, ``function.relax`` is used."""
    estimator = Relaxed(
        noise=noise,
        temperature=temperature,
        samples=samples,
        hard=hard,
        relaxation=relaxation,
        generator=generator,
    )
    return _wrap(function, estimator, minimize)


@overload
def simple(
    function: SolverFunction,
    *,
    temperature: float = ...,
    samples: int = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> DifferentiableFunction: ...
@overload
def simple(
    function: None = None,
    *,
    temperature: float = ...,
    samples: int = ...,
    generator: torch.Generator | None = ...,
    minimize: bool | None = ...,
) -> Decorator: ...
def simple(
    function: SolverFunction | None = None,
    *,
    temperature: float = 1.0,
    samples: int = 1,
    generator: torch.Generator | None = None,
    minimize: bool | None = None,
) -> DifferentiableFunction | Decorator:
    """Differentiate ``function`` with SIMPLE (:class:`SIMPLE`): its exact ``sample`` forward,
    the Jacobian of its exact ``marginals`` backward."""
    estimator = SIMPLE(temperature=temperature, samples=samples, generator=generator)
    return _wrap(function, estimator, minimize)
