"""STE, perturbed optimizers and blackbox differentiation against their defining formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from aimle_zoo.estimators import (
    IMLE,
    STE,
    Blackbox,
    Gaussian,
    PerturbedOptimizer,
    build_estimator,
)
from aimle_zoo.solvers import SolverInputError

from ._helpers import CountingSolver, FixedNoise, numpy_topk, tile, topk_mask

F64 = torch.float64


def _run(estimator, solver, theta, cost, **kwargs):
    theta = theta.detach().clone().requires_grad_()
    z = estimator(solver, theta, **kwargs)
    (z * cost).sum().backward()
    return z.detach(), theta.grad


# ------------------------------------------------------------------------------------ STE


@pytest.mark.parametrize("sense", ["max", "min"])
def test_ste_passes_the_mean_of_dy(sense: str) -> None:
    batch, n, samples, tau = 3, 6, 4, 0.5
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(batch * samples, n, dtype=F64)
    eps = torch.randn(batch * samples, n, dtype=F64)
    estimator = STE(noise=FixedNoise(eps), temperature=tau, samples=samples)
    z, grad = _run(estimator, CountingSolver(2, sense), theta, cost)

    drawn = -eps.numpy() if sense == "min" else eps.numpy()  # a minimiser's θ − τε
    perturbed = tile(theta.numpy(), samples) + tau * drawn
    expected_z = numpy_topk(-perturbed if sense == "min" else perturbed, 2)
    mean_dy = cost.numpy().reshape(batch, samples, n).mean(axis=1)
    np.testing.assert_array_equal(z.numpy(), expected_z)
    np.testing.assert_allclose(grad.numpy(), -mean_dy if sense == "min" else mean_dy, atol=1e-12)


# ------------------------------------------------------------------------------ perturbed


@pytest.mark.parametrize("samples", [2, 4])
@pytest.mark.parametrize("baseline", [True, False])
def test_perturbed_gradient_matches_its_formula(baseline: bool, samples: int) -> None:
    batch, n, k, sigma = 2, 5, 2, 0.5
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(batch * samples, n, dtype=F64)
    eps = torch.randn(batch * samples, n, dtype=F64)
    estimator = PerturbedOptimizer(
        FixedNoise(eps, like=Gaussian()), sigma=sigma, samples=samples, baseline=baseline
    )
    z, grad = _run(estimator, lambda t: topk_mask(t, k), theta, cost)

    expected_z = numpy_topk(tile(theta.numpy(), samples) + sigma * eps.numpy(), k)
    weights = (expected_z * cost.numpy()).sum(axis=1).reshape(batch, samples)
    expected = np.zeros((batch, n))
    for b in range(batch):
        for s in range(samples):
            w = weights[b, s]
            if baseline:
                w -= (weights[b].sum() - weights[b, s]) / (samples - 1)
            expected[b] += w * eps.numpy()[b * samples + s] / sigma / samples
    np.testing.assert_array_equal(z.numpy(), expected_z)
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-12)


def test_perturbed_is_unbiased_for_gumbel_argmax_with_and_without_baseline() -> None:
    """E[argmax(θ + σZ)] = softmax(θ/σ) for Gumbel Z, so ∂/∂θ = (diag p − ppᵀ)/σ exactly.

    8000 independent estimates (N = 10 each, run as the batch) average to the exact
    Jacobian-vector product within 4.5 standard errors with and without the leave-one-out
    baseline (a plain-mean baseline, biased by (N − 1)/N, is off by about 7 standard errors
    here); the baseline's variance is lower. Seeded.
    """
    n, sigma, repeats, samples = 4, 0.8, 8000, 10
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(n, generator=gen, dtype=F64)
    v = torch.randn(n, generator=gen, dtype=F64)
    p = torch.softmax(theta / sigma, dim=0)
    exact = ((torch.diag(p) - torch.outer(p, p)) / sigma) @ v
    variances = {}
    for baseline in (True, False):
        estimator = PerturbedOptimizer(
            "gumbel",
            sigma=sigma,
            samples=samples,
            baseline=baseline,
            generator=torch.Generator().manual_seed(1),
        )
        batch = theta.repeat(repeats, 1)
        _, grads = _run(estimator, lambda t: topk_mask(t, 1), batch, v.repeat(repeats * samples, 1))
        error = (grads.mean(dim=0) - exact).abs()
        standard_error = grads.std(dim=0) / math.sqrt(repeats)
        assert torch.all(error < 4.5 * standard_error), (baseline, error, standard_error)
        variances[baseline] = float(grads.var(dim=0).sum())
    assert variances[True] < 0.9 * variances[False]


@pytest.mark.parametrize("sense", ["max", "min"])
def test_perturbed_matches_gaussian_two_way_closed_form(sense: str) -> None:
    """n = 2, one item chosen: E[z_1] = Φ(±(θ_1 − θ_2)/(σ√2)), so the Jacobian is exact."""
    sigma, repeats, samples = 0.6, 2000, 10
    theta = torch.tensor([0.2, -0.1], dtype=F64)
    v = torch.tensor([1.0, -0.5], dtype=F64)
    sign = 1.0 if sense == "max" else -1.0
    density = stats.norm.pdf(sign * float(theta[0] - theta[1]) / (sigma * math.sqrt(2)))
    a = sign * density / (sigma * math.sqrt(2))  # ∂E[z_1]/∂θ_1
    jacobian = torch.tensor([[a, -a], [-a, a]], dtype=F64)
    exact = jacobian.T @ v
    estimator = PerturbedOptimizer(
        "gaussian", sigma=sigma, samples=samples, generator=torch.Generator().manual_seed(2)
    )
    batch = theta.repeat(repeats, 1)
    cost = v.repeat(repeats * samples, 1)
    _, grads = _run(estimator, CountingSolver(1, sense), batch, cost)
    error = (grads.mean(dim=0) - exact).abs()
    assert torch.all(error < 5 * grads.std(dim=0) / math.sqrt(repeats) + 1e-3), error
    assert torch.sign(grads.mean(dim=0)[0]) == torch.sign(exact[0])


def test_perturbed_minimiser_equals_maximiser_of_negated_theta_and_noise() -> None:
    """min-solver(θ; Z) = max-solver(−θ; −Z) as solutions; ∇ν(−Z) = −∇ν(Z) flips the sign."""
    batch, n, samples = 3, 5, 4
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(batch * samples, n, dtype=F64)
    eps = torch.randn(batch * samples, n, dtype=F64)

    def estimate(noise_values, solver, t):
        estimator = PerturbedOptimizer(FixedNoise(noise_values, like=Gaussian()), samples=samples)
        return _run(estimator, solver, t, cost)

    z_min, grad_min = estimate(eps, CountingSolver(2, "min"), theta)
    z_max, grad_max = estimate(-eps, CountingSolver(2, "max"), -theta)
    assert torch.equal(z_min, z_max)
    assert grad_min.abs().sum() > 0
    np.testing.assert_allclose(grad_min.numpy(), -grad_max.numpy(), atol=1e-12)


@pytest.mark.parametrize("sense", ["max", "min"])
def test_multiplicative_perturbation_matches_its_two_way_closed_form(sense: str) -> None:
    """θ ⊙ exp(σZ − σ²/2) with θ > 0, n = 2, one item chosen: log θ_i + σZ_i compete, so
    E[z_1] = Φ(±d), d = (log θ_1 − log θ_2)/(σ√2), and ∂E[z_1]/∂θ_i = ±φ(d)/(σ√2·θ_i)."""
    sigma, repeats, samples = 0.5, 4000, 10
    theta = torch.tensor([2.0, 1.0], dtype=F64)
    v = torch.tensor([1.0, -0.5], dtype=F64)
    sign = 1.0 if sense == "max" else -1.0
    d = math.log(2.0) / (sigma * math.sqrt(2))
    a = sign * stats.norm.pdf(d) / (sigma * math.sqrt(2))
    jacobian = torch.tensor([[a / 2.0, -a / 1.0], [-a / 2.0, a / 1.0]], dtype=F64)
    exact = jacobian.T @ v  # rows: E[z_1], E[z_2]; columns: θ_1, θ_2
    estimator = PerturbedOptimizer(
        "gaussian",
        sigma=sigma,
        samples=samples,
        perturbation="multiplicative",
        generator=torch.Generator().manual_seed(3),
    )
    batch = theta.repeat(repeats, 1)
    cost = v.repeat(repeats * samples, 1)
    z, grads = _run(estimator, CountingSolver(1, sense), batch, cost)
    chosen_first = float(z[:, 0].mean())
    expected_first = stats.norm.cdf(sign * d)
    assert chosen_first == pytest.approx(expected_first, abs=4 * math.sqrt(0.25 / len(z)))
    error = (grads.mean(dim=0) - exact).abs()
    assert torch.all(error < 5 * grads.std(dim=0) / math.sqrt(repeats) + 1e-3), (error, exact)


def test_multiplicative_perturbation_keeps_signs_and_the_mean() -> None:
    """The solver sees θ ⊙ exp(σZ − σ²s²/2): each entry keeps its sign, and the factor has
    mean one (Gaussian noise of scale s = 0.5 here)."""
    seen: list[torch.Tensor] = []

    def spy(theta: torch.Tensor) -> torch.Tensor:
        seen.append(theta.clone())
        return topk_mask(theta, 1)

    estimator = PerturbedOptimizer(
        Gaussian(scale=0.5), sigma=0.8, samples=20_000, perturbation="multiplicative"
    )
    theta = torch.tensor([[3.0, -1.0, 0.25]], dtype=F64)
    estimator(spy, theta)
    (perturbed,) = seen
    assert torch.equal(torch.sign(perturbed), torch.sign(theta).expand_as(perturbed))
    spread = (0.8 * 0.5) ** 2
    standard_error = theta.abs() * math.sqrt(math.expm1(spread) / len(perturbed))
    assert torch.all((perturbed.mean(dim=0) - theta).abs() < 5 * standard_error)


def test_multiplicative_perturbation_refuses_what_it_cannot_handle() -> None:
    estimator = PerturbedOptimizer(perturbation="multiplicative", samples=2)
    theta = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    with pytest.raises(SolverInputError, match=r"non-zero, but instance\(s\) 1 have zeros"):
        estimator(lambda t: topk_mask(t, 1), theta)
    with pytest.raises(ValueError, match="defined for Gaussian noise"):
        PerturbedOptimizer("gumbel", perturbation="multiplicative")
    with pytest.raises(ValueError, match="perturbation must be one of"):
        PerturbedOptimizer(perturbation="scaled")
    built = build_estimator(estimator.config())
    assert built.config() == estimator.config() and built.perturbation == "multiplicative"


# ------------------------------------------------------------------------------- blackbox


@pytest.mark.parametrize("sense", ["max", "min"])
def test_blackbox_equals_noise_free_imle_with_scaling(sense: str) -> None:
    theta = torch.randn(4, 8, dtype=F64)
    cost = torch.randn(4, 8, dtype=F64)
    z_bb, grad_bb = _run(Blackbox(lambda_=1.7), CountingSolver(3, sense), theta, cost)
    imle = IMLE(lambda_=1.7, noise=None)
    z_imle, grad_imle = _run(imle, CountingSolver(3, sense), theta, cost)
    expected_z = numpy_topk(-theta.numpy() if sense == "min" else theta.numpy(), 3)
    np.testing.assert_array_equal(z_bb.numpy(), expected_z)
    assert torch.equal(z_bb, z_imle)
    assert grad_bb.abs().sum() > 0
    np.testing.assert_allclose(grad_bb.numpy(), grad_imle.numpy(), atol=1e-12)


@pytest.mark.parametrize(
    ("sense", "theta"),
    [("max", [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]), ("min", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])],
)
def test_blackbox_descent_step_lowers_the_loss(sense: str, theta: list[float]) -> None:
    """Items 0 and 1 are chosen but the loss ⟨w, z⟩ penalises them: one step must fix it."""
    weights = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    solver = CountingSolver(2, sense)
    start = torch.tensor(theta, requires_grad=True)
    estimator = Blackbox(lambda_=10.0)
    z = estimator(solver, start[None])
    loss = (z * weights).sum()
    loss.backward()
    assert float(loss.detach()) == 2.0
    moved = (start - 30.0 * start.grad).detach()
    assert float((solver(moved[None]) * weights).sum()) == 0.0
