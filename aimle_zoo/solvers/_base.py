"""The solver contract: a batched MAP oracle ``theta [B, *S] -> z [B, *S]``.

A solver maps a batch of parameters to a batch of discrete solutions of the same shape: 0/1
indicators (a subset, a path, a tree, a matching), or integer vectors where the registry says
so (``values="integer"``: ranks). It knows nothing of estimators: an estimator only ever calls
it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

Sense = Literal["max", "min"]
SolutionValues = Literal["binary", "integer"]

#: What a solver's entries may be: ``"binary"`` (0/1 indicators, the default) or ``"integer"``.
SOLUTION_VALUES: tuple[SolutionValues, ...] = ("binary", "integer")


class SolverInputError(ValueError):
    """A solver was given input it cannot solve (wrong shape, dtype, NaN, out-of-range k, ...)."""


@runtime_checkable
class SolverFn(Protocol):
    """Anything that maps ``theta [B, *S]`` to a solution ``z [B, *S]`` (usually 0/1)."""

    def __call__(self, theta: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SolverSpec:
    """Registry metadata of a solver.

    Attributes:
        name: registry name.
        factory: class or function building a solver from keyword parameters.
        sense: ``"max"`` if the solver maximises ``<theta, z>``, ``"min"`` if it minimises it.
        exportable: the forward is pure tensor operations (TorchScript / ONNX can hold it).
        input_shape: the input contract, e.g. ``"[B, n]"``.
        constraints: human-readable input constraints, e.g. ``("costs >= 0 (clamped)",)``.
        description: one line saying what it solves.
        aliases: other names that resolve to this solver.
        example: ``(batch_size, generator) -> (params, theta)``: solver parameters and a random
            batch of small valid instances, used by the conformance kit, tests and docs.
        objective: ``(theta, z) -> [B]`` objective value of each solution (default: the linear
            objective ``<theta, z>``), used by the conformance kit to check optimality.
        source: ``"builtin"`` (aimle_zoo's own), the distribution that provided a plugin, or
            ``"module <name>"`` for a solver registered by other code (a script, a test).
        values: ``"binary"`` (0/1 entries) or ``"integer"`` (integer entries, e.g. ranks).
    """

    name: str
    factory: Callable[..., Any]
    sense: Sense = "max"
    exportable: bool = False
    input_shape: str = "[B, ...]"
    constraints: tuple[str, ...] = ()
    description: str = ""
    aliases: tuple[str, ...] = ()
    example: Callable[[int, torch.Generator], tuple[dict[str, Any], Tensor]] | None = field(
        default=None, compare=False
    )
    objective: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, compare=False)
    source: str = "builtin"
    values: SolutionValues = "binary"


def checks_enabled() -> bool:
    """``True`` in eager mode; ``False`` while tracing or exporting, where data-dependent input
    checks (host syncs) cannot run.

    TorchScript cannot compile it: call it from ``@torch.jit.unused`` methods or guard the call
    with ``torch.jit.is_scripting()``.
    """
    return not (torch.jit.is_tracing() or torch.compiler.is_exporting())


class Solver(nn.Module):
    """Base class of registered solvers: an ``nn.Module`` so it can live inside a model graph.

    Subclasses implement ``forward(theta) -> z``. ``register_solver`` attaches the spec to the
    class; :func:`solver_spec` reads it back. ``get_solver`` records the keyword parameters it
    built the solver with in ``params`` (used in configs and export metadata).
    """

    __jit_ignored_attributes__: ClassVar[list[str]] = ["params"]

    def forward(self, theta: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_multiple(self) -> int:
        """θ's batch size must be a multiple of this (1: any batch size; a solver holding
        per-instance data for B' instances takes batches of m·B')."""
        return 1

    @torch.jit.unused
    def _solver_name(self) -> str:
        """The registry name its messages use (the class name of an unregistered subclass)."""
        spec = solver_spec(self)
        return spec.name if spec is not None else type(self).__name__

    def extra_repr(self) -> str:
        params = getattr(self, "params", None)
        return ", ".join(f"{k}={v!r}" for k, v in params.items()) if params else ""


class FunctionSolver(Solver):
    """A registered plain function ``fn(theta, **params) -> z`` bound to its parameters."""

    def __init__(self, fn: Callable[..., Tensor], **fn_kwargs: Any) -> None:
        super().__init__()
        self.fn = fn
        self.fn_kwargs = dict(fn_kwargs)

    def forward(self, theta: Tensor) -> Tensor:
        return self.fn(theta, **self.fn_kwargs)


def solver_method(solver: object, name: str) -> Callable[..., Any] | None:
    """The solver's optional method ``name`` (``relax``, ``marginals``, ``sample``), looked up
    on the solver and, for a registered plain function, on the function; ``None`` if absent."""
    method = getattr(solver, name, None)
    if method is None and isinstance(solver, FunctionSolver):
        method = getattr(solver.fn, name, None)
    return method if callable(method) else None


#: The methods of a solver with an exact distribution p(z) ∝ exp(⟨θ, z⟩/τ) (the ``simple``
#: estimator's needs): ``sample(theta, temperature, generator, samples)`` and
#: ``marginals(theta, temperature)``.
EXACT_DISTRIBUTION_METHODS = ("sample", "marginals")


def has_exact_distribution(solver: object) -> bool:
    """Whether ``solver`` (an instance, a registered plain function's solver or a class) has
    both :data:`EXACT_DISTRIBUTION_METHODS`."""
    return all(solver_method(solver, name) is not None for name in EXACT_DISTRIBUTION_METHODS)


_SPEC_ATTR = "__aimle_solver_spec__"


def solver_spec(solver: object) -> SolverSpec | None:
    """The registry spec of a solver instance, class or function, or ``None`` if unregistered.

    Only a spec registered for ``solver`` itself counts: a subclass of a registered solver
    class is not that solver (its sense or contract may differ) until it is registered too.
    """
    spec = _own_spec(solver)
    if spec is None and not isinstance(solver, type):
        spec = _own_spec(type(solver))  # an instance of a registered class
    if spec is None and isinstance(solver, FunctionSolver):
        spec = _own_spec(solver.fn)
    return spec


def solver_values(solver: object) -> SolutionValues:
    """``"binary"`` or ``"integer"``: what the entries of the solver's solutions may be, from its
    registry spec (an unregistered callable is taken to return 0/1 indicators)."""
    spec = solver_spec(solver)
    if spec is None and isinstance(solver, nn.Module):
        inner = getattr(solver, "solver", None)  # a wrapper such as CachedSolver
        spec = solver_spec(inner) if inner is not None else None
    return spec.values if spec is not None else "binary"


def _own_spec(obj: object) -> SolverSpec | None:
    """The spec stored on ``obj`` itself (not inherited from a base class)."""
    spec = vars(obj).get(_SPEC_ATTR) if hasattr(obj, "__dict__") else None
    return spec if isinstance(spec, SolverSpec) else None


def _own_sense(solver: object) -> object:
    """The ``sense`` set on the instance itself, or ``None``."""
    return vars(solver).get("sense") if hasattr(solver, "__dict__") else None


def solver_sense(solver: object) -> Sense:
    """``"max"`` or ``"min"``: an instance's own ``sense`` attribute, else its registry spec.

    The instance attribute comes first so that one class can solve both senses (e.g. a
    spanning tree built with ``maximum=False``), also on the object a :class:`FunctionSolver`
    wraps; then the registry; then a class attribute ``sense`` (registered classes get one, so
    their subclasses inherit it); other callables default to ``"max"``.
    """
    sense = _own_sense(solver)
    if sense is None and isinstance(solver, FunctionSolver):
        sense = _own_sense(solver.fn)  # a registered plain class's instance, as built by name
    if sense is None:
        spec = solver_spec(solver)
        inner = solver.fn if isinstance(solver, FunctionSolver) else solver
        sense = spec.sense if spec is not None else getattr(inner, "sense", "max")
    if sense not in ("max", "min"):
        raise ValueError(f"solver sense must be 'max' or 'min', got {sense!r}")
    return "min" if sense == "min" else "max"


# ----------------------------------------------------------------------------- input checks


def check_same_device(solver: nn.Module, theta: Tensor, name: str) -> None:
    """Refuse θ on another device than the solver's own tensors (a mask, a graph), which
    would fail deep inside the solver with PyTorch's generic device error."""
    for buffer_name, buffer in solver.named_buffers():
        if buffer.device != theta.device:
            raise SolverInputError(
                f"{name}: theta is on {theta.device} but the solver's {buffer_name!r} is on "
                f"{buffer.device}; move the solver (or the model holding it) with "
                ".to(theta.device)"
            )


def check_theta(
    theta: object,
    *,
    solver: str,
    ndim: int | None = None,
    min_ndim: int | None = None,
    shape_hint: str = "",
    allow_inf: bool = False,
) -> Tensor:
    """Validate a solver input: a floating tensor of the right rank with finite values.

    Raises :class:`SolverInputError` with a message saying what was wrong and what to pass.
    """
    hint = f" Expected {shape_hint}." if shape_hint else ""
    if not isinstance(theta, Tensor):
        raise SolverInputError(
            f"{solver}: expected a torch.Tensor, got {type(theta).__name__}.{hint}"
        )
    if not theta.is_floating_point():
        raise SolverInputError(
            f"{solver}: expected a floating-point tensor, got dtype {theta.dtype}; "
            f"convert it with theta.float().{hint}"
        )
    if ndim is not None and theta.dim() != ndim:
        raise SolverInputError(
            f"{solver}: expected a {ndim}-D tensor, got shape {tuple(theta.shape)}.{hint}"
        )
    if min_ndim is not None and theta.dim() < min_ndim:
        raise SolverInputError(
            f"{solver}: expected at least {min_ndim} dimensions, got shape "
            f"{tuple(theta.shape)}.{hint}"
        )
    if theta.numel() and not torch.jit.is_scripting() and may_hold_bad_values(theta, allow_inf):
        bad = torch.isnan(theta) if allow_inf else ~torch.isfinite(theta)
        if bool(bad.any()):
            flat = bad.reshape(theta.shape[0], -1).any(dim=1) if theta.dim() else bad.reshape(1)
            instances = flat.nonzero().flatten().tolist()
            what = "NaN" if allow_inf else "NaN or inf"
            advice = "check the network producing theta (a diverged loss or a division by zero)."
            if bool((theta[bad] == float("-inf")).all()):  # -inf used as a mask
                advice = (
                    "the only such values are -inf: to rule entries out, give them a finite "
                    "value instead, far below the others for a maximising solver (e.g. "
                    "theta.masked_fill(~keep, -1e4)) and far above them for a minimising one "
                    "(perturbations and finite differences need finite values; AIMLE's "
                    "adaptive λ = β‖θ‖/‖dy‖ grows with such values)."
                )
            raise SolverInputError(
                f"{solver}: input contains {what} values in instance(s) "
                f"{format_instances(instances)}; {advice}"
            )
    return theta


def check_relax_temperature(temperature: object, *, solver: str) -> float:
    """The temperature τ of a solver's ``relax``: a finite number > 0 (τ = 0 divides by zero
    into NaN, and τ < 0 relaxes the opposite sense).

    Raises:
        SolverInputError: τ is not a finite number > 0.
    """
    number = (
        float(temperature)
        if isinstance(temperature, int | float) and not isinstance(temperature, bool)
        else None
    )
    if number is None or not math.isfinite(number) or number <= 0:
        raise SolverInputError(
            f"{solver}: the relaxation's temperature must be a finite number > 0, got "
            f"{temperature!r}; lower it towards 0 to approach the discrete solution."
        )
    return number


def may_hold_bad_values(theta: Tensor, allow_inf: bool) -> bool:
    """One reduction screening θ for NaN (and ±inf unless ``allow_inf``): ``False`` proves it clean.

    A NaN or ±inf entry makes ``Σθ`` NaN or ±inf, so a finite sum (a non-NaN sum with
    ``allow_inf``) rules them out; a non-finite sum of finite values (overflow) only triggers
    the full element-wise scan.
    """
    total = theta.sum()
    return bool(torch.isnan(total)) if allow_inf else not bool(torch.isfinite(total))


def format_instances(items: Sequence[int] | Tensor, limit: int = 8) -> str:
    """Instance indices for an error message: ``"3, 7, 9"``, or the first ``limit`` and the
    total (``"0, 1, ..., 7, ... (20 in all)"``). A ``[B]`` boolean tensor gives its true
    entries."""
    if isinstance(items, Tensor):
        items = items.nonzero().flatten().tolist() if items.dtype == torch.bool else items.tolist()
    listed = list(items)
    shown = ", ".join(map(str, listed[:limit]))
    return shown + (f", ... ({len(listed)} in all)" if len(listed) > limit else "")
