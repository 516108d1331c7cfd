"""Exact spanning-tree sampling against the enumerated distribution p(T) ∝ exp(Σ_T w/τ)."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch

from aimle_zoo.estimators import SIMPLE, DifferentiableSolver
from aimle_zoo.solvers import (
    MinimumSpanningTree,
    SolverInputError,
    SpanningTree,
    SpanningTreeEdges,
    edges_to_matrix,
    get_solver,
    matrix_to_edges,
)
from aimle_zoo.solvers.spanning_tree import sample_spanning_trees, spanning_tree_marginals


def symmetric(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    weights = torch.randn(
        1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    return scale * (weights + weights.mT) / 2


def enumerated_trees(
    weights: torch.Tensor, temperature: float, allowed: torch.Tensor | None = None
) -> tuple[list[frozenset[tuple[int, int]]], torch.Tensor]:
    """Every spanning tree of the allowed edges (networkx decides) and its probability."""
    n = weights.shape[-1]
    edges = [
        (i, j) for i in range(1, n) for j in range(i) if allowed is None or bool(allowed[i, j])
    ]
    trees, scores = [], []
    for subset in itertools.combinations(edges, n - 1):
        graph = nx.Graph(subset)
        graph.add_nodes_from(range(n))
        if nx.is_tree(graph):
            trees.append(frozenset(subset))
            scores.append(sum(float(weights[i, j]) for i, j in subset) / temperature)
    return trees, torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)


def tree_counts(z: torch.Tensor, trees: list[frozenset[tuple[int, int]]]) -> torch.Tensor:
    """How often each enumerated tree was drawn (every draw must be one of them)."""
    index = {tree: position for position, tree in enumerate(trees)}
    counts = torch.zeros(len(trees), dtype=torch.float64)
    lower = torch.tril(z, diagonal=-1).nonzero().tolist()  # [draw, i, j]
    per_draw: dict[int, set[tuple[int, int]]] = {}
    for draw, i, j in lower:
        per_draw.setdefault(draw, set()).add((i, j))
    assert len(per_draw) == z.shape[0]
    for edges in per_draw.values():
        counts[index[frozenset(edges)]] += 1
    return counts


def assert_frequencies(counts: torch.Tensor, probabilities: torch.Tensor) -> None:
    """Every count within 4.5 binomial standard deviations of its expectation."""
    draws = float(counts.sum())
    expected = draws * probabilities
    spread = (expected * (1 - probabilities)).sqrt().clamp(min=1e-9)
    assert float(((counts - expected).abs() / spread).max()) < 4.5


@pytest.mark.parametrize(("n", "temperature"), [(4, 1.0), (4, 0.4), (5, 1.5)])
def test_tree_frequencies_match_the_enumerated_distribution(n: int, temperature: float) -> None:
    weights = symmetric(n, seed=n)
    trees, probabilities = enumerated_trees(weights[0], temperature)
    assert len(trees) == n ** (n - 2)  # Cayley
    z = sample_spanning_trees(
        weights, temperature, generator=torch.Generator().manual_seed(1), samples=20_000
    )
    assert z.shape == (20_000, n, n) and torch.equal(z, z.mT)
    assert_frequencies(tree_counts(z, trees), probabilities)


def test_a_mask_restricts_the_trees_and_both_senses_sample_their_own_distribution() -> None:
    weights = symmetric(5, seed=3)
    allowed = torch.ones(5, 5, dtype=torch.bool)
    allowed[0, 1] = allowed[1, 0] = allowed[2, 4] = allowed[4, 2] = False
    trees, probabilities = enumerated_trees(weights[0], 0.4, allowed)  # ⟨w, z⟩ = 2 Σ_T w
    z = SpanningTree(mask=allowed).sample(weights, 0.8, torch.Generator().manual_seed(2), 20_000)
    assert not bool(z[:, 0, 1].any()) and not bool(z[:, 2, 4].any())
    assert_frequencies(tree_counts(z, trees), probabilities)
    minimum = MinimumSpanningTree(mask=allowed).sample(
        weights, 0.8, torch.Generator().manual_seed(3), 20_000
    )
    negated, probabilities = enumerated_trees(-weights[0], 0.4, allowed)
    assert_frequencies(tree_counts(minimum, negated), probabilities)


def test_draws_average_to_the_exact_marginals_per_instance() -> None:
    """Sample-minor layout: draws of instance b are rows b·N … b·N + N − 1."""
    weights = torch.cat([symmetric(6, seed=0), symmetric(6, seed=1, scale=3.0)])
    z = sample_spanning_trees(
        weights, 1.0, generator=torch.Generator().manual_seed(0), samples=6000
    )
    means = z.reshape(2, 6000, 6, 6).mean(dim=1)
    torch.testing.assert_close(means, spanning_tree_marginals(weights, 1.0), rtol=0, atol=0.03)
    assert bool((z.sum(dim=(1, 2)) == 2 * 5).all())


def test_at_a_huge_spread_the_draw_is_the_maximum_spanning_tree() -> None:
    weights = symmetric(8, seed=5, scale=1000.0).repeat(4, 1, 1)
    torch.testing.assert_close(sample_spanning_trees(weights, 1.0), SpanningTree()(weights))


def test_the_nri_layout_samples_both_directions_and_is_reproducible() -> None:
    solver = SpanningTreeEdges()
    theta = torch.randn(3, 20)  # n = 5
    first = solver.sample(theta, 1.0, torch.Generator().manual_seed(4), samples=2)
    again = solver.sample(theta, 1.0, torch.Generator().manual_seed(4), samples=2)
    assert first.shape == (6, 20) and torch.equal(first, again)
    matrices = edges_to_matrix(first)
    assert torch.equal(matrices, matrices.mT) and bool((first.sum(dim=1) == 8).all())
    torch.testing.assert_close(solver.marginals(theta, 1.0), solver.relax(theta, 0.5))
    with pytest.raises(SolverInputError, match="temperature"):
        solver.sample(theta, 0.0)


@pytest.mark.parametrize("name", ["mst", "mst_edges"])
def test_the_marginals_are_the_family_of_the_objective(name: str) -> None:
    """E[z] under p(z) ∝ exp(⟨θ, z⟩/τ), enumerated over every tree of K₅ (the same family as
    top-k's, and as the exact gradient of ``gradient_fidelity``)."""
    solver = get_solver(name)
    weights = symmetric(5, seed=9)
    theta = weights if name == "mst" else matrix_to_edges(weights)
    trees, probabilities = enumerated_trees(weights[0], 0.6 / 2)  # ⟨θ, z⟩ = 2 Σ_T w
    adjacency = torch.zeros(len(trees), 5, 5, dtype=torch.float64)
    for row, tree in enumerate(trees):
        for i, j in tree:
            adjacency[row, i, j] = adjacency[row, j, i] = 1.0
    expected = (probabilities[:, None, None] * adjacency).sum(dim=0, keepdim=True)
    if name == "mst_edges":
        expected = matrix_to_edges(expected)
    torch.testing.assert_close(solver.marginals(theta, 0.6), expected)


def test_simple_trains_through_a_tree_layer() -> None:
    """Forward: exact trees; backward: the marginals' Jacobian. Learn scores whose most likely
    tree is a given path; eval mode returns it."""
    torch.manual_seed(0)
    n = 5
    target = torch.zeros(1, n, n)
    for i in range(n - 1):
        target[0, i, i + 1] = target[0, i + 1, i] = 1.0
    theta = torch.zeros(1, n, n, requires_grad=True)
    layer = DifferentiableSolver("mst", SIMPLE(samples=4))
    optimizer = torch.optim.Adam([theta], lr=0.2)
    for _ in range(100):
        optimizer.zero_grad()
        z = layer(theta)
        ((z - target) ** 2).sum(dim=(1, 2)).mean().backward()
        optimizer.step()
    layer.eval()
    assert torch.equal(layer(theta.detach()), target)


def test_one_and_two_vertices() -> None:
    assert torch.equal(sample_spanning_trees(torch.zeros(3, 1, 1), 1.0), torch.zeros(3, 1, 1))
    pair = sample_spanning_trees(torch.randn(3, 2, 2), 0.5, samples=2)
    assert torch.equal(pair, torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(6, 2, 2))


def test_per_instance_masks_follow_their_instances_draws() -> None:
    """A mask [B, n, n] with N draws per instance: draw m of instance b (row b·N + m) only uses
    instance b's edges."""
    n = 5
    masks = torch.ones(2, n, n, dtype=torch.bool)
    masks[0, 0, 1] = masks[0, 1, 0] = False  # instance 0 may not use (0, 1)
    masks[1, 2, 3] = masks[1, 3, 2] = False  # instance 1 may not use (2, 3)
    weights = torch.cat([symmetric(n, seed=1), symmetric(n, seed=2)]).float()
    weights[:, 0, 1] = weights[:, 1, 0] = weights[:, 2, 3] = weights[:, 3, 2] = 50.0  # tempting
    z = SpanningTree(mask=masks).sample(weights, 1.0, torch.Generator().manual_seed(0), 200)
    assert z.shape == (400, n, n) and bool((z.sum(dim=(1, 2)) == 2 * (n - 1)).all())
    assert not bool(z[:200, 0, 1].any()) and not bool(z[200:, 2, 3].any())
    assert bool(z[200:, 0, 1].all()) and bool(z[:200, 2, 3].all())  # allowed there: always in
