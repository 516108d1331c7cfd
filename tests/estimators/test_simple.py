"""SIMPLE: exact k-subset samples forward, the Jacobian of the exact marginals backward."""

from __future__ import annotations

import pytest
import torch

from aimle_zoo.estimators import (
    SIMPLE,
    DifferentiableSolver,
    RelaxationError,
    build_estimator,
    gradient_fidelity,
    simple,
    topk_states,
)
from aimle_zoo.solvers import CachedSolver, TopK, get_solver
from aimle_zoo.solvers.subset_distribution import sample_subsets, subset_marginals


def covariance_over_tau(theta: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """The Jacobian of the marginals of one instance ``θ [n]`` by enumeration: ``[n, n]``."""
    states = topk_states(theta.numel(), k)
    p = torch.softmax(states @ theta.double() / temperature, dim=0)
    mean = p @ states
    return ((states * p[:, None]).T @ states - torch.outer(mean, mean)) / temperature


def test_the_forward_is_the_exact_sampler_and_nothing_else() -> None:
    theta = torch.randn(4, 9, requires_grad=True)
    estimator = SIMPLE(temperature=0.5, samples=3, generator=torch.Generator().manual_seed(2))
    z = estimator(TopK(3), theta)
    expected = sample_subsets(
        theta.detach(), 3, 0.5, generator=torch.Generator().manual_seed(2), samples=3
    )
    assert z.shape == (12, 9) and z.dtype == theta.dtype
    assert torch.equal(z.detach(), expected)  # exactly, the zero-valued marginal term included


@pytest.mark.parametrize("samples", [1, 4])
def test_the_gradient_is_the_marginals_jacobian_times_the_mean_incoming_gradient(
    samples: int,
) -> None:
    n, k, temperature = 7, 3, 0.8
    theta = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2 * samples, n, dtype=torch.float64)
    z = SIMPLE(temperature=temperature, samples=samples)(TopK(k), theta)
    z.backward(dy)
    assert theta.grad is not None
    mean_dy = dy.reshape(2, samples, n).mean(dim=1)
    for b in range(2):
        jacobian = covariance_over_tau(theta[b].detach(), k, temperature)
        torch.testing.assert_close(theta.grad[b], jacobian @ mean_dy[b])


def test_for_a_linear_loss_it_is_the_exact_gradient_of_the_expected_loss() -> None:
    """∇E[⟨c, z⟩] = J_μᵀ c, and dy = c does not depend on the samples: every seed gives the
    exact gradient (cosine 1, norm ratio 1; the losses of a seed's samples are summed, so
    each sample's dy is c and their mean is c)."""
    theta = torch.randn(8, dtype=torch.float64)
    cost = torch.randn(8, dtype=torch.float64)
    report = gradient_fidelity(
        SIMPLE(temperature=0.7, samples=2),
        TopK(3),
        theta,
        lambda z: (z * cost).sum(dim=1),
        seeds=8,
        sample_reduction="sum",
    )
    torch.testing.assert_close(report.cosines, torch.ones(8, dtype=torch.float64))
    assert report.norm_ratio == pytest.approx(1.0, abs=1e-9)


def test_on_the_aimle_papers_fidelity_problems_it_is_close_to_the_exact_gradient() -> None:
    """The setting of ``test_fidelity``'s AIMLE/I-MLE comparison (n = 12, k = 4, loss
    ‖z − b‖², S = 10, 64 seeds, summed losses). Observed mean cosine 0.93 (AIMLE 0.82, I-MLE
    0.60, STE with Gumbel noise 0.69); the identity backward of STE would not pass."""
    cosines = []
    for problem in range(3):
        generator = torch.Generator().manual_seed(problem)
        theta = torch.randn(12, generator=generator, dtype=torch.float64)
        target = torch.randn(12, generator=generator, dtype=torch.float64).abs()
        report = gradient_fidelity(
            SIMPLE(samples=10, generator=torch.Generator().manual_seed(1)),
            TopK(4),
            theta,
            lambda z, target=target: ((z - target) ** 2).sum(dim=1),
            sample_reduction="sum",
        )
        cosines.append(report.cosine_mean)
    assert sum(cosines) / 3 > 0.85, cosines


def test_it_trains_a_layer_and_eval_mode_returns_the_map_solution() -> None:
    """Learn θ so that the top 3 of 10 are a given subset: the expected Hamming loss falls."""
    torch.manual_seed(0)
    target = torch.zeros(1, 10)
    target[0, [1, 4, 7]] = 1.0
    theta = torch.zeros(1, 10, requires_grad=True)
    layer = DifferentiableSolver("topk", SIMPLE(samples=4), k=3)
    optimizer = torch.optim.Adam([theta], lr=0.1)
    for _ in range(150):
        optimizer.zero_grad()
        z = layer(theta)
        ((z - target.expand_as(z)) ** 2).sum(dim=1).mean().backward()
        optimizer.step()
    layer.eval()
    assert torch.equal(layer(theta.detach()), target)
    assert float(subset_marginals(theta.detach(), 3)[0, [1, 4, 7]].min()) > 0.9


def test_solvers_without_an_exact_sampler_are_refused_when_the_layer_is_built() -> None:
    with pytest.raises(RelaxationError, match="no exact sample and marginals"):
        DifferentiableSolver("dijkstra", "simple")
    with pytest.raises(RelaxationError, match="no exact sample and marginals"):
        SIMPLE()(lambda theta: (theta > 0).to(theta.dtype), torch.randn(2, 3))


def test_the_sense_cannot_be_overridden() -> None:
    with pytest.raises(ValueError, match="own sense"):
        SIMPLE()(TopK(2), torch.randn(2, 5), minimize=True)


def test_a_sampler_returning_the_wrong_layout_is_reported() -> None:
    class OneDrawOnly(TopK):
        def sample(self, theta, temperature=1.0, generator=None, samples=1):  # type: ignore[override]
            return super().sample(theta, temperature, generator)  # ignores samples

    with pytest.raises(RelaxationError, match=r"must return \(6, 5\)"):
        SIMPLE(samples=3)(OneDrawOnly(2), torch.randn(2, 5))


def test_config_round_trip_and_registry() -> None:
    estimator = build_estimator("simple", temperature=0.3, samples=5)
    assert isinstance(estimator, SIMPLE)
    assert estimator.config() == {"name": "simple", "temperature": 0.3, "samples": 5}
    assert build_estimator(estimator.config()).config() == estimator.config()
    with pytest.raises(ValueError, match="temperature"):
        SIMPLE(temperature=0.0)


def test_it_samples_through_a_cached_solver_without_the_cache() -> None:
    cached = CachedSolver(get_solver("topk", k=2), solve_ratio=0.0)
    theta = torch.randn(3, 6, requires_grad=True)
    z = SIMPLE(generator=torch.Generator().manual_seed(4))(cached, theta)
    expected = sample_subsets(theta.detach(), 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(z.detach(), expected)
    assert cached.solver_calls == 0 and cached.pool_size == 0


def test_the_decorator_wraps_a_solver_with_a_distribution() -> None:
    differentiable = simple(TopK(2), samples=3, generator=torch.Generator().manual_seed(0))
    theta = torch.randn(4, 6, requires_grad=True)
    z = differentiable(theta)
    assert z.shape == (12, 6) and isinstance(differentiable.estimator, SIMPLE)
    z.sum().backward()  # Σ z = k for every sample: the gradient of a constant is zero
    torch.testing.assert_close(theta.grad, torch.zeros_like(theta), atol=1e-6, rtol=0)
