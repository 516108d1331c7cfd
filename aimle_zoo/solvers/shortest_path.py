"""Shortest-path solvers as batched tensor programs: vertex-weighted grids and directed graphs.

Both solvers run synchronous (Jacobi) Bellman–Ford relaxation on the whole batch at once,
from ``d_0`` = 0 at the source (the source cost on grids) and +inf elsewhere,

    d_t(v) = min(d_{t-1}(v), min_{u → v} d_{t-1}(u) + w(u, v)),

so ``d_t(v)`` is the cheapest path to ``v`` with at most ``t`` edges, until no distance changes
(a data-dependent loop, one cheap check per round). ``r(v)``, the first round at which ``d(v)``
reached its final value, is the fewest edges of a cheapest path to ``v``; it fixes a
deterministic predecessor among the tight in-edges, the lexicographic minimum of
``(d(u) + w(u, v), r(u), fixed edge order)``. Along these predecessors ``r`` strictly
decreases, so walking back from the target reaches the source in ``r(target)`` steps, even
through edges of zero or negative cost. Every instance gets a cheapest path, with the fewest
edges among the cheapest ones, and the same instance gets the same path in any batch.

The loops are plain ``while`` loops on tensors, so ``torch.jit.script`` compiles both solvers,
and ONNX export of the scripted module (``torch.onnx.export(..., dynamo=False)``) keeps them
as ``Loop`` nodes with dynamic shapes.
"""

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import Solver, SolverInputError, check_same_device, check_theta
from ._registry import register_solver

__all__ = [
    "GraphShortestPath",
    "GridShortestPath",
    "ShortestPath",
    "dijkstra_scipy",
    "graph_path_cost",
    "graph_shortest_path",
    "grid_path_cost",
    "grid_shortest_path",
]


def _instances(mask: Tensor) -> list[int]:
    """Indices of the true entries of a ``[B]`` mask, at most 8 of them (for messages).

    A list, not :func:`format_instances`'s text: the scripted solvers raise with it, and string
    building inside a scripted graph breaks its ONNX export.
    """
    found: list[int] = mask.nonzero().flatten().tolist()
    return found[:8]


# ----------------------------------------------------------------------------- grid


def grid_path_cost(theta: Tensor, z: Tensor) -> Tensor:
    """Warcraft path cost ``Σ_ij max(θ_ij, 0) z_ij`` of masks ``z [B, H, W]``; returns ``[B]``."""
    return (theta.clamp(min=0) * z).flatten(1).sum(dim=1)


def _grid_offsets(neighbourhood: int) -> list[list[int]]:
    """Neighbour offsets ``[Δrows, Δcols]``, row-major: the order that breaks the last ties."""
    if neighbourhood == 4:
        return [[-1, 0, 0, 1], [0, -1, 1, 0]]
    return [[-1, -1, -1, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 1, -1, 0, 1]]


def _grid_neighbour_min(padded: Tensor, neighbourhood: int) -> Tensor:
    """``min`` over each cell's neighbours, +inf-padded ``[H+2, W+2, B]`` -> ``[H, W, B]``.

    The 8-neighbourhood is a separable 3×3 box minimum; it includes the cell itself, which
    never improves a distance because costs are non-negative.
    """
    if neighbourhood == 4:
        vertical = torch.minimum(padded[:-2, 1:-1], padded[2:, 1:-1])
        return torch.minimum(vertical, torch.minimum(padded[1:-1, :-2], padded[1:-1, 2:]))
    rows = torch.minimum(torch.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return torch.minimum(torch.minimum(rows[:-2], rows[1:-1]), rows[2:])  # [H, W, B]


def _grid_box_min(dist: Tensor, neighbourhood: int) -> Tensor:
    """``min`` over each cell's neighbours of ``dist [B, 1, H, W]`` (+inf outside the grid).

    The 8-neighbourhood is a 3×3 box minimum, ``-maxpool(-d)`` (one pooling node in ONNX; the
    box also covers the cell itself, which never improves a distance: costs are >= 0).
    """
    if neighbourhood == 8:
        return -F.max_pool2d(-dist, 3, stride=1, padding=1)
    padded = F.pad(dist, (1, 1, 1, 1), value=float("inf"))  # [B, 1, H+2, W+2]
    vertical = torch.minimum(padded[:, :, :-2, 1:-1], padded[:, :, 2:, 1:-1])
    return torch.minimum(vertical, torch.minimum(padded[:, :, 1:-1, :-2], padded[:, :, 1:-1, 2:]))


def _grid_relax(
    dist: Tensor, settle_round: Tensor, cost: Tensor, round_index: int, neighbourhood: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One synchronous round on ``[B, 1, H, W]``: new ``d``, new ``r``, and whether any
    distance fell (a 0-d bool tensor)."""
    candidate = _grid_box_min(dist, neighbourhood) + cost
    improved = candidate < dist
    settle_round = torch.maximum(settle_round, improved.to(cost.dtype) * round_index)
    return torch.minimum(dist, candidate), settle_round, improved.any()


def _grid_distances(cost: Tensor, neighbourhood: int) -> tuple[Tensor, Tensor, int]:
    """Functional form of :func:`_grid_distances_inplace`: the same rounds and results.

    It allocates new tensors every round, but exporters (TorchScript -> ONNX) translate it
    faithfully, which they do not do for in-place writes through views. It works on images
    ``[B, 1, H, W]`` and tests for convergence after every 4 rounds, written out, so an
    exported ``Loop`` runs a quarter of the iterations and holds no ``If``. Rounds after
    convergence change nothing (once a round lowers no distance, no later round does); the
    number of rounds that did, max r, is returned.
    """
    height, width = cost.shape[0], cost.shape[1]
    inf = float("inf")
    image = cost.permute(2, 0, 1).unsqueeze(1)  # [B, 1, H, W]
    dist = F.pad(image[:, :, :1, :1], (0, width - 1, 0, height - 1), value=inf)  # d_0
    settle = torch.zeros_like(image)  # r
    done = 0
    improving = True
    while improving:
        dist, settle, _ = _grid_relax(dist, settle, image, done + 1, neighbourhood)
        dist, settle, _ = _grid_relax(dist, settle, image, done + 2, neighbourhood)
        dist, settle, _ = _grid_relax(dist, settle, image, done + 3, neighbourhood)
        dist, settle, improved = _grid_relax(dist, settle, image, done + 4, neighbourhood)
        done += 4
        improving = bool(improved)
    # back to batch-last [H+2, W+2, B]; the casts keep the dtype known to the ONNX exporter
    pad = (0, 0, 1, 1, 1, 1)
    dist = dist.view(-1, height, width).permute(1, 2, 0).to(cost.dtype)
    settle = settle.view(-1, height, width).permute(1, 2, 0).to(cost.dtype)
    rounds = int(torch.cat([settle.flatten(), settle.new_zeros(1)]).max().to(torch.long))  # B=0: 0
    return F.pad(dist, pad, value=inf), F.pad(settle, pad, value=0.0), rounds


def _grid_distances_inplace(cost: Tensor, neighbourhood: int) -> tuple[Tensor, Tensor, int]:
    """Converged distances ``d`` and settling rounds ``r``, +inf- / 0-padded ``[H+2, W+2, B]``.

    Synchronous rounds ``d_t = min(d_{t-1}, N(d_{t-1}) + c)`` from ``d_0`` = ``c`` at the
    source, +inf elsewhere; ``r(v)`` is the last round that lowered ``d(v)`` (the first at
    which it reached its final value). Each round works in place on preallocated buffers
    (no allocation in the loop), with the 0/1 "improved" mask kept in floating point, which
    is several times faster than boolean masks on CPU. Returns the number of rounds too.
    """
    height, width, batch = cost.shape[0], cost.shape[1], cost.shape[2]
    padded_dist = torch.full(
        (height + 2, width + 2, batch), float("inf"), dtype=cost.dtype, device=cost.device
    )
    padded_round = torch.zeros_like(padded_dist)
    dist = padded_dist[1:-1, 1:-1]  # [H, W, B] view: d_t
    settle_round = padded_round[1:-1, 1:-1]  # [H, W, B] view: r
    dist[0, 0] = cost[0, 0]
    rows = torch.empty((height + 2, width, batch), dtype=cost.dtype, device=cost.device)
    candidate = torch.empty_like(cost)  # [H, W, B]
    improved = torch.empty_like(cost)  # [H, W, B], 0/1
    if neighbourhood == 4:
        reads = [padded_dist[:-2, 1:-1], padded_dist[2:, 1:-1], padded_dist[1:-1, :-2]]
        reads.append(padded_dist[1:-1, 2:])
    else:  # separable box: 3 column shifts into `rows`, then 3 row shifts of `rows`
        reads = [padded_dist[:, :-2], padded_dist[:, 1:-1], padded_dist[:, 2:]]
        reads.extend([rows[:-2], rows[1:-1], rows[2:]])
    rounds = 0
    while True:
        if neighbourhood == 4:
            torch.minimum(reads[0], reads[1], out=candidate)
            torch.minimum(candidate, reads[2], out=candidate)
            torch.minimum(candidate, reads[3], out=candidate)
        else:
            torch.minimum(reads[0], reads[1], out=rows)
            torch.minimum(rows, reads[2], out=rows)
            torch.minimum(reads[3], reads[4], out=candidate)
            torch.minimum(candidate, reads[5], out=candidate)
        candidate.add_(cost)
        torch.lt(candidate, dist, out=improved)
        if float(improved.sum()) == 0.0:
            break
        rounds += 1
        torch.minimum(dist, candidate, out=dist)
        torch.maximum(settle_round, improved.mul_(rounds), out=settle_round)
    return padded_dist, padded_round, rounds


def _grid_predecessors(padded_dist: Tensor, padded_round: Tensor, neighbourhood: int) -> Tensor:
    """Flat index of each cell's predecessor, batch-last ``[H*W, B]`` (the source: itself).

    ``pred(v) = lexmin_{u ∈ N(v)} (d(u), r(u), offset order)`` from the converged distances
    and settling rounds on +inf- and 0-padded grids ``[H+2, W+2, B]``: among the neighbours
    of least distance, the least key ``8·r(u) + k`` (``k`` the offset's rank), an exact
    integer in ``padded_round``'s floating dtype.
    """
    height, width, batch = padded_dist.shape[0] - 2, padded_dist.shape[1] - 2, padded_dist.shape[2]
    row_offsets, col_offsets = _grid_offsets(neighbourhood)
    # min_u d(u); the 8-neighbour box also covers v itself, which is harmless: d(v) >= min_u d(u)
    # at every cell but the source, whose predecessor is set to itself below
    best_dist = _grid_neighbour_min(padded_dist, neighbourhood)  # [H, W, B]
    padded_key = padded_round * 8  # 8·r(u), [H+2, W+2, B]
    no_key = float((height * width + 2) * 8)
    best_key = torch.full_like(best_dist, no_key)  # [H, W, B]
    for k in range(len(row_offsets)):
        top, left = 1 + row_offsets[k], 1 + col_offsets[k]
        # 1 where d(u) > min, 0 where u is tight (min is finite: grids have 2+ cells here)
        not_tight = torch.sign(padded_dist[top : top + height, left : left + width] - best_dist)
        key = torch.add(
            padded_key[top : top + height, left : left + width], not_tight, alpha=no_key
        )
        best_key = torch.minimum(best_key, key.add_(k))  # [H, W, B]
    rank = torch.sub(best_key, torch.floor(best_key * 0.125), alpha=8).view(-1).long()  # key % 8
    flat_offsets = [row_offsets[k] * width + col_offsets[k] for k in range(len(row_offsets))]
    offsets = torch.tensor(flat_offsets, dtype=torch.long, device=padded_dist.device)  # [K]
    cells = torch.arange(height * width, device=padded_dist.device).unsqueeze(1)  # [H*W, 1]
    predecessor = offsets.index_select(0, rank).view(height * width, batch) + cells
    return torch.cat([torch.zeros_like(predecessor[:1]), predecessor[1:]])  # [H*W, B]


def grid_shortest_path(theta: Tensor, neighbourhood: int = 8) -> Tensor:
    """Cheapest top-left to bottom-right paths on vertex-weighted grids (Warcraft convention).

    Costs are ``c = max(θ, 0)``: perturbed costs are routinely negative and a negative cell
    would make the problem ill-posed (a path could loop through it), so they count as 0. The
    path cost is ``Σ_{v on path} c(v)`` with both endpoints included, over 8 (king moves) or
    4 neighbours. The relaxation ``d_t = min(d_{t-1}, N(d_{t-1}) + c)`` uses a separable
    3×3 box minimum ``N`` on an +inf-padded grid, batch-last (``[H+2, W+2, B]``) so each
    operation runs over long contiguous rows; then a deterministic walk back marks the path
    (see the module docstring). Eager mode relaxes in place in preallocated buffers;
    TorchScript runs the equivalent functional rounds (which ONNX export keeps as a ``Loop``).
    No input checks.

    Args:
        theta: vertex costs ``[B, H, W]``; float32 or float64 (other dtypes run in float32).
            The keys ``8·r + k`` must be exact: in float32 the grid needs fewer than
            ``2^21 - 2`` cells (:class:`GridShortestPath` asks for float64 beyond).
        neighbourhood: 8 or 4.

    Returns:
        ``[B, H, W]`` 0/1 masks of the path cells, dtype of ``theta``.
    """
    batch, height, width = theta.shape[0], theta.shape[1], theta.shape[2]
    if height * width == 1:
        return torch.ones_like(theta)
    dtype = theta.dtype if theta.dtype == torch.float64 else torch.float32
    cost = theta.detach().to(dtype).clamp(min=0.0).permute(1, 2, 0).contiguous()  # [H, W, B]
    if torch.jit.is_scripting():
        padded_dist, padded_round, rounds = _grid_distances(cost, neighbourhood)
    else:
        padded_dist, padded_round, rounds = _grid_distances_inplace(cost, neighbourhood)
    predecessor = _grid_predecessors(padded_dist, padded_round, neighbourhood)  # [H*W, B]
    current = torch.full((1, batch), height * width - 1, dtype=torch.long, device=theta.device)
    visited = [current]
    steps = 0
    # bounded, so that an ONNX export (which drops the raise) stops on non-finite costs too
    while not bool((current == 0).all()) and steps < height * width:
        for _ in range(max(rounds, 1)):
            current = predecessor.gather(0, current)  # [1, B]
            visited.append(current)
        steps += max(rounds, 1)
    untraced = (current != 0).squeeze(0)  # [B]; only with non-finite costs (modules refuse them)
    if bool(untraced.any()):
        raise SolverInputError(
            "grid_shortest_path: the path could not be traced back in instance(s) "
            f"{_instances(untraced)}; are all costs finite?"
        )
    path = torch.zeros((height * width, batch), dtype=theta.dtype, device=theta.device)
    path = path.scatter(0, torch.cat(visited, dim=0), 1.0)  # [H*W, B]
    path = path.t().reshape(batch, height, width)
    return path.masked_fill(untraced.view(-1, 1, 1), float("nan"))  # the raise compiled away


# ----------------------------------------------------------------------------- general graphs


def graph_path_cost(theta: Tensor, z: Tensor) -> Tensor:
    """Path cost ``Σ_e θ_e z_e`` of edge indicators ``z [B, E]`` (or ``[B, V, V]``); ``[B]``.

    Edges off the path count 0 whatever their cost (an adjacency's off-graph ±inf included).
    """
    return torch.where(z != 0, theta * z, 0.0).flatten(1).sum(dim=1)


def _reachable_from(seed: Tensor, tails: Tensor, heads: Tensor) -> Tensor:
    """Vertices reachable from the ``seed [B, V]`` vertices along the edges ``tails → heads``."""
    reach = seed.to(torch.float32)  # [B, V], 1 = reached
    head_index = heads.expand(seed.shape[0], heads.shape[0])  # [B, E]
    growing = True
    while growing:
        grown = reach.scatter_reduce(1, head_index, reach.index_select(1, tails), "amax")
        growing = bool((grown > reach).any())
        reach = grown
    return reach > 0.0


def graph_shortest_path(
    cost: Tensor,
    tails: Tensor,
    heads: Tensor,
    num_nodes: int,
    source: Tensor,
    target: Tensor,
) -> tuple[Tensor, Tensor]:
    """Cheapest ``source → target`` paths in a directed graph, costs of any sign (batched).

    Synchronous Bellman–Ford: ``d_t(v) = min(d_{t-1}(v), min_{e = (u, v)} d_{t-1}(u) + c_e)``
    until no distance changes. It is exact whenever no negative cycle reaches the target
    (DAGs with negative costs included). An improvement at round ``V`` proves a negative cycle;
    the vertices reachable from the improved ones have unbounded distance, and if a target is
    among them, or cannot be reached at all, a :class:`SolverInputError` names the instances.
    Parallel edges and self-loops are allowed. Scriptable with ``torch.jit.script``; every loop
    is bounded, so an ONNX export (which drops the raises) stops too, and returns NaN rows for
    the instances eager PyTorch would refuse (also those with a NaN or ±inf edge cost).

    Args:
        cost: edge costs ``[B, E]``; float32 or float64 (other dtypes run in float32).
        tails: source vertex of each edge ``[E]`` (int64).
        heads: destination vertex of each edge ``[E]`` (int64).
        num_nodes: number of vertices ``V``.
        source: source vertex of each instance ``[B]`` (int64).
        target: target vertex of each instance ``[B]`` (int64).

    Returns:
        ``[B, E]`` 0/1 indicators of the path edges (all 0 when source = target) and
        ``[B, V]`` 0/1 indicators of its vertices, both in the dtype of ``cost`` (NaN rows
        for refused instances, only where the raises are compiled away).
    """
    out_dtype = cost.dtype
    cost = cost.detach().to(torch.float64 if cost.dtype == torch.float64 else torch.float32)
    batch, num_edges = cost.shape[0], cost.shape[1]
    non_finite = torch.logical_not(torch.isfinite(cost)).any(dim=1)  # [B]
    if bool(non_finite.any()):  # the modules check first in eager mode; scripted ones here
        raise SolverInputError(
            "graph_shortest_path: NaN or infinite edge costs in instance(s) "
            f"{_instances(non_finite)}; give every edge a finite cost (an adjacency's entries "
            "off the graph may be ±inf)."
        )
    dist = torch.full((batch, num_nodes), float("inf"), dtype=cost.dtype, device=cost.device)
    dist = dist.scatter(1, source.unsqueeze(1), 0.0)  # d_0
    settle_round = torch.zeros((batch, num_nodes), dtype=torch.long, device=cost.device)
    head_index = heads.expand(batch, num_edges)  # [B, E]
    improved = torch.zeros((batch, num_nodes), dtype=torch.bool, device=cost.device)
    rounds = 0
    while rounds < num_nodes:
        candidate = dist.index_select(1, tails) + cost  # [B, E]: d(u) + c_e
        relaxed = dist.scatter_reduce(1, head_index, candidate, "amin")  # [B, V]
        improved = relaxed < dist
        if not bool(improved.any()):
            break
        rounds += 1
        dist = relaxed
        settle_round = settle_round.masked_fill(improved, rounds)
    # improvements at round V (none if the loop converged) prove negative cycles, and so does
    # a distance that overflowed to -inf going round one (a simple path of finite costs cannot:
    # their absolute sum is finite); where none of them reaches, d_{V-1} = d_V is final
    overflowed = dist == float("-inf")  # [B, V]
    unbounded = _reachable_from(torch.logical_or(improved, overflowed), tails, heads)  # [B, V]
    hit = unbounded.gather(1, target.unsqueeze(1)).squeeze(1)  # [B]
    if bool(hit.any()):
        raise SolverInputError(
            "graph_shortest_path: a negative-cost cycle reachable from the source leads to "
            f"the target in instance(s) {_instances(hit)}, so no cheapest path exists; make "
            "every cycle's total cost non-negative (e.g. use a DAG, or non-negative costs; a "
            "cycle of zero cost whose edges have mixed signs can read as negative after "
            "floating-point rounding: round the costs to a coarser grid)."
        )
    unreachable = torch.isinf(dist.gather(1, target.unsqueeze(1)).squeeze(1))  # [B]
    # [B]; a NaN cost (which the modules refuse) leaves no distance NaN, so it is tested here
    refused = torch.logical_or(torch.logical_or(hit, unreachable), non_finite)  # [B]
    if bool(unreachable.any()):
        raise SolverInputError(
            "graph_shortest_path: the target cannot be reached from the source in "
            f"instance(s) {_instances(unreachable)}; add edges or choose a reachable target."
        )
    # predecessor edge of v: lexmin over tight in-edges of (r(u), edge id)
    tight = dist.index_select(1, tails) + cost == dist.index_select(1, heads)  # [B, E]
    edge_ids = torch.arange(num_edges, device=cost.device)
    no_key = (num_nodes + 1) * num_edges
    key = torch.where(tight, settle_round.index_select(1, tails) * num_edges + edge_ids, no_key)
    predecessor_key = torch.full((batch, num_nodes), no_key, dtype=torch.long, device=cost.device)
    predecessor_key = predecessor_key.scatter_reduce(1, head_index, key, "amin")  # [B, V]
    predecessor_edge = predecessor_key % max(num_edges, 1)  # [B, V]
    tail_index = tails.expand(batch, num_edges)  # [B, E]
    current = target.unsqueeze(1)  # [B, 1]
    start = source.unsqueeze(1)  # [B, 1]
    path_edges = [torch.full((batch, 1), num_edges, dtype=torch.long, device=cost.device)]
    path_vertices = [current]
    steps = 0
    while bool((current != start).any()) and steps < num_nodes:
        for _ in range(max(rounds, 1)):
            active = current != start  # [B, 1]
            edge = predecessor_edge.gather(1, current)  # [B, 1]
            path_edges.append(torch.where(active, edge, num_edges))
            current = torch.where(active, tail_index.gather(1, edge), current)
            path_vertices.append(current)
        steps += max(rounds, 1)
    untraced = (current != start).squeeze(1)  # [B]
    if bool(untraced.any()):
        advice = "use float64, or round" if out_dtype != torch.float64 else "round"
        raise SolverInputError(
            "graph_shortest_path: the path could not be traced back in instance(s) "
            f"{_instances(untraced)}: a cycle whose cost is zero up to floating-point "
            f"rounding; {advice} the costs to a coarser grid of values (which sums exactly)."
        )
    refused = torch.logical_or(refused, untraced).unsqueeze(1)  # [B, 1]
    on_path = torch.zeros((batch, num_edges + 1), dtype=out_dtype, device=cost.device)
    on_path = on_path.scatter(1, torch.cat(path_edges, dim=1), 1.0)  # column E: no edge
    visited = torch.zeros((batch, num_nodes), dtype=out_dtype, device=cost.device)
    visited = visited.scatter(1, torch.cat(path_vertices, dim=1), 1.0)
    nan = float("nan")
    return on_path[:, :num_edges].masked_fill(refused, nan), visited.masked_fill(refused, nan)


def _per_instance(values: Tensor, batch: int) -> Tensor:
    """``[B']`` per-instance vertices for a batch of ``B = m·B'``: each repeated m times."""
    if values.numel() == batch:
        return values
    return values.repeat_interleave(batch // values.numel())


# ----------------------------------------------------------------------------- modules


def _check_grid(theta: Tensor, solver: str) -> None:
    """Raise :class:`SolverInputError` unless θ is a finite ``[B, H, W]`` batch of grids."""
    check_theta(theta, solver=solver, ndim=3, shape_hint="vertex costs [B, H, W]")
    if theta.shape[1] == 0 or theta.shape[2] == 0:
        raise SolverInputError(
            f"{solver}: the grid is empty (shape {tuple(theta.shape)}); pass costs [B, H, W] "
            "with H, W >= 1."
        )
    work_dtype = torch.float64 if theta.dtype == torch.float64 else torch.float32
    if theta.shape[1] * theta.shape[2] >= 2**21 - 2 and work_dtype != torch.float64:
        raise SolverInputError(
            f"{solver}: a grid of {theta.shape[1] * theta.shape[2]} cells needs float64 costs "
            "(its tie-breaking keys are not exact in float32 from 2^21 - 2 cells); pass "
            "theta.double()."
        )
    totals = theta.detach().clamp(min=0).flatten(1).sum(dim=1, dtype=torch.float64)  # [B]
    overflow = totals > torch.finfo(work_dtype).max
    if bool(overflow.any()):
        raise SolverInputError(
            f"{solver}: path costs could overflow {work_dtype} in instance(s) "
            f"{_instances(overflow)} (the costs sum to more than its largest value); "
            "rescale theta."
        )


class GridShortestPath(Solver):
    """Warcraft shortest path: top-left to bottom-right on a vertex-weighted grid (``min``).

    ``θ [B, H, W]`` are cell costs, clamped at 0 (perturbed costs go negative; a negative cell
    has no well-defined cheapest path). The path's cost is the sum of the clamped costs of
    every visited cell, both endpoints included; moves go to the 8 (or 4) neighbouring cells.
    Output: ``[B, H, W]`` 0/1 path masks. See :func:`grid_shortest_path`.

    Args:
        neighbourhood: 8 (king moves, the Warcraft setting) or 4.
    """

    def __init__(self, neighbourhood: int = 8) -> None:
        super().__init__()
        if neighbourhood not in (4, 8):
            raise SolverInputError(
                f"grid_shortest_path: neighbourhood must be 8 (king moves) or 4, "
                f"got {neighbourhood!r}."
            )
        self.neighbourhood = neighbourhood

    def forward(self, theta: Tensor) -> Tensor:
        """``θ [B, H, W]`` -> path masks ``[B, H, W]``."""
        if not torch.jit.is_scripting():
            _check_grid(theta, "grid_shortest_path")
        return grid_shortest_path(theta, self.neighbourhood)


def _vertex_tensor(value: int | Tensor, num_nodes: int, what: str) -> Tensor:
    """A source/target given as an int or a ``[B']`` integer tensor, as an int64 ``[B']``."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.dtype == torch.bool or value.dim() > 1:
            raise SolverInputError(
                f"graph_shortest_path: {what} must be an int or a [B] integer tensor, got a "
                f"tensor of dtype {value.dtype} and shape {tuple(value.shape)}."
            )
        if value.numel() == 0:
            raise SolverInputError(f"graph_shortest_path: {what} is an empty tensor.")
        values = value.reshape(-1)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = torch.tensor([int(value)])  # a Python or NumPy integer
    else:
        raise SolverInputError(
            f"graph_shortest_path: {what} must be an int or a [B] integer tensor, "
            f"got {type(value).__name__}."
        )
    outside = (values < 0) | (values >= num_nodes)
    if bool(outside.any()):
        raise SolverInputError(
            f"graph_shortest_path: {what} {values[outside][:8].tolist()} outside the vertex "
            f"range [0, {num_nodes}); vertices are numbered 0 .. num_nodes - 1."
        )
    return values.long()


class GraphShortestPath(Solver):
    """Cheapest ``source → target`` path in a directed graph with edge costs of any sign (``min``).

    The graph is fixed at construction, either as an edge list (``edge_index [2, E]`` of
    (source vertex, destination vertex) plus ``num_nodes``; θ is ``[B, E]``) or as a boolean
    adjacency ``[V, V]`` (θ is ``[B, V, V]``, entry ``[u, v]`` the cost of ``u → v``; entries
    off the graph are ignored and may be ±inf). The path cost is ``Σ_{e on path} θ_e``.
    Correct whenever no negative cycle reaches the target; otherwise, or if the target is
    unreachable, a :class:`SolverInputError` names the instances. See :func:`graph_shortest_path`.

    Args:
        edge_index: ``[2, E]`` integer tensor (or nested sequence) of directed edges.
        num_nodes: number of vertices ``V`` (default: largest vertex in ``edge_index`` + 1).
        adjacency: boolean ``[V, V]`` adjacency, instead of ``edge_index``.
        source: source vertex, an int or a ``[B']`` tensor; when θ has batch ``m·B'`` each
            entry is repeated ``m`` times consecutively (sample-major flattening ``b·m + n``).
        target: target vertex, same forms (default: the last vertex, ``V - 1``).
        output: ``"edges"`` (θ-shaped edge indicators, default) or ``"vertices"`` (``[B, V]``
            indicators of the vertices on the path).
    """

    tails: Tensor
    heads: Tensor
    positions: Tensor
    source: Tensor
    target: Tensor

    def __init__(
        self,
        edge_index: Tensor | Sequence[Sequence[int]] | None = None,
        num_nodes: int | None = None,
        *,
        adjacency: Tensor | Sequence[Sequence[bool]] | None = None,
        source: int | Tensor = 0,
        target: int | Tensor | None = None,
        output: Literal["edges", "vertices"] = "edges",
    ) -> None:
        super().__init__()
        self.params = _given_arguments(
            edge_index=edge_index,
            num_nodes=num_nodes,
            adjacency=adjacency,
            source=None if isinstance(source, int) and source == 0 else source,
            target=target,
            output=None if output == "edges" else output,
        )
        if (edge_index is None) == (adjacency is None):
            raise SolverInputError(
                "graph_shortest_path: give the graph either as edge_index [2, E] (with "
                "num_nodes) or as a boolean adjacency [V, V], exactly one of the two."
            )
        if output not in ("edges", "vertices"):
            raise SolverInputError(
                f"graph_shortest_path: output must be 'edges' or 'vertices', got {output!r}."
            )
        if adjacency is not None:
            tails, heads, num_nodes = self._from_adjacency(adjacency, num_nodes)
        else:
            tails, heads, num_nodes = self._from_edge_index(edge_index, num_nodes)
        self.adjacency_mode = adjacency is not None
        self.vertex_output = output == "vertices"
        self.num_nodes = num_nodes
        self.num_edges = int(tails.numel())
        self.register_buffer("tails", tails)
        self.register_buffer("heads", heads)
        self.register_buffer("positions", tails * num_nodes + heads)  # flat [u, v] of each edge
        self.register_buffer("source", _vertex_tensor(source, num_nodes, "source"))
        last = num_nodes - 1 if target is None else target
        self.register_buffer("target", _vertex_tensor(last, num_nodes, "target"))

    @staticmethod
    def _from_adjacency(
        adjacency: Tensor | Sequence[Sequence[bool]], num_nodes: int | None
    ) -> tuple[Tensor, Tensor, int]:
        adjacency = torch.as_tensor(adjacency)
        if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise SolverInputError(
                "graph_shortest_path: adjacency must be a square [V, V] matrix, got shape "
                f"{tuple(adjacency.shape)}."
            )
        if adjacency.dtype != torch.bool:
            if bool(((adjacency != 0) & (adjacency != 1)).any()):
                raise SolverInputError(
                    "graph_shortest_path: adjacency must be boolean (or 0/1); the costs go in "
                    "theta [B, V, V]."
                )
            adjacency = adjacency != 0
        if num_nodes is not None and num_nodes != adjacency.shape[0]:
            raise SolverInputError(
                f"graph_shortest_path: num_nodes={num_nodes} disagrees with the "
                f"{adjacency.shape[0]}×{adjacency.shape[1]} adjacency; drop num_nodes."
            )
        tails, heads = adjacency.nonzero().t().long()  # row-major edge order
        return tails.contiguous(), heads.contiguous(), int(adjacency.shape[0])

    @staticmethod
    def _from_edge_index(edge_index: Any, num_nodes: int | None) -> tuple[Tensor, Tensor, int]:
        edge_index = torch.as_tensor(edge_index)
        if edge_index.numel() == 0:
            edge_index = edge_index.reshape(2, 0).long()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise SolverInputError(
                "graph_shortest_path: edge_index must have shape [2, E] (row 0: source "
                f"vertices, row 1: destination vertices), got {tuple(edge_index.shape)}."
            )
        if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
            raise SolverInputError(
                f"graph_shortest_path: edge_index must hold integers, got {edge_index.dtype}."
            )
        if num_nodes is None:
            if edge_index.numel() == 0:
                raise SolverInputError(
                    "graph_shortest_path: num_nodes is required when the graph has no edges."
                )
            num_nodes = int(edge_index.max()) + 1
        if num_nodes < 1:
            raise SolverInputError(f"graph_shortest_path: num_nodes must be >= 1, got {num_nodes}.")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise SolverInputError(
                f"graph_shortest_path: edge_index holds vertices outside [0, {num_nodes}); "
                "vertices are numbered 0 .. num_nodes - 1."
            )
        edge_index = edge_index.long()
        return edge_index[0].contiguous(), edge_index[1].contiguous(), num_nodes

    def _check_input(self, theta: Tensor) -> None:
        """Raise :class:`SolverInputError` with what is wrong with θ, if anything."""
        solver = "graph_shortest_path"
        check_same_device(self, theta, solver)
        if self.adjacency_mode:
            size = self.num_nodes
            shape_hint = f"edge costs [B, {size}, {size}] (one per adjacency entry)"
            check_theta(theta, solver=solver, ndim=3, shape_hint=shape_hint, allow_inf=True)
            if tuple(theta.shape[1:]) != (size, size):
                raise SolverInputError(
                    f"{solver}: expected {shape_hint}, got shape {tuple(theta.shape)}."
                )
            cost = theta.flatten(1).index_select(1, self.positions)
            check_theta(cost, solver=solver, ndim=2, shape_hint=shape_hint)
        else:
            shape_hint = f"edge costs [B, {self.num_edges}] (one per edge_index column)"
            cost = check_theta(theta, solver=solver, ndim=2, shape_hint=shape_hint)
            if theta.shape[1] != self.num_edges:
                raise SolverInputError(
                    f"{solver}: expected {shape_hint}, got shape {tuple(theta.shape)}."
                )
        for what, values in (("source", self.source), ("target", self.target)):
            if theta.shape[0] % values.numel():
                raise SolverInputError(
                    f"{solver}: theta has batch size {theta.shape[0]} but {values.numel()} "
                    f"{what} vertices were given; the batch must be a multiple of their number."
                )
        totals = cost.detach().abs().sum(dim=1, dtype=torch.float64)  # [B]
        work_dtype = torch.float64 if theta.dtype == torch.float64 else torch.float32
        overflow = totals > torch.finfo(work_dtype).max
        if bool(overflow.any()):
            raise SolverInputError(
                f"{solver}: path costs could overflow {work_dtype} in instance(s) "
                f"{_instances(overflow)} (the costs' magnitudes sum to more than its largest "
                "value); rescale theta."
            )

    def batch_multiple(self) -> int:
        """θ's batch must hold every per-instance source and target the same number of times:
        a multiple of both counts."""
        return math.lcm(self.source.numel(), self.target.numel())

    def forward(self, theta: Tensor) -> Tensor:
        """``θ [B, E]`` (or ``[B, V, V]``) -> path edge indicators of the same shape.

        With ``output="vertices"``: ``[B, V]`` indicators of the vertices on the path.
        """
        if not torch.jit.is_scripting():
            self._check_input(theta)
        batch = theta.shape[0]
        # [B, E]
        cost = theta.flatten(1).index_select(1, self.positions) if self.adjacency_mode else theta
        source = _per_instance(self.source, batch)  # [B]
        target = _per_instance(self.target, batch)  # [B]
        edges, vertices = graph_shortest_path(
            cost, self.tails, self.heads, self.num_nodes, source, target
        )
        if self.vertex_output:
            return vertices
        if self.adjacency_mode:
            size = self.num_nodes
            dense = torch.zeros((batch, size * size), dtype=edges.dtype, device=edges.device)
            return dense.index_copy(1, self.positions, edges).view(batch, size, size)
        return edges


class ShortestPath(Solver):
    """Shortest path under one name: the Warcraft grid, or a general graph when one is given.

    Without ``edge_index``/``adjacency`` it builds a :class:`GridShortestPath`
    (``θ [B, H, W]``); with one it builds a :class:`GraphShortestPath` (``θ [B, E]`` or
    ``[B, V, V]``, costs of any sign). The built solver is the submodule ``solver``.

    Args:
        neighbourhood: grid neighbourhood, 8 or 4 (grids only; default 8).
        edge_index, num_nodes, adjacency, source, target, output: as in
            :class:`GraphShortestPath` (graphs only).
    """

    def __init__(
        self,
        neighbourhood: int | None = None,
        *,
        edge_index: Tensor | Sequence[Sequence[int]] | None = None,
        num_nodes: int | None = None,
        adjacency: Tensor | Sequence[Sequence[bool]] | None = None,
        source: int | Tensor | None = None,
        target: int | Tensor | None = None,
        output: Literal["edges", "vertices"] = "edges",
    ) -> None:
        super().__init__()
        self.params = _given_arguments(
            neighbourhood=neighbourhood,
            edge_index=edge_index,
            num_nodes=num_nodes,
            adjacency=adjacency,
            source=source,
            target=target,
            output=None if output == "edges" else output,
        )
        self.solver: Solver
        if edge_index is None and adjacency is None:
            graph_only = {
                "num_nodes": num_nodes,
                "source": source,
                "target": target,
                "output": None if output == "edges" else output,
            }
            given = sorted(name for name, value in graph_only.items() if value is not None)
            if given:
                raise SolverInputError(
                    f"dijkstra: {', '.join(given)} only apply to graphs; pass edge_index or "
                    "adjacency for a general graph (a grid path always runs from the top-left "
                    "to the bottom-right cell)."
                )
            self.solver = GridShortestPath(8 if neighbourhood is None else neighbourhood)
        else:
            if neighbourhood is not None:
                raise SolverInputError(
                    "dijkstra: neighbourhood only applies to grids; drop it when passing "
                    "edge_index or adjacency."
                )
            self.solver = GraphShortestPath(
                edge_index,
                num_nodes,
                adjacency=adjacency,
                source=0 if source is None else source,
                target=target,
                output=output,
            )

    def batch_multiple(self) -> int:
        """That of the grid or graph solver built at construction."""
        return self.solver.batch_multiple()

    def forward(self, theta: Tensor) -> Tensor:
        """Delegates to the grid or graph solver built at construction."""
        return self.solver(theta)

    def objective(self, theta: Tensor, z: Tensor) -> Tensor:
        """The cost ``[B]`` this solver minimises: :func:`grid_path_cost` on a grid,
        :func:`graph_path_cost` on a graph (the registered objective is the grid's)."""
        if isinstance(self.solver, GridShortestPath):
            return grid_path_cost(theta, z)
        return graph_path_cost(theta, z)


def _given_arguments(**arguments: Any) -> dict[str, Any]:
    """The constructor arguments given (not ``None``): what rebuilds the solver from exported
    metadata (``get_solver`` records the same for the solvers it builds)."""
    return {name: value for name, value in arguments.items() if value is not None}


def dijkstra_scipy(theta: Tensor, neighbourhood: int = 8) -> Tensor:
    """Warcraft grid shortest paths by a per-example CPU loop over scipy's Dijkstra.

    ``θ [B, H, W]`` -> ``[B, H, W]`` masks, same convention as :class:`GridShortestPath`
    (possibly another optimal path on ties). Builds each instance's CSR graph in NumPy; the
    reference and benchmark baseline for the tensor solver, and an example of a CPU-library
    plugin.
    """
    from .reference.shortest_path import grid_shortest_path_scipy

    _check_grid(theta, "dijkstra_scipy")
    if neighbourhood not in (4, 8):
        raise SolverInputError(
            f"dijkstra_scipy: neighbourhood must be 8 (king moves) or 4, got {neighbourhood!r}."
        )
    return grid_shortest_path_scipy(theta, neighbourhood)


# ----------------------------------------------------------------------------- registry


_EXAMPLE_COSTS = (-1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 5.0)  # ties, zeros and clamped negatives


def _grid_example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """Random 6×7 grids whose costs repeat (ties), include 0 and negatives (clamped)."""
    values = torch.tensor(_EXAMPLE_COSTS)
    picks = torch.randint(len(_EXAMPLE_COSTS), (batch_size, 6, 7), generator=generator)
    return {}, values[picks]


def _graph_example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """A random 8-vertex DAG (with the chain 0 → 1 → ... → 7) and costs with ties and negatives."""
    num_nodes = 8
    pairs = torch.triu_indices(num_nodes, num_nodes, offset=1)  # [2, 28], u < v
    keep = (pairs[1] == pairs[0] + 1) | (torch.rand(pairs.shape[1], generator=generator) < 0.4)
    edge_index = pairs[:, keep]
    values = torch.tensor((-2.0, -1.0, 0.0, 0.0, 1.0, 1.0, 3.0))
    picks = torch.randint(len(values), (batch_size, edge_index.shape[1]), generator=generator)
    params = {"edge_index": edge_index.tolist(), "num_nodes": num_nodes, "target": num_nodes - 1}
    return params, values[picks]


register_solver(
    "grid_shortest_path",
    sense="min",
    exportable=True,
    input_shape="[B, H, W]",
    constraints=("costs clamped at 0", "path from the top-left to the bottom-right cell"),
    description="Warcraft grid shortest path (vertex costs, 8- or 4-neighbourhood), batched",
    example=_grid_example,
    objective=grid_path_cost,
)(GridShortestPath)

register_solver(
    "graph_shortest_path",
    sense="min",
    exportable=True,
    input_shape="[B, E] or [B, V, V]",
    constraints=("costs of any sign", "no negative cycle may reach the target"),
    description="shortest path in a directed graph, negative costs allowed (batched Bellman-Ford)",
    aliases=("bellman_ford",),
    example=_graph_example,
    objective=graph_path_cost,
)(GraphShortestPath)

register_solver(
    "dijkstra",
    sense="min",
    exportable=True,
    input_shape="[B, H, W] (grid) or [B, E] / [B, V, V] (graph)",
    constraints=(
        "grid: costs clamped at 0",
        "graph: no negative cycle may reach the target",
        "objective: the grid path cost (a graph's: ShortestPath.objective)",
    ),
    description="shortest path: Warcraft grid by default, a general graph given edge_index",
    example=_grid_example,
    objective=grid_path_cost,
)(ShortestPath)

register_solver(
    "dijkstra_scipy",
    sense="min",
    exportable=False,
    input_shape="[B, H, W]",
    constraints=("costs clamped at 0", "path from the top-left to the bottom-right cell"),
    description="Warcraft grid shortest path by a per-example CPU loop over scipy's Dijkstra",
    example=_grid_example,
    objective=grid_path_cost,
)(dijkstra_scipy)
