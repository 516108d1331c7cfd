"""AIMLE and IMLE: closed forms, identities, solver-call counts, sense, fidelity and learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimle_zoo.estimators import (
    AIMLE,
    IMLE,
    STE,
    AdaptiveTarget,
    Blackbox,
    DifferentiableSolver,
    FixedTarget,
    build_estimator,
    expand_samples,
)

from ._helpers import CountingSolver, FixedNoise, group_mean, numpy_topk, tile, topk_mask

F64 = torch.float64


def _run(estimator, solver, theta, cost, **kwargs):
    """Forward, then backward of the linear loss ⟨cost, z⟩ (so dy = cost)."""
    theta = theta.detach().clone().requires_grad_()
    z = estimator(solver, theta, **kwargs)
    (z * cost).sum().backward()
    return z.detach(), theta.grad


def test_forward_difference_matches_closed_form() -> None:
    batch, n, k, samples, lam = 3, 7, 2, 2, 1.5
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(batch * samples, n, dtype=F64)
    estimator = AIMLE(target=FixedTarget(lam), noise=None, samples=samples)
    z, grad = _run(estimator, lambda t: topk_mask(t, k), theta, cost)

    theta2 = tile(theta.numpy(), samples)
    expected_z = numpy_topk(theta2, k)
    difference = (expected_z - numpy_topk(theta2 - lam * cost.numpy(), k)) / lam
    expected = group_mean(difference, (batch, samples))
    assert np.abs(expected).sum() > 0
    np.testing.assert_array_equal(z.numpy(), expected_z)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=1e-12)


def test_central_difference_matches_closed_form() -> None:
    batch, n, k, samples, lam = 4, 6, 3, 3, 1.2
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(batch * samples, n, dtype=F64)
    estimator = AIMLE(target=FixedTarget(lam), noise=None, samples=samples, symmetric=True)
    _, grad = _run(estimator, lambda t: topk_mask(t, k), theta, cost)

    theta2, dy = tile(theta.numpy(), samples), cost.numpy()
    difference = (numpy_topk(theta2 + lam * dy, k) - numpy_topk(theta2 - lam * dy, k)) / (2 * lam)
    expected = group_mean(difference, (batch, samples))
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=1e-12)


def test_adaptive_lambda_and_beta_update_match_the_rule() -> None:
    batch, n, k, samples, beta0 = 3, 8, 3, 2, 0.8
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(batch * samples, n, dtype=F64)
    target = AdaptiveTarget(initial_beta=beta0, target_norm=1.0, update_step=0.01, decay=0.9)
    estimator = AIMLE(target=target, noise=None, samples=samples)
    _, grad = _run(estimator, lambda t: topk_mask(t, k), theta, cost)

    theta2, dy = tile(theta.numpy(), samples), cost.numpy()
    lam = beta0 * np.linalg.norm(theta2) / np.linalg.norm(dy)  # on the tiled θ
    raw = numpy_topk(theta2, k) - numpy_topk(theta2 - lam * dy, k)
    expected = group_mean(raw / lam, (batch, samples))  # one λ for both uses
    count = np.count_nonzero(raw) / (batch * samples)
    running = 0.9 * 1.0 + 0.1 * count
    beta = max(beta0 + (0.01 if running < 1.0 else -0.01), 0.0)

    assert float(estimator.last_lambda) == pytest.approx(lam, rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6)
    assert float(target.grad_norm) == pytest.approx(running, rel=1e-6)
    assert float(target.beta) == pytest.approx(beta, rel=1e-6)


@pytest.mark.parametrize(("tau_in", "tau_t"), [(1.0, 1.0), (0.0, 1.0), (1.0, 0.4)])
def test_marginal_samples_and_temperatures_match_closed_form(tau_in: float, tau_t: float) -> None:
    batch, n, k, samples, marginal, lam = 2, 6, 2, 2, 3, 2.0
    rows = batch * samples * marginal
    theta = torch.randn(batch, n, dtype=F64)
    cost = torch.randn(rows, n, dtype=F64)
    eps = torch.randn(rows, n, dtype=F64)
    solver = lambda t: topk_mask(t, k)  # noqa: E731

    def estimate(cls, **extra):
        return _run(
            cls(
                noise=FixedNoise(eps),
                samples=samples,
                marginal_samples=marginal,
                input_temperature=tau_in,
                target_temperature=tau_t,
                **extra,
            ),
            solver,
            theta,
            cost,
        )

    z_aimle, grad_aimle = estimate(AIMLE, target=FixedTarget(lam))
    z_imle, grad_imle = estimate(IMLE, lambda_=lam)

    theta2, dy, e = tile(theta.numpy(), samples * marginal), cost.numpy(), eps.numpy()
    forward = numpy_topk(theta2 + tau_in * e, k)
    target = numpy_topk(theta2 - lam * dy + tau_t * e, k)
    aimle_left = numpy_topk(theta2 + tau_t * e, k)

    def reduce(difference):
        per_sample = group_mean(difference, (batch * samples, marginal))
        return group_mean(per_sample / lam, (batch, samples))

    np.testing.assert_array_equal(z_aimle.numpy(), forward)
    np.testing.assert_array_equal(z_imle.numpy(), forward)
    np.testing.assert_allclose(grad_aimle.numpy(), reduce(aimle_left - target), atol=1e-12)
    np.testing.assert_allclose(grad_imle.numpy(), reduce(forward - target), atol=1e-12)
    if tau_in != tau_t:  # I-MLE uses the τ_in sample, forward AIMLE a τ_t one
        assert not torch.equal(grad_aimle, grad_imle)


def test_imle_equals_forward_aimle_bit_for_bit_with_noise() -> None:
    batch, n, k, samples, marginal = 5, 10, 3, 3, 2
    theta = torch.randn(batch, n)
    cost = torch.randn(batch * samples * marginal, n)
    common = {
        "samples": samples,
        "marginal_samples": marginal,
        "input_temperature": 0.7,
        "target_temperature": 0.7,
    }
    solver = lambda t: topk_mask(t, k)  # noqa: E731
    aimle = AIMLE(target=FixedTarget(2.0), generator=torch.Generator().manual_seed(7), **common)
    imle = IMLE(lambda_=2.0, generator=torch.Generator().manual_seed(7), **common)
    z_a, grad_a = _run(aimle, solver, theta, cost)
    z_i, grad_i = _run(imle, solver, theta, cost)
    assert torch.equal(z_a, z_i)
    assert torch.equal(grad_a, grad_i)
    assert grad_a.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "expected_rows"),
    [
        (lambda: AIMLE(samples=2), [8, 8]),  # forward sample reused: 2 calls
        (lambda: AIMLE(samples=2, noise=None, target_temperature=0.5), [8, 8]),
        (lambda: AIMLE(samples=2, symmetric=True), [8, 16]),  # both targets in one call
        (lambda: AIMLE(samples=2, target_temperature=0.5), [8, 16]),
        (lambda: IMLE(samples=2), [8, 8]),
        (lambda: Blackbox(), [4, 4]),
        (lambda: STE(samples=2), [8]),
    ],
)
def test_solver_calls_per_step(make, expected_rows) -> None:
    solver = CountingSolver(k=2)
    theta = torch.randn(4, 6, requires_grad=True)
    estimator = make()
    z = estimator(solver, theta)
    (z * torch.randn_like(z)).sum().backward()
    assert solver.rows == expected_rows


@pytest.mark.parametrize(
    "config",
    [
        {"name": "aimle", "target": {"name": "fixed", "lambda_": 1.3}, "noise": None, "samples": 2},
        {
            "name": "aimle",
            "target": {"name": "adaptive", "initial_beta": 0.6},
            "noise": None,
            "samples": 3,
            "symmetric": True,
        },
        {"name": "imle", "lambda_": 0.9, "noise": None, "samples": 2},
        {"name": "blackbox", "lambda_": 2.0},
        {"name": "ste", "samples": 2},
    ],
    ids=["aimle-fixed", "aimle-central-adaptive", "imle", "blackbox", "ste"],
)
def test_minimisation_equals_maximisation_of_negated_theta(config) -> None:
    theta = torch.randn(3, 7, dtype=F64)
    samples = build_estimator(config).samples
    cost = torch.randn(3 * samples, 7, dtype=F64)
    z_max, grad_max = _run(build_estimator(config), CountingSolver(3, "max"), -theta, cost)
    z_min, grad_min = _run(build_estimator(config), CountingSolver(3, "min"), theta, cost)
    bottom = lambda t: topk_mask(-t, 3)  # noqa: E731 - undeclared sense, overridden below
    z_flag, grad_flag = _run(build_estimator(config), bottom, theta, cost, minimize=True)
    assert torch.equal(z_min, z_max)
    assert torch.equal(z_flag, z_max)
    assert grad_max.abs().sum() > 0
    np.testing.assert_allclose(grad_min.numpy(), -grad_max.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad_flag.numpy(), -grad_max.numpy(), rtol=0, atol=1e-12)


def test_every_step_takes_lambda_from_the_beta_before_its_update() -> None:
    """λ_t = β_{t−1}·‖θ‖/‖dy‖ at every step, with β moved by the previous steps (and by the
    current one only after λ is taken)."""
    target = AdaptiveTarget(initial_beta=0.4, target_norm=5.0, update_step=0.1, momentum=0.5)
    estimator = AIMLE(target=target, noise=None, samples=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        theta = torch.randn(3, 8, generator=gen, dtype=F64)
        cost = torch.randn(6, 8, generator=gen, dtype=F64)
        beta = float(target.beta)
        _run(estimator, lambda t: topk_mask(t, 3), theta, cost)
        norms = np.linalg.norm(tile(theta.numpy(), 2)) / np.linalg.norm(cost.numpy())
        assert float(estimator.last_lambda) == pytest.approx(beta * norms, rel=1e-9)
        assert float(target.beta) != beta
    assert float(target.beta) > 0.4 + 0.3  # β grew with momentum, so λ was checked as it moved


def test_diagnostics_after_backward() -> None:
    estimator = AIMLE(target=AdaptiveTarget(initial_beta=1.0), samples=2)
    assert estimator.last_lambda is None and "lambda" not in estimator.diagnostics()
    theta = torch.randn(4, 9, requires_grad=True)
    z = estimator(lambda t: topk_mask(t, 3), theta)
    (z * torch.randn_like(z)).sum().backward()
    assert isinstance(estimator.last_lambda, torch.Tensor) and estimator.last_lambda > 0
    fraction = (theta.grad != 0).float().mean()
    assert float(estimator.last_grad_sparsity) == pytest.approx(float(fraction))
    assert estimator.beta is estimator.target.beta
    info = estimator.diagnostics()
    assert set(info) == {"lambda", "grad_sparsity", "beta", "grad_norm_avg"}
    assert info["beta"] == pytest.approx(float(estimator.target.beta))
    assert AIMLE(target=FixedTarget()).beta is None


def test_noise_follows_theta_dtype_and_generator() -> None:
    theta = torch.randn(2, 6, dtype=F64)

    def sample(seed: int) -> torch.Tensor:
        estimator = AIMLE(samples=3, generator=torch.Generator().manual_seed(seed))
        return estimator(lambda t: t.clone(), theta)  # identity "solver" exposes θ + ε

    first, again, other = sample(1), sample(1), sample(2)
    assert first.dtype == F64
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, expand_samples(theta, 3))


def test_learning_toy_topk_target() -> None:
    """A linear model learns top-3 of a hidden linear score with AIMLE (defaults, S = 4).

    Seeded; 300 Adam steps. The test Hamming distance to the target subsets goes from about 4
    (untrained) to about 0.6; asserted below 1.0.
    """
    d, n, k = 8, 12, 3
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=gen)
    x_train, x_test = torch.randn(512, d, generator=gen), torch.randn(512, d, generator=gen)
    y_train, y_test = topk_mask(x_train @ hidden.T, k), topk_mask(x_test @ hidden.T, k)
    model = torch.nn.Linear(d, n)
    layer = DifferentiableSolver(lambda t: topk_mask(t, k), AIMLE(samples=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    def test_hamming() -> float:
        layer.eval()
        with torch.no_grad():
            distance = ((layer(model(x_test)) - y_test) ** 2).sum(dim=1).mean()
        layer.train()
        return float(distance)

    before = test_hamming()
    for _ in range(300):
        idx = torch.randint(0, 512, (32,), generator=gen)
        z = layer(model(x_train[idx]))  # [32·4, n]
        loss = ((z - expand_samples(y_train[idx], layer.samples)) ** 2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before > 3.0
    assert test_hamming() < 1.0
