"""Per-instance CPU shortest paths with scipy and networkx: oracles and benchmark baselines.

These loops solve one instance at a time in NumPy/Python (the scipy loop builds its graph
layout once per shape and only swaps the costs per instance): tests use them as independent
oracles for the batched tensor solvers in :mod:`aimle_zoo.solvers.shortest_path`, and
benchmarks use them as the baseline.

Grid convention (Warcraft): the cells of an ``H × W`` grid are vertices with costs
``c = max(θ, 0)``; the path runs from the top-left to the bottom-right cell through 8 (or 4)
neighbours and costs the sum of the costs of its cells, both endpoints included. As a graph,
the edge ``u → v`` costs ``c[v]`` and the source cost ``c[0, 0]`` is added once.

Graph convention: ``edge_index [2, E]`` lists directed edges ``(source vertex, destination
vertex)``; ``θ [B, E]`` are edge costs (any sign); the path costs the sum of its edge costs.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import dijkstra, shortest_path
from torch import Tensor

__all__ = [
    "graph_shortest_path_networkx",
    "graph_shortest_path_scipy",
    "grid_shortest_path_networkx",
    "grid_shortest_path_scipy",
]


@lru_cache(maxsize=32)
def _grid_edges(height: int, width: int, neighbourhood: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed neighbour pairs ``(u, v)`` of the grid as flat cell indices (row-major)."""
    if neighbourhood == 8:
        offsets = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
    elif neighbourhood == 4:
        offsets = [(-1, 0), (0, -1), (0, 1), (1, 0)]
    else:
        raise ValueError(f"neighbourhood must be 4 or 8, got {neighbourhood!r}")
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    tails, heads = [], []
    for di, dj in offsets:
        inside = (rows + di >= 0) & (rows + di < height) & (cols + dj >= 0) & (cols + dj < width)
        tails.append((rows * width + cols)[inside])
        heads.append(((rows + di) * width + cols + dj)[inside])
    return np.concatenate(tails), np.concatenate(heads)


def _walk_back(predecessors: np.ndarray, target: int) -> list[int]:
    """Vertices of the path ending at ``target`` from a scipy predecessor array (-9999 = none)."""
    path = [target]
    while predecessors[path[-1]] >= 0:
        path.append(int(predecessors[path[-1]]))
    return path


def grid_shortest_path_scipy(theta: Tensor, neighbourhood: int = 8) -> Tensor:
    """Warcraft grid shortest paths, one ``scipy.sparse.csgraph.dijkstra`` call per instance.

    Builds the CSR graph of each instance (edge ``u → v`` costs ``max(θ_v, 0)``), runs Dijkstra
    from cell ``(0, 0)`` and walks the predecessors back from ``(H-1, W-1)``.

    Args:
        theta: vertex costs ``[B, H, W]``.
        neighbourhood: 8 (king moves) or 4.

    Returns:
        ``[B, H, W]`` 0/1 masks of the path cells, dtype of ``theta``.
    """
    batch, height, width = theta.shape
    cells = height * width
    columns, indptr = _grid_csr_layout(height, width, neighbourhood)
    costs = theta.detach().clamp(min=0).reshape(batch, cells).cpu().double().numpy()
    masks = np.zeros((batch, cells))
    graph = sp.csr_matrix((np.ones(columns.size), columns, indptr), shape=(cells, cells))
    for b in range(batch):
        graph.data = costs[b, columns]  # same layout, this instance's edge costs
        _, predecessors = dijkstra(graph, indices=0, return_predecessors=True)
        masks[b, _walk_back(predecessors, cells - 1)] = 1.0
    return torch.from_numpy(masks).to(theta).reshape(batch, height, width)


@lru_cache(maxsize=32)
def _grid_csr_layout(height: int, width: int, neighbourhood: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid graph's CSR layout, built once per shape: the column (head cell, whose cost the
    edge carries) of every stored edge in CSR order, and the row pointer. Read-only: the
    matrices built on them share them."""
    tails, heads = _grid_edges(height, width, neighbourhood)
    order = np.lexsort((heads, tails))  # by tail, then head: CSR order
    columns = heads[order]
    indptr = np.searchsorted(tails[order], np.arange(height * width + 1))
    columns.setflags(write=False)
    indptr.setflags(write=False)
    return columns, indptr


def grid_shortest_path_networkx(theta: Tensor, neighbourhood: int = 8) -> Tensor:
    """Warcraft grid shortest paths, one ``networkx.dijkstra_path`` call per instance.

    Same graph and output as :func:`grid_shortest_path_scipy`. The graph is built once per
    call; each instance's costs come in through a weight function (the cost of the head cell),
    so the loop times networkx's Dijkstra, not graph construction.
    """
    batch, height, width = theta.shape
    tails, heads = _grid_edges(height, width, neighbourhood)
    costs = theta.detach().clamp(min=0).reshape(batch, height * width).cpu().double().numpy()
    graph = nx.DiGraph()
    graph.add_nodes_from(range(height * width))
    graph.add_edges_from(zip(tails.tolist(), heads.tolist(), strict=True))
    masks = np.zeros((batch, height * width))
    for b in range(batch):
        cell_costs = costs[b].tolist()
        path = nx.dijkstra_path(
            graph, 0, height * width - 1, weight=lambda u, v, data, c=cell_costs: c[v]
        )
        masks[b, path] = 1.0
    return torch.from_numpy(masks).to(theta).reshape(batch, height, width)


def _cheapest_edges(
    costs: np.ndarray, tails: np.ndarray, heads: np.ndarray
) -> dict[tuple[int, int], tuple[float, int]]:
    """``(u, v) -> (cost, edge id)`` of the cheapest of parallel edges (lowest id on ties)."""
    cheapest: dict[tuple[int, int], tuple[float, int]] = {}
    for edge, (u, v) in enumerate(zip(tails.tolist(), heads.tolist(), strict=True)):
        if (u, v) not in cheapest or costs[edge] < cheapest[(u, v)][0]:
            cheapest[(u, v)] = (float(costs[edge]), edge)
    return cheapest


def _per_instance(value: int | Tensor, batch: int) -> list[int]:
    """An int or a ``[B']`` tensor as ``batch`` ints, each entry repeated ``batch / B'`` times."""
    if isinstance(value, Tensor):
        return value.repeat_interleave(batch // value.numel()).tolist()
    return [int(value)] * batch


def graph_shortest_path_scipy(
    theta: Tensor,
    edge_index: Tensor,
    num_nodes: int,
    source: int | Tensor,
    target: int | Tensor,
) -> Tensor:
    """Shortest paths in a directed graph, one ``scipy.sparse.csgraph.shortest_path`` per instance.

    Uses Johnson's algorithm (Bellman–Ford reweighting, then Dijkstra) when some cost is
    negative and Dijkstra otherwise. Parallel edges keep the cheapest (lowest id on ties).
    scipy raises ``NegativeCycleError`` if any negative cycle is reachable from the source.

    Args:
        theta: edge costs ``[B, E]``.
        edge_index: ``[2, E]`` (source vertex, destination vertex) of each edge.
        num_nodes: number of vertices ``V``.
        source, target: ints or ``[B']`` tensors with ``B`` a multiple of ``B'``.

    Returns:
        ``[B, E]`` 0/1 indicators of the path edges, dtype of ``theta``.
    """
    batch = theta.shape[0]
    tails, heads = edge_index.cpu().numpy()
    costs = theta.detach().cpu().double().numpy()  # [B, E]
    sources, targets = _per_instance(source, batch), _per_instance(target, batch)
    masks = np.zeros(costs.shape)
    for b in range(batch):
        cheapest = _cheapest_edges(costs[b], tails, heads)
        pairs = np.array(list(cheapest), dtype=np.int64).reshape(-1, 2)
        graph = sp.csr_matrix(
            ([cost for cost, _ in cheapest.values()], (pairs[:, 0], pairs[:, 1])),
            shape=(num_nodes, num_nodes),
        )
        method = "J" if (costs[b] < 0).any() else "D"
        distances, predecessors = shortest_path(
            graph, method=method, indices=sources[b], return_predecessors=True
        )
        if not np.isfinite(distances[targets[b]]):
            raise ValueError(f"instance {b}: target {targets[b]} is unreachable")
        path = _walk_back(predecessors, targets[b])
        for v, u in pairwise(path):
            masks[b, cheapest[(u, v)][1]] = 1.0
    return torch.from_numpy(masks).to(theta)


def graph_shortest_path_networkx(
    theta: Tensor,
    edge_index: Tensor,
    num_nodes: int,
    source: int | Tensor,
    target: int | Tensor,
) -> Tensor:
    """Shortest paths in a directed graph, one networkx call per instance.

    ``networkx.bellman_ford_path`` when some cost is negative, ``dijkstra_path`` otherwise;
    same conventions and output as :func:`graph_shortest_path_scipy`. On graphs with negative
    costs and zero-cost cycles networkx 3.6's Bellman–Ford can return a path that is not the
    cheapest; the scipy reference is exact there (the tests use this one on DAGs and on
    non-negative costs only).
    """
    batch = theta.shape[0]
    tails, heads = edge_index.cpu().numpy()
    costs = theta.detach().cpu().double().numpy()  # [B, E]
    sources, targets = _per_instance(source, batch), _per_instance(target, batch)
    masks = np.zeros(costs.shape)
    for b in range(batch):
        cheapest = _cheapest_edges(costs[b], tails, heads)
        graph = nx.DiGraph()
        graph.add_nodes_from(range(num_nodes))
        graph.add_weighted_edges_from((u, v, cost) for (u, v), (cost, _) in cheapest.items())
        find_path = nx.bellman_ford_path if (costs[b] < 0).any() else nx.dijkstra_path
        path = find_path(graph, sources[b], targets[b])
        for u, v in pairwise(path):
            masks[b, cheapest[(u, v)][1]] = 1.0
    return torch.from_numpy(masks).to(theta)
