"""The perturbed Fenchel–Young loss against its definition and its closed form."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aimle_zoo import DifferentiableSolver, FenchelYoungLoss
from aimle_zoo.solvers import SolverInputError, UnknownSolverError, get_solver

from ._helpers import FixedNoise, numpy_topk, tile

F64 = torch.float64


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_gumbel_argmax_loss_is_sigma_times_the_softmax_cross_entropy(sigma: float) -> None:
    """One-hot argmax with Gumbel noise: F_σ(θ) = σ·logsumexp(θ/σ) + σγ and ȳ = softmax(θ/σ),
    so L = σ·CE(θ/σ, y) and ∇L = softmax(θ/σ) − y (per instance; the mean divides by B)."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 6, dtype=F64, generator=generator).requires_grad_()
    labels = torch.tensor([0, 3, 5, 2])
    target = F.one_hot(labels, 6).to(F64)
    loss_fn = FenchelYoungLoss(
        "topk", k=1, noise="gumbel", sigma=sigma, samples=40_000, generator=generator
    )
    loss = loss_fn(theta, target)
    loss.backward()
    scaled = theta.detach() / sigma
    expected = sigma * F.cross_entropy(scaled, labels)
    # Monte-Carlo error: the per-sample loss has a standard deviation of about σ·1.3
    assert float(loss.detach()) == pytest.approx(
        float(expected), abs=5 * sigma * 1.3 / math.sqrt(40_000)
    )
    expected_grad = (torch.softmax(scaled, dim=1) - target) / 4
    torch.testing.assert_close(theta.grad, expected_grad, rtol=0, atol=0.005)


@pytest.mark.parametrize("sense", ["max", "min"])
def test_loss_and_gradient_follow_the_definition_on_the_drawn_noise(sense: str) -> None:
    """With the exact noise of the run: L̂ = s·mean_n ⟨θ + σZ_n, z_n − y⟩ and ∇L̂ =
    s·mean_n (z_n − y), z_n the top-3 (bottom-3 for a minimiser) of θ + σZ_n (NumPy oracle)."""
    batch, n, k, samples, sigma = 3, 7, 3, 5, 0.7
    generator = torch.Generator().manual_seed(1)
    theta = torch.randn(batch, n, dtype=F64, generator=generator)
    noise = torch.randn(batch * samples, n, dtype=F64, generator=generator)
    target = torch.from_numpy(numpy_topk(np.random.default_rng(2).random((batch, n)), k))
    solver = get_solver("topk", k=k)
    loss_fn = FenchelYoungLoss(
        solver if sense == "max" else (lambda t: solver(-t)),
        noise=FixedNoise(noise),
        sigma=sigma,
        samples=samples,
        reduction="none",
        minimize=sense == "min",
    )
    theta_grad = theta.clone().requires_grad_()
    losses = loss_fn(theta_grad, target)
    losses.sum().backward()

    perturbed = tile(theta.numpy(), samples) + sigma * noise.numpy()
    solutions = numpy_topk(perturbed if sense == "max" else -perturbed, k)
    gap = solutions - tile(target.numpy(), samples)
    sign = 1.0 if sense == "max" else -1.0
    expected = sign * (perturbed * gap).sum(axis=1).reshape(batch, samples).mean(axis=1)
    np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-12)
    expected_grad = sign * gap.reshape(batch, samples, n).mean(axis=1)
    np.testing.assert_allclose(theta_grad.grad.numpy(), expected_grad, rtol=1e-12)
    assert (losses >= 0).all()  # y is feasible, each z_n optimal for its perturbed θ


def test_grid_paths_loss_is_non_negative_and_zero_only_at_a_stable_gold_path() -> None:
    """A minimiser (grid shortest path): for any feasible gold path the loss is >= 0; the gold
    path of costs so separated that the noise cannot move it (σ tiny) scores 0 exactly, and
    another path then scores its extra cost (networkx oracle)."""
    generator = torch.Generator().manual_seed(3)
    costs = torch.rand(4, 5, 5, dtype=F64, generator=generator) * 9 + 1
    solver = get_solver("dijkstra")
    optimal = solver(costs)
    loss_fn = FenchelYoungLoss(solver, sigma=1e-6, samples=3, reduction="none")
    assert torch.equal(loss_fn(costs, optimal), torch.zeros(4, dtype=F64))
    # the second instance's optimal path as the target of the first: the loss is the cost gap
    other = optimal[[1, 0, 3, 2]]
    losses = loss_fn(costs, other)
    graph_costs = []
    for index in range(4):
        graph = nx.DiGraph()
        weights = costs[index].numpy()
        for row in range(5):
            for col in range(5):
                for d_row in (-1, 0, 1):
                    for d_col in (-1, 0, 1):
                        near = (row + d_row, col + d_col)
                        if (d_row or d_col) and 0 <= near[0] < 5 and 0 <= near[1] < 5:
                            graph.add_edge((row, col), near, weight=weights[near])
        best = nx.dijkstra_path_length(graph, (0, 0), (4, 4)) + weights[0, 0]
        graph_costs.append((other[index].numpy() * weights).sum() - best)
    np.testing.assert_allclose(losses.numpy(), graph_costs, atol=1e-4)
    assert (losses >= 0).all()


def test_reductions_and_an_adjacency_with_missing_edges() -> None:
    """``"none"`` gives [B], ``"sum"`` its sum and ``"mean"`` its mean; on a graph given as an
    adjacency, whose missing edges cost +inf (θ + σZ is +inf there too), the loss and its
    gradient stay finite (those entries are 0 in both z and y, and get no gradient)."""
    edges = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)  # a DAG, 0 -> 5
    solver = get_solver("dijkstra", adjacency=edges, target=5)
    generator = torch.Generator().manual_seed(0)
    theta = (torch.rand(5, 6, 6, generator=generator) + 0.5).masked_fill(~edges, math.inf)
    target = solver((torch.rand(5, 6, 6, generator=generator) + 0.5).masked_fill(~edges, math.inf))
    losses = {}
    for reduction in ("none", "sum", "mean"):
        loss_fn = FenchelYoungLoss(
            solver, samples=4, reduction=reduction, generator=torch.Generator().manual_seed(1)
        )
        losses[reduction] = loss_fn(theta, target)
    assert losses["none"].shape == (5,) and torch.isfinite(losses["none"]).all()
    assert (losses["none"] >= 0).all()
    theta.requires_grad_()
    FenchelYoungLoss(solver, samples=4)(theta, target).backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    assert (theta.grad[:, ~edges] == 0).all() and theta.grad.abs().sum() > 0
    torch.testing.assert_close(losses["sum"], losses["none"].sum())
    torch.testing.assert_close(losses["mean"], losses["none"].mean())


def test_a_linear_model_learns_top_k_selections_from_targets() -> None:
    """Supervision by solutions: a linear scorer trained on the Fenchel–Young loss alone
    reproduces the target selections on held-out inputs."""
    torch.manual_seed(0)
    truth = torch.randn(10, 16)
    solver = get_solver("topk", k=4)

    def data(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.randn(count, 10)
        return features, solver(features @ truth)

    model = torch.nn.Linear(10, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = FenchelYoungLoss(solver, sigma=0.5, samples=4)
    for _ in range(300):
        features, targets = data(64)
        loss = loss_fn(model(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features, targets = data(500)
    with torch.no_grad():
        agreement = (solver(model(features)) * targets).sum(dim=1).mean() / 4
    assert agreement > 0.9


def test_a_differentiable_solver_layer_lends_its_plain_solver_and_sense() -> None:
    """Given a model's latent layer (in training mode, where calling it would run its
    estimator), the loss uses the layer's plain solver and sense: the same loss and gradient
    as with the solver itself."""
    layer = DifferentiableSolver("dijkstra", "aimle").train()
    costs = torch.rand(3, 5, 5, dtype=F64) * 4
    gold = layer.solver(torch.rand(3, 5, 5, dtype=F64))
    results = []
    for solver in (layer, layer.solver):
        theta = costs.clone().requires_grad_()
        loss_fn = FenchelYoungLoss(solver, samples=3, generator=torch.Generator().manual_seed(0))
        assert loss_fn.minimize
        loss = loss_fn(theta, gold)
        loss.backward()
        results.append((loss.detach(), theta.grad))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_bad_arguments_and_inputs_are_refused_with_a_reason() -> None:
    theta = torch.randn(3, 6)
    target = get_solver("topk", k=2)(theta)
    loss_fn = FenchelYoungLoss("topk", k=2)
    with pytest.raises(SolverInputError, match="target has shape"):
        loss_fn(theta, target[:2])
    with pytest.raises(SolverInputError, match=r"target must be a torch\.Tensor"):
        loss_fn(theta, target.numpy())
    with pytest.raises(SolverInputError, match="target contains NaN or inf"):
        loss_fn(theta, target.index_fill(1, torch.tensor([0]), math.nan))
    with pytest.raises(SolverInputError, match="theta contains NaN"):
        loss_fn(theta.index_fill(1, torch.tensor([0]), math.nan), target)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        FenchelYoungLoss("topk", k=2, sigma=0.0)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        FenchelYoungLoss("topk", k=2, samples=0)
    with pytest.raises(ValueError, match="reduction must be"):
        FenchelYoungLoss("topk", k=2, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs noise"):
        FenchelYoungLoss("topk", k=2, noise=None)
    with pytest.raises(TypeError, match="are only used with a solver name"):
        FenchelYoungLoss(get_solver("topk", k=2), k=2)
    with pytest.raises(UnknownSolverError):
        FenchelYoungLoss("no_such_solver", k=2)
