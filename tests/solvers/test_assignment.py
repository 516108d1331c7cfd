"""Assignment solvers against scipy's linear_sum_assignment and brute-force enumeration, and
the Sinkhorn relaxation against its closed form and fixed-point conditions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from aimle_zoo import AIMLE, DifferentiableSolver
from aimle_zoo.estimators import IMLE, STE, Estimator, Relaxed
from aimle_zoo.solvers import (
    LinearAssignment,
    LinearAssignmentScipy,
    MinimumAssignment,
    SolverInputError,
    get_solver,
    sinkhorn_assignment,
    solver_sense,
    sorting_weights,
)
from aimle_zoo.solvers.reference.assignment import linear_assignment_scipy
from aimle_zoo.solvers.testing import solver_conformance_test

jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def assignments(theta: Tensor) -> Tensor:
    """Every feasible z of an ``[m, n]`` instance: all injective maps of the shorter side into
    the longer, as 0/1 matrices ``[count, m, n]``."""
    rows, cols = theta.shape[-2], theta.shape[-1]
    matrices = []
    if rows <= cols:
        for chosen in itertools.permutations(range(cols), rows):
            z = torch.zeros(rows, cols, dtype=theta.dtype)
            z[list(range(rows)), list(chosen)] = 1
            matrices.append(z)
    else:
        for chosen in itertools.permutations(range(rows), cols):
            z = torch.zeros(rows, cols, dtype=theta.dtype)
            z[list(chosen), list(range(cols))] = 1
            matrices.append(z)
    return torch.stack(matrices)


def _scipy_value(weights: Tensor, maximum: bool) -> Tensor:
    """Optimal total weight of each instance by scipy, in float64. ``[B]``."""
    values = []
    for instance in weights.double().numpy():
        rows, cols = linear_sum_assignment(instance, maximize=maximum)
        values.append(instance[rows, cols].sum())
    return torch.tensor(values, dtype=torch.float64)


def _is_matching(z: Tensor) -> bool:
    """0/1 with at most one 1 per row and column and min(m, n) ones in all."""
    rows, cols = z.shape[-2], z.shape[-1]
    return bool(
        ((z == 0) | (z == 1)).all()
        and (z.sum(-1) <= 1).all()
        and (z.sum(-2) <= 1).all()
        and (z.sum((-2, -1)) == min(rows, cols)).all()
    )


# ----------------------------------------------------------------------------- optimality


@pytest.mark.parametrize("shape", [(5, 5), (3, 8), (8, 3), (1, 1), (1, 6), (17, 17), (12, 30)])
@pytest.mark.parametrize("maximum", [True, False])
def test_matches_scipy_on_continuous_weights(shape: tuple[int, int], maximum: bool) -> None:
    """A unique optimum almost surely: the same matrix as scipy, not only the same value."""
    torch.manual_seed(sum(shape))
    weights = torch.randn(40, *shape, dtype=torch.float64)
    z = LinearAssignment(maximum=maximum)(weights)
    assert z.dtype == weights.dtype and _is_matching(z)
    assert torch.equal(z, linear_assignment_scipy(weights, maximum))


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3), (6, 6)])
@pytest.mark.parametrize("maximum", [True, False])
def test_optimal_over_every_assignment_under_ties(shape: tuple[int, int], maximum: bool) -> None:
    """Integer weights in {-2, ..., 2} tie often; the value is checked against enumeration."""
    torch.manual_seed(7)
    weights = torch.randint(-2, 3, (60, *shape)).float()
    z = LinearAssignment(maximum=maximum)(weights)
    assert _is_matching(z)
    feasible = assignments(weights[0])  # [count, m, n]
    values = torch.einsum("bmn,cmn->bc", weights.double(), feasible.double())  # [B, count]
    best = values.amax(1) if maximum else values.amin(1)
    torch.testing.assert_close((weights.double() * z.double()).sum((1, 2)), best, rtol=0, atol=0)


def test_minimum_assignment_is_the_maximum_of_negated_weights() -> None:
    torch.manual_seed(1)
    costs = torch.rand(30, 7, 7)
    z = MinimumAssignment()(costs)
    assert torch.equal(z, LinearAssignment()(-costs))
    assert torch.equal(z, get_solver("minimum_assignment")(costs))
    torch.testing.assert_close(
        (costs.double() * z.double()).sum((1, 2)), _scipy_value(costs, maximum=False)
    )
    assert solver_sense(MinimumAssignment()) == "min"
    assert solver_sense(LinearAssignment(maximum=False)) == "min"
    assert solver_sense(get_solver("permutation")) == "max"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_floating_dtype_in_and_out(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    weights = torch.randn(20, 6, 6).to(dtype)
    z = LinearAssignment()(weights)
    assert z.dtype == dtype and _is_matching(z)
    torch.testing.assert_close(
        (weights.double() * z.double()).sum((1, 2)), _scipy_value(weights, maximum=True)
    )


def test_exact_at_large_offsets_and_tiny_differences() -> None:
    """Potentials in float64: a common offset of 1e9 does not hide differences of 1e-3."""
    torch.manual_seed(3)
    small = torch.randint(0, 1000, (20, 8, 8), dtype=torch.float64) * 1e-3
    weights = small + 1e9
    z = LinearAssignment()(weights)
    assert torch.equal(z, LinearAssignment()(small))
    torch.testing.assert_close((small * z).sum((1, 2)), _scipy_value(small, maximum=True))


def test_sorting_weights_sort_scores_onto_positions() -> None:
    """With θ_ij = s_i · j the maximum assignment is the sort of s (the rearrangement
    inequality): item i goes to its rank, and zᵀx lists the items in order, ascending or
    descending."""
    torch.manual_seed(4)
    scores = torch.randn(25, 9, dtype=torch.float64)
    items = torch.randn(25, 9, 3, dtype=torch.float64)
    z = LinearAssignment()(sorting_weights(scores))  # [B, 9, 9]
    order = scores.argsort(dim=1)  # [B, 9]
    assert torch.equal(z.argmax(dim=2), order.argsort(dim=1))  # the rank of each item
    expected = items.gather(1, order.unsqueeze(2).expand(-1, -1, 3))
    assert torch.equal(z.transpose(1, 2) @ items, expected)
    descending = LinearAssignment()(sorting_weights(scores, descending=True))
    assert torch.equal(descending, z.flip(2))


def test_each_instance_alone_equals_its_row_of_the_batch() -> None:
    """Instances that finish a phase early wait with zero steps: batching changes nothing."""
    torch.manual_seed(5)
    weights = torch.randint(0, 3, (30, 6, 9)).float()
    batched = LinearAssignment()(weights)
    for index in range(weights.shape[0]):
        assert torch.equal(LinearAssignment()(weights[index : index + 1])[0], batched[index])


def test_empty_batches_and_empty_sides() -> None:
    solver = LinearAssignment()
    assert solver(torch.randn(0, 4, 4)).shape == (0, 4, 4)
    assert torch.equal(solver(torch.randn(3, 0, 4)), torch.zeros(3, 0, 4))
    assert torch.equal(solver(torch.randn(3, 4, 0)), torch.zeros(3, 4, 0))


def test_scipy_reference_solver_agrees_on_value() -> None:
    torch.manual_seed(6)
    weights = torch.randint(-3, 4, (40, 5, 7)).float()
    for maximum in (True, False):
        tensor = LinearAssignment(maximum=maximum)(weights).double()
        scipy = LinearAssignmentScipy(maximum=maximum)(weights).double()
        torch.testing.assert_close((weights * tensor).sum((1, 2)), (weights * scipy).sum((1, 2)))


test_linear_assignment_conformance = solver_conformance_test(
    "linear_assignment", feasible=assignments
)
test_minimum_assignment_conformance = solver_conformance_test(
    "minimum_assignment", feasible=assignments
)
test_linear_assignment_scipy_conformance = solver_conformance_test(
    "linear_assignment_scipy", feasible=assignments, check_gradients=False
)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("theta", "message"),
    [
        (torch.randn(4, 4), "expected a 3-D tensor"),
        (torch.randint(0, 3, (2, 4, 4)), "floating-point"),
        (torch.tensor([[[0.0, float("nan")], [1.0, 2.0]]]), "NaN or inf values in instance"),
        (torch.tensor([[[0.0, float("inf")], [1.0, 2.0]]]), "NaN or inf values in instance"),
    ],
)
def test_bad_weights_are_clear_errors(theta: Tensor, message: str) -> None:
    for solver in (LinearAssignment(), MinimumAssignment(), LinearAssignmentScipy()):
        with pytest.raises(SolverInputError, match=message):
            solver(theta)
        with pytest.raises(SolverInputError, match=message):
            solver.relax(theta, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maximum": 1}, "maximum must be True or False"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be an int >= 1"),
        ({"sinkhorn_iterations": 2.5}, "sinkhorn_iterations must be an int >= 1"),
    ],
)
def test_bad_parameters_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SolverInputError, match=f"linear_assignment: {message}"):
        get_solver("linear_assignment", **kwargs)


# ----------------------------------------------------------------------------- relaxation


def test_sinkhorn_on_two_by_two_is_the_closed_form() -> None:
    """The entropic 2 × 2 assignment is [[p, 1 − p], [1 − p, p]] with
    p / (1 − p) = exp(Δ / 2τ), Δ = θ11 + θ22 − θ12 − θ21: p = sigmoid(Δ / 2τ)."""
    torch.manual_seed(8)
    theta = torch.randn(10, 2, 2, dtype=torch.float64)
    for temperature in (0.3, 1.0, 4.0):
        relaxed = sinkhorn_assignment(theta, temperature, iterations=5000)
        gap = theta[:, 0, 0] + theta[:, 1, 1] - theta[:, 0, 1] - theta[:, 1, 0]
        p = torch.sigmoid(gap / (2 * temperature))
        expected = torch.stack([torch.stack([p, 1 - p], -1), torch.stack([1 - p, p], -1)], -2)
        torch.testing.assert_close(relaxed, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 6), (4, 7), (7, 4)])
def test_sinkhorn_converges_to_the_entropic_assignment(shape: tuple[int, int]) -> None:
    """At convergence: the longer side's marginals 1, the shorter's at most 1 (exactly 1 for a
    square), and log z̃ − θ/τ = a_i + b_j on the real rows and columns (a scaled exp(θ/τ))."""
    torch.manual_seed(9)
    theta = torch.randn(5, *shape, dtype=torch.float64)
    temperature = 0.7
    relaxed = sinkhorn_assignment(theta, temperature, iterations=2000)
    rows, cols = shape
    if rows <= cols:
        torch.testing.assert_close(relaxed.sum(-1), torch.ones(5, rows, dtype=torch.float64))
        assert bool((relaxed.sum(-2) <= 1 + 1e-9).all())
    if rows >= cols:
        torch.testing.assert_close(relaxed.sum(-2), torch.ones(5, cols, dtype=torch.float64))
        assert bool((relaxed.sum(-1) <= 1 + 1e-9).all())
    residual = relaxed.log() - theta / temperature  # [B, m, n]
    centred = (
        residual
        - residual.mean(-1, keepdim=True)
        - residual.mean(-2, keepdim=True)
        + residual.mean((-2, -1), keepdim=True)
    )
    torch.testing.assert_close(centred, torch.zeros_like(centred), rtol=0, atol=1e-9)


def test_relaxation_tends_to_the_assignment_and_follows_the_sense() -> None:
    """A planted permutation (+2, noise of sd 0.1) beats every other by about 4: at τ = 0.1 the
    relaxation is the solver's answer to 1e-6 after 50 balancing rounds, for both senses."""
    torch.manual_seed(10)
    planted = torch.stack([torch.eye(5, dtype=torch.float64)[torch.randperm(5)] for _ in range(8)])
    theta = 2 * planted + 0.1 * torch.randn(8, 5, 5, dtype=torch.float64)
    for solver, weights in (
        (LinearAssignment(sinkhorn_iterations=50), theta),
        (MinimumAssignment(50), -theta),
    ):
        assert torch.equal(solver(weights), planted)
        torch.testing.assert_close(solver.relax(weights, 0.1), planted, atol=1e-6, rtol=0)


def test_gumbel_sinkhorn_and_aimle_send_gradients_through_assignments() -> None:
    torch.manual_seed(11)
    theta = torch.randn(4, 5, 5, requires_grad=True)
    target = torch.eye(5).expand(4, 5, 5)
    for estimator in (Relaxed(temperature=0.5), AIMLE()):
        layer = DifferentiableSolver("linear_assignment", estimator)
        ((layer(theta) - target.repeat(layer(theta).shape[0] // 4, 1, 1)) ** 2).sum().backward()
        assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())
        assert float(theta.grad.abs().sum()) > 0
        theta.grad = None


@pytest.mark.parametrize(
    "estimator", [AIMLE(), IMLE(), STE(), Relaxed(temperature=1.0)], ids=lambda e: e.name
)
def test_estimators_learn_to_sort(estimator: Estimator) -> None:
    """Scores from a linear map of features, a permutation layer trained on the Hamming loss
    to the sorting permutation: every estimator learns to rank new inputs (whole permutations
    right: 0.91 AIMLE, 0.84 I-MLE, 0.98 STE, 0.92 Gumbel–Sinkhorn; 0 before training)."""
    torch.manual_seed(12)
    items, features = 6, 4
    hidden = torch.randn(features)

    def batch(size: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(size, items, features)
        ranks = (x @ hidden).argsort(dim=1).argsort(dim=1)  # [B, items]
        return x, torch.nn.functional.one_hot(ranks, items).float()  # target z [B, items, items]

    scorer = torch.nn.Linear(features, 1)
    layer = DifferentiableSolver("linear_assignment", estimator)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.05)

    def accuracy() -> float:
        x, target = batch(500)
        with torch.no_grad():
            z = LinearAssignment()(sorting_weights(scorer(x).squeeze(2)))  # [B, items, items]
        return float((z == target).all(dim=(1, 2)).float().mean())

    before = accuracy()
    for _ in range(150):
        x, target = batch(32)
        z = layer(sorting_weights(scorer(x).squeeze(2)))  # [B·S, items, items]
        loss = (z - target.repeat(z.shape[0] // 32, 1, 1)).abs().sum() / z.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after > 0.8 > before + 0.3, (before, after)


@jit_deprecation
def test_scripted_solver_is_the_eager_one() -> None:
    torch.manual_seed(13)
    scripted = torch.jit.script(LinearAssignment())
    for shape in [(3, 3), (4, 9), (9, 4)]:
        weights = torch.randint(-2, 3, (7, *shape)).float()
        assert torch.equal(scripted(weights), LinearAssignment()(weights))
    np.testing.assert_array_equal(
        scripted(torch.eye(3).unsqueeze(0)).numpy(), np.eye(3)[None].astype(np.float32)
    )
