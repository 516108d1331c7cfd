"""The conformance kit itself: it passes conforming toy solvers and detects each kind of breach."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from aimle_zoo.solvers import (
    Solver,
    TopK,
    _registry as registry_module,
    register_solver,
    solver_registry,
)
from aimle_zoo.solvers.testing import (
    CHECKS,
    ConformanceReport,
    check_solver,
    isolated_registry,
    linear_objective,
    planned_checks,
    solver_conformance_test,
)

N, K = 6, 2


def top_k(theta: Tensor, k: int = K) -> Tensor:
    """Indicator of the k largest entries of the last dimension: ``[B, n] -> [B, n]``."""
    return torch.zeros_like(theta).scatter(-1, theta.topk(k, dim=-1).indices, 1.0)


def top_k_highest_index_on_ties(theta: Tensor, k: int = K) -> Tensor:
    """Top-k that breaks ties towards the highest index (a different but valid rule)."""
    order = torch.argsort(theta.flip(-1), dim=-1, descending=True, stable=True)
    chosen = theta.shape[-1] - 1 - order[..., :k]
    return torch.zeros_like(theta).scatter(-1, chosen, 1.0)


def bottom_k(theta: Tensor, k: int = K) -> Tensor:
    return top_k(-theta, k)


def gaussian_input(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    return {"k": K}, torch.randn(batch_size, N, generator=generator)


def tied_input(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """Integer scores from {0, 1, 2}: many ties."""
    return {"k": K}, torch.randint(0, 3, (batch_size, N), generator=generator).float()


def k_subsets(theta: Tensor, k: int = K) -> Tensor:
    """Every indicator with exactly k ones over the last dimension: ``[n] -> [C(n, k), n]``."""
    n = theta.shape[-1]
    rows = [
        [1.0 if i in chosen else 0.0 for i in range(n)]
        for chosen in itertools.combinations(range(n), k)
    ]
    return torch.tensor(rows, dtype=theta.dtype)


def run(solver: Callable[[Tensor], Tensor], **kwargs: Any) -> ConformanceReport:
    kwargs.setdefault("make_input", gaussian_input)
    kwargs.setdefault("feasible", k_subsets)
    kwargs.setdefault("check_gradients", False)
    return check_solver(solver, **kwargs)


def failed_names(report: ConformanceReport) -> set[str]:
    return {result.name for result in report.failed}


# The one-line pytest helper, used as a plugin author would.
test_top_k_conformance = solver_conformance_test(
    top_k, make_input=gaussian_input, feasible=k_subsets
)


# ----------------------------------------------------------------------------- conforming solvers


def test_a_conforming_solver_passes_every_check() -> None:
    report = run(top_k)
    assert report.ok, str(report)
    assert report.passed == [
        name for name in CHECKS if name not in ("integral", "gradients", "distribution")
    ]


def test_ties_broken_by_another_rule_are_still_optimal() -> None:
    report = run(top_k_highest_index_on_ties, make_input=tied_input)
    assert report.ok, str(report)


def test_minimising_solver_is_checked_against_the_minimum() -> None:
    class BottomK:
        sense = "min"

        def __call__(self, theta: Tensor) -> Tensor:
            return bottom_k(theta)

    class TopKDeclaredMin(BottomK):
        def __call__(self, theta: Tensor) -> Tensor:
            return top_k(theta)

    assert run(BottomK()).ok
    assert failed_names(run(TopKDeclaredMin())) == {"relative_optimality", "optimality"}


def test_gradients_flow_through_aimle() -> None:
    report = run(top_k, check_gradients=True, checks=["gradients"])
    assert report.passed == ["call", "gradients"], str(report)


def test_module_solver_runs_on_the_requested_device() -> None:
    class ModuleTopK(Solver):
        def forward(self, theta: Tensor) -> Tensor:
            return top_k(theta)

    report = run(ModuleTopK(), device="cpu")
    assert report.ok, str(report)


def test_a_module_solver_is_moved_to_the_requested_device() -> None:
    """The kit moves the module with θ (its buffers too); "meta" stands in for an accelerator."""

    class Offset(Solver):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("offset", torch.zeros(N))

        def forward(self, theta: Tensor) -> Tensor:
            return top_k(theta + self.offset)

    solver = Offset()
    run(solver, device="meta", checks=["call"])
    assert solver.offset.device.type == "meta"


# ----------------------------------------------------------------------------- detected breaches


class Alternating:
    """Top-k on odd calls, bottom-k on even calls: not deterministic."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, theta: Tensor) -> Tensor:
        self.calls += 1
        return top_k(theta) if self.calls % 2 else bottom_k(theta)


def mutates_input(theta: Tensor) -> Tensor:
    z = top_k(theta)
    theta.zero_()
    return z


def centres_over_the_batch(theta: Tensor) -> Tensor:
    return top_k(theta - theta.mean(dim=0, keepdim=True))


def first_k(theta: Tensor) -> Tensor:
    """Always the first k entries: feasible, consistent, never optimal in general."""
    z = torch.zeros_like(theta)
    z[..., :K] = 1.0
    return z


# Checks that compare outputs need a tensor (of the input's shape); no_mutation needs neither.
NEEDS_SHAPE = {
    "shape_dtype_device",
    "batch_independence",
    "determinism",
    "relative_optimality",
    "optimality",
}
NEEDS_TENSOR = NEEDS_SHAPE | {"binary"}


def raises(theta: Tensor) -> Tensor:
    raise RuntimeError("solver exploded")


class ReusedBuffer:
    """Top-k written into one cached tensor, returned on every call: the next call overwrites
    the solution an estimator still holds."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, ...], Tensor] = {}  # one per input shape

    def __call__(self, theta: Tensor) -> Tensor:
        buffer = self.buffers.setdefault(tuple(theta.shape), torch.empty_like(theta))
        return buffer.copy_(top_k(theta))


def random_ties(theta: Tensor) -> Tensor:
    """Top-k with ties broken at random: invisible on Gaussian scores, which never tie."""
    return top_k(theta + 1e-6 * torch.rand_like(theta))


# Breaches that only ties reveal (Gaussian scores never tie): the kit's tie-rich copy of the
# example goes through the output checks, not only through the determinism check.


def kth_largest(theta: Tensor) -> Tensor:
    return theta.topk(K, dim=-1).values[..., -1:]  # [B, 1]


def threshold_ties(theta: Tensor) -> Tensor:
    """Every entry >= the k-th largest: more than k ones (infeasible) under ties."""
    return (theta >= kth_largest(theta)).to(theta.dtype)


def fractional_ties(theta: Tensor) -> Tensor:
    """The tied entries share the places left: fractional under ties."""
    kth = kth_largest(theta)
    above, tied = (theta > kth).to(theta.dtype), (theta == kth).to(theta.dtype)
    return above + tied * (K - above.sum(-1, keepdim=True)) / tied.sum(-1, keepdim=True)


def ties_by_batch_position(theta: Tensor) -> Tensor:
    """Ties broken by seeded noise laid over the batch: the same on every call, but an
    instance's solution depends on its row."""
    noise = torch.rand(theta.shape, generator=torch.Generator().manual_seed(0))
    return top_k(theta + 1e-6 * noise)


def worst_entry_under_ties(theta: Tensor) -> Tensor:
    """Top-k, but rows with a tie at the k-th value swap their best entry for their worst."""
    z = top_k(theta)
    tied_row = (theta == kth_largest(theta)).sum(-1, keepdim=True) > 1  # [B, 1]
    best = torch.nn.functional.one_hot(theta.argmax(-1), N).to(theta)
    worst = torch.nn.functional.one_hot(theta.argmin(-1), N).to(theta)
    return torch.where(tied_row, z - best + worst, z)


@pytest.mark.parametrize(
    ("solver", "expected_failures", "message"),
    [
        (lambda theta: top_k(theta)[:, :-1], NEEDS_SHAPE, "shape (8, 5) (input has (8, 6))"),
        (lambda theta: top_k(theta).bool(), {"shape_dtype_device"}, "dtype torch.bool"),
        (lambda theta: top_k(theta).numpy(), NEEDS_TENSOR, "expected a tensor, got ndarray"),
        (lambda theta: top_k(theta) / 2, {"binary", "optimality"}, "are not 0 or 1"),
        (centres_over_the_batch, {"batch_independence", "optimality"}, "alone differs"),
        (
            Alternating(),
            {"batch_independence", "determinism", "relative_optimality", "optimality"},
            "changed the solution",
        ),
        (mutates_input, {"no_mutation"}, "modified its input"),
        (bottom_k, {"relative_optimality", "optimality"}, "scores better"),
        (first_k, {"optimality"}, "sub-optimal on"),
        (partial(top_k, k=K + 1), {"optimality"}, "not among the feasible ones"),
        (ReusedBuffer(), {"determinism"}, "returned the first call's tensor"),
        (
            random_ties,
            {"determinism", "batch_independence"},
            "with ties in the input changed the solution",
        ),
        (lambda theta: top_k(theta).squeeze(0), {"batch_independence"}, "keep its batch dim"),
        (threshold_ties, {"optimality"}, "instances with ties in the input"),
        (fractional_ties, {"binary", "optimality"}, "entries with ties in the input are not"),
        (ties_by_batch_position, {"batch_independence"}, "call with ties in the input"),
        (
            worst_entry_under_ties,
            {"relative_optimality", "optimality"},
            "pair(s) with ties in the input",
        ),
    ],
    ids=[
        "wrong-shape",
        "wrong-dtype",
        "not-a-tensor",
        "non-binary",
        "batch-dependent",
        "non-deterministic",
        "mutates-input",
        "minimises",
        "sub-optimal",
        "infeasible",
        "reused-output",
        "random-ties",
        "squeezed-batch-of-one",
        "infeasible-under-ties",
        "fractional-under-ties",
        "ties-by-batch-position",
        "sub-optimal-under-ties",
    ],
)
def test_breaches_are_detected(
    solver: Callable[[Tensor], Tensor], expected_failures: set[str], message: str
) -> None:
    report = run(solver)
    assert failed_names(report) == expected_failures
    assert any(message in result.message for result in report.failed), str(report)


def test_a_raising_solver_fails_the_call_and_skips_the_rest() -> None:
    report = run(raises)
    assert report["call"].message == "raised RuntimeError: solver exploded"
    assert all(not result.passed for result in report.results.values())
    assert report["binary"].message == "not run: the solver call failed"


def test_zero_gradient_is_detected() -> None:
    report = run(first_k, check_gradients=True, checks=["gradients"])
    assert failed_names(report) == {"gradients"}
    assert "gradient is zero" in report["gradients"].message


def test_batch_independence_names_the_instances() -> None:
    def second_instance_differs(theta: Tensor) -> Tensor:
        z = top_k(theta)
        if theta.shape[0] > 1:
            z[1] = bottom_k(theta[1:2])[0]
        return z

    report = run(second_instance_differs, checks=["batch_independence"])
    assert "instance(s) 1 alone" in report["batch_independence"].message


def test_malformed_feasible_and_objective_are_reported() -> None:
    report = run(top_k, feasible=lambda theta: theta, checks=["optimality"])
    assert "feasible() must return a non-empty [F, 6] tensor" in report["optimality"].message
    report = run(top_k, feasible=lambda theta: theta.unsqueeze(0)[:0], checks=["optimality"])
    assert "feasible() must return a non-empty [F, 6] tensor" in report["optimality"].message
    report = run(top_k, objective=lambda theta, z: theta * z, checks=["relative_optimality"])
    assert "must return a tensor of shape [64]" in report["relative_optimality"].message


def test_a_nan_objective_fails_instead_of_passing_every_comparison() -> None:
    def nan_where_unused(theta: Tensor, z: Tensor) -> Tensor:  # 0·inf on unused entries
        return (theta.masked_fill(z == 0, float("inf")) * z).sum(-1)

    report = run(bottom_k, objective=nan_where_unused)  # a wrong solver, hidden by the NaN
    assert {"relative_optimality", "optimality"} <= failed_names(report)
    assert "the objective is NaN" in report["optimality"].message


# ----------------------------------------------------------------------------- report and plan


def test_report_lists_every_failure() -> None:
    report = run(bottom_k)
    assert not report.ok
    assert report["binary"].passed
    with pytest.raises(AssertionError) as raised:
        report.raise_for_failures()
    text = str(raised.value)
    assert "'bottom_k' failed 2 of 8 conformance checks" in text
    assert "relative_optimality:" in text and "optimality:" in text
    assert "FAILED" in str(report)
    with pytest.raises(KeyError, match="did not run"):
        report["gradients"]
    run(top_k).raise_for_failures()


def test_planned_checks() -> None:
    assert planned_checks() == [
        name for name in CHECKS if name not in ("integral", "optimality", "distribution")
    ]
    assert planned_checks(feasible=True, check_gradients=False, distribution=True) == [
        name for name in CHECKS if name not in ("integral", "gradients")
    ]
    assert planned_checks(values="integer") == [
        name for name in CHECKS if name not in ("binary", "optimality", "distribution")
    ]
    assert planned_checks(["determinism", "binary"]) == ["call", "binary", "determinism"]
    assert planned_checks(["integral"]) == ["call", "integral"]  # 0/1 entries are integers too
    with pytest.raises(ValueError, match="ask for the 'integral' check instead"):
        planned_checks(["binary"], values="integer")
    assert "distribution" not in planned_checks(distribution=True, values="integer")
    with pytest.raises(ValueError, match="does not cover solvers of integer vectors"):
        planned_checks(["distribution"], distribution=True, values="integer")
    with pytest.raises(ValueError, match="values must be one of"):
        planned_checks(values="ternary")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown conformance checks \\['speed'\\]"):
        planned_checks(["speed"])
    with pytest.raises(ValueError, match="needs feasible="):
        planned_checks(["optimality"])
    with pytest.raises(ValueError, match="'distribution' check needs a solver with sample"):
        planned_checks(["distribution"])
    assert planned_checks(["distribution"], distribution=True) == ["call", "distribution"]


def test_setup_errors_are_raised_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"no example input .* or pass make_input="):
        check_solver(top_k)
    with pytest.raises(TypeError, match="params apply only to a solver given by name"):
        check_solver(top_k, params={"k": 2}, make_input=gaussian_input)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        check_solver(top_k, make_input=gaussian_input, batch_size=0)
    with pytest.raises(TypeError, match="must return \\(params: dict, theta: Tensor\\)"):
        check_solver(top_k, make_input=lambda b, g: torch.zeros(b, N))
    with pytest.raises(TypeError, match="floating-point theta"):
        check_solver(top_k, make_input=lambda b, g: ({}, torch.zeros(b, N, dtype=torch.long)))
    with pytest.raises(ValueError, match="asked for 8 instances"):
        check_solver(top_k, make_input=lambda b, g: ({}, torch.zeros(3, N)))


# ----------------------------------------------------------------------------- registered solvers


def test_registered_solver_uses_its_spec_example_params_and_objective() -> None:
    with isolated_registry():
        register_solver("kit_top_k", example=gaussian_input)(top_k)
        report = check_solver("kit_top_k", feasible=k_subsets, check_gradients=False)
        assert report.solver == "kit_top_k" and report.ok, str(report)
        # params override the example's: a 3-subset solver fails the 2-subset enumeration
        report = check_solver("kit_top_k", params={"k": 3}, feasible=k_subsets)
        assert "not among the feasible ones" in report["optimality"].message

        register_solver(
            "kit_top_k_wrong_objective",
            example=gaussian_input,
            objective=lambda theta, z: -linear_objective(theta, z),
        )(top_k)
        report = check_solver("kit_top_k_wrong_objective", check_gradients=False)
        assert failed_names(report) == {"relative_optimality"}
        report = check_solver(
            "kit_top_k_wrong_objective", objective=linear_objective, check_gradients=False
        )
        assert report.ok, str(report)


def test_isolated_registry_forgets_registrations_and_plugin_state() -> None:
    before = dict(solver_registry)
    loaded = registry_module._plugins_loaded
    with isolated_registry():
        register_solver("kit_temporary", aliases=("kit_temporary_alias",))(top_k)
        registry_module._plugins_loaded = not loaded
        assert "kit_temporary" in solver_registry
    assert dict(solver_registry) == before
    assert "kit_temporary_alias" not in registry_module._aliases
    assert registry_module._plugins_loaded == loaded


# ----------------------------------------------------------------------------- pytest helper


def test_pytest_helper_is_parametrized_by_check_and_runs_the_kit_once() -> None:
    calls = []

    def counted_input(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
        calls.append(batch_size)
        return gaussian_input(batch_size, generator)

    test = solver_conformance_test(bottom_k, make_input=counted_input, feasible=k_subsets)
    (mark,) = test.pytestmark  # type: ignore[attr-defined]
    assert mark.name == "parametrize"
    assert mark.args == ("check", planned_checks(feasible=True))
    test("binary")
    test("determinism")
    with pytest.raises(AssertionError, match="'bottom_k', check 'optimality': sub-optimal on"):
        test("optimality")
    assert calls == [8]


def test_pytest_helper_oracle_agrees_with_numpy() -> None:
    """The k-subset enumeration used as the oracle above is itself right (numpy argsort)."""
    theta = torch.randn(N)
    subsets = k_subsets(theta)
    best = subsets[(subsets @ theta).argmax()]
    expected = np.zeros(N)
    expected[np.argsort(-theta.numpy())[:K]] = 1.0
    assert len(subsets) == 15
    np.testing.assert_array_equal(best.numpy(), expected)


def test_masked_entries_do_not_turn_the_default_objective_into_nan() -> None:
    """A -inf mask is a supported input: 0·(-inf) = NaN used to fail a correct solver."""

    def masked_input(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
        theta = torch.randn(batch_size, N, generator=generator)
        theta[:, N - 2 :] = float("-inf")
        return {"k": K}, theta

    assert run(top_k, make_input=masked_input).ok
    theta = torch.tensor([[1.0, float("-inf")], [float("inf"), 2.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert linear_objective(theta, z).tolist() == [1.0, 2.0]


def test_check_solver_params_complete_the_examples_instead_of_replacing_them() -> None:
    report = check_solver("topk", params={"ties": "threshold"}, check_gradients=False)
    assert report["call"].passed, str(report)


def test_a_solution_worse_by_more_than_a_few_ulps_is_sub_optimal() -> None:
    """The tolerance is a few ulps of ‖θ‖₁, not a fraction of it: 1e-3 short of the best on
    scores of about 1 fails both optimality checks."""

    def close_scores(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
        theta = torch.zeros(batch_size, N)
        theta[:, 0], theta[:, 1] = 1.0, 1.001  # the best single entry is the second
        theta[1::2, 2] = 0.5  # odd rows: the solver below finds it
        return {"k": 1}, theta

    def second_only_with_a_hint(theta: Tensor) -> Tensor:
        """The first entry, or the second where the third is positive (a rule of the values)."""
        chosen = (theta[:, 2] > 0).long()  # [B]
        return torch.nn.functional.one_hot(chosen, theta.shape[-1]).to(theta)

    report = run(second_only_with_a_hint, make_input=close_scores, feasible=partial(k_subsets, k=1))
    assert failed_names(report) == {"relative_optimality", "optimality"}, str(report)
    assert "on instance 0 the solution of instance 1 scores 1.001" in str(report)


def test_a_nan_output_is_reported_as_not_binary_not_as_non_deterministic() -> None:
    report = run(lambda theta: top_k(theta) * float("nan"), checks=["binary", "determinism"])
    assert failed_names(report) == {"binary", "determinism"}
    assert report["determinism"].message == "not checked: the output holds NaN (see 'binary')"


def test_a_solver_objective_method_is_the_default_objective() -> None:
    """``dijkstra`` registers the grid path cost, Σ max(θ, 0)·z; built with a graph it takes
    costs of any sign, and its own ``objective`` method (the graph path cost) is what the kit
    uses unless one is passed: a graph with negative costs passes, and fails when the grid cost
    (which clamps them) is forced on it."""
    from aimle_zoo.solvers import get_solver_spec
    from aimle_zoo.solvers.shortest_path import grid_path_cost

    graph_example = get_solver_spec("graph_shortest_path").example
    assert graph_example is not None
    report = check_solver("dijkstra", make_input=graph_example, seed=1)
    assert report.ok, report
    forced = check_solver("dijkstra", make_input=graph_example, objective=grid_path_cost, seed=1)
    assert not forced.ok


# ----------------------------------------------------------------------------- distribution


class ExactTopK(TopK):
    """The built-in top-k with its exact k-subset sampler and marginals, as a plugin would."""


class HotSampler(TopK):
    """Draws at twice the temperature its marginals describe."""

    def sample(self, theta, temperature=1.0, generator=None, samples=1):  # type: ignore[override]
        return super().sample(theta, 2 * temperature, generator, samples)


class OneDraw(TopK):
    """Ignores ``samples``: one draw per instance."""

    def sample(self, theta, temperature=1.0, generator=None, samples=1):  # type: ignore[override]
        return super().sample(theta, temperature, generator)


class DetachedMarginals(TopK):
    def marginals(self, theta, temperature=1.0):  # type: ignore[override]
        return super().marginals(theta.detach(), temperature)


class UniformMarginals(TopK):
    """Marginals that ignore θ: they average the samples at no temperature."""

    def marginals(self, theta, temperature=1.0):  # type: ignore[override]
        return (theta * 0 + self.k / theta.shape[-1]).clamp(0, 1)


class OppositeSense(TopK):
    """A distribution of the bottom k: consistent with itself, not with the solver."""

    def sample(self, theta, temperature=1.0, generator=None, samples=1):  # type: ignore[override]
        return super().sample(-theta, temperature, generator, samples)

    def marginals(self, theta, temperature=1.0):  # type: ignore[override]
        return super().marginals(-theta, temperature)


def test_a_solver_with_an_exact_distribution_is_checked_and_passes() -> None:
    report = run(ExactTopK(K))
    assert report.ok, str(report)
    assert "distribution" in report.passed


@pytest.mark.parametrize(
    ("solver", "message"),
    [
        (HotSampler(K), "do not average to the marginals"),
        (OneDraw(K), r"expected \(16000, 6\)"),
        (DetachedMarginals(K), "not differentiable"),
        (UniformMarginals(K), "do not average to the marginals"),
        (OppositeSense(K), "the marginals' objective falls short"),
    ],
)
def test_a_broken_distribution_fails_the_check(solver: TopK, message: str) -> None:
    report = run(solver)
    assert failed_names(report) == {"distribution"}, str(report)
    assert re.search(message, report["distribution"].message), report["distribution"].message


# ----------------------------------------------------------------------------- integer solutions


def ascending_ranks(theta: Tensor) -> Tensor:
    """Ranks 1..n of each row, ties in index order: ``[B, n] -> [B, n]``."""
    order = torch.argsort(theta, dim=-1, stable=True)
    positions = torch.arange(1, theta.shape[-1] + 1, dtype=theta.dtype).expand_as(theta)
    return torch.zeros_like(theta).scatter(-1, order, positions)


def rank_vectors(theta: Tensor) -> Tensor:
    """Every permutation of 1..n: ``[n] -> [n!, n]``."""
    n = theta.shape[-1]
    return torch.tensor(list(itertools.permutations(range(1, n + 1))), dtype=theta.dtype)


def run_ranks(solver: Callable[[Tensor], Tensor], **kwargs: Any) -> ConformanceReport:
    kwargs.setdefault("make_input", lambda b, g: ({}, torch.randn(b, 5, generator=g)))
    kwargs.setdefault("feasible", rank_vectors)
    kwargs.setdefault("values", "integer")
    return check_solver(solver, **kwargs)


def test_a_solver_of_integer_vectors_is_checked_for_integers_not_for_0_1() -> None:
    report = run_ranks(ascending_ranks)
    assert report.ok, str(report)
    assert "integral" in report.passed and "binary" not in report.results
    assert "optimality" in report.passed


def test_the_same_solver_declared_binary_fails_the_binary_check() -> None:
    report = run_ranks(ascending_ranks, values="binary", check_gradients=False)
    assert failed_names(report) == {"binary"}
    assert "are not 0 or 1" in report["binary"].message


@pytest.mark.parametrize(
    ("solver", "message"),
    [
        (lambda theta: ascending_ranks(theta) / 2, "are not finite integers"),
        (lambda theta: ascending_ranks(theta) * float("nan"), "are not finite integers"),
    ],
    ids=["halves", "nan"],
)
def test_the_integral_check_fails_non_integers(
    solver: Callable[[Tensor], Tensor], message: str
) -> None:
    report = run_ranks(solver, check_gradients=False)
    assert not report["integral"].passed and message in report["integral"].message


def test_sub_optimal_ranks_fail_optimality() -> None:
    report = run_ranks(lambda theta: ascending_ranks(-theta), check_gradients=False)
    assert {"optimality", "relative_optimality"} <= failed_names(report)
    assert report["integral"].passed


def test_values_come_from_the_registry() -> None:
    with isolated_registry():
        register_solver(
            "toy_ranks", values="integer", example=lambda b, g: ({}, torch.randn(b, 4, generator=g))
        )(ascending_ranks)
        report = check_solver("toy_ranks", feasible=rank_vectors)
        assert report.ok, str(report)
        assert "integral" in report.results and "binary" not in report.results
        with pytest.raises(ValueError, match="values must be one of"):
            register_solver("toy_bad", values="ranks")(ascending_ranks)  # type: ignore[arg-type]
