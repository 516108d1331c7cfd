"""Shortest-path solvers against scipy / networkx oracles on random instances with ties.

Costs are drawn from a few dyadic values (sums are exact in floating point), including 0 and,
before the grid clamp, negative values, so ties between optimal paths are everywhere. Paths are
checked for validity (a simple source-target path inside the graph), for optimality (same cost
as both oracles) and for the documented tie-break, fewest moves among the optimal paths, against
a scipy oracle on lexicographic costs ``cost·M + 1`` per move.
"""

from __future__ import annotations

import io
import re

import networkx as nx
import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import shortest_path
from torch import Tensor

from aimle_zoo.solvers import (
    GraphShortestPath,
    GridShortestPath,
    ShortestPath,
    SolverInputError,
    get_solver,
)
from aimle_zoo.solvers.reference.shortest_path import (
    graph_shortest_path_networkx,
    graph_shortest_path_scipy,
    grid_shortest_path_networkx,
    grid_shortest_path_scipy,
)
from aimle_zoo.solvers.shortest_path import (
    _grid_distances,
    _grid_distances_inplace,
    dijkstra_scipy,
    graph_path_cost,
    grid_path_cost,
)

GRID_VALUES = torch.tensor([-1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 5.0])
DAG_VALUES = torch.tensor([-2.0, -1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
DIGRAPH_VALUES = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- helpers


def random_grids(batch: int, height: int, width: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(GRID_VALUES), (batch, height, width), generator=generator)
    return GRID_VALUES[picks]


def grid_cost(theta: Tensor, z: Tensor) -> Tensor:
    return (theta.clamp(min=0) * z).sum(dim=(1, 2))


def grid_offsets(neighbourhood: int) -> list[tuple[int, int]]:
    if neighbourhood == 4:
        return [(-1, 0), (0, -1), (0, 1), (1, 0)]
    return [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def neighbourhood_structure(neighbourhood: int) -> np.ndarray:
    return np.ones((3, 3)) if neighbourhood == 8 else np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def assert_grid_connects_corners(z: Tensor, neighbourhood: int) -> None:
    """Each 0/1 mask holds both corners in one connected set of cells (a walk between them)."""
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    for b in range(z.shape[0]):
        mask = z[b].numpy().astype(bool)
        assert mask[0, 0] and mask[-1, -1], f"instance {b}: a corner is not on the path"
        _, components = scipy.ndimage.label(mask, structure=neighbourhood_structure(neighbourhood))
        assert components == 1, f"instance {b}: the path cells are not connected"


def assert_grid_paths(z: Tensor, neighbourhood: int) -> None:
    """Each mask is exactly the cells of a simple path from the top-left to the bottom-right.

    The cells must be one connected set (under the neighbourhood) in which both corners have
    one neighbour and every other cell two: an induced path, as the solver's fewest-move
    tie-break guarantees (a shortcut between two path cells would give fewer moves).
    """
    assert_grid_connects_corners(z, neighbourhood)
    batch, height, width = z.shape
    kernel = torch.tensor(neighbourhood_structure(neighbourhood), dtype=z.dtype).view(1, 1, 3, 3)
    kernel[0, 0, 1, 1] = 0
    degree = torch.nn.functional.conv2d(z.unsqueeze(1), kernel, padding=1).squeeze(1) * z
    if height * width > 1:
        expected = 2 * z
        expected[:, 0, 0] = expected[:, -1, -1] = 1.0
        for b in range(batch):
            assert torch.equal(degree[b], expected[b]), f"instance {b}: not a simple path"


def grid_fewest_moves(theta: Tensor, neighbourhood: int) -> tuple[Tensor, Tensor]:
    """Optimal cost and fewest moves among optimal paths, by scipy on costs ``2c·M + 1``."""
    batch, height, width = theta.shape
    cells = height * width
    scale = cells + 1  # moves < scale
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    tails, heads = [], []
    for di, dj in grid_offsets(neighbourhood):
        inside = (rows + di >= 0) & (rows + di < height) & (cols + dj >= 0) & (cols + dj < width)
        tails.append((rows * width + cols)[inside])
        heads.append(((rows + di) * width + cols + dj)[inside])
    tail, head = np.concatenate(tails), np.concatenate(heads)
    doubled = (2 * theta.clamp(min=0)).reshape(batch, -1).double().numpy()  # integers
    costs, moves = [], []
    for b in range(batch):
        weights = doubled[b, head] * scale + 1
        graph = sp.csr_matrix((weights, (tail, head)), shape=(cells, cells))
        total = shortest_path(graph, method="D", indices=0)[cells - 1]
        costs.append((total // scale + doubled[b, 0]) / 2)
        moves.append(total % scale)
    return torch.tensor(costs), torch.tensor(moves)


def graph_cost(theta: Tensor, z: Tensor) -> Tensor:
    return (theta * z).flatten(1).sum(dim=1)


def assert_graph_paths(
    z: Tensor, edge_index: Tensor, sources: list[int], targets: list[int]
) -> None:
    """Each indicator selects exactly the edges of a simple path from its source to its target."""
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    tails, heads = edge_index.tolist()
    for b, (source, target) in enumerate(zip(sources, targets, strict=True)):
        chosen = z[b].nonzero().flatten().tolist()
        outgoing = {}
        for edge in chosen:
            assert tails[edge] not in outgoing, f"instance {b}: a vertex leaves twice"
            outgoing[tails[edge]] = edge
        vertex, seen = source, {source}
        for _ in chosen:
            assert vertex in outgoing, f"instance {b}: the path stops before the target"
            vertex = heads[outgoing[vertex]]
            assert vertex not in seen, f"instance {b}: the path revisits vertex {vertex}"
            seen.add(vertex)
        assert vertex == target, f"instance {b}: the path ends at {vertex}, not {target}"


def graph_fewest_edges(
    theta: Tensor, edge_index: Tensor, num_nodes: int, sources: list[int], targets: list[int]
) -> tuple[Tensor, Tensor]:
    """Optimal cost and fewest edges among optimal paths (integer costs, ``cost·M + 1``)."""
    scale = num_nodes + 1
    tails, heads = edge_index.numpy()
    costs, counts = [], []
    for b in range(theta.shape[0]):
        weights = {}
        for edge, (u, v) in enumerate(zip(tails.tolist(), heads.tolist(), strict=True)):
            weight = float(theta[b, edge]) * scale + 1
            weights[(u, v)] = min(weight, weights.get((u, v), weight))
        pairs = np.array(list(weights), dtype=np.int64).reshape(-1, 2)
        graph = sp.csr_matrix(
            (list(weights.values()), (pairs[:, 0], pairs[:, 1])), shape=(num_nodes, num_nodes)
        )
        total = shortest_path(graph, method="J", indices=sources[b])[targets[b]]
        costs.append(total // scale)
        counts.append(total % scale)
    return torch.tensor(costs), torch.tensor(counts)


def random_dag(num_nodes: int, seed: int) -> tuple[Tensor, int, int]:
    """A DAG on shuffled vertices (a chain from source to target plus random edges), edges
    in random order with a few parallel duplicates; returns ``(edge_index, source, target)``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_nodes, generator=generator)
    pairs = torch.triu_indices(num_nodes, num_nodes, offset=1)
    keep = (pairs[1] == pairs[0] + 1) | (torch.rand(pairs.shape[1], generator=generator) < 0.3)
    edges = order[pairs[:, keep]]  # u before v in `order`
    duplicates = edges[:, torch.randperm(edges.shape[1], generator=generator)[:3]]
    edges = torch.cat([edges, duplicates], dim=1)
    edges = edges[:, torch.randperm(edges.shape[1], generator=generator)]
    return edges, int(order[0]), int(order[-1])


def random_digraph(num_nodes: int, seed: int) -> tuple[Tensor, int, int]:
    """A digraph with cycles: random arcs plus a random source-to-target path."""
    generator = torch.Generator().manual_seed(seed)
    arcs = (torch.rand(num_nodes, num_nodes, generator=generator) < 0.25).nonzero().t()
    walk = torch.randperm(num_nodes, generator=generator)
    chain = torch.stack([walk[:-1], walk[1:]])
    edges = torch.cat([arcs, chain], dim=1)
    edges = edges[:, torch.randperm(edges.shape[1], generator=generator)]
    return edges, int(walk[0]), int(walk[-1])


def random_costs(values: Tensor, batch: int, num_edges: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return values[torch.randint(len(values), (batch, num_edges), generator=generator)]


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize(
    ("height", "width", "batch"), [(12, 12, 160), (12, 17, 64), (20, 20, 40), (30, 30, 12)]
)
def test_grid_paths_are_optimal_against_scipy(height: int, width: int, batch: int) -> None:
    theta = random_grids(batch, height, width, seed=height * 100 + width)
    z = GridShortestPath()(theta)
    assert z.shape == theta.shape and z.dtype == theta.dtype
    assert_grid_paths(z, 8)
    oracle = grid_shortest_path_scipy(theta)
    assert torch.equal(grid_cost(theta, z), grid_cost(theta, oracle))


@pytest.mark.parametrize(("height", "width", "batch"), [(12, 12, 24), (30, 30, 3)])
def test_grid_paths_are_optimal_against_networkx(height: int, width: int, batch: int) -> None:
    theta = random_grids(batch, height, width, seed=7 + height)
    z = GridShortestPath()(theta)
    oracle = grid_shortest_path_networkx(theta)
    assert torch.equal(grid_cost(theta, z), grid_cost(theta, oracle))


@pytest.mark.parametrize("neighbourhood", [8, 4])
def test_grid_tie_break_takes_the_fewest_moves(neighbourhood: int) -> None:
    theta = random_grids(60, 13, 11, seed=neighbourhood)
    z = GridShortestPath(neighbourhood)(theta)
    assert_grid_paths(z, neighbourhood)
    cost, moves = grid_fewest_moves(theta, neighbourhood)
    assert torch.equal(grid_cost(theta, z).double(), cost)
    assert torch.equal(z.sum(dim=(1, 2)).double(), moves + 1)


def test_grid_four_neighbourhood_against_both_oracles() -> None:
    theta = random_grids(40, 14, 12, seed=4)
    z = GridShortestPath(4)(theta)
    assert_grid_paths(z, 4)
    for oracle in (grid_shortest_path_scipy, grid_shortest_path_networkx):
        assert torch.equal(grid_cost(theta, z), grid_cost(theta, oracle(theta, 4)))
    assert not torch.equal(grid_cost(theta, z), grid_cost(theta, GridShortestPath(8)(theta)))


def test_grid_continuous_costs_match_scipy_within_rounding() -> None:
    generator = torch.Generator().manual_seed(3)
    theta = torch.randn(40, 16, 16, generator=generator, dtype=torch.float64) + 1
    z = GridShortestPath()(theta)
    assert_grid_paths(z, 8)
    torch.testing.assert_close(
        grid_cost(theta, z), grid_cost(theta, grid_shortest_path_scipy(theta))
    )


def test_grid_clamps_negative_costs_to_zero() -> None:
    theta = random_grids(30, 12, 12, seed=11)
    assert (theta < 0).any()
    assert torch.equal(GridShortestPath()(theta), GridShortestPath()(theta.clamp(min=0)))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (3, 40)])
def test_grid_degenerate_shapes(shape: tuple[int, int]) -> None:
    theta = random_grids(5, *shape, seed=sum(shape))
    z = GridShortestPath()(theta)
    assert_grid_paths(z, 8)
    assert torch.equal(grid_cost(theta, z), grid_cost(theta, grid_shortest_path_scipy(theta)))


def test_grid_is_deterministic_and_batch_independent() -> None:
    theta = random_grids(48, 15, 15, seed=5)
    solver = GridShortestPath()
    z = solver(theta)
    assert torch.equal(solver(theta.clone()), z)
    others = random_grids(21, 15, 15, seed=6)
    mixed = torch.cat([others[:9], theta[::4], others[9:]])  # other positions, other batch size
    assert torch.equal(solver(mixed)[9 : 9 + len(theta[::4])], z[::4])
    for b in (0, 17, 47):
        assert torch.equal(solver(theta[b : b + 1])[0], z[b])


def test_grid_keeps_the_input_dtype() -> None:
    theta = random_grids(6, 9, 8, seed=8)
    expected = GridShortestPath()(theta)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        z = GridShortestPath()(theta.to(dtype))
        assert z.dtype == dtype
        assert torch.equal(z.float(), expected)  # dyadic costs: the same path in every dtype


def test_grid_empty_batch() -> None:
    assert GridShortestPath()(torch.zeros(0, 4, 5)).shape == (0, 4, 5)


@pytest.mark.parametrize(
    ("theta", "message"),
    [
        (torch.zeros(4, 4), r"expected a 3-D tensor, got shape \(4, 4\)"),
        (torch.zeros(1, 2, 4, 4), r"expected a 3-D tensor"),
        (torch.zeros(2, 4, 4, dtype=torch.long), r"floating-point tensor"),
        (torch.zeros(2, 0, 4), r"the grid is empty"),
        (torch.zeros(2, 4, 0), r"the grid is empty"),
        ([[[1.0]]], r"expected a torch.Tensor, got list"),
    ],
)
def test_grid_rejects_bad_shapes_and_types(theta: object, message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        GridShortestPath()(theta)  # type: ignore[arg-type]


def test_grid_rejects_nan_and_inf_naming_the_instances() -> None:
    theta = random_grids(5, 6, 6, seed=1)
    theta[3, 2, 2] = float("nan")
    with pytest.raises(SolverInputError, match=r"NaN or inf values in instance\(s\) 3\b"):
        GridShortestPath()(theta)
    theta[3, 2, 2] = 1.0
    theta[1, 0, 5] = float("inf")
    with pytest.raises(SolverInputError, match=r"instance\(s\) 1\b"):
        GridShortestPath()(theta)


def test_grid_rejects_costs_that_overflow() -> None:
    theta = torch.ones(3, 4, 4)
    theta[2] = 3e37  # 16 cells sum beyond float32's largest value
    with pytest.raises(SolverInputError, match=r"overflow torch.float32 in instance\(s\) \[2\]"):
        GridShortestPath()(theta)


def test_grid_too_large_for_float32_keys_asks_for_float64() -> None:
    with pytest.raises(SolverInputError, match=r"needs float64 costs"):
        GridShortestPath()(torch.ones(1, 1449, 1448))


def test_grid_neighbourhood_must_be_4_or_8() -> None:
    with pytest.raises(SolverInputError, match="neighbourhood must be 8"):
        GridShortestPath(6)


# ----------------------------------------------------------------------------- general graphs


@pytest.mark.parametrize("num_nodes", [5, 8, 12, 20, 35, 50])
def test_dag_with_negative_costs_against_both_oracles(num_nodes: int) -> None:
    for graph_seed in range(3):
        edge_index, source, target = random_dag(num_nodes, seed=num_nodes * 10 + graph_seed)
        theta = random_costs(DAG_VALUES, 16, edge_index.shape[1], seed=graph_seed)
        assert (theta < 0).any()
        z = GraphShortestPath(edge_index, num_nodes, source=source, target=target)(theta)
        assert z.shape == theta.shape
        assert_graph_paths(z, edge_index, [source] * 16, [target] * 16)
        for oracle in (graph_shortest_path_scipy, graph_shortest_path_networkx):
            expected = oracle(theta, edge_index, num_nodes, source, target)
            assert torch.equal(graph_cost(theta, z), graph_cost(theta, expected))


@pytest.mark.parametrize("num_nodes", [5, 8, 12, 20, 35, 50])
def test_digraph_with_zero_cost_cycles_against_both_oracles(num_nodes: int) -> None:
    for graph_seed in range(3):
        edge_index, source, target = random_digraph(num_nodes, seed=num_nodes * 10 + graph_seed)
        theta = random_costs(DIGRAPH_VALUES, 16, edge_index.shape[1], seed=graph_seed)
        z = GraphShortestPath(edge_index, num_nodes, source=source, target=target)(theta)
        assert_graph_paths(z, edge_index, [source] * 16, [target] * 16)
        for oracle in (graph_shortest_path_scipy, graph_shortest_path_networkx):
            expected = oracle(theta, edge_index, num_nodes, source, target)
            assert torch.equal(graph_cost(theta, z), graph_cost(theta, expected))


@pytest.mark.parametrize("family", ["dag", "digraph"])
def test_graph_tie_break_takes_the_fewest_edges(family: str) -> None:
    make, values = (random_dag, DAG_VALUES) if family == "dag" else (random_digraph, DIGRAPH_VALUES)
    edge_index, source, target = make(24, seed=99)
    theta = random_costs(values, 64, edge_index.shape[1], seed=98)
    z = GraphShortestPath(edge_index, 24, source=source, target=target)(theta)
    cost, count = graph_fewest_edges(theta, edge_index, 24, [source] * 64, [target] * 64)
    assert torch.equal(graph_cost(theta, z).double(), cost)
    assert torch.equal(z.sum(dim=1).double(), count)


def test_graph_continuous_negative_costs_match_networkx() -> None:
    edge_index, source, target = random_dag(30, seed=1)
    generator = torch.Generator().manual_seed(2)
    theta = torch.randn(32, edge_index.shape[1], generator=generator, dtype=torch.float64)
    z = GraphShortestPath(edge_index, 30, source=source, target=target)(theta)
    assert_graph_paths(z, edge_index, [source] * 32, [target] * 32)
    expected = graph_shortest_path_networkx(theta, edge_index, 30, source, target)
    torch.testing.assert_close(graph_cost(theta, z), graph_cost(theta, expected))


def test_graph_adjacency_form_matches_the_edge_list_form() -> None:
    edge_index, source, target = random_digraph(15, seed=4)
    adjacency = torch.zeros(15, 15, dtype=torch.bool)
    adjacency[edge_index[0], edge_index[1]] = True
    pairs = adjacency.nonzero().t()
    dense = torch.full((20, 15, 15), float("inf"))  # off-graph entries may be inf
    dense[:, pairs[0], pairs[1]] = random_costs(DIGRAPH_VALUES, 20, pairs.shape[1], seed=5)
    z = GraphShortestPath(adjacency=adjacency, source=source, target=target)(dense)
    assert z.shape == dense.shape
    assert not z[:, ~adjacency].any()
    on_edges = dense[:, pairs[0], pairs[1]]
    z_edges = GraphShortestPath(pairs, 15, source=source, target=target)(on_edges)
    assert torch.equal(z[:, pairs[0], pairs[1]], z_edges)
    expected = graph_shortest_path_networkx(on_edges, pairs, 15, source, target)
    assert torch.equal(graph_cost(on_edges, z_edges), graph_cost(on_edges, expected))
    # the registered objective on the dense form: off-graph inf entries count 0, not NaN
    assert torch.equal(graph_path_cost(dense, z), graph_cost(on_edges, expected))


def test_a_negative_cycle_that_overflows_to_minus_infinity_is_named() -> None:
    """Going round the self-loop 1 -> 1 overflows d(1) to -inf before round V."""
    edge_index = torch.tensor([[0, 1, 1], [1, 1, 2]])
    solver = GraphShortestPath(edge_index, 10, source=0, target=2)
    for loop_cost in (-1.0, -2e38):
        with pytest.raises(SolverInputError, match=r"negative-cost cycle .* instance\(s\) \[0\]"):
            solver(torch.tensor([[0.0, loop_cost, 0.0]]))


@pytest.mark.parametrize("name", ["dijkstra_scipy", "grid_shortest_path", "dijkstra"])
def test_an_empty_batch_of_grids(name: str) -> None:
    z = get_solver(name)(torch.zeros(0, 3, 4))
    assert z.shape == (0, 3, 4)


def test_graph_vertex_output_marks_the_path_vertices() -> None:
    edge_index, source, target = random_dag(18, seed=6)
    theta = random_costs(DAG_VALUES, 24, edge_index.shape[1], seed=7)
    edges = GraphShortestPath(edge_index, 18, source=source, target=target)(theta)
    vertices = GraphShortestPath(edge_index, 18, source=source, target=target, output="vertices")(
        theta
    )
    assert vertices.shape == (24, 18)
    expected = torch.zeros(24, 18)
    expected[:, source] = 1
    for b in range(24):
        expected[b, edge_index[1, edges[b].bool()]] = 1
    assert torch.equal(vertices, expected)


def test_graph_per_instance_sources_and_targets_repeat_for_samples() -> None:
    edge_index, _, _ = random_digraph(16, seed=8)
    sources, targets = torch.tensor([0, 5, 9]), torch.tensor([15, 2, 9])  # the last: empty path
    repeats = 4  # theta holds 4 samples per instance, flattened as b * 4 + n
    theta = random_costs(DIGRAPH_VALUES, 3 * repeats, edge_index.shape[1], seed=9)
    solver = GraphShortestPath(edge_index, 16, source=sources, target=targets)
    z = solver(theta)
    each_source = sources.repeat_interleave(repeats).tolist()
    each_target = targets.repeat_interleave(repeats).tolist()
    assert_graph_paths(z, edge_index, each_source, each_target)
    expected = graph_shortest_path_networkx(
        theta, edge_index, 16, torch.tensor(each_source), torch.tensor(each_target)
    )
    assert torch.equal(graph_cost(theta, z), graph_cost(theta, expected))
    assert not z[-repeats:].any()
    vertices = GraphShortestPath(edge_index, 16, source=9, target=9, output="vertices")(theta)
    assert torch.equal(vertices, torch.nn.functional.one_hot(torch.full((12,), 9), 16).float())


def test_graph_batch_multiple_is_what_the_solver_accepts() -> None:
    edge_index = (~torch.eye(8, dtype=torch.bool)).nonzero().t()  # complete: all reachable
    width = edge_index.shape[1]
    solver = GraphShortestPath(
        edge_index, 8, source=torch.tensor([0, 1]), target=torch.tensor([7, 6, 5])
    )
    assert solver.batch_multiple() == 6
    accepted = [batch for batch in range(1, 19) if _accepts(solver, torch.rand(batch, width) + 0.5)]
    assert accepted == [6, 12, 18]
    assert GraphShortestPath(edge_index, 8).batch_multiple() == 1
    assert ShortestPath(edge_index=edge_index, source=torch.tensor([0, 1])).batch_multiple() == 2
    assert ShortestPath().batch_multiple() == 1


def _accepts(solver: GraphShortestPath, theta: Tensor) -> bool:
    try:
        solver(theta)
    except SolverInputError:
        return False
    return True


def test_graph_is_deterministic_and_batch_independent() -> None:
    edge_index, source, target = random_digraph(20, seed=10)
    theta = random_costs(DIGRAPH_VALUES, 40, edge_index.shape[1], seed=11)
    solver = GraphShortestPath(edge_index, 20, source=source, target=target)
    z = solver(theta)
    assert torch.equal(solver(theta.clone()), z)
    others = random_costs(DIGRAPH_VALUES, 7, edge_index.shape[1], seed=12)
    mixed = torch.cat([others, theta[1::3]])
    assert torch.equal(solver(mixed)[7:], z[1::3])


def negative_cycle_graph() -> tuple[Tensor, Tensor]:
    """0 → 1 → 2 → 1 (the cycle 1 ⇄ 2) → 3, and 0 → 3; costs per instance [3, 5]."""
    edge_index = torch.tensor([[0, 1, 2, 2, 0], [1, 2, 1, 3, 3]])
    theta = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0, 9.0],
            [1.0, 1.0, 1.0, 1.0, 9.0],
            [1.0, -2.0, 1.0, 1.0, 9.0],  # 1 → 2 → 1 costs -1
            [1.0, 1.0, -1.0, 1.0, 9.0],  # 1 → 2 → 1 costs 0: fine
        ]
    )
    return edge_index, theta


def test_graph_negative_cycle_reaching_the_target_names_the_instance() -> None:
    edge_index, theta = negative_cycle_graph()
    solver = GraphShortestPath(edge_index, 4, source=0, target=3)
    with pytest.raises(SolverInputError, match=r"negative-cost cycle .* instance\(s\) \[2\]"):
        solver(theta)
    z = solver(theta[[0, 1, 3]])
    expected = graph_shortest_path_networkx(theta[[0, 1, 3]], edge_index, 4, 0, 3)
    assert torch.equal(graph_cost(theta[[0, 1, 3]], z), graph_cost(theta[[0, 1, 3]], expected))


def test_graph_negative_cycle_away_from_the_target_is_harmless() -> None:
    dag, source, target = random_dag(12, seed=13)
    cycle = torch.tensor([[source, 12, 13], [12, 13, 12]])  # the source reaches 12 ⇄ 13 only
    edge_index = torch.cat([dag, cycle], dim=1)
    theta = random_costs(DAG_VALUES, 16, edge_index.shape[1], seed=14)
    theta[:, -2:] = -1.0  # the cycle 12 ⇄ 13 costs -2
    z = GraphShortestPath(edge_index, 14, source=source, target=target)(theta)
    assert_graph_paths(z, edge_index, [source] * 16, [target] * 16)
    on_dag = theta[:, : dag.shape[1]]
    expected = graph_shortest_path_networkx(on_dag, dag, 12, source, target)
    assert torch.equal(graph_cost(theta, z), graph_cost(on_dag, expected))
    with pytest.raises(nx.NetworkXUnbounded):  # the plain oracle gives up on this graph
        graph_shortest_path_networkx(theta, edge_index, 14, source, target)


def test_graph_zero_cycles_lost_to_rounding_get_advice_that_fits_the_dtype() -> None:
    # the cycle 1 -> 2 -> 1 costs 0.7 - 0.7 = 0, but 0.1 + 0.7 - 0.7 < 0.1 in floating point
    solver = GraphShortestPath(torch.tensor([[0, 1, 2], [1, 2, 1]]), 3, source=0, target=1)
    with pytest.raises(SolverInputError, match=r"negative-cost cycle .* round the costs"):
        solver(torch.tensor([[0.1, 0.7, -0.7]], dtype=torch.float64))
    # a cycle whose rounding leaves no tight way back (a random graph of potential differences)
    tails = [0, 1, 2, 3, 4, 5, 1, 2, 3, 6, 0, 4, 2, 0, 1, 6, 5, 3, 6, 4, 6, 6, 3, 4, 2, 5, 0, 0]
    heads = [1, 2, 3, 4, 5, 6, 1, 4, 2, 3, 5, 4, 1, 6, 1, 5, 4, 4, 1, 2, 4, 1, 0, 5, 0, 1, 3, 1]
    cost = [17.01728642205788, -24.999893131960413, 29.22054214166443, -18.088929898764658,
            6.716902329437492, -5.847007227387274, 0.18978065672929212, 11.062965852415822,
            -28.284641305217118, 17.33693898932301, 9.451458431922202, 0.1703605378441031,
            25.229762028601108, 3.2742456000317404, 0.0, 5.847007227387274, -5.640379478962442,
            -17.404469444340954, 14.5369791467217, -10.493450647168988, -0.7519909094416466,
            13.770008588778417, -20.54835241211442, 6.875238171158388, 7.998163723331174,
            7.923001361391143, 20.58421682260247, 17.01728642205788]  # fmt: skip
    solver = GraphShortestPath(torch.tensor([tails, heads]), 7, source=0, target=6)
    costs = torch.tensor([cost], dtype=torch.float64)
    with pytest.raises(SolverInputError, match="traced back") as raised:
        solver(costs)
    assert "round the costs" in str(raised.value)
    assert "float64" not in str(raised.value)  # they are float64 already


def test_graph_takes_numpy_integer_vertices() -> None:
    edge_index = torch.tensor([[0, 1, 0], [1, 2, 2]])
    theta = torch.tensor([[1.0, 1.0, 5.0]])
    z = GraphShortestPath(edge_index, 3, source=np.int64(0), target=np.int32(2))(theta)
    assert z.tolist() == [[1.0, 1.0, 0.0]]
    with pytest.raises(SolverInputError, match="must be an int"):
        GraphShortestPath(edge_index, 3, source=np.float64(0.0), target=2)


def test_graph_unreachable_target_names_the_instance() -> None:
    edge_index = torch.tensor([[0, 1], [1, 2]])  # vertex 3 is isolated
    solver = GraphShortestPath(edge_index, 4, source=0, target=torch.tensor([2, 2, 3, 1]))
    with pytest.raises(SolverInputError, match=r"cannot be reached .* instance\(s\) \[2\]"):
        solver(torch.ones(4, 2))


def test_graph_without_edges() -> None:
    solver = GraphShortestPath(torch.zeros(2, 0, dtype=torch.long), 3, source=1, target=1)
    assert solver(torch.zeros(2, 0)).shape == (2, 0)
    with pytest.raises(SolverInputError, match="cannot be reached"):
        GraphShortestPath(torch.zeros(2, 0, dtype=torch.long), 3)(torch.zeros(2, 0))


def test_graph_rejects_bad_input() -> None:
    edge_index, source, target = random_dag(6, seed=15)
    solver = GraphShortestPath(edge_index, 6, source=source, target=target)
    num_edges = edge_index.shape[1]
    theta = torch.zeros(5, num_edges)
    theta[4, 0] = float("nan")
    with pytest.raises(SolverInputError, match=r"NaN or inf values in instance\(s\) 4\b"):
        solver(theta)
    with pytest.raises(SolverInputError, match=rf"expected edge costs \[B, {num_edges}\]"):
        solver(torch.zeros(5, num_edges + 1))
    with pytest.raises(SolverInputError, match="expected a 2-D tensor"):
        solver(torch.zeros(num_edges))
    with pytest.raises(SolverInputError, match="overflow"):
        solver(torch.full((2, num_edges), 3e38))
    per_instance = GraphShortestPath(edge_index, 6, source=torch.tensor([0, 0]), target=target)
    with pytest.raises(SolverInputError, match="batch size 3 but 2 source vertices"):
        per_instance(torch.zeros(3, num_edges))
    adjacency_solver = GraphShortestPath(adjacency=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(SolverInputError, match=r"expected edge costs \[B, 3, 3\]"):
        adjacency_solver(torch.zeros(2, 3, 4))
    dense = torch.zeros(2, 3, 3)
    dense[1, 0, 1] = float("nan")
    with pytest.raises(SolverInputError, match=r"instance\(s\) 1\b"):
        adjacency_solver(dense)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of the two"),
        ({"edge_index": [[0]], "adjacency": [[True]]}, "exactly one of the two"),
        ({"edge_index": [[0, 1, 2]]}, r"edge_index must have shape \[2, E\]"),
        ({"edge_index": [[0.0], [1.0]]}, "must hold integers"),
        ({"edge_index": [[0], [5]], "num_nodes": 3}, r"outside \[0, 3\)"),
        ({"edge_index": [[-1], [1]], "num_nodes": 3}, r"outside \[0, 3\)"),
        ({"edge_index": torch.tensor([[True], [False]])}, "must hold integers, got torch.bool"),
        ({"edge_index": [[0], [1]], "source": 4}, r"source \[4\] outside the vertex range"),
        ({"edge_index": [[0], [1]], "target": 2}, r"target \[2\] outside the vertex range"),
        ({"edge_index": [[0], [1]], "target": torch.tensor([1, -1])}, r"target \[-1\]"),
        ({"edge_index": [[0], [1]], "source": 0.5}, "source must be an int"),
        ({"edge_index": [[0], [1]], "source": torch.tensor([0.0])}, "source must be an int"),
        ({"edge_index": [[0], [1]], "target": torch.ones(1, 1, dtype=torch.long)}, "shape"),
        ({"edge_index": [[0], [1]], "target": torch.tensor([], dtype=torch.long)}, "empty"),
        ({"edge_index": torch.zeros(2, 0, dtype=torch.long)}, "num_nodes is required"),
        ({"edge_index": torch.zeros(2, 0, dtype=torch.long), "num_nodes": 0}, "must be >= 1"),
        ({"edge_index": [[0], [1]], "output": "nodes"}, "output must be 'edges' or 'vertices'"),
        ({"adjacency": torch.ones(2, 3)}, r"square \[V, V\]"),
        ({"adjacency": torch.full((2, 2), 2.0)}, "boolean"),
        ({"adjacency": torch.ones(2, 2), "num_nodes": 3}, "disagrees"),
    ],
)
def test_graph_rejects_bad_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        GraphShortestPath(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- registry


def test_dijkstra_builds_a_grid_or_a_graph_solver() -> None:
    grid = get_solver("dijkstra")
    assert isinstance(grid, ShortestPath) and isinstance(grid.solver, GridShortestPath)
    theta = random_grids(10, 12, 12, seed=16)
    assert torch.equal(grid(theta), GridShortestPath()(theta))
    assert get_solver("dijkstra", neighbourhood=4).solver.neighbourhood == 4

    edge_index, source, target = random_dag(10, seed=17)
    graph = get_solver(
        "dijkstra", edge_index=edge_index, num_nodes=10, source=source, target=target
    )
    assert isinstance(graph.solver, GraphShortestPath)
    costs = random_costs(DAG_VALUES, 8, edge_index.shape[1], seed=18)
    expected = GraphShortestPath(edge_index, 10, source=source, target=target)(costs)
    assert torch.equal(graph(costs), expected)
    for name in ("graph_shortest_path", "bellman_ford"):
        solver = get_solver(name, edge_index=edge_index, num_nodes=10, source=source, target=target)
        assert isinstance(solver, GraphShortestPath) and torch.equal(solver(costs), expected)


def test_dijkstra_rejects_mixed_arguments() -> None:
    with pytest.raises(SolverInputError, match="source, target only apply to graphs"):
        ShortestPath(source=0, target=3)
    with pytest.raises(SolverInputError, match="neighbourhood only applies to grids"):
        ShortestPath(4, edge_index=[[0], [1]])


def test_dijkstra_scipy_is_optimal_and_checks_its_input() -> None:
    theta = random_grids(12, 12, 12, seed=19)
    solver = get_solver("dijkstra_scipy")
    z = solver(theta)
    assert_grid_connects_corners(z, 8)
    assert torch.equal(grid_cost(theta, z), grid_cost(theta, GridShortestPath()(theta)))
    with pytest.raises(SolverInputError, match="NaN"):
        solver(torch.full((1, 3, 3), float("nan")))
    with pytest.raises(SolverInputError, match="neighbourhood must be 8"):
        get_solver("dijkstra_scipy", neighbourhood=5)(theta)


# ----------------------------------------------------------------------------- export


# torch.jit.save / load warn that TorchScript is deprecated in favour of torch.export
ignore_jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def script_round_trip(module: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@ignore_jit_deprecation
@pytest.mark.parametrize("neighbourhood", [8, 4])
def test_grid_torchscript_round_trip_on_new_shapes(neighbourhood: int) -> None:
    eager = GridShortestPath(neighbourhood)
    scripted = script_round_trip(eager)
    for batch, height, width in [(4, 12, 12), (3, 7, 9), (2, 30, 30), (1, 1, 5), (0, 5, 5)]:
        theta = random_grids(batch, height, width, seed=height * width)
        assert torch.equal(scripted(theta), eager(theta))


@pytest.mark.parametrize("neighbourhood", [8, 4])
def test_functional_relaxation_matches_the_in_place_one(neighbourhood: int) -> None:
    """The exported (functional, 4 rounds per convergence test) relaxation gives the same
    distances, settling rounds and round count as the eager in-place one, whatever the round
    count is modulo 4."""
    counts = set()
    for size in range(2, 20):
        theta = random_grids(3, size, size + 1, seed=100 + size).clamp(min=0)
        cost = theta.permute(1, 2, 0).contiguous()  # [H, W, B]
        dist, settle, rounds = _grid_distances_inplace(cost, neighbourhood)
        functional = _grid_distances(cost, neighbourhood)
        assert torch.equal(functional[0], dist)
        assert torch.equal(functional[1], settle)
        assert functional[2] == rounds == int(settle.max())
        counts.add(rounds % 4)
    assert counts == {0, 1, 2, 3}


@ignore_jit_deprecation
def test_graph_torchscript_round_trip_on_new_shapes() -> None:
    edge_index, source, target = random_digraph(14, seed=20)
    for output in ("edges", "vertices"):
        eager = GraphShortestPath(edge_index, 14, source=source, target=target, output=output)
        scripted = script_round_trip(eager)
        for batch in (5, 1, 33):
            theta = random_costs(DIGRAPH_VALUES, batch, edge_index.shape[1], seed=batch)
            assert torch.equal(scripted(theta), eager(theta))
    adjacency = torch.zeros(14, 14, dtype=torch.bool)
    adjacency[edge_index[0], edge_index[1]] = True
    dijkstra = ShortestPath(adjacency=adjacency, source=source, target=target)
    scripted = script_round_trip(dijkstra)
    theta = random_costs(DIGRAPH_VALUES, 6, 14 * 14, seed=21).view(6, 14, 14)
    assert torch.equal(scripted(theta), dijkstra(theta))


@ignore_jit_deprecation
def test_scripted_graph_still_raises_on_negative_cycles() -> None:
    edge_index, theta = negative_cycle_graph()
    scripted = script_round_trip(GraphShortestPath(edge_index, 4, source=0, target=3))
    with pytest.raises(torch.jit.Error, match=re.escape("instance(s) [2]")):
        scripted(theta)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter
@pytest.mark.filterwarnings("ignore:Constant folding:UserWarning")
def test_scripted_solvers_export_to_onnx_with_dynamic_shapes() -> None:
    ort = pytest.importorskip("onnxruntime")

    def export(module: torch.nn.Module, example: Tensor, dynamic: dict[int, str]) -> object:
        buffer = io.BytesIO()
        torch.onnx.export(
            torch.jit.script(module),
            (example,),
            buffer,
            dynamo=False,
            input_names=["theta"],
            dynamic_axes={"theta": dynamic},
        )
        return ort.InferenceSession(buffer.getvalue())

    grid = GridShortestPath()
    session = export(grid, random_grids(2, 6, 7, seed=0), {0: "B", 1: "H", 2: "W"})
    for batch, height, width in [(5, 12, 12), (1, 20, 9)]:
        theta = random_grids(batch, height, width, seed=batch)
        (z,) = session.run(None, {"theta": theta.numpy()})
        assert torch.equal(torch.from_numpy(z), grid(theta))

    edge_index, source, target = random_dag(12, seed=22)
    graph = GraphShortestPath(edge_index, 12, source=source, target=target)
    example = random_costs(DAG_VALUES, 3, edge_index.shape[1], seed=23)
    session = export(graph, example, {0: "B"})
    theta = random_costs(DAG_VALUES, 17, edge_index.shape[1], seed=24)
    (z,) = session.run(None, {"theta": theta.numpy()})
    assert torch.equal(torch.from_numpy(z), graph(theta))


def test_grid_overflow_check_counts_only_the_clamped_costs() -> None:
    """Negative cells count 0 on a path, so they cannot offset large positive ones."""
    theta = torch.zeros(2, 4, 4)
    theta[1, :2] = 5e37  # 8 cells: their sum passes float32's largest value
    theta[1, 2:] = -5e37  # would cancel it out unclamped
    with pytest.raises(SolverInputError, match=r"overflow torch.float32 in instance\(s\) \[1\]"):
        GridShortestPath()(theta)


def test_graph_params_record_only_the_arguments_given() -> None:
    """``params`` rebuild the solver from exported metadata: defaults are left out."""
    edge_index = [[0, 1], [1, 2]]
    assert GraphShortestPath(edge_index).params == {"edge_index": edge_index}
    assert GraphShortestPath(edge_index, 3, source=0, target=2, output="vertices").params == {
        "edge_index": edge_index,
        "num_nodes": 3,
        "target": 2,
        "output": "vertices",
    }
    assert GraphShortestPath(edge_index, source=1).params == {"edge_index": edge_index, "source": 1}
    assert ShortestPath(edge_index=edge_index).params == {"edge_index": edge_index}
    assert ShortestPath().params == {}


def test_graph_errors_name_at_most_eight_instances() -> None:
    solver = GraphShortestPath([[0], [1]], 3, target=2)  # vertex 2 is unreachable
    with pytest.raises(SolverInputError, match=r"instance\(s\) \[0, 1, 2, 3, 4, 5, 6, 7\];"):
        solver(torch.zeros(10, 1))


@pytest.mark.parametrize("target", range(4, 10))
def test_a_negative_cycle_is_named_however_far_down_the_target_lies(target: int) -> None:
    """Round V improves only every third vertex below a 3-cycle: the unbounded vertices are
    all those reachable from the improved ones, not only their direct successors."""
    # 0 -> 1, the cycle 1 -> 2 -> 3 -> 1 of cost -1, then the chain 3 -> 4 -> ... -> 9
    edge_index = [[0, 1, 2, 3, 3, 4, 5, 6, 7, 8], [1, 2, 3, 1, 4, 5, 6, 7, 8, 9]]
    costs = torch.zeros(1, 10)
    costs[0, 1] = -1.0
    with pytest.raises(SolverInputError, match=r"negative-cost cycle .* instance\(s\) \[0\]"):
        GraphShortestPath(edge_index, 10, target=target)(costs)


def test_float64_grids_are_solved_in_float64() -> None:
    """Two routes 1e-12 apart tie in float32: float64 costs must pick the cheaper one."""
    theta = torch.ones(2, 2, 2, dtype=torch.float64)
    theta[0, 0, 1] += 1e-12  # instance 0: down then right is cheaper
    theta[1, 1, 0] += 1e-12  # instance 1: right then down is cheaper
    z = GridShortestPath(4)(theta)
    assert z[0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert z[1].tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert torch.equal(grid_path_cost(theta, z), grid_path_cost(theta, dijkstra_scipy(theta, 4)))
