"""The solver registry: decorator registration, lookup, errors and the read-only view."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from aimle_zoo.estimators import Relaxed
from aimle_zoo.solvers import (
    FunctionSolver,
    GridShortestPath,
    Solver,
    SolverSpec,
    UnknownSolverError,
    get_solver,
    get_solver_spec,
    list_solvers,
    register_solver,
    solver_registry,
    solver_sense,
    solver_spec,
)
from aimle_zoo.solvers.testing import isolated_registry


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    with isolated_registry():
        yield


def numpy_top_k(theta: Tensor, k: int) -> np.ndarray:
    """Oracle: indicator of the k largest entries per row, by numpy argsort."""
    values = theta.numpy()
    z = np.zeros_like(values)
    np.put_along_axis(z, np.argsort(-values, axis=-1, kind="stable")[:, :k], 1.0, axis=-1)
    return z


def top_k(theta: Tensor, k: int) -> Tensor:
    """Indicator of the k largest entries of each row."""
    return torch.zeros_like(theta).scatter(-1, theta.topk(k, dim=-1).indices, 1.0)


def example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    return {"k": 2}, torch.randn(batch_size, 5, generator=generator)


# ----------------------------------------------------------------------------- registration


def test_register_a_function() -> None:
    fn = register_solver(
        "reg_top_k",
        input_shape="[B, n]",
        constraints=("1 <= k <= n",),
        example=example,
        objective=lambda theta, z: (theta * z).sum(-1),
    )(top_k)
    assert fn is top_k  # the decorator returns the function unchanged

    spec = solver_registry["reg_top_k"]
    assert isinstance(spec, SolverSpec)
    assert (spec.name, spec.factory, spec.sense, spec.source) == (
        "reg_top_k",
        top_k,
        "max",
        f"module {__name__}",  # not aimle_zoo's own
    )
    assert spec.description == "Indicator of the k largest entries of each row."  # docstring
    assert spec.constraints == ("1 <= k <= n",) and spec.example is example
    assert spec.objective is not None and not spec.exportable
    assert solver_spec(top_k) is spec

    solver = get_solver("reg_top_k", k=2)
    assert isinstance(solver, FunctionSolver) and isinstance(solver, nn.Module)
    assert solver.params == {"k": 2}
    assert solver_spec(solver) is spec
    assert "k=2" in repr(solver)
    theta = torch.randn(7, 5)
    np.testing.assert_array_equal(solver(theta).numpy(), numpy_top_k(theta, 2))


def test_register_a_solver_subclass() -> None:
    @register_solver("reg_module", sense="min", exportable=True, description="bottom-k")
    class BottomK(Solver):
        def __init__(self, k: int = 1) -> None:
            super().__init__()
            self.k = k

        def forward(self, theta: Tensor) -> Tensor:
            return top_k(-theta, self.k)

    solver = get_solver("reg_module", k=3)
    assert type(solver) is BottomK and solver.k == 3
    assert solver.params == {"k": 3}
    assert solver_spec(solver) is solver_spec(BottomK) is solver_registry["reg_module"]
    assert solver_sense(solver) == "min" and solver_registry["reg_module"].exportable
    theta = torch.randn(4, 6)
    np.testing.assert_array_equal(solver(theta).numpy(), numpy_top_k(-theta, 3))
    assert get_solver("reg_module").params == {}  # defaults are not recorded


def test_register_a_plain_callable_class() -> None:
    @register_solver("reg_callable")
    class TopK:
        def __init__(self, k: int) -> None:
            self.k = k

        def __call__(self, theta: Tensor) -> Tensor:
            return top_k(theta, self.k)

    solver = get_solver("reg_callable", k=2)
    assert isinstance(solver, FunctionSolver) and isinstance(solver.fn, TopK)
    assert solver.params == {"k": 2} and solver_spec(solver) is solver_registry["reg_callable"]
    theta = torch.randn(3, 8)
    np.testing.assert_array_equal(solver(theta).numpy(), numpy_top_k(theta, 2))


def test_aliases_resolve_to_the_canonical_solver() -> None:
    register_solver("reg_canonical", aliases=("reg_other", "reg_third"))(top_k)
    assert (
        get_solver_spec("reg_other")
        is get_solver_spec("reg_third")
        is solver_registry["reg_canonical"]
    )
    assert solver_spec(get_solver("reg_third", k=1)).name == "reg_canonical"
    assert "reg_canonical" in list_solvers()
    assert "reg_other" not in list_solvers() and "reg_other" not in solver_registry
    assert list_solvers() == sorted(list_solvers())


# ----------------------------------------------------------------------------- errors


def test_wrong_params_name_the_signature() -> None:
    register_solver("reg_top_k")(top_k)
    with pytest.raises(
        TypeError,
        match=r"'reg_top_k': unexpected parameter\(s\) \['size'\] \(given \['size'\]\)",
    ) as err:
        get_solver("reg_top_k", size=2)
    assert "Its signature is reg_top_k(theta: 'Tensor', k: 'int') -> 'Tensor'" in str(err.value)
    with pytest.raises(
        TypeError, match=r"missing a required argument: 'k' \(given no parameters\)"
    ):
        get_solver("reg_top_k")


def test_registration_arguments_are_checked_and_a_rerun_module_registers_again() -> None:
    """A bare string for aliases used to register one alias per character; an empty or
    non-string name broke every later lookup. Running the same definition again (a module
    reload, a notebook cell) replaces it instead of failing."""
    with pytest.raises(TypeError, match=r"aliases must be a sequence of strings, got the string"):
        register_solver("reg_a", aliases="am2")(top_k)
    with pytest.raises(TypeError, match="constraints must be a sequence"):
        register_solver("reg_a", constraints="x > 0")(top_k)
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match="non-empty strings"):
            register_solver(bad)(top_k)  # type: ignore[arg-type]
    assert "reg_a" not in list_solvers() and "a" not in list_solvers()

    def solve(theta: Tensor) -> Tensor:
        return theta

    register_solver("reg_again", aliases=("reg_again_alias",))(solve)
    register_solver("reg_again", aliases=("reg_again_alias",))(solve)  # the same cell, again

    def solve(theta: Tensor) -> Tensor:  # another definition under the same name
        return theta

    register_solver("reg_again", aliases=("reg_again_alias",))(solve)  # redefined: replaces
    assert get_solver_spec("reg_again_alias").factory is solve
    register_solver("reg_top_k")(top_k)
    with pytest.raises(ValueError, match="already registered under the name 'reg_top_k'"):
        register_solver("reg_top_k")(solve)  # another solver's name

    @register_solver("reg_class")
    class Fixed(Solver):
        def __init__(self, *, scale: float = 1.0) -> None:
            super().__init__()

    with pytest.raises(TypeError, match=r"Its signature is reg_class\(\*, scale: 'float' = 1.0\)"):
        get_solver("reg_class", k=2)


def test_errors_raised_by_a_constructor_propagate_unchanged() -> None:
    @register_solver("reg_validating")
    class Validating(Solver):
        def __init__(self, k: int = 1) -> None:
            super().__init__()
            if not isinstance(k, int):
                raise TypeError(f"k must be an int, got {type(k).__name__}")

    with pytest.raises(TypeError) as err:
        get_solver("reg_validating", k="2")
    assert str(err.value) == "k must be an int, got str"


@pytest.mark.parametrize(
    ("name", "aliases", "taken"),
    [
        ("reg_first", (), "reg_first"),  # name taken by a name
        ("reg_new", ("reg_first",), "reg_first"),  # alias taken by a name
        ("reg_first_alias", (), "reg_first_alias"),  # name taken by an alias
        ("reg_new", ("reg_first_alias",), "reg_first_alias"),  # alias taken by an alias
    ],
)
def test_duplicate_names_and_aliases_raise(name: str, aliases: tuple[str, ...], taken: str) -> None:
    register_solver("reg_first", aliases=("reg_first_alias",))(top_k)
    before = dict(solver_registry)

    def other(theta: Tensor) -> Tensor:
        return theta

    with pytest.raises(ValueError, match=f"already registered under the name '{taken}'"):
        register_solver(name, aliases=aliases)(other)
    assert dict(solver_registry) == before  # nothing half-registered
    assert solver_spec(other) is None


def test_invalid_registrations_raise() -> None:
    with pytest.raises(ValueError, match="sense must be 'max' or 'min', got 'maximum'"):
        register_solver("reg_bad", sense="maximum")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a class or function, got 3"):
        register_solver("reg_bad")(3)
    assert "reg_bad" not in solver_registry


def test_registry_view_is_read_only_and_live() -> None:
    assert "reg_live" not in solver_registry
    register_solver("reg_live")(top_k)
    assert solver_registry["reg_live"].factory is top_k
    with pytest.raises(TypeError):
        solver_registry["reg_live"] = solver_registry["reg_live"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del solver_registry["reg_live"]  # type: ignore[attr-defined]


def test_unknown_name_lists_close_matches() -> None:
    register_solver("reg_shortest_path", aliases=("reg_dijkstra",))(top_k)
    with pytest.raises(UnknownSolverError) as err:
        get_solver("reg_shortest_paths")
    message = str(err.value)
    assert message.startswith(
        "unknown solver 'reg_shortest_paths'. Did you mean 'reg_shortest_path'"
    )
    assert "reg_dijkstra" in message.split("Known solvers:")[1]
    assert "register_solver" in message
    assert isinstance(err.value, KeyError)  # mapping-style lookups can catch it

    with pytest.raises(UnknownSolverError, match="Did you mean 'reg_dijkstra'"):
        get_solver_spec("reg_dijkstr")
    with pytest.raises(UnknownSolverError) as err:
        get_solver("zzzzzz")
    assert "Did you mean" not in str(err.value)
    with pytest.raises(TypeError, match="solver name must be a string, got int"):
        get_solver(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sense and spec


def test_solver_sense_and_spec() -> None:
    register_solver("reg_min", sense="min")(top_k)
    assert solver_sense(get_solver("reg_min", k=1)) == "min"
    assert solver_sense(top_k) == "min"  # the registered function itself
    assert solver_sense(FunctionSolver(top_k, k=1)) == "min"  # wrapped by hand

    class Unregistered:
        def __init__(self, sense: str) -> None:
            self.sense = sense

    assert solver_sense(Unregistered("min")) == "min"
    assert solver_sense(Unregistered("max")) == "max"
    assert solver_sense(lambda theta: theta) == "max"  # default
    with pytest.raises(ValueError, match="sense must be 'max' or 'min', got 'down'"):
        solver_sense(Unregistered("down"))
    assert solver_spec(Unregistered("min")) is None
    assert solver_spec(lambda theta: theta) is None


def test_a_subclass_of_a_registered_solver_is_not_that_solver() -> None:
    @register_solver("reg_top_k_class", sense="max", input_shape="[B, n]")
    class TopK(Solver):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def forward(self, theta: Tensor) -> Tensor:
            return top_k(theta, self.k)

    class BottomK(TopK):
        sense = "min"

        def forward(self, theta: Tensor) -> Tensor:
            return top_k(-theta, self.k)

    assert solver_spec(TopK) is solver_spec(TopK(2)) is solver_registry["reg_top_k_class"]
    assert solver_spec(BottomK) is None and solver_spec(BottomK(2)) is None
    assert solver_sense(TopK(2)) == "max" and solver_sense(BottomK(2)) == "min"


def test_a_subclass_of_a_registered_minimiser_inherits_its_sense() -> None:
    """The registered sense is a class attribute: a subclass that only preprocesses θ (here of
    the built-in grid solver) stays a minimiser instead of falling back to "max"."""

    class ScaledGrid(GridShortestPath):
        def forward(self, theta: Tensor) -> Tensor:
            return super().forward(2 * theta)

    @register_solver("reg_bottom_k_class", sense="min")
    class BottomK(Solver):
        def forward(self, theta: Tensor) -> Tensor:
            return top_k(-theta, 1)

    class Shifted(BottomK):
        def forward(self, theta: Tensor) -> Tensor:
            return super().forward(theta + 1)

    assert solver_sense(GridShortestPath()) == solver_sense(ScaledGrid()) == "min"
    assert solver_sense(BottomK()) == solver_sense(Shifted()) == "min"
    assert solver_spec(ScaledGrid()) is None  # still not the registered solver itself


def test_a_registered_plain_class_keeps_its_instance_sense_and_relaxation() -> None:
    """``get_solver`` wraps an instance of a class that is not a Solver in a FunctionSolver;
    the instance's own ``sense`` and ``relax`` are still found through the wrapper."""

    @register_solver("reg_plain_argext", sense="max")
    class ArgExtreme:
        def __init__(self, maximum: bool = True) -> None:
            self.sense = "max" if maximum else "min"

        def __call__(self, theta: Tensor) -> Tensor:
            return top_k(theta if self.sense == "max" else -theta, 1)

        def relax(self, theta: Tensor, temperature: float) -> Tensor:
            signed = theta if self.sense == "max" else -theta
            return torch.softmax(signed / temperature, dim=-1)

    built = get_solver("reg_plain_argext", maximum=False)
    assert isinstance(built, FunctionSolver)
    assert solver_sense(built) == "min" and solver_sense(get_solver("reg_plain_argext")) == "max"
    theta = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    z = Relaxed(noise=None, temperature=0.5)(built, theta)
    torch.testing.assert_close(z.detach(), torch.softmax(-theta.detach() / 0.5, dim=-1))


def test_a_definition_registered_again_under_its_own_alias_raises() -> None:
    """Only the same definition under the same name counts as a re-run; taking one of its own
    aliases as a new name would leave that key both a solver and an alias."""
    register_solver("reg_self", aliases=("reg_self_alias",))(top_k)
    with pytest.raises(ValueError, match="already registered under the name 'reg_self_alias'"):
        register_solver("reg_self_alias")(top_k)
    assert "reg_self_alias" not in solver_registry
    assert get_solver_spec("reg_self_alias").name == "reg_self"


def test_a_class_keeps_its_own_sense_attribute() -> None:
    """The registry gives ``sense`` only to classes without one: a property computing it
    per instance survives registration."""

    @register_solver("reg_own_sense", sense="max")
    class Either(Solver):
        def __init__(self, maximum: bool = True) -> None:
            super().__init__()
            self.maximum = maximum

        @property
        def sense(self) -> str:
            return "max" if self.maximum else "min"

        def forward(self, theta: Tensor) -> Tensor:
            return theta

    assert isinstance(vars(Either)["sense"], property)
    assert get_solver("reg_own_sense", maximum=False).sense == "min"

    @register_solver("reg_no_sense", sense="min")
    class Plain(Solver):
        def forward(self, theta: Tensor) -> Tensor:
            return theta

    assert vars(Plain)["sense"] == "min"


def test_only_aimle_zoo_modules_are_builtin() -> None:
    """The source is "builtin" for ``aimle_zoo`` and its submodules only, not for another
    package whose name merely starts the same."""
    for module, source in [
        ("aimle_zoo.solvers.extra", "builtin"),
        ("aimle_zoo", "builtin"),
        ("aimle_zoo_contrib.solvers", "module aimle_zoo_contrib.solvers"),
        ("aimlezoo_assignment_plugin", "module aimlezoo_assignment_plugin"),
    ]:

        def solve(theta: Tensor) -> Tensor:
            return theta

        solve.__module__ = module
        name = f"reg_source_{module.replace('.', '_')}"
        assert register_solver(name)(solve) is solve
        assert get_solver_spec(name).source == source


def test_a_missing_parameter_of_a_solver_taking_any_keyword_is_named() -> None:
    """A factory with ``**options`` accepts any extra name, so the error is the missing one."""

    def scaled(theta: Tensor, k: int, **options: Any) -> Tensor:
        return top_k(theta, k)

    register_solver("reg_kwargs")(scaled)
    with pytest.raises(TypeError, match=r"missing a required argument: 'k' \(given \['size'\]\)"):
        get_solver("reg_kwargs", size=2)
    assert get_solver("reg_kwargs", k=1, size=2).params == {"k": 1, "size": 2}
