"""Conformance kit: check that a solver honours the solver contract ``theta [B, *S] -> z [B, *S]``.

:func:`check_solver` runs a list of named checks on a small random batch and returns a
:class:`ConformanceReport`:

``call``
    the solver accepts the batch without raising.
``shape_dtype_device``
    ``z`` is a tensor with the shape, dtype and device of ``theta``.
``binary``
    every entry of ``z`` is 0 or 1 (for solvers of 0/1 indicators, the default).
``integral``
    instead of ``binary`` for a solver registered with ``values="integer"`` (ranks, counts):
    every entry of ``z`` is a finite integer.
``batch_independence``
    solving each instance alone gives its row of the batched solution.
``determinism``
    two calls on the same input give the same output, also on a copy of the input full of
    ties (θ rounded up in magnitude to multiples of its mean magnitude, signs kept); each call
    returns a new tensor (a reused output buffer is overwritten by the next call, while the
    estimators hold several solutions at once).
``no_mutation``
    the solver leaves its input unchanged.
``relative_optimality``
    each instance's solution scores at least as well (objective and sense of the solver) as the
    solutions of the other instances of the batch. This assumes that ``theta`` only parametrises
    the objective, so that every instance's solution is feasible for the others (true of top-k,
    spanning trees and paths on a fixed graph); leave the check out with ``checks=`` otherwise.
``optimality`` (only when ``feasible`` is given)
    on every instance the solution is one of the enumerated feasible solutions and its objective
    equals the best objective over the enumeration.
``gradients`` (unless ``check_gradients=False``)
    wrapped in the AIMLE estimator, a loss preferring another solution sends a finite, non-zero
    gradient of ``theta``'s shape back to ``theta``.
``distribution`` (only for a solver of 0/1 indicators with ``sample`` and ``marginals``, what
the ``simple`` estimator needs)
    ``sample(theta, 1.0, generator, samples=N)`` returns N draws per instance ``[B·N, *S]``
    (sample-minor) of 0/1 entries, none scoring better than the instance's solution (and each
    among the ``feasible`` ones when given); ``marginals(theta, 1.0)`` returns θ's shape in
    [0, 1], finite and differentiable; the draws of each instance average to its marginals
    (within 5 binomial standard deviations and 0.02); and at a low temperature (10⁻³ of θ's
    mean magnitude) the marginals score within τ·log(#solutions) of the solver's solution (the
    Gibbs bound; ties split the mass without loss).

``binary`` (or ``integral``), ``batch_independence``, ``relative_optimality`` and ``optimality``
run twice: on the
example and on the tie-rich copy of ``determinism`` (unless the solver refuses that copy), since
tie-breaking is where a solver most easily returns a fractional, infeasible, sub-optimal or
batch-dependent solution that random continuous inputs never reveal.

A plugin's test file needs one line per solver; pytest then runs one test per check
(``test_assignment[call]``, ``test_assignment[binary]``, ...)::

    import itertools
    import torch
    from aimle_zoo.solvers.testing import solver_conformance_test

    def permutation_matrices(theta: torch.Tensor) -> torch.Tensor:  # [n, n] -> [n!, n, n]
        n = theta.shape[-1]
        eye = torch.eye(n, dtype=theta.dtype)
        return torch.stack([eye[list(p)] for p in itertools.permutations(range(n))])

    test_assignment = solver_conformance_test("assignment", feasible=permutation_matrices)

or, outside pytest::

    check_solver("assignment", feasible=permutation_matrices).raise_for_failures()

:func:`isolated_registry` lets tests register toy solvers without leaking them to other tests.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from . import _registry
from ._base import (
    SOLUTION_VALUES,
    Sense,
    SolutionValues,
    SolverSpec,
    format_instances,
    has_exact_distribution,
    solver_method,
    solver_sense,
    solver_spec,
    solver_values,
)
from ._registry import get_solver, get_solver_spec

MakeInput = Callable[[int, torch.Generator], tuple[dict[str, Any], Tensor]]
Objective = Callable[[Tensor, Tensor], Tensor]
Feasible = Callable[[Tensor], Tensor]

#: Every check, in the order they run.
CHECKS: tuple[str, ...] = (
    "call",
    "shape_dtype_device",
    "binary",
    "integral",
    "batch_independence",
    "determinism",
    "no_mutation",
    "relative_optimality",
    "optimality",
    "gradients",
    "distribution",
)

#: Draws per instance of the ``distribution`` check.
DISTRIBUTION_DRAWS = 2000


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one named check; ``message`` says what went wrong when it failed."""

    name: str
    passed: bool
    message: str = ""


@dataclass
class ConformanceReport:
    """Results of :func:`check_solver`, keyed by check name in the order the checks ran."""

    solver: str
    results: dict[str, CheckResult] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        """Names of the checks that passed."""
        return [name for name, result in self.results.items() if result.passed]

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that failed."""
        return [result for result in self.results.values() if not result.passed]

    @property
    def ok(self) -> bool:
        """Whether every check that ran passed."""
        return not self.failed

    def __getitem__(self, name: str) -> CheckResult:
        if name not in self.results:
            raise KeyError(
                f"check {name!r} did not run on solver {self.solver!r}; "
                f"ran: {', '.join(self.results)}"
            )
        return self.results[name]

    def raise_for_failures(self) -> None:
        """Raise ``AssertionError`` listing every failed check, if any failed."""
        if self.failed:
            lines = "\n".join(f"  {result.name}: {result.message}" for result in self.failed)
            raise AssertionError(
                f"solver {self.solver!r} failed {len(self.failed)} of {len(self.results)} "
                f"conformance checks:\n{lines}"
            )

    def __str__(self) -> str:
        lines = [f"conformance of solver {self.solver!r}:"]
        for result in self.results.values():
            status = "passed" if result.passed else f"FAILED: {result.message}"
            lines.append(f"  {result.name}: {status}")
        return "\n".join(lines)


class _CheckFailure(AssertionError):
    """A check found the solver in breach of the contract."""


def planned_checks(
    checks: Collection[str] | None = None,
    *,
    feasible: bool = False,
    check_gradients: bool = True,
    distribution: bool = False,
    values: SolutionValues = "binary",
) -> list[str]:
    """Names of the checks :func:`check_solver` runs, in order.

    By default every check applies except ``optimality`` without ``feasible``, ``gradients``
    with ``check_gradients=False``, ``distribution`` for a solver without ``sample`` and
    ``marginals`` (``distribution=False``) or of integer vectors, and one of ``binary`` and
    ``integral``: ``binary`` for a solver of 0/1 indicators (``values="binary"``),
    ``integral`` for one of integer vectors (``values="integer"``). An explicit ``checks``
    selects among them (``call`` always runs: the other checks need its output).

    Raises:
        ValueError: an unknown check name or ``values``, ``optimality`` asked for without
            ``feasible``, ``distribution`` for a solver without ``sample`` and ``marginals`` or
            of integer vectors, or ``binary`` for a solver of integer vectors.
    """
    if values not in SOLUTION_VALUES:
        raise ValueError(f"values must be one of {list(SOLUTION_VALUES)}, got {values!r}")
    if checks is None:
        wanted = set(CHECKS)
        wanted.discard("integral" if values == "binary" else "binary")
        if not feasible:
            wanted.discard("optimality")
        if not check_gradients:
            wanted.discard("gradients")
        if not distribution or values == "integer":
            wanted.discard("distribution")
    else:
        unknown = sorted(set(checks) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown conformance checks {unknown}; known: {', '.join(CHECKS)}")
        if "optimality" in checks and not feasible:
            raise ValueError(
                "the 'optimality' check needs feasible=, a function enumerating every feasible "
                "solution of one instance: (theta [*S]) -> [F, *S]"
            )
        if "distribution" in checks and not distribution:
            raise ValueError(
                "the 'distribution' check needs a solver with sample(theta, temperature, "
                "generator, samples) and marginals(theta, temperature)"
            )
        if "distribution" in checks and values == "integer":
            raise ValueError(
                "the 'distribution' check compares 0/1 draws with marginal probabilities; it "
                "does not cover solvers of integer vectors (values='integer')"
            )
        if "binary" in checks and values == "integer":
            raise ValueError(
                "the 'binary' check expects 0/1 entries, but the solver's solutions are integer "
                "vectors (values='integer'); ask for the 'integral' check instead"
            )
        wanted = {"call", *checks}
    return [name for name in CHECKS if name in wanted]


@contextmanager
def isolated_registry() -> Iterator[None]:
    """Snapshot the solver registry and restore it on exit.

    Solvers registered and plugins loaded inside the block are forgotten afterwards, so tests
    can register toy solvers under any name.
    """
    specs, aliases = dict(_registry._specs), dict(_registry._aliases)
    failures, plugins_loaded = dict(_registry._plugin_failures), _registry._plugins_loaded
    try:
        yield
    finally:
        _replace_contents(_registry._specs, specs)
        _replace_contents(_registry._aliases, aliases)
        _replace_contents(_registry._plugin_failures, failures)
        _registry._plugins_loaded = plugins_loaded


def _replace_contents(live: dict[str, Any], saved: dict[str, Any]) -> None:
    live.clear()  # in place: solver_registry is a read-only view of the live dict
    live.update(saved)


def _has_distribution(solver_or_name: str | Callable[[Tensor], Tensor]) -> bool:
    """Whether the ``distribution`` check applies: a solver object, or a registered name's
    class or function, with ``sample`` and ``marginals``."""
    if isinstance(solver_or_name, str):
        return has_exact_distribution(get_solver_spec(solver_or_name).factory)
    return has_exact_distribution(solver_or_name)


def _solution_values(solver_or_name: str | Callable[[Tensor], Tensor]) -> SolutionValues:
    """What a registered name's or a solver object's solution entries may be."""
    if isinstance(solver_or_name, str):
        return get_solver_spec(solver_or_name).values
    return solver_values(solver_or_name)


def linear_objective(theta: Tensor, z: Tensor) -> Tensor:
    """⟨θ, z⟩ per instance: ``theta, z [B, *S] -> [B]``; entries with z = 0 count 0 whatever
    θ holds there (a ±inf mask, an adjacency's missing edge), not 0·inf = NaN."""
    return torch.where(z != 0, theta * z, 0.0).flatten(1).sum(dim=1)


@dataclass
class _Case:
    """One solver and one batch under test, shared by the checks."""

    solver: Callable[[Tensor], Tensor]
    theta: Tensor  # [B, *S]
    sense: Sense
    objective: Objective
    feasible: Feasible | None
    seed: int
    z: Any = None  # a copy of the first call's output; a [B, *S] tensor for a conforming solver
    first_output: Any = None  # the object the first call returned (to spot a reused buffer)
    tied: Any = None  # (θ, z) of the tie-rich copy once solved; False if it cannot be checked

    def solve(self, theta: Tensor) -> Any:
        with torch.no_grad():
            return self.solver(theta)

    def tied_case(self) -> tuple[Tensor, Tensor] | None:
        """``(θ, z)`` of the tie-rich copy of the example (:func:`_tie_rich`), solved once; ``None``
        when the solver refuses it (e.g. zero costs) or returns no tensor of θ's shape (the
        checks on the example report that)."""
        if self.tied is None:
            self.tied = False
            theta = _tie_rich(self.theta)
            try:
                z = self.solve(theta.clone())
            except Exception:
                return None
            if isinstance(z, Tensor) and z.shape == theta.shape:
                self.tied = (theta, z.clone())  # a later call may reuse the tensor
        return self.tied or None

    def tolerance(self, theta: Tensor | None = None) -> Tensor:
        """Per-instance objective tolerance ``[B]``: a few ulps of ``|θ_b|₁`` in θ's dtype
        (θ: the example's unless given)."""
        theta = self.theta if theta is None else theta
        eps = torch.finfo(theta.dtype).eps
        finite = theta.double().nan_to_num(posinf=0.0, neginf=0.0)
        return 16 * eps * (1 + finite.abs().flatten(1).sum(dim=1))

    def score(self, theta: Tensor, z: Tensor) -> Tensor:
        """Objective in float64, oriented so that larger is better: ``[N, *S] x2 -> [N]``."""
        values = self.objective(theta.double(), z.double())
        if not isinstance(values, Tensor) or values.shape != theta.shape[:1]:
            raise _CheckFailure(
                f"the objective must return a tensor of shape [{theta.shape[0]}] (one value "
                f"per instance), got {_describe(values)}"
            )
        return values if self.sense == "max" else -values


def _default_objective(solver: Callable[[Tensor], Tensor], spec: SolverSpec | None) -> Objective:
    """The solver's ``objective`` method, else its spec's objective, else ⟨θ, z⟩."""
    own = getattr(solver, "objective", None)
    if callable(own):
        return cast(Objective, own)
    return spec.objective if spec is not None and spec.objective else linear_objective


def check_solver(
    solver_or_name: str | Callable[[Tensor], Tensor],
    *,
    params: dict[str, Any] | None = None,
    make_input: MakeInput | None = None,
    objective: Objective | None = None,
    feasible: Feasible | None = None,
    batch_size: int = 8,
    seed: int = 0,
    check_gradients: bool = True,
    device: str | torch.device | None = None,
    checks: Collection[str] | None = None,
    values: SolutionValues | None = None,
) -> ConformanceReport:
    """Run the conformance checks (module docstring) on one solver and report the outcome.

    Args:
        solver_or_name: a registered name (built with ``get_solver(name, **params)``) or a
            solver object ``theta [B, *S] -> z [B, *S]``.
        params: solver parameters for a name, over those of the input generator (which
            give the rest).
        make_input: ``(batch_size, generator) -> (params, theta [B, *S])``; default: the
            ``example`` of the solver's registry spec.
        objective: ``(theta, z) -> [B]``; default: the solver's own ``objective`` method if
            it has one (a solver whose cost depends on how it was built, such as ``dijkstra``
            on a grid or a graph), else the spec's ``objective``, else ⟨θ, z⟩. Its direction
            is the solver's sense (:func:`solver_sense`).
        feasible: ``(theta [*S]) -> [F, *S]`` every feasible solution of one (tiny) instance;
            enables the ``optimality`` check.
        batch_size: instances in the batch.
        seed: seeds the input generator and the estimator noise of the ``gradients`` check.
        check_gradients: run the ``gradients`` check.
        device: run on this device (a solver module is moved there).
        checks: run only these checks (see :func:`planned_checks`).
        values: ``"binary"`` or ``"integer"``, what the solution entries may be; default: the
            solver's registry spec (``"binary"`` for an unregistered callable).

    Raises:
        ValueError, TypeError: the checks cannot be set up (no input generator, a malformed
            input, ``params`` given with a solver object, ...). Breaches of the contract are
            reported, not raised: call :meth:`ConformanceReport.raise_for_failures`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    plan = planned_checks(
        checks,
        feasible=feasible is not None,
        check_gradients=check_gradients,
        distribution=_has_distribution(solver_or_name),
        values=values or _solution_values(solver_or_name),
    )
    if not isinstance(solver_or_name, str):
        if not callable(solver_or_name):
            raise TypeError(f"expected a solver name or a callable, got {solver_or_name!r}")
        if params is not None:
            raise TypeError(
                "params apply only to a solver given by name; build the solver object with its "
                "parameters yourself, or pass its registered name"
            )
    spec = (
        get_solver_spec(solver_or_name)
        if isinstance(solver_or_name, str)
        else solver_spec(solver_or_name)
    )
    name = spec.name if spec is not None else _callable_name(solver_or_name)
    if make_input is None:
        if spec is None or spec.example is None:
            raise ValueError(
                f"solver {name!r} has no example input in its registry spec; register it with "
                "register_solver(..., example=(batch_size, generator) -> (params, theta)), or "
                "pass make_input= of that form"
            )
        make_input = spec.example
    input_params, theta = _make_input(make_input, batch_size, seed, name)

    solver: Callable[[Tensor], Tensor] = (
        get_solver(solver_or_name, **{**input_params, **(params or {})})
        if isinstance(solver_or_name, str)
        else solver_or_name
    )
    if device is not None:
        theta = theta.to(device)
        if isinstance(solver, nn.Module):
            solver.to(device)

    case = _Case(
        solver=solver,
        theta=theta,
        sense=solver_sense(solver),
        objective=objective or _default_objective(solver, spec),
        feasible=feasible,
        seed=seed,
    )
    report = ConformanceReport(solver=name)
    for check in plan:
        if check != "call" and not report.results["call"].passed:
            report.results[check] = CheckResult(check, False, "not run: the solver call failed")
            continue
        try:
            _CHECK_FUNCTIONS[check](case)
        except _CheckFailure as failure:
            report.results[check] = CheckResult(check, False, str(failure))
        except Exception as err:
            message = f"raised {type(err).__name__}: {err}"
            report.results[check] = CheckResult(check, False, message)
        else:
            report.results[check] = CheckResult(check, True)
    return report


def solver_conformance_test(
    solver_or_name: str | Callable[[Tensor], Tensor],
    *,
    params: dict[str, Any] | None = None,
    make_input: MakeInput | None = None,
    objective: Objective | None = None,
    feasible: Feasible | None = None,
    batch_size: int = 8,
    seed: int = 0,
    check_gradients: bool = True,
    device: str | torch.device | None = None,
    checks: Collection[str] | None = None,
    values: SolutionValues | None = None,
) -> Callable[[str], None]:
    """A pytest test function running :func:`check_solver`, parametrized with one test per check.

    Assign it to a ``test_*`` name in a test module (module docstring). The checks run once, on
    the first test, and each test reports its own check.
    """
    import pytest

    values = values or _solution_values(solver_or_name)
    plan = planned_checks(
        checks,
        feasible=feasible is not None,
        check_gradients=check_gradients,
        distribution=_has_distribution(solver_or_name),
        values=values,
    )
    reports: list[ConformanceReport] = []

    def conformance(check: str) -> None:
        if not reports:
            reports.append(
                check_solver(
                    solver_or_name,
                    params=params,
                    make_input=make_input,
                    objective=objective,
                    feasible=feasible,
                    batch_size=batch_size,
                    seed=seed,
                    check_gradients=check_gradients,
                    device=device,
                    checks=plan,
                    values=values,
                )
            )
        result = reports[0][check]
        if not result.passed:
            raise AssertionError(f"solver {reports[0].solver!r}, check {check!r}: {result.message}")

    parametrized: Callable[[str], None] = pytest.mark.parametrize("check", plan)(conformance)
    return parametrized


# ----------------------------------------------------------------------------- the checks


def _check_call(case: _Case) -> None:
    case.first_output = case.solve(case.theta.clone())
    first = case.first_output
    case.z = first.clone() if isinstance(first, Tensor) else first  # later calls may reuse it


def _check_shape_dtype_device(case: _Case) -> None:
    z, theta = case.z, case.theta
    if not isinstance(z, Tensor):
        raise _CheckFailure(f"expected a tensor, got {_describe(z)}")
    problems = [
        f"{what} {got} (input has {want})"
        for what, got, want in (
            ("shape", tuple(z.shape), tuple(theta.shape)),
            ("dtype", z.dtype, theta.dtype),
            ("device", z.device, theta.device),
        )
        if got != want
    ]
    if problems:
        raise _CheckFailure("output has " + "; ".join(problems))


def _check_binary(case: _Case) -> None:
    _check_entries(case, _binary)


def _check_integral(case: _Case) -> None:
    _check_entries(case, _integral)


def _check_entries(case: _Case, check: Callable[[Tensor, str], None]) -> None:
    """``check`` on the example's solution and on the tie-rich copy's."""
    check(_output_tensor(case), "")
    tied = case.tied_case()
    if tied is not None:
        check(tied[1], " with ties in the input")


def _binary(z: Tensor, where: str) -> None:
    _refuse_entries(z, ~((z == 0) | (z == 1)), "0 or 1", where)


def _integral(z: Tensor, where: str) -> None:
    _refuse_entries(z, ~torch.isfinite(z) | (z != torch.round(z)), "finite integers", where)


def _refuse_entries(z: Tensor, bad: Tensor, wanted: str, where: str) -> None:
    if bool(bad.any()):
        examples = z[bad].unique()[:5].tolist()
        raise _CheckFailure(
            f"{int(bad.sum())} of {z.numel()} output entries{where} are not {wanted}, "
            f"e.g. {examples}"
        )


def _check_batch_independence(case: _Case) -> None:
    _batch_independence(case, case.theta, _output_like_input(case), "")
    tied = case.tied_case()
    if tied is not None:
        _batch_independence(case, *tied, " with ties in the input")


def _batch_independence(case: _Case, theta: Tensor, z: Tensor, where: str) -> None:
    differing = []
    for index in range(theta.shape[0]):
        alone = case.solve(theta[index : index + 1].clone())
        expected = z[index : index + 1]
        if isinstance(alone, Tensor) and alone.shape != expected.shape:
            raise _CheckFailure(
                f"solving instance {index} alone returned shape {tuple(alone.shape)}, not "
                f"{tuple(expected.shape)}: a batch of one must keep its batch dimension "
                "(e.g. no squeeze())"
            )
        if not _same(alone, expected):
            differing.append(index)
    if differing:
        raise _CheckFailure(
            f"solving instance(s) {format_instances(differing)} alone differs from the batched "
            f"call{where}; instances must not influence each other (break ties by a rule of "
            "the instance's own values, not of its position in the batch)"
        )


def _check_determinism(case: _Case) -> None:
    z = _output_like_input(case)
    if bool(torch.isnan(z).any()):
        raise _CheckFailure("not checked: the output holds NaN (see 'binary')")
    again = case.solve(case.theta.clone())
    first = case.first_output
    if isinstance(again, Tensor) and again.numel() and _shares_storage(again, first):
        raise _CheckFailure(
            "the second call returned the first call's tensor (the same storage) and so "
            "overwrote its solution; the estimators hold several solutions at once: return a "
            "new tensor from every call"
        )
    _compare_calls(again, z, "")
    tied = _tie_rich(case.theta)
    try:
        first_tied = case.solve(tied.clone())
    except Exception:  # a solver may refuse such values (e.g. zero costs): no tie check
        return
    if isinstance(first_tied, Tensor):
        expected = first_tied.clone()  # before the next call, which may reuse the tensor
        _compare_calls(case.solve(tied.clone()), expected, " with ties in the input")


def _compare_calls(again: Any, z: Tensor, where: str) -> None:
    if not _same(again, z):
        if isinstance(again, Tensor) and again.shape == z.shape:
            differs = (again != z).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise _CheckFailure(
                f"a second call{where} changed the solution of instance(s) {differs}; break "
                "ties by a fixed rule (e.g. the lowest index), not at random"
            )
        raise _CheckFailure(
            f"a second call{where} returned {_describe(again)}, the first {_describe(z)}"
        )


def _shares_storage(a: Tensor, b: Any) -> bool:
    return (
        isinstance(b, Tensor) and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


def _tie_rich(theta: Tensor) -> Tensor:
    """θ with many equal entries: magnitudes rounded up to multiples of their finite mean,
    signs, zeros and infinities kept."""
    finite = theta[torch.isfinite(theta)].abs()
    step = float(finite.mean()) if finite.numel() and float(finite.mean()) > 0 else 1.0
    rounded = torch.sign(theta) * torch.ceil(theta.abs() / step) * step
    return torch.where(torch.isfinite(theta), rounded, theta).to(theta.dtype)


def _check_no_mutation(case: _Case) -> None:
    theta = case.theta.clone()
    case.solve(theta)
    if not torch.equal(theta, case.theta):
        changed = (theta != case.theta).flatten(1).any(dim=1)
        raise _CheckFailure(
            f"the solver modified its input in instance(s) {format_instances(changed)}; work on "
            "a copy"
        )


def _check_relative_optimality(case: _Case) -> None:
    _relative_optimality(case, case.theta, _output_like_input(case), "")
    tied = case.tied_case()
    if tied is not None:
        _relative_optimality(case, *tied, " with ties in the input")


def _relative_optimality(case: _Case, theta: Tensor, z: Tensor, where: str) -> None:
    batch = theta.shape[0]
    theta_pairs = theta.repeat_interleave(batch, dim=0)  # row b·B + c holds θ_b
    z_pairs = z.repeat(batch, *([1] * (z.dim() - 1)))  # row b·B + c holds z_c
    scores = case.score(theta_pairs, z_pairs).view(batch, batch)  # [b, c]: θ_b scored at z_c
    _check_scores(scores, "instance pairs" + where)
    own = scores.diagonal()  # [B]
    beaten = scores > (own + case.tolerance(theta).to(scores.device)).unsqueeze(1)
    if bool(beaten.any()):
        instance, other = (int(i) for i in beaten.nonzero()[0])
        raise _CheckFailure(
            f"{int(beaten.sum())} (instance, other solution) pair(s){where} where another "
            f"instance's solution scores better; e.g. on instance {instance} the solution of "
            f"instance {other} scores {_oriented(scores[instance, other], case.sense):.6g} "
            f"against its own {_oriented(own[instance], case.sense):.6g} (sense "
            f"{case.sense!r}). The solution is not optimal, or the objective does not match the "
            "solver"
        )


def _check_scores(scores: Tensor, where: str) -> None:
    """NaN objective values compare False with everything, so they would pass any check."""
    if bool(torch.isnan(scores).any()):
        raise _CheckFailure(
            f"the objective is NaN on {int(torch.isnan(scores).sum())} of {scores.numel()} "
            f"scored solutions ({where}); an objective must give a number for every solution "
            "(e.g. 0·inf for an unused edge of infinite cost is NaN: count only used entries)"
        )


def _check_optimality(case: _Case) -> None:
    _optimality(case, case.theta, _output_like_input(case), "")
    tied = case.tied_case()
    if tied is not None:
        _optimality(case, *tied, " with ties in the input")


def _optimality(case: _Case, theta: Tensor, z: Tensor, where: str) -> None:
    assert case.feasible is not None  # planned_checks guarantees it
    tolerance = case.tolerance(theta)
    problems = []
    for index in range(theta.shape[0]):
        theta_one = theta[index]  # [*S]
        candidates = case.feasible(theta_one)  # [F, *S]
        if (
            not isinstance(candidates, Tensor)
            or candidates.dim() != theta_one.dim() + 1
            or candidates.shape[1:] != theta_one.shape
            or candidates.shape[0] == 0
        ):
            raise _CheckFailure(
                f"feasible() must return a non-empty [F, {', '.join(map(str, theta_one.shape))}] "
                f"tensor of solutions for one instance, got {_describe(candidates)}"
            )
        candidates = candidates.to(device=z.device, dtype=z.dtype)
        matches = (candidates == z[index]).flatten(1).all(dim=1)
        if not bool(matches.any()):
            problems.append(f"instance {index}: the solution is not among the feasible ones")
            continue
        theta_rows = theta_one.expand_as(candidates)  # [F, *S]
        candidate_scores = case.score(theta_rows, candidates)  # [F]
        own = case.score(theta_one.unsqueeze(0), z[index : index + 1])[0]
        _check_scores(torch.cat([candidate_scores, own.unsqueeze(0)]), f"instance {index}{where}")
        best = candidate_scores.max()
        if own < best - float(tolerance[index]):
            problems.append(
                f"instance {index}: objective {_oriented(own, case.sense):.6g}, "
                f"best feasible {_oriented(best, case.sense):.6g}"
            )
    if problems:
        raise _CheckFailure(
            f"sub-optimal on {len(problems)} of {theta.shape[0]} instances{where} "
            f"(sense {case.sense!r}): " + "; ".join(problems[:3])
        )


def _check_gradients(case: _Case) -> None:
    from aimle_zoo.estimators import AIMLE, AdaptiveTarget

    theta = case.theta.clone().requires_grad_(True)
    # β = 1 makes the target perturbation λ·dy as large as θ itself (λ = β ‖θ‖ / ‖dy‖).
    estimator = AIMLE(
        target=AdaptiveTarget(initial_beta=1.0),
        generator=torch.Generator(theta.device).manual_seed(case.seed),
    )
    z = estimator(case.solver, theta)  # [B, *S]
    # dL/dz = 2ẑ - 1 pushes every entry away from the current solution ẑ.
    loss = (z * (2 * z.detach() - 1)).sum()
    loss.backward()
    grad = theta.grad
    if grad is None:
        raise _CheckFailure("no gradient reached theta through the AIMLE estimator")
    if grad.shape != theta.shape:
        raise _CheckFailure(f"gradient shape {tuple(grad.shape)}, theta {tuple(theta.shape)}")
    if not bool(torch.isfinite(grad).all()):
        raise _CheckFailure("the gradient contains NaN or inf")
    if not bool(grad.any()):
        raise _CheckFailure(
            "the gradient is zero although the loss prefers other solutions: the solver "
            "returned the same solution for the target parameters θ ∓ λ·dL/dz"
        )


def _check_distribution(case: _Case) -> None:
    sample = solver_method(case.solver, "sample")
    marginals = solver_method(case.solver, "marginals")
    assert sample is not None and marginals is not None  # planned_checks guarantees it
    theta, z = case.theta, _output_like_input(case)
    batch, draws = theta.shape[0], DISTRIBUTION_DRAWS
    generator = torch.Generator(theta.device).manual_seed(case.seed)
    with torch.no_grad():
        drawn = sample(theta.clone(), 1.0, generator, draws)
    expected = (batch * draws, *theta.shape[1:])
    if not isinstance(drawn, Tensor) or tuple(drawn.shape) != expected:
        raise _CheckFailure(
            f"sample(theta, 1.0, generator, samples={draws}) returned {_describe(drawn)}; "
            f"expected {expected}: the draws of instance b in rows b·{draws} … b·{draws} + "
            f"{draws - 1}"
        )
    _binary(drawn, " among the samples")
    per_instance = drawn.reshape(batch, draws, *theta.shape[1:])  # [B, N, *S]
    theta_rows = theta.repeat_interleave(draws, dim=0)  # [B·N, *S]
    best = case.score(theta, z).repeat_interleave(draws)  # [B·N]
    scores = case.score(theta_rows, drawn)
    _check_scores(scores, "samples")
    tolerance = case.tolerance(theta).repeat_interleave(draws).to(scores.device)
    better = scores > best + tolerance
    if bool(better.any()):
        instance = int(better.nonzero()[0]) // draws
        raise _CheckFailure(
            f"{int(better.sum())} sample(s) score better than the solver's solution (e.g. on "
            f"instance {instance}): a sample is infeasible, or the solution is not optimal"
        )
    if case.feasible is not None:
        for index in range(batch):
            candidates = case.feasible(theta[index]).to(device=drawn.device, dtype=drawn.dtype)
            known = (per_instance[index].unsqueeze(1) == candidates.unsqueeze(0)).flatten(2)
            if not bool(known.all(dim=2).any(dim=1).all()):
                raise _CheckFailure(f"a sample of instance {index} is not a feasible solution")
    leaf = theta.clone().requires_grad_(True)
    mu = marginals(leaf, 1.0)
    if not isinstance(mu, Tensor) or mu.shape != theta.shape:
        raise _CheckFailure(
            f"marginals(theta, 1.0) returned {_describe(mu)}; expected theta's shape "
            f"{tuple(theta.shape)}"
        )
    if not bool(torch.isfinite(mu).all()) or bool((mu < -1e-6).any() | (mu > 1 + 1e-6).any()):
        raise _CheckFailure("the marginals must be probabilities: finite and within [0, 1]")
    if not mu.requires_grad:
        raise _CheckFailure("the marginals are not differentiable in theta (SIMPLE needs that)")
    (gradient,) = torch.autograd.grad((mu * torch.randn_like(mu)).sum(), leaf, allow_unused=True)
    if gradient is None or not bool(torch.isfinite(gradient).all()):
        raise _CheckFailure("the marginals' gradient is missing or not finite")
    mu = mu.detach().double()
    means = per_instance.double().mean(dim=1)  # [B, *S]
    spread = 5 * (mu * (1 - mu) / draws).sqrt() + 0.02
    off = (means - mu).abs() > spread
    if bool(off.any()):
        worst = float((means - mu).abs().max())
        raise _CheckFailure(
            f"the samples do not average to the marginals: {int(off.sum())} entries differ by "
            f"more than 5 binomial standard deviations (up to {worst:.3g}); the sampler and "
            "the marginals describe different distributions (temperature or sense?)"
        )
    finite = theta[torch.isfinite(theta)].abs()
    scale = float(finite.mean()) if finite.numel() and float(finite.mean()) > 0 else 1.0
    temperature = 1e-3 * scale
    with torch.no_grad():
        sharp = marginals(theta.clone(), temperature).to(theta.dtype)
    # E_p[score] >= best − τ log(#solutions) under p ∝ exp(score/τ) (ties split the mass but
    # lose nothing); #solutions <= 2^(entries of an instance)
    slack = temperature * math.log(2) * theta[0].numel() + case.tolerance(theta).to(z.device)
    deficit = case.score(theta, z) - case.score(theta, sharp)  # [B]
    if bool((deficit > slack).any()):
        raise _CheckFailure(
            f"at a low temperature (τ = {temperature:.3g}) the marginals' objective falls short "
            f"of the solution's by up to {float(deficit.max()):.3g}: the marginals must tend to "
            "optimal solutions as the temperature goes to 0 (in the solver's sense)"
        )


_CHECK_FUNCTIONS: dict[str, Callable[[_Case], None]] = {
    "call": _check_call,
    "shape_dtype_device": _check_shape_dtype_device,
    "binary": _check_binary,
    "integral": _check_integral,
    "batch_independence": _check_batch_independence,
    "determinism": _check_determinism,
    "no_mutation": _check_no_mutation,
    "relative_optimality": _check_relative_optimality,
    "optimality": _check_optimality,
    "gradients": _check_gradients,
    "distribution": _check_distribution,
}


# ----------------------------------------------------------------------------- helpers


def _make_input(
    make_input: MakeInput, batch_size: int, seed: int, name: str
) -> tuple[dict[str, Any], Tensor]:
    generator = torch.Generator().manual_seed(seed)
    made = make_input(batch_size, generator)
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], dict)):
        raise TypeError(
            f"the input generator of solver {name!r} must return (params: dict, theta: Tensor), "
            f"got {_describe(made)}"
        )
    params, theta = made
    if not isinstance(theta, Tensor) or not theta.is_floating_point() or theta.dim() == 0:
        raise TypeError(
            f"the input generator of solver {name!r} must return a floating-point theta "
            f"[B, *S], got {_describe(theta)}"
        )
    if theta.shape[0] != batch_size:
        raise ValueError(
            f"the input generator of solver {name!r} was asked for {batch_size} instances "
            f"and returned theta of shape {tuple(theta.shape)}"
        )
    return params, theta


def _output_tensor(case: _Case) -> Tensor:
    if not isinstance(case.z, Tensor):
        raise _CheckFailure(f"not checked: the solver returned {_describe(case.z)}")
    return case.z


def _output_like_input(case: _Case) -> Tensor:
    z = _output_tensor(case)
    if z.shape != case.theta.shape:
        raise _CheckFailure(
            f"not checked: output shape {tuple(z.shape)} differs from the input's "
            f"{tuple(case.theta.shape)}"
        )
    return z


def _same(a: Any, b: Tensor) -> bool:
    return isinstance(a, Tensor) and a.shape == b.shape and torch.equal(a.to(b), b)


def _oriented(value: Tensor, sense: Sense) -> float:
    return float(value) if sense == "max" else -float(value)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:200]


def _callable_name(solver: object) -> str:
    if inspect.isfunction(solver) or inspect.isclass(solver):
        return solver.__qualname__
    return type(solver).__name__
