"""Gradient fidelity: how close an estimator's gradient is to the exact one, on a tiny instance.

Perturb-and-MAP estimators approximate the gradient of the expected loss under the
exponential-family distribution over the feasible solutions Z,

    p(z; θ) ∝ exp(s·⟨θ, z⟩ / τ),   s = +1 for a maximising solver, −1 for a minimising one,

whose gradient is exact by enumeration of Z:

    ∇_θ E_p[L(z)] = (s / τ) · Cov_p(z, L(z)) = (s / τ) · (E_p[L(z)·z] − E_p[L(z)]·E_p[z]).

:func:`gradient_fidelity` runs an estimator on many copies of one θ (the batch is the seeds) and
reports the cosine between each estimated gradient and the exact one, the check of the AIMLE
paper's gradient-analysis experiment, for any solver whose solutions can be listed:
:func:`topk_states` lists k-subsets, :func:`solution_states` collects what a solver returns on
random costs (every reachable solution of a tiny problem, with high probability).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..solvers import TopK, get_solver, get_solver_spec, solver_sense
from ._base import Estimator, SolverFunction
from ._simple import SIMPLE
from ._ste import STE
from .registry import build_estimator

#: ``z [R, *S] -> [R]``: the loss of each solution.
LossFunction = Callable[[Tensor], Tensor]


def topk_states(n: int, k: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Every k-subset of n items as a 0/1 row: ``[C(n, k), n]``, lexicographic order."""
    if not 0 <= k <= n:
        raise ValueError(f"topk_states: k must be in [0, n={n}], got {k}")
    states = torch.zeros(math.comb(n, k), n, dtype=dtype)
    for row, subset in enumerate(itertools.combinations(range(n), k)):
        states[row, list(subset)] = 1.0
    return states


def solution_states(
    solver: SolverFunction,
    shape: tuple[int, ...],
    *,
    draws: int = 4096,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The distinct solutions ``solver`` returns for ``draws`` standard-normal θ of ``shape``.

    Every vertex of the solution polytope is the unique optimum of an open cone of costs, so for
    a tiny problem (tens of solutions) a few thousand draws find all of them with high
    probability; compare the count with the known one where there is one. ``[M, *shape]``,
    sorted (deterministic for a given generator).
    """
    theta = torch.randn((draws, *shape), dtype=dtype, generator=generator)  # [draws, *shape]
    if device is not None:
        theta = theta.to(device)  # drawn on the CPU: the same solutions on every device
    with torch.no_grad():
        found = solver(theta).to(dtype).flatten(1)
    unique = torch.unique(found, dim=0)  # sorted rows
    return unique.view(-1, *shape)


def exact_expected_gradient(
    theta: Tensor,
    states: Tensor,
    loss: LossFunction,
    *,
    sense: str = "max",
    temperature: float = 1.0,
) -> Tensor:
    """∇_θ E_{p(z; θ)}[L(z)] by enumeration of ``states`` (see the module docstring).

    Args:
        theta: one instance ``[*S]``.
        states: every feasible solution ``[M, *S]``.
        loss: ``z [M, *S] -> [M]``.
        sense: ``"max"`` or ``"min"``, the solver's.
        temperature: τ of p (the estimator's noise temperature).

    Returns:
        ``[*S]`` in float64.
    """
    if tuple(states.shape[1:]) != tuple(theta.shape):
        raise ValueError(
            f"states must be [M, {', '.join(map(str, theta.shape))}] (solutions of theta's "
            f"shape), got {tuple(states.shape)}"
        )
    sign = 1.0 if sense == "max" else -1.0
    flat = states.to(device=theta.device, dtype=torch.float64).flatten(1)  # [M, D]
    values = theta.to(torch.float64).flatten()  # [D]
    # ⟨z, θ⟩ counting only used entries: a ±inf entry (a mask) left out is 0, not 0·inf = NaN
    scores = torch.where(flat != 0, flat * values, 0.0).sum(dim=1)  # [M]
    probabilities = torch.softmax(sign * scores / temperature, 0)
    losses = loss(flat.view(states.shape)).to(torch.float64).reshape(-1)  # [M]
    covariance = (probabilities * losses) @ flat - (probabilities @ losses) * (probabilities @ flat)
    return (sign / temperature * covariance).view(theta.shape)


@dataclass(frozen=True)
class FidelityReport:
    """Cosines between estimated and exact gradients, one per seed, and their norms' ratio."""

    cosines: Tensor  # [seeds]
    norm_ratio: float  # mean over seeds of ‖ĝ‖ / ‖g‖
    states: int

    @property
    def cosine_mean(self) -> float:
        return float(self.cosines.mean())

    @property
    def cosine_sd(self) -> float:
        return float(self.cosines.std()) if self.cosines.numel() > 1 else 0.0

    def __str__(self) -> str:
        if self.norm_ratio == 0:
            return (
                f"every estimated gradient is zero over {self.cosines.numel()} seeds "
                f"({self.states} solutions): the estimator passes nothing back (λ = 0, a "
                "solver that ignores θ, or the wrong sense)"
            )
        return (
            f"cosine to the exact gradient {self.cosine_mean:.3f} ± {self.cosine_sd:.3f} over "
            f"{self.cosines.numel()} seeds ({self.states} solutions); gradient norm "
            f"×{self.norm_ratio:.3g} the exact one"
        )


def gradient_fidelity(
    estimator: Estimator,
    solver: SolverFunction,
    theta: Tensor,
    loss: LossFunction,
    *,
    states: Tensor | None = None,
    seeds: int = 64,
    warmup: int = 0,
    temperature: float | None = None,
    sample_reduction: Literal["mean", "sum"] = "mean",
) -> FidelityReport:
    """Compare ``estimator``'s gradient of the mean loss over its samples with the exact one.

    ``seeds`` copies of ``theta`` form one batch, so every copy draws its own noise; ``warmup``
    backward passes run first at the same θ (an adaptive target settles its β, as in the AIMLE
    paper's experiment). The exact gradient uses ``states`` (default: :func:`topk_states` for
    :class:`~aimle_zoo.solvers.TopK`, else :func:`solution_states`), the solver's sense and
    ``temperature``, by default the scale of the estimator's forward noise (AIMLE's and
    I-MLE's ``input_temperature``, STE's and SIMPLE's ``temperature``, the perturbed
    optimizer's ``sigma``, else 1). The perturbed optimizer adds its noise to a minimiser's
    costs unnegated, so with Gumbel noise on a minimiser its samples follow another
    distribution than the exact gradient's p(z) ∝ exp(−⟨θ, z⟩/τ) (its Gaussian noise is
    symmetric: either sense is fine).

    Args:
        estimator: any estimator; its state (β) moves during the call.
        solver: ``θ [B, *S] -> z [B, *S]``.
        theta: one instance ``[*S]``.
        loss: ``z [R, *S] -> [R]``, e.g. ``lambda z: ((z - b) ** 2).flatten(1).sum(1)``.
        sample_reduction: how the losses of a seed's N samples combine, ``"mean"`` (the
            estimate of E_p[L]) or ``"sum"``. The cosine does not depend on it for AIMLE, whose
            λ scales with ‖dy‖, but it does for a fixed λ (I-MLE, blackbox): the sum makes dy,
            and so λ·dy, N times larger.
    """
    if sample_reduction not in ("mean", "sum"):
        raise ValueError(f"sample_reduction must be 'mean' or 'sum', got {sample_reduction!r}")
    if states is None:
        if isinstance(solver, TopK) and theta.dim() == 1:
            states = topk_states(theta.numel(), solver.k).to(theta.device)
        else:
            states = solution_states(
                solver, tuple(theta.shape), dtype=theta.dtype, device=theta.device
            )
    if temperature is None:
        temperature = noise_temperature(estimator)
    exact = exact_expected_gradient(
        theta.detach(), states, loss, sense=solver_sense(solver), temperature=temperature
    ).flatten()
    batch = theta.detach().expand(seeds, *theta.shape).clone()
    for _ in range(warmup + 1):
        batch.grad = None
        batch.requires_grad_(True)
        solutions = estimator(solver, batch)  # [seeds·N, *S], sample-minor
        samples = solutions.shape[0] // seeds
        per_seed = loss(solutions).reshape(seeds, samples)
        reduced = per_seed.mean(dim=1) if sample_reduction == "mean" else per_seed.sum(dim=1)
        reduced.sum().backward()
    assert batch.grad is not None  # backward ran
    estimated = batch.grad.detach().to(torch.float64).flatten(1)  # [seeds, D]
    cosines = torch.nn.functional.cosine_similarity(estimated, exact[None], dim=1)
    norm_ratio = float((estimated.norm(dim=1) / exact.norm()).mean())
    return FidelityReport(cosines, norm_ratio, int(states.shape[0]))


def noise_temperature(estimator: Estimator) -> float:
    """The scale τ of ``estimator``'s forward noise, so that perturb-and-MAP with Gumbel noise
    samples p(z) ∝ exp(⟨θ, z⟩ / τ): AIMLE's and I-MLE's ``input_temperature``, STE's
    ``temperature``, the perturbed optimizer's ``sigma``, SIMPLE's ``temperature`` (that of its
    exact samples); 1 for the others."""
    for attribute in ("input_temperature", "sigma"):
        if hasattr(estimator, attribute):
            return float(getattr(estimator, attribute))
    if isinstance(estimator, STE | SIMPLE):
        return estimator.temperature
    return 1.0


#: Rounds of :func:`solution_states` draws that may still find new solutions before the listing
#: is given up as too large.
_LISTING_ROUNDS = 8


def solver_gradient_fidelity(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    estimator: str | dict[str, Any] = "aimle",
    seeds: int = 64,
    warmup: int = 100,
    seed: int = 0,
) -> FidelityReport:
    """:func:`gradient_fidelity` of an estimator on a registered solver's example instance.

    The instance is the first of the solver's registered ``example`` (its parameters updated by
    ``params``), the loss ``‖z − b‖²`` with b uniform in [0, 1] of θ's shape, and the solutions
    are collected by :func:`solution_states` until another round of draws finds no new one.

    Raises:
        UnknownNameError: no such solver or estimator.
        ValueError: the solver registers no example, or its solutions on the example could not
            all be found (too many to list).
    """
    spec = get_solver_spec(name)
    if spec.example is None:
        raise ValueError(
            f"solver {name!r} registers no example instance; register it with "
            "register_solver(..., example=(batch_size, generator) -> (params, theta)), or call "
            "gradient_fidelity with a theta and its states"
        )
    generator = torch.Generator().manual_seed(seed)
    example_params, example_theta = spec.example(1, generator)
    solver = get_solver(name, **{**example_params, **(params or {})})
    theta = example_theta[0].to(torch.float64)
    states = solution_states(solver, tuple(theta.shape), generator=generator)
    for _ in range(_LISTING_ROUNDS):  # until a round of draws adds nothing
        draws = max(4096, 8 * states.shape[0])
        more = solution_states(solver, tuple(theta.shape), draws=draws, generator=generator)
        merged = torch.unique(torch.cat([states, more]).flatten(1), dim=0).view(-1, *theta.shape)
        if merged.shape[0] == states.shape[0]:
            break
        states = merged
    else:
        raise ValueError(
            f"solver {name!r} has too many solutions on its example to list ({states.shape[0]} "
            "found and still growing); call gradient_fidelity on a smaller instance"
        )
    target = torch.rand(theta.shape, generator=generator, dtype=torch.float64)

    def loss(z: Tensor) -> Tensor:
        return ((z - target) ** 2).flatten(1).sum(dim=1)

    built = build_estimator(estimator)
    built.generator = torch.Generator().manual_seed(seed + 1)
    return gradient_fidelity(built, solver, theta, loss, states=states, seeds=seeds, warmup=warmup)
