"""Solvers holding per-instance data (a shortest path's targets, a spanning tree's masks) under
every estimator: each instance's rows reach the solver with that instance's own data, however
the estimator stacks its samples and its two finite-difference targets.

Oracle: the same estimator on each instance alone, with a solver built for that instance only
and the same noise values, gives the rows of the batched run.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from aimle_zoo.estimators import (
    AIMLE,
    IMLE,
    STE,
    Blackbox,
    FixedTarget,
    PerturbedOptimizer,
)
from aimle_zoo.estimators.noise import make_noise
from aimle_zoo.solvers import GraphShortestPath, SpanningTree, get_solver

from ._helpers import FixedNoise

F64 = torch.float64
SAMPLES = 3
# a DAG on 6 vertices with several routes to every vertex
EDGES = [[0, 0, 1, 1, 2, 2, 3, 4, 1, 0], [1, 2, 3, 4, 3, 4, 5, 5, 2, 3]]


def _estimators(noise: torch.Tensor) -> dict[str, Callable[[], object]]:
    gaussian = make_noise("gaussian")
    return {
        "aimle-central": lambda: AIMLE(
            FixedTarget(0.8), noise=FixedNoise(noise), samples=SAMPLES, symmetric=True
        ),
        "aimle-forward-two-temperatures": lambda: AIMLE(
            FixedTarget(0.8), noise=FixedNoise(noise), samples=SAMPLES, input_temperature=0.5
        ),
        "aimle-forward": lambda: AIMLE(FixedTarget(0.8), noise=FixedNoise(noise), samples=SAMPLES),
        "imle": lambda: IMLE(lambda_=0.8, noise=FixedNoise(noise), samples=SAMPLES),
        "ste": lambda: STE(noise=FixedNoise(noise), samples=SAMPLES),
        "perturbed": lambda: PerturbedOptimizer(
            noise=FixedNoise(noise, like=gaussian), samples=SAMPLES
        ),
    }


def _graph_solvers(batch: int) -> tuple[object, list[object]]:
    targets = torch.tensor([5, 3, 4, 2][:batch])
    batched = GraphShortestPath(EDGES, 6, target=targets)
    return batched, [GraphShortestPath(EDGES, 6, target=int(t)) for t in targets]


def _tree_masks(batch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(batch, n, n, generator=generator) < 0.25
    masks = masks | masks.transpose(1, 2)
    ring = torch.roll(torch.eye(n, dtype=torch.bool), 1, dims=1)  # keeps each one connected
    return masks | ring | ring.T


def _tree_solvers(batch: int, factory: Callable[..., object]) -> tuple[object, list[object]]:
    masks = _tree_masks(batch, 5)
    return factory(mask=masks), [factory(mask=mask) for mask in masks]


SOLVERS = {
    "graph_shortest_path": (lambda b: _graph_solvers(b), (10,)),
    "spanning_tree": (lambda b: _tree_solvers(b, SpanningTree), (5, 5)),
    "mst_scipy": (
        lambda b: _tree_solvers(b, lambda mask: get_solver("mst_scipy", mask=mask)),
        (5, 5),
    ),
}


def _run(estimator, solver, theta: torch.Tensor, cost: torch.Tensor):
    theta = theta.detach().clone().requires_grad_()
    z = estimator(solver, theta)
    (z * cost).sum().backward()
    return z.detach(), theta.grad


@pytest.mark.parametrize("solver_name", sorted(SOLVERS))
@pytest.mark.parametrize(
    "estimator_name",
    [
        "aimle-central",
        "aimle-forward-two-temperatures",
        "aimle-forward",
        "imle",
        "ste",
        "perturbed",
    ],
)
def test_every_instance_is_solved_with_its_own_data(solver_name, estimator_name) -> None:
    batch = 3
    make_solvers, shape = SOLVERS[solver_name]
    batched, singles = make_solvers(batch)
    generator = torch.Generator().manual_seed(0)
    theta = torch.rand(batch, *shape, generator=generator, dtype=F64) + 0.1
    noise = torch.randn(batch * SAMPLES, *shape, generator=generator, dtype=F64)
    rows = SAMPLES  # output rows per instance
    cost = torch.randn(batch * rows, *shape, generator=generator, dtype=F64)
    z, grad = _run(_estimators(noise)[estimator_name](), batched, theta, cost)
    assert grad.abs().sum() > 0
    for index, single in enumerate(singles):
        part = slice(index * SAMPLES, (index + 1) * SAMPLES)
        alone = _estimators(noise[part])[estimator_name]()
        z_alone, grad_alone = _run(
            alone, single, theta[index : index + 1], cost[index * rows : (index + 1) * rows]
        )
        torch.testing.assert_close(z[index * rows : (index + 1) * rows], z_alone, rtol=0, atol=0)
        torch.testing.assert_close(grad[index : index + 1], grad_alone, rtol=0, atol=1e-12)


def test_blackbox_solves_every_instance_with_its_own_data() -> None:
    batched, singles = _graph_solvers(3)
    theta = torch.rand(3, 10, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.1
    cost = torch.randn(3, 10, generator=torch.Generator().manual_seed(2), dtype=F64)
    z, grad = _run(Blackbox(2.0), batched, theta, cost)
    for index, single in enumerate(singles):
        z_alone, grad_alone = _run(
            Blackbox(2.0), single, theta[index : index + 1], cost[index : index + 1]
        )
        torch.testing.assert_close(z[index : index + 1], z_alone, rtol=0, atol=0)
        torch.testing.assert_close(grad[index : index + 1], grad_alone, rtol=0, atol=1e-12)


def test_a_per_instance_mask_must_divide_the_batch() -> None:
    solver = SpanningTree(mask=_tree_masks(2, 5))
    assert solver.batch_multiple() == 2
    solver(torch.rand(6, 5, 5))  # three rows per instance
    with pytest.raises(Exception, match=r"\[B', n, n\] for weights \[m·B', n, n\]"):
        solver(torch.rand(3, 5, 5))
