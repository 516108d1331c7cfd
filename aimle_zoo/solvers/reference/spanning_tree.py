"""Per-instance CPU spanning trees with scipy and networkx: oracles and benchmark baselines.

Each function solves one instance at a time in NumPy/Python: tests use them as independent
oracles for :class:`aimle_zoo.solvers.SpanningTree`, benchmarks as the baseline, and
:class:`SpanningTreeScipy` (registered as ``"mst_scipy"``) shows how a CPU library becomes a
solver.

Conventions: ``w [B, n, n]`` symmetric weights, diagonal ignored, optional boolean
``mask [n, n]`` or ``[B, n, n]`` of allowed edges; the output is the symmetric 0/1 adjacency
``[B, n, n]`` of a maximum (or minimum) spanning tree, in ``w``'s dtype and device.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from torch import Tensor

from .._base import Solver, SolverInputError
from .._registry import register_solver
from ..spanning_tree import (
    _TREE_CONSTRAINTS,
    _symmetric_example,
    _tree_weight,
    _validate_mask,
    check_spanning_tree_input,
)

__all__ = [
    "SpanningTreeScipy",
    "spanning_tree_networkx",
    "spanning_tree_scipy",
    "tree_weight",
]


def tree_weight(weights: Tensor, z: Tensor) -> Tensor:
    """Tree weight ``Σ_{(i, j) in T} w_ij = <w, z> / 2`` of adjacencies ``z [B, n, n]``; ``[B]``."""
    return _tree_weight(weights, z)


def _allowed_pairs(n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Vertex pairs ``(i, j)``, ``i < j``, of the allowed undirected edges."""
    rows, cols = np.triu_indices(n, k=1)
    if mask is not None:
        keep = mask[rows, cols]
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _csr_layout(n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The allowed pairs ``(rows, cols)`` and the CSR row pointer of an upper-triangular graph
    on them (the pairs are row-major, so CSR takes them in order: no sort, no duplicates)."""
    rows, cols = _allowed_pairs(n, mask)
    return rows, cols, np.searchsorted(rows, np.arange(n + 1))


def _instance_masks(weights: Tensor, mask: Tensor | None) -> list[np.ndarray | None]:
    if mask is None:
        return [None] * weights.shape[0]
    masks = mask.detach().cpu().numpy().astype(bool)
    if masks.ndim == 2:
        return [masks] * weights.shape[0]
    # [B', n, n] for a batch of m·B': row b·m + s belongs to instance b
    return list(np.repeat(masks, weights.shape[0] // masks.shape[0], axis=0))


def _disconnected(instance: int) -> SolverInputError:
    return SolverInputError(
        f"the allowed edges (mask) do not connect all vertices in instance {instance}, so no "
        "spanning tree exists; allow more edges in the mask."
    )


def _adjacency(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    z = np.zeros((n, n))
    z[rows, cols] = 1.0
    z[cols, rows] = 1.0
    return z


def spanning_tree_scipy(
    weights: Tensor, maximum: bool = True, mask: Tensor | None = None
) -> Tensor:
    """Spanning trees by ``scipy.sparse.csgraph.minimum_spanning_tree``, one instance at a time.

    scipy minimises and reads zero entries as missing edges, so each allowed edge gets the
    positive cost ``c_ij = w_max - w_ij`` (maximum) or ``w_ij - w_min`` (minimum), with exact
    zeros (the best edges) replaced by half the smallest positive cost. Every tree has n - 1
    edges and the map is strictly monotone, so the optimal trees are unchanged.

    Raises:
        SolverInputError: the allowed edges do not connect an instance (its index is named).
    """
    values = weights.detach().cpu().double().numpy()  # [B, n, n]
    batch, n = values.shape[0], values.shape[-1]
    out = np.zeros((batch, n, n))
    masks = _instance_masks(weights, mask)
    shared = mask is None or mask.dim() == 2  # one edge set: its CSR layout is built once
    layout = _csr_layout(n, masks[0]) if shared and batch else None
    for index, instance_mask in enumerate(masks):
        rows, cols, indptr = layout if layout is not None else _csr_layout(n, instance_mask)
        edge_weights = values[index, rows, cols]  # [E]
        if edge_weights.size == 0:
            if n > 1:
                raise _disconnected(index)
            continue
        costs = edge_weights.max() - edge_weights if maximum else edge_weights - edge_weights.min()
        positive = costs[costs > 0]
        costs[costs == 0] = positive.min() / 2 if positive.size else 1.0
        graph = sp.csr_array((costs, cols, indptr), shape=(n, n))
        tree = minimum_spanning_tree(graph).tocoo()
        if tree.nnz != n - 1:
            raise _disconnected(index)
        out[index] = _adjacency(n, tree.row, tree.col)
    return torch.from_numpy(out).to(dtype=weights.dtype, device=weights.device)


def spanning_tree_networkx(
    weights: Tensor, maximum: bool = True, mask: Tensor | None = None
) -> Tensor:
    """Spanning trees by ``networkx.maximum_spanning_tree`` (Kruskal), one instance at a time.

    ``networkx.minimum_spanning_tree`` when ``maximum=False``.

    Raises:
        SolverInputError: the allowed edges do not connect an instance (its index is named).
    """
    values = weights.detach().cpu().double().numpy()  # [B, n, n]
    batch, n = values.shape[0], values.shape[-1]
    out = np.zeros((batch, n, n))
    build = nx.maximum_spanning_tree if maximum else nx.minimum_spanning_tree
    graph, shared_mask = nx.Graph(), object()  # rebuilt only when the mask changes
    for index, instance_mask in enumerate(_instance_masks(weights, mask)):
        if instance_mask is not shared_mask:  # connectivity does not depend on the weights
            rows, cols = _allowed_pairs(n, instance_mask)
            graph = nx.Graph()
            graph.add_nodes_from(range(n))
            graph.add_edges_from(zip(rows.tolist(), cols.tolist(), strict=True))
            connected, shared_mask = nx.is_connected(graph), instance_mask
            edges = [graph[i][j] for i, j in zip(rows.tolist(), cols.tolist(), strict=True)]
        if not connected:
            raise _disconnected(index)
        for attributes, weight in zip(edges, values[index, rows, cols].tolist(), strict=True):
            attributes["weight"] = weight
        tree_edges = np.array(list(build(graph).edges()), dtype=int).reshape(-1, 2)
        out[index] = _adjacency(n, tree_edges[:, 0], tree_edges[:, 1])
    return torch.from_numpy(out).to(dtype=weights.dtype, device=weights.device)


@register_solver(
    "mst_scipy",
    sense="max",
    exportable=False,
    input_shape="[B, n, n]",
    constraints=_TREE_CONSTRAINTS,
    description=(
        "maximum spanning tree by scipy.sparse.csgraph, a per-example CPU loop "
        "(plugin example and benchmark baseline)"
    ),
    aliases=("spanning_tree_scipy",),
    example=_symmetric_example,
    objective=_tree_weight,
)
class SpanningTreeScipy(Solver):
    """:class:`~aimle_zoo.solvers.SpanningTree` computed by scipy, one instance at a time.

    Same input contract, checks and optimal tree weight as the tensor solver (the tree itself
    may differ under ties). Not exportable: it leaves the graph for NumPy. Moves data to the
    CPU and back.

    Args:
        maximum: maximum (default) or minimum spanning tree (see ``SpanningTree`` on sense).
        mask: boolean ``[n, n]`` or ``[B, n, n]`` of allowed edges, or ``None``.
        symmetrize: symmetrise θ (default) instead of rejecting asymmetric input.
    """

    mask: Tensor | None

    def __init__(
        self, maximum: bool = True, mask: Tensor | None = None, symmetrize: bool = True
    ) -> None:
        super().__init__()
        for flag, value in (("maximum", maximum), ("symmetrize", symmetrize)):
            if not isinstance(value, bool):
                raise SolverInputError(f"mst_scipy: {flag} must be True or False, got {value!r}.")
        self.maximum = maximum
        self.symmetrize = symmetrize
        self.sense = "max" if maximum else "min"
        self.register_buffer("mask", _validate_mask(mask, "mst_scipy"))

    def forward(self, theta: Tensor) -> Tensor:
        """``w [B, n, n] -> z [B, n, n]``: adjacency of the optimal spanning tree."""
        check_spanning_tree_input(theta, self.mask, "mst_scipy", symmetric=not self.symmetrize)
        if self.symmetrize:
            theta = theta / 2 + theta.transpose(1, 2) / 2  # [B, n, n], no overflow
        try:
            return spanning_tree_scipy(theta, self.maximum, self.mask)
        except SolverInputError as err:
            raise SolverInputError(f"mst_scipy: {err}") from None

    def batch_multiple(self) -> int:
        """θ's batch must hold every per-instance mask the same number of times."""
        return 1 if self.mask is None or self.mask.dim() == 2 else self.mask.shape[0]
