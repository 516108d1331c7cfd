"""Shared machinery of the estimators: the base class, sample layout and solver calls.

**Sample layout.** An estimator drawing N samples per instance maps θ ``[B, *S]`` to
z ``[B·N, *S]``, sample-minor: row ``b·N + n`` is sample n of instance b (as in the reference
implementation). With N = 1 the output has θ's shape. :func:`expand_samples` tiles targets and
inputs to that layout and :func:`mean_over_samples` averages back to ``[B, *S]``.

**Solvers.** An estimator accepts any batched callable ``theta [B, *S] -> z [B, *S]``. It calls
it under ``torch.no_grad()`` with θ as given (on θ's device), checks that the output has the
input's shape and casts it to θ's device and dtype. Whether the solver maximises or minimises
⟨θ, z⟩ comes from :func:`aimle_zoo.solvers.solver_sense` (``"max"`` unless declared), or from
the ``minimize`` override of :meth:`Estimator.forward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..solvers import (
    SolverInputError,
    checks_enabled,
    format_instances,
    get_solver,
    may_hold_bad_values,
    solver_sense,
    solver_spec,
)
from .noise import Noise

__all__ = [
    "Estimator",
    "SolverFunction",
    "SolverOutputError",
    "expand_samples",
    "mean_over_samples",
]

#: A batched MAP oracle ``theta [B, *S] -> z [B, *S]``.
SolverFunction = Callable[[Tensor], Tensor]


class SolverOutputError(ValueError):
    """A solver returned something other than a tensor of its input's shape."""


def expand_samples(x: Tensor, samples: int) -> Tensor:
    """Tile ``x [B, *]`` to ``[B·N, *]`` in the estimators' sample-minor layout (N = ``samples``).

    Row ``b·N + n`` is a copy of row ``b``; use it for targets and inputs that must line up
    with an estimator's output.
    """
    check_count("samples", samples)
    return x if samples == 1 else x.repeat_interleave(samples, dim=0)


def mean_over_samples(z: Tensor, samples: int) -> Tensor:
    """Average ``z [B·N, *S]`` over its N = ``samples`` samples, giving ``[B, *S]``."""
    check_count("samples", samples)
    if z.dim() == 0 or z.shape[0] % samples:
        raise ValueError(
            f"mean_over_samples: the first dimension of shape {tuple(z.shape)} is not a "
            f"multiple of samples={samples}"
        )
    if samples == 1:
        return z
    return z.reshape(z.shape[0] // samples, samples, *z.shape[1:]).mean(dim=1)


def solver_name(solver: object) -> str:
    """A readable name of a solver for error messages."""
    spec = solver_spec(solver)
    if spec is not None:
        return f"solver {spec.name!r}"
    name = getattr(solver, "__qualname__", None) or type(solver).__qualname__
    return f"solver {name}"


def call_solver(solver: SolverFunction, theta: Tensor) -> Tensor:
    """``solver(theta)`` without autograd, checked and cast to θ's device and dtype."""
    with torch.no_grad():
        z = solver(theta)
    if not isinstance(z, Tensor):
        raise SolverOutputError(
            f"{solver_name(solver)} returned {type(z).__name__}, expected a tensor of shape "
            f"{tuple(theta.shape)}; a solver maps theta [B, *S] to z [B, *S]"
        )
    if z.shape != theta.shape:
        raise SolverOutputError(
            f"{solver_name(solver)} returned shape {tuple(z.shape)} for input shape "
            f"{tuple(theta.shape)}; a solver must return a solution of the same shape as its "
            "input (one indicator per entry of theta)"
        )
    return z.to(device=theta.device, dtype=theta.dtype)


def build_solver(solver: object, solver_params: dict[str, Any]) -> SolverFunction:
    """``solver`` as a callable: a registered name built with ``get_solver(name,
    **solver_params)``, or an ``nn.Module``/callable as it is (which takes no parameters)."""
    if isinstance(solver, str):
        return get_solver(solver, **solver_params)
    if solver_params:
        raise TypeError(
            f"solver parameters {sorted(solver_params)} are only used with a solver name; "
            "set them on the solver object instead"
        )
    if not callable(solver):
        raise TypeError(
            "solver must be an nn.Module, a callable theta -> z or a registered solver "
            f"name, got {type(solver).__name__}"
        )
    return cast(SolverFunction, solver)


def check_minimize(minimize: object) -> bool | None:
    """A sense override: ``True`` (minimise), ``False`` (maximise) or ``None`` (the solver's)."""
    if minimize is not None and not isinstance(minimize, bool):
        raise TypeError(f"minimize must be True, False or None, got {minimize!r}")
    return minimize


def resolve_minimize(solver: object, minimize: bool | None) -> bool:
    """True if the estimator must treat ``solver`` as a minimiser."""
    if minimize is not None:
        return bool(minimize)
    return solver_sense(solver) == "min"


def validate_theta(theta: object) -> Tensor:
    """θ must be a floating tensor with a batch dimension."""
    if not isinstance(theta, Tensor):
        raise SolverInputError(
            f"estimator: theta must be a torch.Tensor [B, *S], got {type(theta).__name__}"
        )
    if not theta.is_floating_point():
        raise SolverInputError(
            f"estimator: theta must be a floating-point tensor, got dtype {theta.dtype}; "
            "convert it with theta.float()"
        )
    if theta.dim() < 1:
        raise SolverInputError(
            "estimator: theta must have a batch dimension [B, *S], got a 0-dim tensor; "
            "use theta.unsqueeze(0) for a single instance"
        )
    if theta.numel() and checks_enabled() and may_hold_bad_values(theta.detach(), allow_inf=True):
        nan_rows = torch.isnan(theta.detach()).reshape(theta.shape[0], -1).any(dim=1)  # [B]
        if bool(nan_rows.any()):
            raise SolverInputError(
                f"estimator: theta contains NaN values in instance(s) {format_instances(nan_rows)};"
                " check the network producing theta (a diverged loss or a division by zero)"
            )
    return theta


def skipped_gradient(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The NaN gradient ``[*shape]`` (dtype and device of ``like``) returned for a non-finite
    float16 ∂L/∂z (see :func:`check_incoming_gradient`)."""
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)


def scaled_noise(noise: Tensor | None, temperature: float) -> Tensor | None:
    """τ·ε; ``None`` when there is no noise or τ = 0, ε itself when τ = 1 (no copy)."""
    if noise is None or temperature == 0:
        return None
    return noise if temperature == 1 else temperature * noise


#: How a minimising solver's costs are perturbed: ``"negate"`` (θ − τε, perturb-and-MAP of
#: exp(−⟨θ, z⟩/τ)) or ``"add"`` (θ + τε, the reference code's convention).
MINIMIZER_NOISE = ("negate", "add")


def perturb(theta: Tensor, noise: Tensor | None, temperature: float) -> Tensor:
    """θ + τ·ε (θ itself when there is no noise or τ = 0)."""
    scaled = scaled_noise(noise, temperature)
    return theta if scaled is None else theta + scaled


def check_count(label: str, value: object) -> int:
    """A sample count: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
    return value


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def check_temperature(label: str, value: object) -> float:
    """A noise temperature: a finite number >= 0."""
    number = _finite_number(value)
    if number is None or number < 0:
        raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    return number


def check_positive(label: str, value: object) -> float:
    """A step or scale such as λ or σ: a finite number > 0."""
    number = _finite_number(value)
    if number is None or number <= 0:
        raise ValueError(f"{label} must be a finite number > 0, got {value!r}")
    return number


def check_flag(label: str, value: object) -> bool:
    """A switch: ``True`` or ``False``, a NumPy bool too (not a string such as ``"no"``, which
    ``bool`` reads as true)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{label} must be True or False, got {value!r}")
    return bool(value)


def check_incoming_gradient(dy: Tensor, estimator: str) -> bool:
    """Whether ∂L/∂z is finite; a NaN or ±inf one is refused before the backward solver call
    blames θ for it, except in float16.

    In float16 an overflowing ∂L/∂z is what a loss scaler (``torch.amp.GradScaler``) expects
    to happen now and then: it looks for non-finite gradients, skips that step and lowers the
    scale. There ``False`` is returned, and the estimator returns a NaN gradient without
    calling the solver (and without moving an adaptive β). One reduction screens the common
    case (a finite sum proves every entry finite)."""
    if not may_hold_bad_values(dy, allow_inf=False) or bool(torch.isfinite(dy).all()):
        return True
    if dy.dtype == torch.float16:
        return False
    raise ValueError(
        f"{estimator}: the incoming gradient ∂L/∂z contains NaN or inf values (θ itself is "
        "finite); check the loss downstream of the solver, e.g. a log of 0 or a division by "
        "zero, or enable torch.autograd.detect_anomaly() to find the operation."
    )


class Estimator(nn.Module):
    """Base class: ``estimator(solver, theta)`` is a differentiable perturb-and-MAP call.

    ``forward`` maps θ ``[B, *S]`` to solutions ``[B·samples, *S]`` (sample-minor); its
    backward returns an estimate of ∂L/∂θ ``[B, *S]`` from the incoming ∂L/∂z.

    Attributes:
        samples: N, the number of solutions returned per instance.
        generator: optional ``torch.Generator`` used for the noise (on θ's device).
        last_lambda: λ of the last backward (0-dim tensor), ``None`` before the first one.
        last_grad_sparsity: fraction of non-zero entries of the last gradient returned.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        samples: int = 1,
        generator: torch.Generator | None = None,
        minimizer_noise: str = "negate",
    ) -> None:
        super().__init__()
        self.samples = check_count("samples", samples)
        self.generator = generator
        if minimizer_noise not in MINIMIZER_NOISE:
            raise ValueError(
                f"minimizer_noise must be one of {list(MINIMIZER_NOISE)}, got {minimizer_noise!r}"
            )
        self.minimizer_noise = minimizer_noise
        self.last_lambda: Tensor | None = None
        self.last_grad_sparsity: Tensor | None = None

    def forward(
        self, solver: SolverFunction, theta: Tensor, *, minimize: bool | None = None
    ) -> Tensor:
        """Solve ``theta [B, *S]`` with ``solver``; returns ``z [B·samples, *S]``.

        Args:
            solver: any batched MAP oracle ``theta -> z``.
            theta: the parameters.
            minimize: treat the solver as a minimiser (``True``) or maximiser (``False``);
                ``None`` reads its declared sense (``"max"`` if undeclared).
        """
        if not callable(solver):
            raise TypeError(f"solver must be callable theta -> z, got {type(solver).__name__}")
        return self._estimate(solver, validate_theta(theta), resolve_minimize(solver, minimize))

    def _estimate(self, solver: SolverFunction, theta: Tensor, minimize: bool) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able ``"name"`` and constructor arguments; ``build_estimator`` rebuilds it."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """λ, gradient sparsity (and adaptive state) of the last backward, as floats.

        Reading them synchronises with the device; use the tensor attributes in hot loops.
        """
        values: dict[str, float] = {}
        if self.last_lambda is not None:
            values["lambda"] = float(self.last_lambda)
        if self.last_grad_sparsity is not None:
            values["grad_sparsity"] = float(self.last_grad_sparsity)
        return values

    def extra_repr(self) -> str:
        shown = {**self.config(), "noise": getattr(self, "noise", None)}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items() if k not in ("name", "target"))

    def _sample_noise(self, noise: Noise | None, like: Tensor) -> Tensor | None:
        """ε with ``like``'s shape, device and dtype, or ``None`` without noise."""
        if noise is None:
            return None
        return noise.sample(
            like.shape, device=like.device, dtype=like.dtype, generator=self.generator
        )

    def _perturb_and_map(
        self,
        solver: SolverFunction,
        theta: Tensor,
        noise: Noise | None,
        temperature: float,
        minimize: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The forward sample: θ tiled N times, its noise ε and z = MAP(θ + τ·ε).

        For a minimiser with ``minimizer_noise="negate"`` (the default) ε is the negated draw:
        argmin⟨θ − τε′, z⟩ = argmax⟨−θ + τε′, z⟩, so perturb-and-MAP samples
        p(z) ∝ exp(−⟨θ, z⟩/τ), the maximiser's distribution on −θ, whether or not the noise is
        symmetric (Gumbel and Sum-of-Gamma are not). ``"add"`` perturbs as θ + τε′, the
        reference code's convention.

        ``theta [B, *S]`` → ``(θ [B·N, *S], ε [B·N, *S] or None, z [B·N, *S])``.
        """
        theta_tiled = expand_samples(theta, self.samples)  # [B·N, *S]
        eps = self._sample_noise(noise, theta_tiled)  # [B·N, *S]
        if minimize and eps is not None and self.minimizer_noise == "negate":
            eps = eps.neg_()
        return theta_tiled, eps, call_solver(solver, perturb(theta_tiled, eps, temperature))

    def _record(self, gradient: Tensor, step: Tensor | None) -> None:
        """Keep λ and the gradient's non-zero fraction for :meth:`diagnostics` (no sync)."""
        self.last_lambda = None if step is None else step.detach()
        nonzero = torch.count_nonzero(gradient).to(gradient.dtype)
        self.last_grad_sparsity = nonzero / max(gradient.numel(), 1)


def combine_differences(
    difference: Tensor,
    *,
    batch: int,
    samples: int,
    marginal_samples: int,
    process: Callable[[Tensor], Tensor],
    minimize: bool,
) -> Tensor:
    """Turn per-sample finite differences into the gradient returned for θ.

    ``difference [B·S·M, *S]`` is averaged over the M marginal samples of each of the S groups,
    post-processed by ``process`` on ``[B, S, *S]`` (the target's scaling and update), averaged
    over S and negated for a minimising solver; returns ``[B, *S]``.
    """
    shape = difference.shape[1:]
    grouped = difference.reshape(batch, samples, marginal_samples, *shape)  # [B, S, M, *S]
    per_sample = grouped.mean(dim=2) if marginal_samples > 1 else grouped.squeeze(2)
    gradient = process(per_sample).mean(dim=1)  # [B, *S]
    return -gradient if minimize else gradient
