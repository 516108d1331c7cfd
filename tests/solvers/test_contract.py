"""Every built-in solver honours the solver contract and carries complete registry metadata.

The tests are parametrized over the built-in solvers registered at collection time, so a new
built-in is checked without new test code. Exhaustive optimality checks against brute force live
in each solver's own tests; here the conformance kit runs its cheaper checks on each spec's
``example`` with its ``objective``.
"""

from __future__ import annotations

import functools
import inspect
import math

import pytest
import torch

from aimle_zoo.solvers import (
    Solver,
    SolverInputError,
    get_solver,
    get_solver_spec,
    list_solvers,
    solver_registry,
)
from aimle_zoo.solvers.testing import ConformanceReport, check_solver, planned_checks

BUILTINS = [name for name in list_solvers() if get_solver_spec(name).source == "builtin"]
#: (solver, check): every check but brute-force optimality and the exact distribution, with
#: ``binary`` or ``integral`` as the solver's registry declares
CONTRACT_CASES = [
    (name, check)
    for name in BUILTINS
    for check in planned_checks(values=get_solver_spec(name).values)
]


@functools.cache
def contract_report(name: str) -> ConformanceReport:
    """The kit runs once per solver; each check is then its own test."""
    return check_solver(name, batch_size=6, seed=0)


@pytest.mark.parametrize(("name", "check"), CONTRACT_CASES)
def test_contract(name: str, check: str) -> None:
    result = contract_report(name)[check]
    assert result.passed, f"{name}: {check}: {result.message}"


@pytest.mark.parametrize("name", BUILTINS)
def test_metadata_schema(name: str) -> None:
    spec = solver_registry[name]
    assert spec.name == name and spec.source == "builtin"
    assert isinstance(spec.description, str) and spec.description.strip(), "needs a description"
    assert "\n" not in spec.description, "the description is one line"
    assert spec.sense in ("max", "min")
    assert isinstance(spec.input_shape, str) and spec.input_shape.startswith("[B"), (
        f"input_shape {spec.input_shape!r} must describe a batch-first shape, e.g. '[B, n]'"
    )
    assert isinstance(spec.constraints, tuple)
    assert all(isinstance(item, str) and item for item in spec.constraints)
    for alias in spec.aliases:
        assert get_solver_spec(alias) is spec
    assert spec.objective is None or callable(spec.objective)
    if spec.exportable:
        assert inspect.isclass(spec.factory) and issubclass(spec.factory, Solver), (
            "an exportable solver must be a Solver (nn.Module) subclass"
        )


@pytest.mark.parametrize("name", BUILTINS)
def test_example_is_reproducible_and_builds_the_solver(name: str) -> None:
    spec = solver_registry[name]
    assert callable(spec.example), "needs an example: (batch_size, generator) -> (params, theta)"
    params, theta = spec.example(3, torch.Generator().manual_seed(7))
    params_again, theta_again = spec.example(3, torch.Generator().manual_seed(7))
    assert isinstance(params, dict) and params == params_again
    assert theta.shape[0] == 3 and theta.is_floating_point()
    assert torch.equal(theta, theta_again), "the example must draw only from the generator"

    solver = get_solver(name, **params)
    assert isinstance(solver, Solver) and solver.params == params
    z = solver(theta)
    objective = spec.objective or (lambda t, s: (t * s).flatten(1).sum(1))
    values = objective(theta, z)
    assert values.shape == (3,)
    assert all(math.isfinite(value) for value in values.tolist())


def test_contract_covers_every_builtin() -> None:
    """Every solver collected above is still registered, as a built-in, when the tests run."""
    assert all(get_solver_spec(name).source == "builtin" for name in BUILTINS)
    common = {
        "call",
        "shape_dtype_device",
        "batch_independence",
        "determinism",
        "no_mutation",
        "relative_optimality",
        "gradients",
    }
    for name in BUILTINS:
        checks = {check for solver, check in CONTRACT_CASES if solver == name}
        values_check = "binary" if get_solver_spec(name).values == "binary" else "integral"
        assert checks == common | {values_check}, name
    assert {name for name in BUILTINS if get_solver_spec(name).values == "integer"} == {"ranking"}


@pytest.mark.parametrize(
    ("solver", "shape"),
    [
        (
            lambda: get_solver("graph_shortest_path", edge_index=[[0, 1], [1, 2]], num_nodes=3),
            (2, 2),
        ),
        (lambda: get_solver("mst", mask=torch.ones(4, 4, dtype=torch.bool)), (2, 4, 4)),
    ],
    ids=["graph_shortest_path", "masked-mst"],
)
def test_a_solver_left_on_another_device_says_to_move_it(solver, shape) -> None:
    """θ on another device than the solver's own tensors (the meta device stands in for a GPU
    here) used to fail deep inside with PyTorch's generic device error."""
    with pytest.raises(SolverInputError, match=r"is on meta but the solver's .* is on cpu; move"):
        solver()(torch.randn(*shape, device="meta"))
