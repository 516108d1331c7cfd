"""Continuous relaxations of the solvers against exact enumeration and independent code."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from aimle_zoo.solvers import (
    LinearAssignment,
    MinimumAssignment,
    MinimumSpanningTree,
    SolverInputError,
    SpanningTree,
    SpanningTreeEdges,
    TopK,
    edges_to_matrix,
    matrix_to_edges,
)
from aimle_zoo.solvers.spanning_tree import spanning_tree_marginals
from aimle_zoo.solvers.topk import relaxed_topk


def _numpy_continuous_topk(scores: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Xie and Ermon's algorithm written out row by row in float64 numpy."""
    out = np.zeros_like(scores)
    for row, w in enumerate(scores.astype(np.float64)):
        w = w.copy()
        khot = np.zeros_like(w)
        onehot = np.zeros_like(w)
        for _ in range(k):
            w = w + np.log(np.maximum(1.0 - onehot, np.finfo(np.float64).tiny))
            logits = w / temperature
            onehot = np.exp(logits - logits.max())
            onehot /= onehot.sum()
            khot += onehot
        out[row] = khot
    return out


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.7), (3, 0.5), (5, 2.0), (7, 0.1)])
def test_continuous_topk_matches_an_independent_implementation(k: int, temperature: float) -> None:
    theta = torch.randn(6, 8, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    relaxed = relaxed_topk(theta, k, temperature)
    expected = _numpy_continuous_topk(theta.numpy(), k, temperature)
    np.testing.assert_allclose(relaxed.numpy(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(relaxed.sum(dim=-1), torch.full((6,), float(k), dtype=theta.dtype))
    assert bool((relaxed >= 0).all())


def _leave_one_out_topk(scores: list[float], k: int, temperature: float) -> list[float]:
    """The rounds with log(1 − a_i) = log Σ_{j≠i} e^{x_j} − log Σ_j e^{x_j}, in Python floats."""

    def log_sum_exp(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(value - top) for value in values))

    w, khot = list(scores), [0.0] * len(scores)
    for _ in range(k):
        logits = [value / temperature for value in w]
        total = log_sum_exp(logits)
        khot = [z + math.exp(x - total) for z, x in zip(khot, logits, strict=True)]
        w = [value + log_sum_exp(logits[:i] + logits[i + 1 :]) - total for i, value in enumerate(w)]
    return khot


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_topk_is_exact_where_one_entry_takes_everything(dtype: torch.dtype) -> None:
    # a = softmax rounds to 1 for the first entry: 1 − a must not be clamped to the smallest
    # float (float32 then took the first entry twice, [2, 0, 0, 0, 0])
    scores = [[200.0, 5.0, 4.0, 3.0, 0.0], [0.0, -3.0, 90.0, -1.0, 2.0]]
    for k, temperature in ((2, 1.0), (3, 0.5)):
        relaxed = relaxed_topk(torch.tensor(scores, dtype=dtype), k, temperature)
        expected = [_leave_one_out_topk(row, k, temperature) for row in scores]
        torch.testing.assert_close(
            relaxed, torch.tensor(expected, dtype=dtype), rtol=1e-5, atol=1e-6
        )


def test_continuous_topk_with_k_1_is_the_softmax() -> None:
    theta = torch.randn(4, 9)
    torch.testing.assert_close(relaxed_topk(theta, 1, 0.3), torch.softmax(theta / 0.3, dim=-1))


def test_continuous_topk_tends_to_the_top_k_indicator_as_the_temperature_drops() -> None:
    # well-separated scores (gaps of 1) so that τ = 0.01 is deep in the hard regime
    generator = torch.Generator().manual_seed(0)
    theta = torch.stack([torch.randperm(12, generator=generator) for _ in range(5)]).float()
    solver = TopK(k=4)
    torch.testing.assert_close(solver.relax(theta, 0.01), solver(theta), atol=1e-6, rtol=0)


def test_topk_relax_checks_its_input_like_the_solver() -> None:
    with pytest.raises(SolverInputError, match="k=5 is out of range for n=3"):
        TopK(k=5).relax(torch.randn(2, 3), 0.5)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), True, "0.5"])
@pytest.mark.parametrize(
    ("solver", "theta"),
    [
        (TopK(k=2), torch.randn(2, 5)),
        (SpanningTree(), torch.randn(2, 4, 4)),
        (MinimumSpanningTree(), torch.randn(2, 4, 4)),
        (SpanningTreeEdges(), torch.randn(2, 12)),
        (LinearAssignment(), torch.randn(2, 3, 4)),
        (MinimumAssignment(), torch.randn(2, 4, 3)),
    ],
    ids=["topk", "mst", "minimum_spanning_tree", "mst_edges", "assignment", "min_assignment"],
)
def test_relax_refuses_a_temperature_that_is_not_positive(
    solver: torch.nn.Module, theta: torch.Tensor, temperature: object
) -> None:
    """τ = 0 gave NaN and τ < 0 silently relaxed the opposite sense."""
    with pytest.raises(SolverInputError, match="temperature must be a finite number > 0"):
        solver.relax(theta, temperature)  # type: ignore[operator]


def _enumerated_marginals(
    weights: np.ndarray, temperature: float, allowed: np.ndarray | None = None
) -> np.ndarray:
    """P((i, j) in T) under p(T) ∝ exp(Σ w / τ), enumerating every spanning tree."""
    n = weights.shape[0]
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(
        (i, j) for i in range(n) for j in range(i + 1, n) if allowed is None or allowed[i, j]
    )
    trees = list(nx.SpanningTreeIterator(graph))
    scores = np.array([sum(weights[i, j] for i, j in tree.edges()) / temperature for tree in trees])
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    marginals = np.zeros((n, n))
    for tree, probability in zip(trees, probabilities, strict=True):
        for i, j in tree.edges():
            marginals[i, j] += probability
            marginals[j, i] += probability
    return marginals


@pytest.mark.parametrize("n", [2, 3, 5, 6])
@pytest.mark.parametrize("spread", [0.5, 5.0, 50.0, 500.0])
def test_spanning_tree_marginals_match_enumeration_at_any_spread(n: int, spread: float) -> None:
    generator = torch.Generator().manual_seed(n)
    raw = torch.randn(3, n, n, generator=generator, dtype=torch.float64) * spread
    weights = (raw + raw.transpose(1, 2)) / 2
    marginals = spanning_tree_marginals(weights, 0.5)
    for b in range(3):
        expected = _enumerated_marginals(weights[b].numpy(), 0.5)
        np.testing.assert_allclose(marginals[b].numpy(), expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        marginals.sum(dim=(1, 2)) / 2, torch.full((3,), n - 1.0, dtype=torch.float64)
    )


def test_spanning_tree_marginals_respect_the_mask() -> None:
    n = 5
    allowed = np.ones((n, n), dtype=bool)
    allowed[0, 1] = allowed[1, 0] = allowed[2, 4] = allowed[4, 2] = False
    raw = torch.randn(1, n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights = (raw + raw.transpose(1, 2)) / 2
    solver = SpanningTree(mask=torch.from_numpy(allowed))
    marginals = solver.relax(weights, 1.3)[0]
    np.testing.assert_allclose(
        marginals.numpy(), _enumerated_marginals(weights[0].numpy(), 1.3, allowed), atol=1e-9
    )
    assert marginals[0, 1] == 0 and marginals[2, 4] == 0


def test_a_disconnecting_mask_is_refused_by_the_relaxation_too() -> None:
    allowed = torch.zeros(4, 4, dtype=torch.bool)
    allowed[0, 1] = allowed[1, 0] = allowed[2, 3] = allowed[3, 2] = True
    with pytest.raises(SolverInputError, match="do not connect all vertices"):
        SpanningTree(mask=allowed).relax(torch.randn(1, 4, 4), 0.5)


def test_spanning_tree_relaxation_tends_to_the_maximum_and_minimum_trees() -> None:
    n = 7
    values = torch.randperm(n * n, generator=torch.Generator().manual_seed(0)).reshape(n, n)
    weights = torch.triu(values.double(), 1)
    weights = (weights + weights.T).unsqueeze(0)  # distinct weights: unique trees
    graph = nx.from_numpy_array(weights[0].numpy())
    for solver, tree in (
        (SpanningTree(), nx.maximum_spanning_tree(graph)),
        (MinimumSpanningTree(), nx.minimum_spanning_tree(graph)),
    ):
        expected = torch.from_numpy(nx.to_numpy_array(tree, weight=None))
        torch.testing.assert_close(solver.relax(weights, 0.02)[0], expected, atol=1e-9, rtol=0)


def test_minimum_tree_relaxation_is_the_maximum_one_of_negated_weights() -> None:
    raw = torch.randn(2, 5, 5, dtype=torch.float64)
    weights = (raw + raw.transpose(1, 2)) / 2
    torch.testing.assert_close(
        MinimumSpanningTree().relax(weights, 0.7), SpanningTree().relax(-weights, 0.7)
    )


def test_edge_vector_relaxation_is_the_matrix_one_in_the_nri_layout() -> None:
    scores = torch.randn(3, 30, dtype=torch.float64)  # n = 6 directed edges
    matrix = edges_to_matrix(scores)
    expected = matrix_to_edges(spanning_tree_marginals((matrix + matrix.transpose(1, 2)) / 2, 0.4))
    torch.testing.assert_close(SpanningTreeEdges().relax(scores, 0.4), expected)


def test_spanning_tree_marginals_have_correct_first_and_second_derivatives() -> None:
    raw = torch.randn(2, 4, 4, dtype=torch.float64)

    def marginals(upper: torch.Tensor) -> torch.Tensor:
        weights = torch.triu(upper, 1)
        return spanning_tree_marginals(weights + weights.transpose(1, 2), 0.8)

    upper = raw.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(marginals, (upper,))
    assert torch.autograd.gradgradcheck(marginals, (upper,))
