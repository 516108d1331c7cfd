"""The exact k-subset distribution p(z) ∝ exp(⟨θ, z⟩/τ): partition function, marginals and
samples against exact enumeration of every subset."""

from __future__ import annotations

import math

import pytest
import torch

from aimle_zoo.estimators import topk_states
from aimle_zoo.solvers import CachedSolver, SolverInputError, TopK, subset_distribution
from aimle_zoo.solvers.subset_distribution import (
    ALGORITHMS,
    default_algorithm,
    sample_subsets,
    subset_log_partition,
    subset_marginals,
)


def enumerated(theta: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, ...]:
    """(states [M, n], probabilities [R, M], log partition [R]) of each row of θ [R, n]."""
    states = topk_states(theta.shape[-1], k)  # [M, n]
    log_weights = theta.double() @ states.T / temperature  # [R, M]
    return states, torch.softmax(log_weights, dim=1), torch.logsumexp(log_weights, dim=1)


CASES = [(1, 1), (5, 1), (5, 2), (6, 3), (7, 6), (8, 8), (9, 4), (13, 3), (16, 5)]


@pytest.fixture(params=ALGORITHMS)
def algorithm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test under each algorithm: every call that leaves the choice to
    ``default_algorithm`` gets this one."""
    monkeypatch.setattr(subset_distribution, "default_algorithm", lambda *_: request.param)
    return request.param


@pytest.mark.parametrize(("n", "k"), CASES)
@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_partition_and_marginals_match_enumeration(
    n: int, k: int, temperature: float, algorithm: str
) -> None:
    theta = 2 * torch.randn(5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    states, probabilities, log_partition = enumerated(theta, k, temperature)
    torch.testing.assert_close(
        subset_log_partition(theta, k, temperature), log_partition, rtol=1e-12, atol=1e-12
    )
    marginals = subset_marginals(theta, k, temperature)
    torch.testing.assert_close(marginals, probabilities @ states, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(marginals.sum(dim=1), torch.full((5,), float(k), dtype=theta.dtype))


@pytest.mark.parametrize(("n", "k", "temperature"), [(6, 2, 1.0), (7, 3, 0.5), (5, 4, 2.0)])
def test_the_jacobian_of_the_marginals_is_the_covariance_over_tau(
    n: int, k: int, temperature: float, algorithm: str
) -> None:
    theta = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    states, probabilities, _ = enumerated(theta[None], k, temperature)
    p = probabilities[0]  # [M]
    mean = p @ states  # [n]
    covariance = (states * p[:, None]).T @ states - torch.outer(mean, mean)
    jacobian = torch.autograd.functional.jacobian(
        lambda t: subset_marginals(t, k, temperature), theta
    )
    torch.testing.assert_close(jacobian, covariance / temperature, rtol=1e-9, atol=1e-12)
    leaf = theta.clone().requires_grad_(True)
    gradient = torch.autograd.grad(subset_log_partition(leaf, k, temperature), leaf)[0]
    torch.testing.assert_close(gradient * temperature, mean)


def test_one_of_n_is_the_softmax_and_n_of_n_is_everything(algorithm: str) -> None:
    theta = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(subset_marginals(theta, 1, 0.7), torch.softmax(theta / 0.7, dim=1))
    torch.testing.assert_close(subset_marginals(theta, 7), torch.ones_like(theta))
    torch.testing.assert_close(sample_subsets(theta, 7), torch.ones_like(theta))


def test_huge_spreads_stay_finite_and_tend_to_the_top_k_indicator(algorithm: str) -> None:
    """Log space: weights e^{θ/τ} far outside float64 neither overflow nor give NaN gradients,
    and at such spreads the marginals are the top-k indicator (a common offset of 1e6 too)."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 12, dtype=torch.float64, generator=generator) * 500 + 1e6
    theta.requires_grad_(True)
    marginals = subset_marginals(theta, 4, 0.01)
    torch.testing.assert_close(marginals.detach(), TopK(4)(theta.detach()), rtol=0, atol=1e-9)
    (marginals * torch.randn(6, 12, dtype=torch.float64)).sum().backward()
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())
    torch.testing.assert_close(sample_subsets(theta.detach(), 4, 0.01), TopK(4)(theta.detach()))


def test_float32_holds_an_offset_and_moderate_spreads(algorithm: str) -> None:
    """The row shift removes any common offset; the spread sets float32's rounding (compared
    on the same float32 inputs)."""
    theta = torch.randn(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    single = (30 * theta + 1e4).float()
    exact = subset_marginals(single.double(), 4)
    torch.testing.assert_close(subset_marginals(single, 4).double(), exact, rtol=0, atol=2e-5)


def test_float32_and_half_precision_agree_with_float64(algorithm: str) -> None:
    theta = torch.randn(8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = subset_marginals(theta, 3)
    single = subset_marginals(theta.float(), 3)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=1e-6)
    for half in (torch.float16, torch.bfloat16):
        low = theta.to(half)
        result = subset_marginals(low, 3)  # computed in float32, returned in half
        assert result.dtype == half
        expected = subset_marginals(low.double(), 3)
        torch.testing.assert_close(result.double(), expected, rtol=1e-2, atol=1e-2)


def test_rows_are_independent_and_leading_dimensions_are_kept(algorithm: str) -> None:
    theta = torch.randn(3, 4, 9, dtype=torch.float64)
    marginals = subset_marginals(theta, 2)
    assert marginals.shape == (3, 4, 9)
    torch.testing.assert_close(marginals[1, 2], subset_marginals(theta[1, 2], 2))
    assert sample_subsets(theta, 2).shape == (3, 4, 9)


@pytest.mark.parametrize(("n", "k", "temperature"), [(5, 2, 1.0), (6, 3, 0.5)])
def test_samples_follow_the_exact_distribution(
    n: int, k: int, temperature: float, algorithm: str
) -> None:
    """Subset frequencies of 40,000 draws against the enumerated probabilities: every count
    within 4.5 binomial standard deviations (seeded, so the test is deterministic)."""
    draws = 40_000
    theta = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    states, probabilities, _ = enumerated(theta[None], k, temperature)
    z = sample_subsets(
        theta.expand(draws, n), k, temperature, generator=torch.Generator().manual_seed(11)
    )
    assert bool(((z == 0) | (z == 1)).all()) and bool((z.sum(dim=1) == k).all())
    index = (z @ (2 ** torch.arange(n, dtype=torch.float64))).long()  # each subset's code
    codes = (states @ (2 ** torch.arange(n, dtype=torch.float64))).long()
    counts = (index[:, None] == codes[None]).sum(dim=0).double()  # [M]
    expected = draws * probabilities[0]
    deviation = (counts - expected).abs() / (expected * (1 - probabilities[0])).sqrt()
    assert float(deviation.max()) < 4.5, deviation


def test_several_samples_share_the_tables_in_the_sample_minor_layout(algorithm: str) -> None:
    """Draw m of instance b sits in row b·N + m; its frequencies follow that instance's
    marginals, which differ between instances."""
    theta = torch.tensor([[3.0, 0.0, -3.0, 0.0], [-3.0, 0.0, 3.0, 0.0]], dtype=torch.float64)
    z = sample_subsets(theta, 2, generator=torch.Generator().manual_seed(0), samples=20_000)
    assert z.shape == (40_000, 4) and bool((z.sum(dim=1) == 2).all())
    per_instance = z.reshape(2, 20_000, 4).mean(dim=1)
    torch.testing.assert_close(per_instance, subset_marginals(theta, 2), rtol=0, atol=0.015)
    stacked = sample_subsets(torch.randn(3, 5, 6), 2, samples=4)
    assert stacked.shape == (12, 5, 6) and bool((stacked.sum(dim=-1) == 2).all())
    with pytest.raises(SolverInputError, match="batch dimension"):
        sample_subsets(torch.randn(6), 2, samples=3)


def test_the_default_is_the_tree_for_few_rows_and_a_small_k_and_both_agree() -> None:
    assert default_algorithm(40, 350, 10) == "tree" and default_algorithm(100, 49, 4) == "tree"
    assert default_algorithm(2000, 20, 10) == "sequential"  # the VAE's groups
    assert default_algorithm(40, 350, 50) == "sequential" and default_algorithm(40, 10, 1) == (
        "sequential"
    )
    theta = torch.randn(4, 40, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 40, dtype=torch.float64)
    gradients = []
    for name in ALGORITHMS:
        marginals = subset_marginals(theta, 6, 0.8, algorithm=name)
        (gradient,) = torch.autograd.grad((marginals * weights).sum(), theta)
        gradients.append((marginals, gradient))
        torch.testing.assert_close(
            subset_log_partition(theta, 6, 0.8, algorithm=name),
            subset_log_partition(theta, 6, 0.8, algorithm=ALGORITHMS[0]),
        )
    torch.testing.assert_close(gradients[0], gradients[1])
    with pytest.raises(SolverInputError, match="unknown algorithm 'dp'"):
        subset_marginals(theta, 6, algorithm="dp")


def test_samples_are_reproducible_with_a_generator() -> None:
    theta = torch.randn(50, 8)
    first = sample_subsets(theta, 3, generator=torch.Generator().manual_seed(5))
    again = sample_subsets(theta, 3, generator=torch.Generator().manual_seed(5))
    other = sample_subsets(theta, 3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.dtype == theta.dtype


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: subset_marginals(torch.randn(2, 5), 6), "k must be an int in"),
        (lambda: subset_marginals(torch.randn(2, 5), 0), "k must be an int in"),
        (lambda: subset_marginals(torch.randn(2, 5), 2.0), "k must be an int in"),  # type: ignore[arg-type]
        (lambda: subset_marginals(torch.randn(2, 5), 2, 0.0), "temperature"),
        (lambda: sample_subsets(torch.randn(2, 5), 2, -1.0), "temperature"),
        (lambda: subset_marginals(torch.tensor([[0.0, math.nan, 1.0]]), 1), "NaN"),
        (lambda: subset_marginals(torch.ones(2, 5, dtype=torch.int64), 1), "floating-point"),
        (lambda: subset_log_partition(torch.tensor([[-3e38, 0.0, 3e38]]), 1, 0.5), "overflows"),
        (lambda: sample_subsets(torch.randn(2, 5), 2, samples=0), "samples must be"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        call()


def test_topk_exposes_its_distribution_and_the_cache_forwards_it() -> None:
    theta = torch.randn(4, 3, 10, dtype=torch.float64)
    solver = TopK(4)
    torch.testing.assert_close(solver.marginals(theta, 0.5), subset_marginals(theta, 4, 0.5))
    generator = torch.Generator().manual_seed(2)
    z = solver.sample(theta, 0.5, generator)
    torch.testing.assert_close(
        z, sample_subsets(theta, 4, 0.5, generator=torch.Generator().manual_seed(2))
    )
    cached = CachedSolver(solver, solve_ratio=0.5)
    assert cached.marginals is not None and cached.sample is not None
    torch.testing.assert_close(cached.marginals(theta, 0.5), solver.marginals(theta, 0.5))
    with pytest.raises(SolverInputError, match="out of range"):
        solver.marginals(torch.randn(2, 3))
