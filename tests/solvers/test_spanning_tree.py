"""Spanning-tree solvers against scipy, networkx and brute-force enumeration of spanning trees."""

from __future__ import annotations

import functools
import io
import itertools
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from aimle_zoo.solvers import (
    MinimumSpanningTree,
    SolverInputError,
    SpanningTree,
    SpanningTreeEdges,
    SpanningTreeScipy,
    edges_to_matrix,
    get_solver,
    get_solver_spec,
    matrix_to_edges,
    num_nodes_from_edges,
    solver_sense,
)
from aimle_zoo.solvers.reference.spanning_tree import (
    spanning_tree_networkx,
    spanning_tree_scipy,
    tree_weight,
)
from aimle_zoo.solvers.testing import solver_conformance_test

jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


# ----------------------------------------------------------------------------- instances


def symmetric_integers(batch: int, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Symmetric weights in {-4, ..., 4}, zeros included: many ties. ``[B, n, n]``."""
    weights = torch.randint(-2, 3, (batch, n, n))
    return (weights + weights.transpose(1, 2)).to(dtype)


def symmetric_normal(batch: int, n: int) -> Tensor:
    """Symmetric continuous weights (a unique optimum almost surely). ``[B, n, n]``."""
    weights = torch.randn(batch, n, n, dtype=torch.float64)
    return (weights + weights.transpose(1, 2)) / 2


def connected_masks(batch: int, n: int, extra: float = 0.2) -> Tensor:
    """Boolean masks ``[B, n, n]``: a random spanning tree plus each other edge w.p. ``extra``."""
    masks = torch.rand(batch, n, n) < extra
    for index in range(batch):
        order = torch.randperm(n).tolist()
        for position in range(1, n):
            other = order[int(torch.randint(0, position, ()))]
            masks[index, order[position], other] = True
    masks = masks | masks.transpose(1, 2)
    return masks & ~torch.eye(n, dtype=torch.bool)


def assert_spanning_trees(z: Tensor, mask: Tensor | None = None) -> None:
    """Every ``z[b]`` is the 0/1 symmetric adjacency of a spanning tree (inside the mask)."""
    batch, n = z.shape[0], z.shape[-1]
    assert bool(((z == 0) | (z == 1)).all()), "not binary"
    assert torch.equal(z, z.transpose(1, 2)), "not symmetric"
    assert not bool(z.diagonal(dim1=1, dim2=2).any()), "self-loop"
    assert torch.equal(z.sum(dim=(1, 2)), torch.full((batch,), 2.0 * (n - 1), dtype=z.dtype))
    for index in range(batch):
        components, _ = connected_components(z[index].double().numpy(), directed=False)
        assert components == 1, f"instance {index} is not connected"
    if mask is not None:
        assert not bool((z.bool() & ~mask.expand_as(z)).any()), "edge outside the mask"


@functools.cache
def all_spanning_trees(n: int) -> Tensor:
    """Every spanning tree on n labelled vertices as adjacency ``[n^(n-2), n, n]``."""
    pairs = list(itertools.combinations(range(n), 2))
    trees = []
    for chosen in itertools.combinations(pairs, n - 1):
        graph = nx.Graph(chosen)
        if graph.number_of_nodes() == n and nx.is_tree(graph):
            adjacency = torch.zeros(n, n)
            for i, j in chosen:
                adjacency[i, j] = adjacency[j, i] = 1.0
            trees.append(adjacency)
    return torch.stack(trees)


def scripted_copy(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` + save + load, as a deployment would."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# ----------------------------------------------------------------------------- optimality


@pytest.mark.parametrize(
    ("n", "batch"),
    [(5, 64), (6, 64), (7, 48), (8, 48), (10, 32), (13, 32), (20, 16), (30, 12), (50, 8)],
)
def test_maximum_tree_weight_matches_scipy_and_networkx_under_ties(n: int, batch: int) -> None:
    weights = symmetric_integers(batch, n)
    z = SpanningTree()(weights)
    assert_spanning_trees(z)
    expected = tree_weight(weights, spanning_tree_scipy(weights))
    assert torch.equal(tree_weight(weights, z), expected)
    assert torch.equal(tree_weight(weights, spanning_tree_networkx(weights)), expected)


@pytest.mark.parametrize("n", [5, 12, 50])
def test_unique_optimum_equals_networkx_edge_set(n: int) -> None:
    weights = symmetric_normal(16, n)
    for maximum in (True, False):
        z = SpanningTree(maximum=maximum)(weights)
        assert torch.equal(z, spanning_tree_networkx(weights, maximum=maximum))
        assert torch.equal(z, spanning_tree_scipy(weights, maximum=maximum))


@pytest.mark.parametrize("n", [4, 5, 6])
def test_optimal_over_all_spanning_trees(n: int) -> None:
    weights = symmetric_integers(40, n).double()
    trees = all_spanning_trees(n).double()  # [T, n, n]
    scores = torch.einsum("bij,tij->bt", weights, trees) / 2  # [B, T]
    for maximum, best in ((True, scores.amax(dim=1)), (False, scores.amin(dim=1))):
        z = SpanningTree(maximum=maximum)(weights)
        assert torch.equal(tree_weight(weights, z), best)
        assert torch.equal(tree_weight(weights, spanning_tree_scipy(weights, maximum)), best)
        assert torch.equal(tree_weight(weights, spanning_tree_networkx(weights, maximum)), best)


@pytest.mark.parametrize(("n", "batch"), [(5, 48), (12, 32), (40, 8)])
def test_minimum_tree_weight_matches_scipy_and_networkx(n: int, batch: int) -> None:
    weights = symmetric_integers(batch, n)
    expected = tree_weight(weights, spanning_tree_networkx(weights, maximum=False))
    assert torch.equal(tree_weight(weights, spanning_tree_scipy(weights, False)), expected)
    for solver in (SpanningTree(maximum=False), MinimumSpanningTree()):
        z = solver(weights)
        assert_spanning_trees(z)
        assert torch.equal(tree_weight(weights, z), expected)


@pytest.mark.parametrize(("n", "batch"), [(5, 48), (9, 32), (25, 12), (50, 6)])
def test_per_instance_masks(n: int, batch: int) -> None:
    weights = symmetric_integers(batch, n)
    mask = connected_masks(batch, n)
    for maximum in (True, False):
        z = SpanningTree(maximum=maximum, mask=mask)(weights)
        assert_spanning_trees(z, mask)
        expected = tree_weight(weights, spanning_tree_networkx(weights, maximum, mask))
        assert torch.equal(tree_weight(weights, z), expected)
        assert torch.equal(
            tree_weight(weights, spanning_tree_scipy(weights, maximum, mask)), expected
        )


def test_shared_mask() -> None:
    weights = symmetric_integers(32, 15)
    mask = connected_masks(1, 15)[0]  # [n, n]
    z = SpanningTree(mask=mask)(weights)
    assert_spanning_trees(z, mask)
    expected = tree_weight(weights, spanning_tree_scipy(weights, mask=mask))
    assert torch.equal(tree_weight(weights, z), expected)


# ----------------------------------------------------------------------------- the NRI example

# aimle-spec §4.3: the maximum spanning tree of this 5-node graph is {2-3, 1-3, 2-4, 0-1}.
SPEC_EDGES = {(0, 1): 8, (0, 2): 5, (1, 2): 9, (1, 3): 11, (2, 3): 15, (2, 4): 10, (3, 4): 7}
SPEC_TREE = {(2, 3), (1, 3), (2, 4), (0, 1)}


def spec_graph() -> tuple[Tensor, Tensor, Tensor]:
    """Weights, mask of the listed edges and the expected tree, each ``[5, 5]``."""
    weights, mask, tree = torch.zeros(5, 5), torch.zeros(5, 5, dtype=torch.bool), torch.zeros(5, 5)
    for (i, j), weight in SPEC_EDGES.items():
        weights[i, j] = weights[j, i] = weight
        mask[i, j] = mask[j, i] = True
    for i, j in SPEC_TREE:
        tree[i, j] = tree[j, i] = 1.0
    return weights, mask, tree


@pytest.mark.parametrize("batch", [1, 7, 100])
def test_spec_five_node_example(batch: int) -> None:
    weights, mask, tree = spec_graph()
    weights = weights.expand(batch, 5, 5)
    expected = tree.expand(batch, 5, 5)
    assert torch.equal(SpanningTree(mask=mask)(weights), expected)
    assert torch.equal(SpanningTree()(weights), expected)  # absent edges as weight 0
    assert torch.equal(spanning_tree_scipy(weights, mask=mask), expected)
    assert torch.equal(spanning_tree_networkx(weights, mask=mask), expected)
    edges = matrix_to_edges(weights)  # both directions carry the weight
    assert torch.equal(SpanningTreeEdges()(edges), matrix_to_edges(expected))


# ----------------------------------------------------------------------------- ties, sizes


def test_equal_weights_give_a_star_at_vertex_zero() -> None:
    # Documented rule: the lowest outside vertex joins, attached to the earliest tree vertex.
    z = SpanningTree()(torch.ones(3, 6, 6))
    star = torch.zeros(6, 6)
    star[0, 1:] = star[1:, 0] = 1.0
    assert torch.equal(z, star.expand(3, 6, 6))


def documented_prim(weights: Tensor, maximum: bool) -> Tensor:
    """Prim's algorithm with the documented tie rule, one instance ``[n, n]`` in plain Python:
    the lowest outside vertex among the best joins, attached to the earliest-joined tree vertex
    among its best edges."""
    n = weights.shape[0]
    scores = (weights if maximum else -weights).tolist()
    joined, z = [0], torch.zeros(n, n, dtype=weights.dtype)
    while len(joined) < n:
        best = max(
            (
                (scores[u][v], -v, -rank)
                for v in range(n)
                if v not in joined
                for rank, u in enumerate(joined)
            ),
        )
        vertex, tree_vertex = -best[1], joined[-best[2]]
        z[vertex, tree_vertex] = z[tree_vertex, vertex] = 1.0
        joined.append(vertex)
    return z


@pytest.mark.parametrize("maximum", [True, False])
def test_ties_follow_the_documented_rule(maximum: bool) -> None:
    generator = torch.Generator().manual_seed(5)
    raw = torch.randint(0, 2, (64, 7, 7), generator=generator).double()
    weights = raw + raw.transpose(1, 2)  # values 0, 1, 2: ties everywhere
    z = SpanningTree(maximum=maximum)(weights)
    expected = torch.stack([documented_prim(instance, maximum) for instance in weights])
    assert torch.equal(z, expected)


def test_ties_are_deterministic_and_batch_independent() -> None:
    weights = symmetric_integers(24, 11)
    solver = SpanningTree()
    z = solver(weights)
    assert torch.equal(z, solver(weights))
    assert torch.equal(z, torch.cat([solver(weights[i : i + 1]) for i in range(24)]))


def test_one_and_two_vertices() -> None:
    assert torch.equal(SpanningTree()(torch.zeros(3, 1, 1)), torch.zeros(3, 1, 1))
    pair = torch.tensor([[[0.0, -2.0], [-2.0, 0.0]]])
    assert torch.equal(SpanningTree()(pair), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    weights = symmetric_integers(16, 9, dtype=dtype)
    z = SpanningTree()(weights)
    assert z.dtype == dtype
    expected = tree_weight(weights.double(), spanning_tree_networkx(weights).double())
    assert torch.equal(tree_weight(weights.double(), z.double()), expected)


def test_symmetrize_solves_the_symmetric_part() -> None:
    theta = torch.randint(-3, 4, (32, 8, 8)).float()  # asymmetric
    z = SpanningTree(symmetrize=True)(theta)
    symmetric = (theta + theta.transpose(1, 2)) / 2
    assert_spanning_trees(z)
    expected = tree_weight(symmetric, spanning_tree_networkx(symmetric))
    assert torch.equal(tree_weight(symmetric, z), expected)
    assert torch.equal(get_solver("mst_scipy", symmetrize=True)(theta).sum(), z.sum())


# ----------------------------------------------------------------------------- errors


def bad_symmetry() -> Tensor:
    weights = symmetric_integers(3, 4)
    weights[1, 0, 2] += 1.0
    return weights


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.zeros(2, 3, 4), r"square weights \[B, n, n\] with n >= 1, got shape \(2, 3, 4\)"),
        (torch.zeros(2, 0, 0), r"n >= 1, got shape \(2, 0, 0\)"),
        (torch.zeros(4, 4), "expected a 3-D tensor"),
        (torch.zeros(2, 4, 4, dtype=torch.int32), "expected a floating-point tensor"),
        (bad_symmetry(), r"must be symmetric .* instance\(s\) 1 are not"),
        (torch.full((2, 3, 3), float("nan")), r"NaN or inf values in instance\(s\) 0, 1"),
        (torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.0, float("inf")], [1.0, 0.0]]]), "inf"),
    ],
)
def test_bad_weights(weights: Tensor, message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        SpanningTree(symmetrize=False)(weights)


def test_tolerates_rounding_asymmetry() -> None:
    weights = symmetric_normal(4, 6).float()
    weights[0, 1, 2] = weights[0, 2, 1] * (1 + 1e-6)
    assert_spanning_trees(SpanningTree(symmetrize=False)(weights))


def test_asymmetry_on_forbidden_edges_is_ignored() -> None:
    weights, mask, tree = spec_graph()
    weights[0, 3] = 100.0  # edge 0-3 is not allowed: its weights need not agree
    solver = SpanningTree(mask=mask, symmetrize=False)
    assert torch.equal(solver(weights.unsqueeze(0)), tree.unsqueeze(0))


@pytest.mark.parametrize("isolated", [1, 5])
def test_disconnected_mask_names_the_instance(isolated: int) -> None:
    mask = connected_masks(4, 6)
    mask[2, isolated, :] = mask[2, :, isolated] = False  # isolated in instance 2
    for solver in (SpanningTree(mask=mask), get_solver("mst_scipy", mask=mask)):
        with pytest.raises(SolverInputError, match=r"do not connect all vertices in instance.* 2"):
            solver(symmetric_integers(4, 6))
    with pytest.raises(SolverInputError, match="instance 2"):
        spanning_tree_networkx(symmetric_integers(4, 6), mask=mask)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mask": torch.ones(4, 4)}, "mask must be a boolean tensor"),
        ({"mask": [[True]]}, "mask must be a boolean tensor"),
        ({"mask": torch.ones(4, 5, dtype=torch.bool)}, r"\[n, n\] or \[B, n, n\], got \(4, 5\)"),
        ({"mask": torch.ones(4, dtype=torch.bool)}, r"got \(4,\)"),
        ({"mask": torch.ones(0, 4, 4, dtype=torch.bool)}, r"got \(0, 4, 4\) \(B >= 1\)"),
        ({"mask": torch.ones(4, 4, dtype=torch.bool).triu()}, "mask must be symmetric"),
        ({"maximum": "yes"}, "maximum must be True or False"),
        ({"symmetrize": 1}, "symmetrize must be True or False"),
    ],
)
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        SpanningTree(**params)


def test_the_solver_keeps_its_own_copy_of_the_mask() -> None:
    """Editing the caller's mask afterwards changes neither the solver nor its trees."""
    mask = torch.ones(4, 4, dtype=torch.bool)
    solver = SpanningTree(mask=mask)
    weights = symmetric_integers(3, 4)
    before = solver(weights)
    mask[0, 1] = mask[1, 0] = False
    assert bool(solver.mask.all())
    assert torch.equal(solver(weights), before)


@pytest.mark.parametrize(
    "mask", [torch.ones(5, 5, dtype=torch.bool), torch.ones(3, 4, 4, dtype=torch.bool)]
)
def test_mask_must_match_the_weights(mask: Tensor) -> None:
    with pytest.raises(SolverInputError, match="the mask has shape"):
        SpanningTree(mask=mask)(symmetric_integers(2, 4))


# ----------------------------------------------------------------------------- NRI layout


def nri_receivers_and_senders(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The NRI encoder's edge order: ``np.where(ones - eye)`` gives (receiver, sender)."""
    receivers, senders = np.where(np.ones((n, n)) - np.eye(n))
    return receivers, senders


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_edge_layout_matches_the_nri_encoder(n: int) -> None:
    edges = torch.randn(2, 3, n * (n - 1))
    matrix = edges_to_matrix(edges)
    assert matrix.shape == (2, 3, n, n)
    receivers, senders = nri_receivers_and_senders(n)
    assert torch.equal(matrix[..., receivers, senders], edges)
    assert not bool(matrix.diagonal(dim1=-2, dim2=-1).any())
    assert torch.equal(matrix_to_edges(matrix), edges)
    assert num_nodes_from_edges(n * (n - 1)) == n


@pytest.mark.parametrize("length", [1, 3, 7, 89])
def test_bad_edge_vector_length(length: int) -> None:
    with pytest.raises(SolverInputError, match=r"length n\(n-1\) .* got length"):
        edges_to_matrix(torch.zeros(2, length))
    with pytest.raises(SolverInputError, match=r"mst_edges: .*length n\(n-1\)"):
        SpanningTreeEdges()(torch.zeros(2, length))


def test_symmetry_tolerance_scales_with_the_dtype() -> None:
    """float16 weights one ulp apart are symmetric (8 eps of float16 is about 8e-3), while a
    gap of 1e-3 in float64 is not."""
    weights = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]]).unsqueeze(0)
    half = weights.half()
    half[0, 0, 1] = 1 + 2**-10  # one float16 ulp above 1
    assert half[0, 0, 1] != half[0, 1, 0]
    tree = SpanningTree(symmetrize=False)(half)
    assert torch.equal(tree, SpanningTree(symmetrize=False)(weights.half()))
    skewed = weights.double()
    skewed[0, 0, 1] += 1e-3
    with pytest.raises(SolverInputError, match="must be symmetric"):
        SpanningTree(symmetrize=False)(skewed)


def test_edges_to_matrix_refuses_a_scalar() -> None:
    with pytest.raises(SolverInputError, match=r"edges_to_matrix: expected a tensor .* scalar"):
        edges_to_matrix(torch.tensor(2.0))


def test_matrix_to_edges_needs_square_matrices() -> None:
    with pytest.raises(SolverInputError, match=r"\[\*, n, n\] with n >= 1"):
        matrix_to_edges(torch.zeros(2, 3, 4))


def test_edge_solver_needs_a_flat_edge_vector() -> None:
    with pytest.raises(SolverInputError, match=r"expected a 2-D tensor.*squeeze"):
        SpanningTreeEdges()(torch.zeros(2, 20, 1))


@pytest.mark.parametrize("n", [2, 3, 5, 10, 16])
def test_edge_solver_uses_both_directions(n: int) -> None:
    scores = torch.randint(-3, 4, (48, n * (n - 1))).float()
    z = SpanningTreeEdges()(scores)  # [B, n(n-1)]
    tree = edges_to_matrix(z)
    assert_spanning_trees(tree)
    matrix = edges_to_matrix(scores)
    mean = (matrix + matrix.transpose(1, 2)) / 2
    expected = tree_weight(mean, spanning_tree_scipy(mean))
    assert torch.equal(tree_weight(mean, tree), expected)
    assert torch.equal((scores * z).sum(dim=1), 2 * expected)  # <l, z> = 2 · tree weight


def test_edge_solver_reads_the_lower_triangle() -> None:
    # Upper-triangle weights alone prefer {0-1, 0-2}; the directed means prefer {0-1, 1-2}.
    matrix = torch.tensor([[[0.0, 5.0, 4.0], [5.0, 0.0, 1.0], [-6.0, 9.0, 0.0]]])
    tree = edges_to_matrix(SpanningTreeEdges()(matrix_to_edges(matrix)))
    expected = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    assert torch.equal(tree, expected)
    upper = matrix.triu() + matrix.triu().transpose(1, 2)
    assert not torch.equal(spanning_tree_networkx(upper), expected)


# ----------------------------------------------------------------------------- registry, export


def test_registry_entries() -> None:
    assert solver_sense(get_solver("mst")) == "max"
    assert solver_sense(get_solver("minimum_spanning_tree")) == "min"
    assert isinstance(get_solver("minimum_spanning_tree"), MinimumSpanningTree)
    for alias in ("spanning_tree", "maximum_spanning_tree"):
        assert get_solver_spec(alias) is get_solver_spec("mst")
    assert get_solver_spec("spanning_tree_edges") is get_solver_spec("mst_edges")
    assert SpanningTree(maximum=False).sense == "min"
    for name in ("mst", "minimum_spanning_tree", "mst_edges"):
        assert get_solver_spec(name).exportable
    scipy_spec = get_solver_spec("mst_scipy")
    assert scipy_spec.factory is SpanningTreeScipy and not scipy_spec.exportable
    assert "per-example CPU loop" in scipy_spec.description


def test_scipy_solver_is_optimal() -> None:
    weights = symmetric_integers(16, 12)
    mask = connected_masks(16, 12, extra=0.4)
    for maximum in (True, False):
        z = get_solver("mst_scipy", maximum=maximum, mask=mask)(weights)
        assert_spanning_trees(z, mask)
        reference = SpanningTree(maximum=maximum, mask=mask)(weights)
        assert torch.equal(tree_weight(weights, z), tree_weight(weights, reference))


@jit_deprecation
@pytest.mark.parametrize(
    "solver",
    [
        SpanningTree(),
        MinimumSpanningTree(),
        SpanningTree(symmetrize=True),
        get_solver("mst"),
    ],
    ids=["maximum", "minimum", "symmetrize", "from-registry"],
)
def test_torchscript_round_trip(solver: SpanningTree) -> None:
    scripted = scripted_copy(solver)
    for batch, n in [(4, 6), (64, 6), (3, 11), (2, 2), (2, 1)]:
        weights = symmetric_integers(batch, n)
        assert torch.equal(scripted(weights), solver(weights)), (batch, n)


@jit_deprecation
def test_torchscript_round_trip_masked() -> None:
    mask = connected_masks(1, 7)[0]
    solver = SpanningTree(mask=mask)
    scripted = scripted_copy(solver)
    for batch in (1, 5, 64):
        weights = symmetric_integers(batch, 7)
        assert torch.equal(scripted(weights), solver(weights))


@jit_deprecation
def test_torchscript_round_trip_edges() -> None:
    solver = SpanningTreeEdges()
    scripted = scripted_copy(solver)
    for batch, n in [(4, 5), (64, 5), (3, 10), (2, 2)]:
        scores = torch.randint(-3, 4, (batch, n * (n - 1))).float()
        assert torch.equal(scripted(scores), solver(scores)), (batch, n)


@jit_deprecation
def test_scripted_solver_on_a_disconnected_mask_spans_vertex_zeros_component() -> None:
    # Scripted solvers skip input checks; the documented result is the tree of 0's component.
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = mask[1, 2] = mask[2, 1] = mask[0, 2] = mask[2, 0] = True
    mask[3, 4] = mask[4, 3] = True
    weights = symmetric_normal(3, 5).float()
    z = scripted_copy(SpanningTree(mask=mask))(weights)
    component = weights[:, :3, :3]
    assert torch.equal(z[:, :3, :3], spanning_tree_networkx(component))
    assert not bool(z[:, 3:].any()) and not bool(z[:, :, 3:].any())


def tree_edges(theta: Tensor) -> Tensor:
    """Every spanning tree of ``theta``'s n vertices in the directed-edge layout."""
    n = num_nodes_from_edges(theta.shape[-1])
    return matrix_to_edges(all_spanning_trees(n)).to(theta.dtype)


def tree_matrices(theta: Tensor) -> Tensor:
    return all_spanning_trees(theta.shape[-1]).to(theta.dtype)


def tied_symmetric(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    weights = torch.randint(-2, 3, (batch_size, 6, 6), generator=generator).float()
    return {}, weights + weights.transpose(1, 2)


test_mst_conformance = solver_conformance_test("mst", feasible=tree_matrices)
test_mst_conformance_with_ties = solver_conformance_test(
    "mst", make_input=tied_symmetric, feasible=tree_matrices, check_gradients=False
)
test_minimum_spanning_tree_conformance = solver_conformance_test(
    "minimum_spanning_tree", feasible=tree_matrices
)
test_mst_edges_conformance = solver_conformance_test("mst_edges", feasible=tree_edges)
test_mst_scipy_conformance = solver_conformance_test(
    "mst_scipy", feasible=tree_matrices, check_gradients=False
)


def test_sense_follows_the_instance() -> None:
    assert solver_sense(get_solver("mst")) == "max"
    assert solver_sense(get_solver("mst", maximum=False)) == "min"
    assert solver_sense(get_solver("minimum_spanning_tree")) == "min"


@pytest.mark.parametrize(
    ("dtype", "largest"), [(torch.float32, 3.3e38), (torch.float16, 6.0e4), (torch.float64, 1e308)]
)
def test_weights_near_the_dtype_maximum_symmetrise_without_overflow(
    dtype: torch.dtype, largest: float
) -> None:
    """(w + wᵀ) overflows to inf there, which tied distinct weights; the oracle is networkx
    on the float64 symmetric part (every weight here is exact in ``dtype``)."""
    gen = torch.Generator().manual_seed(0)
    n = 6
    for _ in range(5):
        scale = torch.rand(1, n, n, generator=gen, dtype=torch.float64) * 0.1 + 0.9
        weights = (largest * scale).to(dtype)  # asymmetric, all near the maximum
        symmetric = weights.double() / 2 + weights.double().transpose(1, 2) / 2
        expected = spanning_tree_networkx(symmetric)
        assert torch.equal(get_solver("mst")(weights).double(), expected)
        assert torch.equal(get_solver("mst_scipy")(weights).double(), expected)
        edges = matrix_to_edges(weights)  # [1, n(n-1)] directed scores
        assert torch.equal(get_solver("mst_edges")(edges).double(), matrix_to_edges(expected))


def test_batch_multiple_is_the_number_of_per_instance_masks() -> None:
    """Estimators draw m samples per instance; a [B', n, n] mask needs batches of m·B'."""
    assert SpanningTree().batch_multiple() == 1
    assert SpanningTree(mask=torch.ones(4, 4, dtype=torch.bool)).batch_multiple() == 1
    per_instance = torch.ones(3, 4, 4, dtype=torch.bool)
    assert SpanningTree(mask=per_instance).batch_multiple() == 3
    assert MinimumSpanningTree(mask=per_instance).batch_multiple() == 3


@pytest.mark.parametrize("solver", [SpanningTree(), MinimumSpanningTree()])
def test_relaxation_of_a_single_vertex_is_the_empty_tree(solver: SpanningTree) -> None:
    weights = torch.zeros(3, 1, 1, requires_grad=True)
    marginals = solver.relax(weights, 0.5)
    assert marginals.shape == (3, 1, 1) and not bool(marginals.any())
