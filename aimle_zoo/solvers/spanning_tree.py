"""Maximum / minimum spanning trees as batched tensor programs (Prim's algorithm).

Given symmetric edge weights ``w [B, n, n]`` and optionally a boolean mask of allowed edges, the
solver returns the 0/1 adjacency ``z [B, n, n]`` of

    T* = argmax_{T spanning tree} Σ_{(i, j) in T} w_ij        (``maximum=True``)

(argmin for the minimum variant). The diagonal (self-loops) is ignored and ``z`` is symmetric
with ``n - 1`` edges, so ``<w, z> = 2 Σ_{(i, j) in T} w_ij``.

The algorithm is Prim's, run on the whole batch at once: ``n - 1`` steps, each a masked argmax
over the ``[B, n]`` frontier, with no per-example Python loop.

Tie-breaking (deterministic): the tree grows from vertex 0; at each step the outside vertex with
the best connecting edge joins, the lowest vertex index winning a tie; its tree neighbour is the
earliest-joined tree vertex among equally good edges.

The NRI adapter :class:`SpanningTreeEdges` works on the encoder's directed-edge vector
``[B, n(n-1)]``, with helpers :func:`edges_to_matrix` and :func:`matrix_to_edges`.
"""

# No "from __future__ import annotations": TorchScript reads the class annotation of the
# ``mask`` buffer at run time and cannot parse it as a string.
import math
from typing import Any

import torch
from torch import Tensor

from ._base import (
    Solver,
    SolverInputError,
    check_relax_temperature,
    check_same_device,
    check_theta,
    checks_enabled,
    format_instances,
)
from ._registry import register_solver


def _prim_parents(weights: Tensor, maximum: bool, mask: Tensor | None) -> Tensor:
    """Prim's algorithm on a batch: ``w [B, n, n] -> parent [B, n]``.

    ``parent[b, v]`` is v's neighbour on the path to vertex 0 in the optimal tree, or -1 for the
    root and for vertices that masked edges cut off from vertex 0 (the result is then the tree
    of vertex 0's component).

    Per step, with ``best[v] = max_{u in tree} s_uv`` over the outside vertices (``s = ±w`` with
    -inf on forbidden edges): ``v* = argmax_v best[v]`` joins the tree, then
    ``best[v] <- max(best[v], s_{v* v})`` for the vertices still outside. The joining vertex's
    row of scores is read as one row of the flat ``[B·n, n]`` scores, and the tree vertices
    are masked on the ``[B, n]`` rows (nothing is written into the ``[B, n, n]`` scores).
    """
    batch, n = weights.shape[0], weights.shape[-1]
    vertices = torch.arange(n, device=weights.device)  # [n]
    allowed = vertices.unsqueeze(1) != vertices.unsqueeze(0)  # [n, n] no self-loops
    if mask is not None:
        allowed = torch.logical_and(allowed, mask)  # [n, n] or [B, n, n]
    signed = weights if maximum else -weights
    score = torch.where(allowed, signed, float("-inf"))  # [B, n, n]
    rows = score.reshape(batch * n, n)  # [B·n, n] row b·n + u: the offers of vertex u
    row_offsets = torch.arange(batch, device=weights.device) * n  # [B]
    best = score[:, 0, :].clone()  # [B, n] best edge from the tree to each vertex
    parent = torch.where(best > float("-inf"), 0, -1)  # [B, n]
    in_tree = vertices.eq(0).expand(batch, n).clone()  # [B, n]
    for _ in range(n - 1):
        joining = best.argmax(dim=1, keepdim=True)  # [B, 1] first index on ties
        in_tree.scatter_(1, joining, True)
        offered = rows.index_select(0, joining.squeeze(1) + row_offsets)  # [B, n]
        offered.masked_fill_(in_tree, float("-inf"))
        best.masked_fill_(in_tree, float("-inf"))
        closer = offered > best  # [B, n] strict: earlier tree vertices keep ties
        best = torch.where(closer, offered, best)
        parent = torch.where(closer, joining, parent)
    return parent


def _parents_to_adjacency(parent: Tensor, dtype: torch.dtype) -> Tensor:
    """``parent [B, n] -> z [B, n, n]`` symmetric 0/1 with ``z_{v, parent[v]} = 1``."""
    has_parent = (parent >= 0).unsqueeze(2).to(dtype)  # [B, n, 1]
    batch, n = parent.shape[0], parent.shape[1]
    half = torch.zeros(batch, n, n, dtype=dtype, device=parent.device)
    half.scatter_(2, parent.clamp(min=0).unsqueeze(2), has_parent)  # [B, n, n] child -> parent
    return half + half.transpose(1, 2)


def _num_nodes(num_edges: int) -> int:
    """n = round(1/2 + sqrt(1/4 + L)), the root of ``n (n - 1) = L`` (validated elsewhere).

    Scripted, the root is taken on an int64 tensor so that ONNX export keeps n an integer.
    """
    if torch.jit.is_scripting():
        root = torch.sqrt(torch.tensor(0.25 + num_edges, dtype=torch.float64))
        return int(torch.floor(root + 1.0).to(torch.int64))
    return (1 + math.isqrt(1 + 4 * num_edges)) // 2


def _offdiagonal_index(n: int, device: torch.device) -> Tensor:
    """``[n(n-1)]``: flat position ``i n + j`` in an n × n matrix of directed edge ``e``.

    ``e = i (n - 1) + j'`` with ``j = j' + [j' >= i]`` (the diagonal skipped).
    """
    edge = torch.arange(n * (n - 1), device=device)  # [n(n-1)]
    row_length = max(n - 1, 1)
    receiver = torch.div(edge, row_length, rounding_mode="floor")
    sender = edge - receiver * row_length  # j'
    sender = sender + (sender >= receiver).to(torch.int64)  # j
    return receiver * n + sender


def _edges_to_matrix(edges: Tensor, n: int) -> Tensor:
    """``[B, n(n-1)] -> [B, n, n]`` with a zero diagonal (row i = receiver, column j = sender)."""
    batch = edges.shape[0]
    index = _offdiagonal_index(n, edges.device).expand(batch, n * (n - 1))  # [B, n(n-1)]
    flat = edges.new_zeros([batch, n * n]).scatter(1, index, edges)  # [B, n²]
    return flat.reshape(batch, n, n)


def _matrix_to_edges(matrix: Tensor) -> Tensor:
    """``[B, n, n] -> [B, n(n-1)]``: the off-diagonal entries in row-major order."""
    batch, n = matrix.shape[0], matrix.shape[1]
    index = _offdiagonal_index(n, matrix.device)  # [n(n-1)]
    return matrix.reshape(batch, n * n).index_select(1, index)


def num_nodes_from_edges(num_edges: int) -> int:
    """The number of nodes n of a directed-edge vector of length ``num_edges = n (n - 1)``.

    Raises:
        SolverInputError: ``num_edges`` is not of the form n (n - 1).
    """
    n = (1 + math.isqrt(1 + 4 * num_edges)) // 2 if num_edges >= 0 else 0
    if n < 1 or n * (n - 1) != num_edges:
        below, above = max(n, 1), max(n, 1) + 1
        raise SolverInputError(
            f"a directed-edge vector must have length n(n-1) for n nodes, got length "
            f"{num_edges}; the nearest valid lengths are {below * (below - 1)} "
            f"(n={below}) and {above * (above - 1)} (n={above})."
        )
    return n


def edges_to_matrix(edges: Tensor) -> Tensor:
    """Directed-edge vector ``[*, n(n-1)]`` to matrix ``[*, n, n]`` with a zero diagonal.

    Edge ``e = i (n - 1) + j'`` (receiver i, sender j, ``j' = j - [j > i]``, the NRI encoder's
    order) goes to ``matrix[..., i, j]``.
    """
    if edges.dim() < 1:
        raise SolverInputError("edges_to_matrix: expected a tensor [*, n(n-1)], got a scalar.")
    lead, num_edges = edges.shape[:-1], edges.shape[-1]
    n = num_nodes_from_edges(num_edges)
    matrix = _edges_to_matrix(edges.reshape(math.prod(lead), num_edges), n)  # [*, n, n] flat
    return matrix.reshape(*lead, n, n)


def matrix_to_edges(matrix: Tensor) -> Tensor:
    """Matrix ``[*, n, n]`` to directed-edge vector ``[*, n(n-1)]`` (drops the diagonal).

    ``edges[..., i (n - 1) + j'] = matrix[..., i, j]``; the inverse of :func:`edges_to_matrix`.
    """
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] < 1:
        raise SolverInputError(
            f"matrix_to_edges: expected a tensor [*, n, n] with n >= 1, got shape "
            f"{tuple(matrix.shape)}."
        )
    lead, n = matrix.shape[:-2], matrix.shape[-1]
    edges = _matrix_to_edges(matrix.reshape(math.prod(lead), n, n))  # [*, n(n-1)] flat
    return edges.reshape(*lead, n * (n - 1))


def _symmetry_tolerance(dtype: torch.dtype) -> float:
    """Relative and absolute tolerance of the symmetry check: max(1e-5, 8 eps(dtype))."""
    return max(1e-5, 8.0 * torch.finfo(dtype).eps)


def check_spanning_tree_input(
    weights: object, mask: Tensor | None, solver: str, *, symmetric: bool = True
) -> Tensor:
    """Validate weights ``[B, n, n]`` (and a mask of allowed edges) for a spanning-tree solver.

    Checks: a floating 3-D tensor, finite, square with n >= 1, a mask whose size and batch
    match, and (if ``symmetric``) symmetry on the allowed edges within
    ``max(1e-5, 8 eps(dtype))`` relative and absolute tolerance.

    Raises:
        SolverInputError: with the offending instance indices where the problem is per instance.
    """
    hint = "[B, n, n] symmetric edge weights"
    theta = check_theta(weights, solver=solver, ndim=3, shape_hint=hint)
    batch, rows, cols = theta.shape
    if rows != cols or rows < 1:
        raise SolverInputError(
            f"{solver}: expected square weights [B, n, n] with n >= 1, got shape "
            f"{tuple(theta.shape)}."
        )
    if mask is not None and (
        mask.shape[-1] != rows or (mask.dim() == 3 and batch % mask.shape[0] != 0)
    ):
        raise SolverInputError(
            f"{solver}: the mask has shape {tuple(mask.shape)} but the weights have shape "
            f"{tuple(theta.shape)}; pass a mask [n, n], or [B', n, n] for weights [m·B', n, n] "
            "(each instance's mask repeated for its m samples)."
        )
    mask = mask_for_batch(mask, batch)
    if not symmetric or torch.equal(theta, theta.transpose(1, 2)):  # exact: one cheap pass
        return theta
    allowed = ~torch.eye(rows, dtype=torch.bool, device=theta.device)  # [n, n]
    if mask is not None:
        allowed = torch.logical_and(allowed, mask.to(theta.device))  # [n, n] or [B, n, n]
    tol = _symmetry_tolerance(theta.dtype)
    close = torch.isclose(theta, theta.transpose(1, 2), rtol=tol, atol=tol)  # [B, n, n]
    asymmetric = torch.logical_and(~close, allowed).flatten(1).any(dim=1)  # [B]
    if bool(asymmetric.any()):
        bad = asymmetric.nonzero().flatten().tolist()
        gap = (theta[bad[0]] - theta[bad[0]].T).abs().max().item()
        raise SolverInputError(
            f"{solver}: weights must be symmetric (w[b, i, j] == w[b, j, i] within "
            f"rtol = atol = {tol:.1e}), but instance(s) {format_instances(bad)} are not (instance "
            f"{bad[0]} differs by up to {gap:.3g}). Symmetrise them, e.g. "
            "(w + w.transpose(1, 2)) / 2, build the solver with symmetrize=True (needed under "
            "i.i.d. perturbation noise), or use 'mst_edges' for directed-edge scores."
        )
    return theta


def mask_for_batch(mask: Tensor | None, batch: int) -> Tensor | None:
    """A per-instance mask ``[B', n, n]`` repeated for a batch of ``m·B'`` weights (row b·m + s
    belongs to instance b, the estimators' sample layout); ``[n, n]`` and ``None`` as they are."""
    if mask is None or mask.dim() == 2 or mask.shape[0] == batch:
        return mask
    return mask.repeat_interleave(batch // mask.shape[0], dim=0)


def check_connected(parent: Tensor, solver: str) -> None:
    """Raise if a Prim run (``parent [B, n]``) left vertices outside vertex 0's component."""
    unreached = (parent[:, 1:] < 0).any(dim=1)  # [B]
    if bool(unreached.any()):
        bad = unreached.nonzero().flatten().tolist()
        raise SolverInputError(
            f"{solver}: the allowed edges (mask) do not connect all vertices in instance(s) "
            f"{format_instances(bad)}, so no spanning tree exists; allow more edges in the mask."
        )


def _validate_mask(mask: object, solver: str) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        what = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise SolverInputError(
            f"{solver}: mask must be a boolean tensor [n, n] or [B, n, n] of allowed edges, "
            f"got {what}; build it with e.g. weights != 0."
        )
    if mask.dim() not in (2, 3) or mask.shape[-1] != mask.shape[-2] or mask.shape[0] == 0:
        raise SolverInputError(
            f"{solver}: mask must have shape [n, n] or [B, n, n], got {tuple(mask.shape)} (B >= 1)."
        )
    if not torch.equal(mask, mask.transpose(-1, -2)):
        raise SolverInputError(
            f"{solver}: mask must be symmetric (edges are undirected); pass mask | mask.mT."
        )
    return mask.clone()


def _log_tree_partition(log_weights: Tensor, floor: Tensor) -> Tensor:
    """``log Σ_T Π_{(i,j) in T} exp(s_ij)`` for ``s [B, n, n]`` (lower triangle read) → ``[B]``.

    Kron reduction in log space: eliminating vertex k (n − 1 down to 1, vertex 0 kept) adds
    ``log d_k`` with ``d_k = Σ_{j<k} e^{s_kj}`` and joins its neighbours through it,
    ``e^{s_ij} ← e^{s_ij} + e^{s_ik} e^{s_kj} / d_k``. Every step only adds positive terms, so
    unlike a determinant of the Laplacian nothing cancels, at any spread of the weights.
    Entries at ``floor [B, 1, 1]`` stand for absent edges (their exponential underflows to 0).
    """
    n = log_weights.shape[-1]
    total = log_weights.new_zeros(log_weights.shape[0])  # [B]
    current = log_weights
    for k in range(n - 1, 0, -1):
        row = current[:, k, :k]  # [B, k] edges from k to the vertices still in the network
        log_degree = torch.logsumexp(row, dim=1)  # [B]
        total = total + log_degree
        through = row.unsqueeze(2) + row.unsqueeze(1) - log_degree[:, None, None]  # [B, k, k]
        joined = torch.logsumexp(torch.stack((current[:, :k, :k], through)), dim=0)
        diagonal = torch.eye(k, dtype=torch.bool, device=row.device)
        current = torch.where(diagonal, floor, joined)
    return total


# torch.autograd.grad inside: a compiled caller would cut `scaled` off log Z's graph, so the
# function always runs eagerly (a graph break under torch.compile)
@torch.compiler.disable
def spanning_tree_marginals(
    weights: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Edge marginals of the Gibbs distribution over spanning trees: ``w [B, n, n] -> μ [B, n, n]``.

    For ``p(T) ∝ exp(Σ_{(i,j) in T} w_ij / τ)`` over the spanning trees T using allowed edges,
    ``μ_ij = P((i, j) in T)``: symmetric, zero diagonal, the upper triangle summing to the
    n − 1 edges of a tree. ``μ = ∂ log Z / ∂(w / τ)`` with the partition function Z of the
    matrix-tree theorem, computed by :func:`_log_tree_partition` in float64 (exact to rounding
    at any spread of ``w / τ``; a Laplacian determinant loses all accuracy once the spread
    passes ~40). This is the exponential-family relaxation of the stochastic softmax tricks
    (Paulus et al., 2020); as τ → 0 it tends to the maximum spanning tree. Reads the lower
    triangle of ``w`` (pass symmetric weights), returns w's dtype, differentiable in w. Runs
    under ``torch.no_grad`` and ``torch.inference_mode`` too (its own autograd pass is local).
    """
    n = weights.shape[-1]
    if n == 1:
        return torch.zeros_like(weights)
    with torch.inference_mode(False), torch.enable_grad():  # inference tensors become normal
        allowed = ~torch.eye(n, dtype=torch.bool, device=weights.device)  # [n, n]
        if mask is not None:  # [n, n] or [B, n, n]
            allowed = torch.logical_and(allowed, mask.to(weights.device).clone())
        scaled = weights.double() / temperature  # [B, n, n]
        if not scaled.requires_grad:
            scaled.requires_grad_(True)
        lowest = torch.where(allowed, scaled, torch.inf).amin(dim=(1, 2), keepdim=True)
        floor = (lowest - 1000.0).detach()  # [B, 1, 1] e^(floor - s) == 0 in float64
        log_z = _log_tree_partition(torch.where(allowed, scaled, floor), floor)  # [B]
        (lower,) = torch.autograd.grad(log_z.sum(), scaled, create_graph=weights.requires_grad)
    return (lower + lower.transpose(1, 2)).to(weights.dtype)


def _masked_log_partition(scores: Tensor, allowed: Tensor, floor: Tensor) -> Tensor:
    """``log Σ_T exp(Σ_{(i,j) in T} s_ij)`` over the trees of the allowed edges: ``[B, n, n] ->
    [B]`` (:func:`_log_tree_partition`, absent edges at ``floor [B, 1, 1]``)."""
    return _log_tree_partition(torch.where(allowed, scores, floor), floor)


@torch.compiler.disable
def sample_spanning_trees(
    weights: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    samples: int = 1,
) -> Tensor:
    """Exact draws of ``p(T) ∝ exp(Σ_{(i,j) in T} w_ij / τ)``: ``w [B, n, n] -> z [B·N, n, n]``.

    The distribution whose edge marginals :func:`spanning_tree_marginals` gives, over the
    spanning trees of the allowed edges (``mask`` as there). N = ``samples`` independent trees
    per instance, sample-minor (row ``b·N + m`` is draw m of instance b), as symmetric 0/1
    adjacencies in w's dtype; not differentiable; reads the lower triangle of w.

    By the chain rule over the edges, in a fixed order: edge e joins the tree with its marginal
    given the decisions so far, 1 − Z_{−e}/Z, from two partition functions of the same
    log-space Kron reduction (exact at any spread): Z of the current graph and Z_{−e} without
    e, computed in one batched call. A rejected edge is masked out; an accepted one is forced,
    its log-weight raised above any tree without it (by (n − 1)·spread + 1000, so those
    trees' share underflows to exactly 0 in float64). About n²/2 such calls, all instances at
    once.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise SolverInputError(
            f"sample_spanning_trees: samples must be an int >= 1, got {samples!r}"
        )
    batch, n = weights.shape[0], weights.shape[-1]
    rows = batch * samples
    with torch.no_grad():
        current = (weights.double() / temperature).repeat_interleave(samples, dim=0)  # [R, n, n]
        allowed = ~torch.eye(n, dtype=torch.bool, device=weights.device).expand(rows, n, n)
        mask = mask_for_batch(mask, batch)
        if mask is not None:
            allowed = allowed & mask.to(weights.device).repeat_interleave(
                samples if mask.dim() == 3 else 1, dim=0
            )
        allowed = allowed.clone()
        highest = current.masked_fill(~allowed, -torch.inf).amax(dim=(1, 2))  # [R]
        lowest = current.masked_fill(~allowed, torch.inf).amin(dim=(1, 2))
        forced = highest + (n - 1) * (highest - lowest) + 1000.0  # [R]
        # absent edges: 1000 below the lowest score of the start, not of the graph left later
        # (where the lowest allowed score may be a forced one)
        floor = (lowest - 1000.0).repeat(2)[:, None, None]  # [2R, 1, 1]
        tree = torch.zeros(rows, n, n, dtype=torch.bool, device=weights.device)
        edges = [(i, j) for i in range(1, n) for j in range(i)]  # the lower triangle
        uniforms = torch.rand(
            (len(edges), rows), generator=generator, dtype=torch.float64, device=weights.device
        )
        chosen = torch.zeros(rows, dtype=torch.int64, device=weights.device)  # edges so far
        for index, (i, j) in enumerate(edges):
            if bool((chosen == n - 1).all()):
                break  # every tree is complete: the remaining edges are out
            if not bool(allowed[:, i, j].any()):
                continue
            without = allowed.clone()
            without[:, i, j] = without[:, j, i] = False
            log_z = _masked_log_partition(
                current.repeat(2, 1, 1), torch.cat([allowed, without]), floor
            )
            marginal = -torch.expm1(log_z[rows:] - log_z[:rows])  # [R], 1 − Z_{−e} / Z
            take = allowed[:, i, j] & (uniforms[index] < marginal) & (chosen < n - 1)
            tree[:, i, j] = tree[:, j, i] = take
            chosen += take.long()
            current[:, i, j] = current[:, j, i] = torch.where(take, forced, current[:, i, j])
            allowed[:, i, j] = allowed[:, j, i] = take
    return tree.to(weights.dtype)


def _tree_weight(theta: Tensor, z: Tensor) -> Tensor:
    """Tree weight ``Σ_{(i, j) in T} w_ij = <w, z> / 2`` per instance: ``[B, n, n] -> [B]``."""
    return (theta * z).sum(dim=(1, 2)) / 2


def symmetric_part(weights: Tensor) -> Tensor:
    """``(w + wᵀ) / 2`` of ``w [B, n, n]``, halved before the sum so that finite weights give
    finite ones (the sum can overflow: from about 3.3e4 in float16). Equal to ``(w + wᵀ) / 2``
    wherever that does not overflow, barring subnormal weights."""
    return weights / 2 + weights.transpose(1, 2) / 2


def _symmetric_example(
    batch_size: int, generator: torch.Generator
) -> tuple[dict[str, Any], Tensor]:
    """Symmetric weights on n = 6 vertices ``[B, 6, 6]`` (default parameters)."""
    weights = torch.randn(batch_size, 6, 6, generator=generator)
    return {}, (weights + weights.transpose(1, 2)) / 2


def _edges_example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """Directed-edge scores on n = 5 nodes ``[B, 20]``."""
    return {}, torch.randn(batch_size, 20, generator=generator)


_TREE_CONSTRAINTS = (
    "weights symmetric (w[b, i, j] == w[b, j, i]); diagonal ignored",
    "mask [n, n] or [B, n, n] boolean, symmetric, allowed edges must connect all vertices",
)


@register_solver(
    "mst",
    sense="max",
    exportable=True,
    input_shape="[B, n, n]",
    constraints=_TREE_CONSTRAINTS,
    description="maximum spanning tree (batched Prim) of symmetric edge weights",
    aliases=("spanning_tree", "maximum_spanning_tree", "max_spanning_tree"),
    example=_symmetric_example,
    objective=_tree_weight,
)
class SpanningTree(Solver):
    """Spanning tree of symmetric weights: ``w [B, n, n] -> z [B, n, n]`` symmetric 0/1.

    ``z`` is the adjacency of ``argmax_T Σ_{(i,j) in T} w_ij`` (``argmin`` if ``maximum=False``)
    over spanning trees T using only allowed edges. ``n - 1`` edges, zero diagonal, θ's dtype.
    n = 1 gives the empty tree. Tie-breaking is deterministic (see the module docstring).

    By default (``symmetrize=True``) any ``θ [B, n, n]`` is accepted and replaced by its symmetric
    part ``w = (θ + θᵀ) / 2``; since z is symmetric, ``<θ, z> = <w, z>``, so z is the exact
    argmax (argmin) of the linear objective ``<θ, z>`` over tree adjacencies. This is what
    estimators need: they perturb θ with i.i.d. noise, which breaks symmetry, and the whole
    perturbation and the whole incoming gradient are then used. ``symmetrize=False`` rejects
    asymmetric input instead (a guard against passing directed scores by mistake).

    Args:
        maximum: maximum (default) or minimum spanning tree. The instance's ``sense``
            attribute follows it, and estimators read that (:func:`solver_sense`), so
            ``SpanningTree(maximum=False)`` and the "minimum_spanning_tree" solver are
            interchangeable.
        mask: boolean ``[n, n]`` or ``[B, n, n]`` of allowed edges (symmetric); ``None`` allows
            all. The allowed edges must connect all vertices.
        symmetrize: symmetrise θ (default) instead of rejecting asymmetric input.
    """

    mask: Tensor | None

    def __init__(
        self, maximum: bool = True, mask: Tensor | None = None, symmetrize: bool = True
    ) -> None:
        super().__init__()
        name = self._solver_name()
        for flag, value in (("maximum", maximum), ("symmetrize", symmetrize)):
            if not isinstance(value, bool):
                raise SolverInputError(f"{name}: {flag} must be True or False, got {value!r}.")
        self.maximum = maximum
        self.symmetrize = symmetrize
        self.sense = "max" if maximum else "min"
        self.register_buffer("mask", _validate_mask(mask, name))

    def forward(self, theta: Tensor) -> Tensor:
        """``w [B, n, n] -> z [B, n, n]``: adjacency of the optimal spanning tree."""
        if not torch.jit.is_scripting():
            self._check_input(theta)
        if self.symmetrize:
            theta = symmetric_part(theta)  # [B, n, n]
        parent = _prim_parents(theta, self.maximum, mask_for_batch(self.mask, theta.shape[0]))
        if not torch.jit.is_scripting():
            self._check_connected(parent)  # parent [B, n]
        return _parents_to_adjacency(parent, theta.dtype)

    @torch.jit.unused
    def relax(self, theta: Tensor, temperature: float) -> Tensor:
        """Smooth surrogate of :meth:`forward`: :func:`spanning_tree_marginals` at τ > 0."""
        temperature = check_relax_temperature(temperature, solver=self._solver_name())
        signed, mask = self._maximised_weights(theta)
        return spanning_tree_marginals(signed, temperature, mask)

    @torch.jit.unused
    def marginals(self, theta: Tensor, temperature: float = 1.0) -> Tensor:
        """Exact edge marginals ``E[z] [B, n, n]`` of p(z) ∝ exp(±⟨w, z⟩/τ) (the solver's
        sense), the family of the objective: z counts each tree edge twice, so this is
        p(T) ∝ exp(±2 Σ_{(i,j) in T} w_ij / τ), :meth:`relax` at τ/2."""
        temperature = check_relax_temperature(temperature, solver=self._solver_name())
        return self.relax(theta, temperature / 2)

    @torch.jit.unused
    def sample(
        self,
        theta: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        samples: int = 1,
    ) -> Tensor:
        """N = ``samples`` exact draws per instance of the distribution of :meth:`marginals`,
        p(z) ∝ exp(±⟨w, z⟩/τ): ``z [B·N, n, n]``, sample-minor (:func:`sample_spanning_trees`
        at τ/2)."""
        temperature = check_relax_temperature(temperature, solver=self._solver_name())
        signed, mask = self._maximised_weights(theta)
        return sample_spanning_trees(signed, temperature / 2, mask, generator, samples)

    @torch.jit.unused
    def _maximised_weights(self, theta: Tensor) -> tuple[Tensor, Tensor | None]:
        """θ checked (and symmetrised), negated for the minimum tree, with the batch's mask:
        the weights of the distribution over trees ``([B, n, n], mask or None)``."""
        self._check_input(theta)
        if self.symmetrize:
            theta = symmetric_part(theta)  # [B, n, n]
        mask = mask_for_batch(self.mask, theta.shape[0])
        if mask is not None:
            self._check_connected(_prim_parents(theta.detach(), self.maximum, mask))
        return (theta if self.maximum else -theta), mask

    def batch_multiple(self) -> int:
        """θ's batch must hold every per-instance mask the same number of times."""
        return 1 if self.mask is None or self.mask.dim() == 2 else self.mask.shape[0]

    @torch.jit.unused
    def _check_input(self, theta: Tensor) -> None:
        if checks_enabled():
            name = self._solver_name()
            check_same_device(self, theta, name)
            check_spanning_tree_input(theta, self.mask, name, symmetric=not self.symmetrize)

    @torch.jit.unused
    def _check_connected(self, parent: Tensor) -> None:
        if checks_enabled():
            check_connected(parent, self._solver_name())

    def extra_repr(self) -> str:
        mask = self.mask
        shape = f"[{', '.join(map(str, mask.shape))}]" if isinstance(mask, Tensor) else "None"
        return f"maximum={self.maximum}, mask={shape}, symmetrize={self.symmetrize}"


@register_solver(
    "minimum_spanning_tree",
    sense="min",
    exportable=True,
    input_shape="[B, n, n]",
    constraints=_TREE_CONSTRAINTS,
    description="minimum spanning tree (batched Prim) of symmetric edge weights",
    aliases=("min_spanning_tree",),
    example=_symmetric_example,
    objective=_tree_weight,
)
class MinimumSpanningTree(SpanningTree):
    """Minimum spanning tree: :class:`SpanningTree` with ``maximum=False`` and sense "min".

    Args:
        mask: boolean ``[n, n]`` or ``[B, n, n]`` of allowed edges, or ``None``.
        symmetrize: symmetrise θ instead of rejecting asymmetric input.
    """

    def __init__(self, mask: Tensor | None = None, symmetrize: bool = True) -> None:
        super().__init__(maximum=False, mask=mask, symmetrize=symmetrize)


@register_solver(
    "mst_edges",
    sense="max",
    exportable=True,
    input_shape="[B, n(n-1)]",
    constraints=("length n(n-1): edge e = i(n-1) + j' with receiver i, sender j",),
    description="maximum spanning tree on NRI directed-edge scores (both directions set)",
    aliases=("spanning_tree_edges",),
    example=_edges_example,
)
class SpanningTreeEdges(Solver):
    """Maximum spanning tree on directed-edge scores: ``l [B, n(n-1)] -> z [B, n(n-1)]``.

    The layout is the NRI encoder's: edge ``e = i (n - 1) + j'`` has receiver i and sender j
    (``j' = j - [j > i]``). Undirected weights are ``w_ij = (l_ij + l_ji) / 2``, so every entry
    of θ (and of an incoming gradient) counts; z sets both directions of each tree edge, hence
    ``<l, z> = 2 Σ_{(i,j) in T} w_ij``. n is inferred from the length.
    """

    def forward(self, theta: Tensor) -> Tensor:
        """``l [B, n(n-1)] -> z [B, n(n-1)]`` in {0, 1}, 2 (n - 1) ones per row."""
        if not torch.jit.is_scripting():
            self._check_input(theta)
        n = _num_nodes(theta.shape[-1])
        scores = _edges_to_matrix(theta, n)  # [B, n, n]
        weights = symmetric_part(scores)  # [B, n, n]
        parent = _prim_parents(weights, True, None)  # [B, n]
        return _matrix_to_edges(_parents_to_adjacency(parent, theta.dtype))

    @torch.jit.unused
    def relax(self, theta: Tensor, temperature: float) -> Tensor:
        """Smooth surrogate of :meth:`forward`: tree-edge marginals ``[B, n(n-1)]`` at τ > 0."""
        temperature = check_relax_temperature(temperature, solver="mst_edges")
        return _matrix_to_edges(spanning_tree_marginals(self._weights(theta), temperature))

    @torch.jit.unused
    def marginals(self, theta: Tensor, temperature: float = 1.0) -> Tensor:
        """Exact tree-edge marginals ``E[z] [B, n(n-1)]`` of p(z) ∝ exp(⟨l, z⟩/τ), the family
        of the objective (``<l, z> = 2 Σ_T w_ij``): :meth:`relax` at τ/2."""
        temperature = check_relax_temperature(temperature, solver="mst_edges")
        return self.relax(theta, temperature / 2)

    @torch.jit.unused
    def sample(
        self,
        theta: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        samples: int = 1,
    ) -> Tensor:
        """N = ``samples`` exact tree draws per instance, ``[B·N, n(n-1)]`` sample-minor, of the
        distribution of :meth:`marginals`, p(z) ∝ exp(⟨l, z⟩/τ) (:func:`sample_spanning_trees`
        at τ/2)."""
        temperature = check_relax_temperature(temperature, solver="mst_edges")
        trees = sample_spanning_trees(
            self._weights(theta), temperature / 2, None, generator, samples
        )
        return _matrix_to_edges(trees)

    @torch.jit.unused
    def _weights(self, theta: Tensor) -> Tensor:
        """θ checked, as the symmetric undirected weights ``w [B, n, n]``."""
        self._check_input(theta)
        scores = _edges_to_matrix(theta, num_nodes_from_edges(theta.shape[-1]))  # [B, n, n]
        return symmetric_part(scores)

    @torch.jit.unused
    def _check_input(self, theta: Tensor) -> None:
        if checks_enabled():
            hint = "[B, n(n-1)] directed-edge scores (squeeze a trailing edge-type dim)"
            check_theta(theta, solver="mst_edges", ndim=2, shape_hint=hint)
            try:
                num_nodes_from_edges(theta.shape[-1])
            except SolverInputError as err:
                raise SolverInputError(f"mst_edges: {err}") from None
