"""The ranking solver against scipy's ranks and against every permutation, its export form,
its soft ranks, its input checks, and learning through it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from torch import Tensor

from aimle_zoo import DifferentiableSolver
from aimle_zoo.solvers import (
    Ranking,
    SolverInputError,
    get_solver,
    ranks,
    soft_ranks,
    solver_sense,
    solver_values,
)
from aimle_zoo.solvers.ranking import ranks_by_unique_keys
from aimle_zoo.solvers.reference.ranking import ranks_scipy
from aimle_zoo.solvers.testing import check_solver


def rank_vectors(theta: Tensor) -> Tensor:
    """Every permutation of 1..n: ``[n] -> [n!, n]``."""
    n = theta.shape[-1]
    return torch.tensor(list(itertools.permutations(range(1, n + 1))), dtype=theta.dtype)


def tie_rich(shape: tuple[int, ...], seed: int) -> Tensor:
    """Scores from {-1, -0, 0, 1, 2}: many ties, signed zeros among them."""
    generator = torch.Generator().manual_seed(seed)
    choices = torch.tensor([-1.0, -0.0, 0.0, 1.0, 2.0])
    return choices[torch.randint(0, 5, shape, generator=generator)]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape", [(7, 12), (3, 4, 9), (2, 1), (5, 300)])
def test_ranks_match_scipy_on_continuous_and_tied_scores(
    shape: tuple[int, ...], descending: bool
) -> None:
    solver = get_solver("ranking", descending=descending)
    continuous = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for theta in (continuous, tie_rich(shape, 1)):
        z = solver(theta)
        torch.testing.assert_close(z, ranks_scipy(theta, descending), rtol=0, atol=0)
        assert z.dtype == theta.dtype


@pytest.mark.parametrize("descending", [False, True])
def test_ranks_are_optimal_over_every_permutation(descending: bool) -> None:
    report = check_solver(
        "ranking", params={"descending": descending}, feasible=rank_vectors, batch_size=6
    )
    assert report.ok, str(report)
    assert "optimality" in report.passed and "integral" in report.passed


def test_sense_and_values() -> None:
    assert solver_sense(get_solver("ranking")) == "max"
    assert solver_sense(get_solver("rank", descending=True)) == "min"
    assert solver_values(get_solver("ranking")) == "integer"
    assert solver_values(get_solver("topk", k=2)) == "binary"


@pytest.mark.parametrize("descending", [False, True])
def test_the_export_form_ranks_exactly_as_the_stable_sort(descending: bool) -> None:
    for seed in range(20):
        theta = tie_rich((6, 2, 11), seed)
        torch.testing.assert_close(
            ranks_by_unique_keys(theta, descending), ranks(theta, descending), rtol=0, atol=0
        )
    theta = torch.randn(4, 1000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ranks_by_unique_keys(theta), ranks(theta), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_give_the_same_ranks(dtype: torch.dtype) -> None:
    theta = tie_rich((5, 40), 2)
    z = get_solver("ranking")(theta.to(dtype))
    assert z.dtype == dtype
    torch.testing.assert_close(z.double(), ranks_scipy(theta).double(), rtol=0, atol=0)


@pytest.mark.parametrize("rank", [ranks, ranks_by_unique_keys])
def test_empty_batches_and_single_items(rank: Callable[[Tensor], Tensor]) -> None:
    assert rank(torch.zeros(0, 5)).shape == (0, 5)
    assert rank(torch.zeros(3, 0)).shape == (3, 0)
    torch.testing.assert_close(rank(torch.randn(3, 1)), torch.ones(3, 1))
    torch.testing.assert_close(rank(torch.tensor([[1.0, 1.0]])), torch.tensor([[1.0, 2.0]]))


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_a_scripted_solver_ranks_single_items() -> None:
    scripted = torch.jit.script(get_solver("ranking"))
    torch.testing.assert_close(scripted(torch.randn(2, 1)), torch.ones(2, 1))
    theta = tie_rich((4, 7), 6)
    torch.testing.assert_close(scripted(theta), ranks_scipy(theta), rtol=0, atol=0)


def test_soft_ranks_approach_the_ranks_and_average_ties() -> None:
    theta = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for descending in (False, True):
        soft = soft_ranks(theta, 1e-4, descending)
        torch.testing.assert_close(soft, ranks_scipy(theta, descending), rtol=0, atol=1e-6)
    tied = tie_rich((4, 9), 4).double()
    average = torch.from_numpy(rankdata(tied.numpy(), axis=-1, method="average"))
    torch.testing.assert_close(soft_ranks(tied, 1e-4), average, rtol=0, atol=1e-6)


def test_soft_ranks_keep_the_rank_sum_and_are_differentiable() -> None:
    theta = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    n = theta.shape[-1]
    for temperature in (0.1, 1.0, 10.0):
        soft = soft_ranks(theta, temperature)
        torch.testing.assert_close(soft.sum(-1), torch.full((3,), n * (n + 1) / 2).double())
        descending = soft_ranks(theta, temperature, descending=True)
        torch.testing.assert_close(descending, n + 1 - soft)
    soft = get_solver("ranking").relax(theta, 0.5)
    (soft * torch.arange(n).double()).sum().backward()
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())
    assert bool(theta.grad.abs().sum() > 0)
    fresh = theta.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_ranks(t, 0.7), (fresh,))


@pytest.mark.parametrize(
    ("theta", "message"),
    [
        (torch.tensor([[0.0, float("nan")]]), "NaN or inf"),
        (torch.tensor([[1, 2, 3]]), "floating-point"),
        (torch.randn(5), "at least 2 dimensions"),
        (torch.randn(1, 2049, dtype=torch.float16), "2049 items cannot all be ranked exactly"),
        (torch.randn(1, 257, dtype=torch.bfloat16), "theta.float()"),
    ],
    ids=["nan", "integer", "1-d", "float16-too-many", "bfloat16-too-many"],
)
def test_bad_input_is_refused(theta: Tensor, message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        get_solver("ranking")(theta)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(SolverInputError, match="descending must be True or False"):
        Ranking(descending="yes")  # type: ignore[arg-type]
    with pytest.raises(SolverInputError, match="temperature must be a finite number > 0"):
        get_solver("ranking").relax(torch.randn(2, 3), 0.0)
    assert get_solver("ranking", descending=False)(torch.randn(1, 2048, dtype=torch.float16)).shape


@pytest.mark.parametrize("estimator", ["aimle", "imle", "ste"])
def test_descending_ranks_get_the_ascending_gradient_on_the_negated_scores(estimator: str) -> None:
    """Descending ranks of θ are the ascending ranks of −θ, so with the same noise the layer's
    gradient through the minimiser must be the negated gradient through the maximiser at −θ."""
    theta = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    weights = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def gradient(descending: bool, scores: Tensor) -> tuple[Tensor, Tensor]:
        layer = DifferentiableSolver("ranking", estimator, descending=descending)
        layer.estimator.generator = torch.Generator().manual_seed(0)
        scores = scores.clone().requires_grad_(True)
        z = layer(scores)
        (z * weights.repeat(z.shape[0] // 4, 1)).sum().backward()
        assert scores.grad is not None
        return z.detach(), scores.grad

    z_descending, grad_descending = gradient(True, theta)
    z_ascending, grad_ascending = gradient(False, -theta)
    torch.testing.assert_close(z_descending, z_ascending, rtol=0, atol=0)
    assert bool(grad_ascending.abs().sum() > 0)
    torch.testing.assert_close(grad_descending, -grad_ascending, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("estimator", "descending"), [("aimle", False), ("blackbox", False), ("aimle", True)]
)
def test_a_linear_scorer_learns_target_ranks_through_the_solver(
    estimator: str, descending: bool
) -> None:
    """Items with features x rank by x·w*; from a random w, the ranks of x·w are trained towards
    the target ranks with a squared loss on the solver's output alone (descending ranks too,
    through the solver as a minimiser)."""
    torch.manual_seed(0)
    lists, items, features = 64, 10, 5
    true_weights = torch.randn(features)
    x = torch.randn(lists, items, features)
    target = ranks(x @ true_weights, descending)  # [L, n]
    held_out = torch.randn(256, items, features)
    weights = torch.nn.Parameter(torch.randn(features))
    layer = DifferentiableSolver("ranking", estimator, descending=descending)
    assert solver_sense(layer.solver) == ("min" if descending else "max")
    optimizer = torch.optim.Adam([weights], lr=0.05)

    def held_out_correlation() -> float:
        with torch.no_grad():
            got, want = ranks(held_out @ weights), ranks(held_out @ true_weights)
        return float(np.mean([spearmanr(a, b).statistic for a, b in zip(got, want, strict=True)]))

    before = held_out_correlation()
    for _ in range(150):
        optimizer.zero_grad()
        loss = ((layer(x @ weights) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    after = held_out_correlation()
    assert after > 0.97 and after > before + 0.3, (before, after)
