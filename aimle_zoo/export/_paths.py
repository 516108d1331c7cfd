"""Inference paths: the module, inputs and outputs each exported artefact holds.

An :class:`InferencePath` is what gets exported: an eval-mode module mapping the inputs to a
tuple of outputs, with a :class:`TensorSpec` per input and output (name, dtype, shape with named
dynamic dimensions, valid value range), the dynamic dimensions and the other problem sizes to
verify, and the solvers inside. Zoo models export their MAP path end to end:

==================== ============================= =====================================
model                inputs                        outputs
==================== ============================= =====================================
l2x_text             token ids ``[B, L]``          mask ``[B, L]``, prediction ``[B]``
l2x_tabular          features ``[B, d]``           mask ``[B, d]``, logits ``[B, C]``
l2x_mnist            images ``[B, 1, S, S]``       mask ``[B, P]``, logits ``[B, C]``
discrete_vae         images ``[B, D]``             codes ``[B, m·n]``, logits ``[B, D]``
nri_tree             trajectories ``[B, n, T, d]`` tree ``[B, E]``, next ``[B, n, T-1, d]``
grid_shortest_path   maps ``[B, C, H·t, W·t]``     costs ``[B, H, W]``, path ``[B, H, W]``
==================== ============================= =====================================

A registered solver exports as ``theta -> (z,)``; any other module exports as it is, with the
batch dimension dynamic. A *split* path stops at θ, the solver's input; the solver then runs
on the exported network's output (see :class:`aimle_zoo.export.SplitPipeline`).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..estimators import DifferentiableSolver
from ..models import (
    DiscreteVAE,
    GridShortestPath as GridPathModel,
    L2XImage,
    L2XTabular,
    L2XText,
    NRITree,
    ZooModel,
)
from ..models.nri import MLPDecoder, MLPEncoder, edge_endpoints, reverse_edge_index
from ..solvers import (
    CachedSolver,
    GraphShortestPath,
    GridShortestPath,
    LinearAssignment,
    Ranking,
    ShortestPath,
    Solver,
    SpanningTree,
    SpanningTreeEdges,
    TopK,
    get_solver,
    solver_spec,
    solver_values,
)
from .runner import PRONIC

BATCH = "batch"

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.bool: "bool",
}


class ExportError(RuntimeError):
    """A model cannot be exported, or its exported artefact disagrees with eager PyTorch."""


class NonExportableSolverError(ExportError):
    """The model holds a solver registered as non-exportable (or a plain Python callable)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artefact.

    Attributes:
        name: the ONNX input/output name.
        dtype: numpy dtype name, e.g. ``"float32"``.
        shape: sizes; an ``int`` is fixed at export time, a ``str`` names a dynamic dimension
            (the same name twice means equal sizes).
        description: what the tensor holds.
        low, high: valid value range of an input (``high`` exclusive for integers), used to
            draw fresh random inputs.
        symmetric: the last two dimensions of an input must be symmetric.
        bounded: eager PyTorch refuses float values outside ``[low, high]`` (the runner
            checks them too); otherwise the range only guides the random inputs.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    description: str = ""
    low: float | None = None
    high: float | None = None
    symmetric: bool = False
    bounded: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the ``inputs``/``outputs`` entries of the metadata)."""
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.description:
            data["description"] = self.description
        if self.low is not None:
            data["low"] = self.low
        if self.high is not None:
            data["high"] = self.high
        if self.symmetric:
            data["symmetric"] = True
        if self.bounded:
            data["bounded"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        """The inverse of :meth:`to_json`."""
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(data["shape"]),
            description=str(data.get("description", "")),
            low=data.get("low"),
            high=data.get("high"),
            symmetric=bool(data.get("symmetric", False)),
            bounded=bool(data.get("bounded", False)),
        )


@dataclass(frozen=True)
class SolverInfo:
    """A solver inside an exported model: registry name, parameters, sense and location."""

    name: str
    params: dict[str, Any]
    sense: str
    exportable: bool
    location: str

    def to_json(self) -> dict[str, Any]:
        """``{"name", "params", "sense", "location"}``."""
        return {
            "name": self.name,
            "params": self.params,
            "sense": self.sense,
            "location": self.location,
        }


@dataclass
class InferencePath:
    """What one artefact holds (see the module docstring).

    Attributes:
        name: the model name recorded in the metadata (a published name such as
            ``"nri-t10"`` once the caller renames the artefact).
        kind: ``"zoo_model"``, ``"solver"`` or ``"module"``.
        module: eval-mode module ``*inputs -> tuple of outputs`` (a plain module may return a
            single tensor).
        inputs, outputs: their specs.
        example_inputs: inputs the exporters trace or check with.
        dynamic_dims: minimum size of each dynamic dimension (``"batch"`` included).
        size_cases: other problem sizes to verify, ``{dim name: size}`` each.
        solvers: the solvers inside the module.
        solver_after: for a split path, the solver to run on the exported output θ.
        config: the model's constructor arguments (zoo models).
        model_type: the zoo model's registry name (``"nri_tree"``), whatever :attr:`name` says.
        size_forms: dynamic dimensions whose sizes have a form, ``{dim name: form}``; the
            only form is ``"n(n-1)"`` (``mst_edges``' directed-edge count).
        batch_multiple: the batch must be a multiple of this (solvers holding per-instance
            data, such as per-instance sources of ``graph_shortest_path``; 1 otherwise).
    """

    name: str
    kind: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example_inputs: tuple[Tensor, ...]
    dynamic_dims: dict[str, int]
    size_cases: tuple[dict[str, int], ...] = ()
    solvers: tuple[SolverInfo, ...] = ()
    solver_after: SolverInfo | None = None
    config: dict[str, Any] | None = field(default=None)
    model_type: str | None = None
    batch_multiple: int = 1
    size_forms: dict[str, str] = field(default_factory=dict)

    def example_sizes(self) -> dict[str, int]:
        """Size of every dynamic dimension in :attr:`example_inputs`."""
        return dims_of(self.inputs, self.example_inputs)


# ----------------------------------------------------------------------------- zoo paths


class _L2XTextPath(nn.Module):
    """Token ids ``[B, L]`` -> (mask ``[B, L]``, predicted score ``[B]``)."""

    def __init__(self, model: L2XText) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.model.latent_layer(self.model.token_scores(token_ids))  # [B, L]
        return mask, self.model.predict_masked(token_ids, mask)  # [B, L], [B]


class _L2XTabularPath(nn.Module):
    """Features ``[B, d]`` -> (mask ``[B, d]``, class logits ``[B, C]``)."""

    def __init__(self, model: L2XTabular) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.model.latent_layer(self.model.feature_scores(features))  # [B, d]
        return mask, self.model.predictor(features * mask)  # [B, d], [B, C]


class _L2XImagePath(nn.Module):
    """Images ``[B, 1, S, S]`` -> (patch mask ``[B, P]``, class logits ``[B, C]``)."""

    def __init__(self, model: L2XImage) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.model.latent_layer(self.model.patch_scores(images))  # [B, P]
        return mask, self.model.classify_masked(images, mask)  # [B, P], [B, C]


class _DiscreteVAEPath(nn.Module):
    """Flat images ``[B, D]`` -> (k-of-n codes ``[B, m·n]``, reconstruction logits ``[B, D]``)."""

    def __init__(self, model: DiscreteVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        codes = self.model.sample_codes(self.model.encode(images))  # [B, m·n]
        return codes, self.model.decode(codes)  # [B, m·n], [B, D]


def _edge_messages(
    states: Tensor,
    edges: Tensor,
    senders: Tensor,
    receivers: Tensor,
    first: tuple[Tensor, Tensor | None],
    second: tuple[Tensor, Tensor | None],
    vertices: int,
) -> Tensor:
    """Σ of the messages of some edges at their receivers: ``[B, n, T'·H]``.

    ``m_e = relu(W₂ relu(W₁ [x_j; x_i] + b₁) + b₂)`` for edge ``e = (i ← j)`` of
    ``edges [B, K]`` (edge ids), with ``states [B·n, T', d]`` (vertex-major) and
    ``senders``/``receivers [E]`` the vertices of every edge. The d-wide pairs are gathered
    (not the H-wide first-layer terms), and both layers run on 2-D row matrices, which
    onnxruntime fuses with their bias and ReLU (``Gemm``).
    """
    batch, count = edges.shape
    offsets = torch.arange(batch, device=states.device).unsqueeze(1) * vertices  # [B, 1]
    edge_senders = (senders.index_select(0, edges.flatten()).view(edges.shape) + offsets).flatten()
    edge_receivers = receivers.index_select(0, edges.flatten()).view(edges.shape)  # [B, K]
    flat_receivers = (edge_receivers + offsets).flatten()  # [B·K]
    pairs = torch.cat(
        [states.index_select(0, edge_senders), states.index_select(0, flat_receivers)], dim=2
    )  # [B·K, T', 2d]
    hidden = F.relu(F.linear(pairs.view(-1, first[0].shape[1]), first[0], first[1]))
    messages = F.relu(F.linear(hidden, second[0], second[1]))  # [B·K·T', H]
    messages = messages.view(batch, count, -1)  # [B, K, T'·H]
    to_vertex = F.one_hot(edge_receivers, vertices).to(messages.dtype).transpose(1, 2)  # [B, n, K]
    return torch.bmm(to_vertex, messages)  # [B, n, T'·H]


def _folded_norm(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``y = u·s + t``: ``(s, t)``, ``[F]`` each."""
    if norm.running_mean is None or norm.running_var is None:
        raise ExportError(
            "the NRI encoder's BatchNorm keeps no running statistics, so its eval-mode output "
            "depends on the batch; build the model with track_running_stats=True"
        )
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_var)
    scale = weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, bias - norm.running_mean * scale


def _constant(value: Tensor) -> nn.Buffer:
    """A detached copy of ``value`` as a non-persistent buffer (a constant of the graph)."""
    return nn.Buffer(value.detach().clone(), persistent=False)


class _EdgeLogits(nn.Module):
    """``model.edge_logits`` as it is: trajectories ``[B, n, T, d]`` -> logits ``[B, E]``."""

    def __init__(self, model: NRITree) -> None:
        super().__init__()
        self.model = model

    def forward(self, trajectories: Tensor) -> Tensor:
        return self.model.edge_logits(trajectories)


class _NRIEncoderPath(nn.Module):
    """:class:`~aimle_zoo.models.nri.MLPEncoder` (with the model's logit symmetrisation) in
    eval mode, trajectories ``[B, n, T, d]`` -> edge logits ``[B, E]``, in fewer graph nodes.

    Every BatchNorm, ``y = u·s + t`` in eval mode, is folded into the linear layers that read
    ``y``: ``W y + b = (W diag s) u + (W t + b)``. Through the edge -> vertex mean (a vertex
    sums n - 1 incoming edges and divides by n) the shift becomes ``t (n - 1) / n``. The
    layers run on 2-D row matrices (vertex rows ``b·n + i``, edge rows ``b·E + e``), which
    onnxruntime fuses with their bias (``Gemm``); the first layers of mlp2 and mlp4 run on
    vertices, as in :func:`~aimle_zoo.models.nri.pair_linear`.
    """

    def __init__(self, model: NRITree) -> None:
        super().__init__()
        encoder = model.encoder
        vertices, hidden = model.num_vertices, encoder.mlp1.fc2.out_features
        self.vertices = vertices
        self.symmetrize = model.symmetrize_logits
        # the model's own edge index buffers, [E] each (receiver-major)
        self.receivers = nn.Buffer(encoder.receiver_index, persistent=False)
        self.senders = nn.Buffer(encoder.sender_index, persistent=False)
        self.reverse = nn.Buffer(model.reverse_edges, persistent=False)
        with torch.no_grad():
            scale1, shift1 = _folded_norm(encoder.mlp1.norm)
            scale2, shift2 = _folded_norm(encoder.mlp2.norm)
            scale3, shift3 = _folded_norm(encoder.mlp3.norm)
            scale4, shift4 = _folded_norm(encoder.mlp4.norm)
            pair2 = encoder.mlp2.fc1.weight  # [H, 2H] on [y1_sender; y1_receiver]
            sender2, receiver2 = pair2[:, :hidden], pair2[:, hidden:]
            mean3 = encoder.mlp3.fc1.weight  # [H, H] on the mean of incoming y2
            pair4 = encoder.mlp4.fc1.weight  # [H, 3H] on [y3_sender; y3_receiver; y2_edge]
            sender4, receiver4 = pair4[:, :hidden], pair4[:, hidden : 2 * hidden]
            skip4 = pair4[:, 2 * hidden :]
            out = encoder.out.weight  # [1, H] on y4
            self.w1a = _constant(encoder.mlp1.fc1.weight)
            self.b1a = _constant(encoder.mlp1.fc1.bias)
            self.w1b = _constant(encoder.mlp1.fc2.weight)
            self.b1b = _constant(encoder.mlp1.fc2.bias)
            self.w2_sender = _constant(sender2 * scale1)
            self.w2_receiver = _constant(receiver2 * scale1)
            self.b2a = _constant(encoder.mlp2.fc1.bias + (sender2 + receiver2) @ shift1)
            self.w2b = _constant(encoder.mlp2.fc2.weight)
            self.b2b = _constant(encoder.mlp2.fc2.bias)
            self.w3a = _constant(mean3 * scale2 / vertices)  # the mean's 1/n folded in too
            self.b3a = _constant(
                encoder.mlp3.fc1.bias + mean3 @ shift2 * ((vertices - 1) / vertices)
            )
            self.w3b = _constant(encoder.mlp3.fc2.weight)
            self.b3b = _constant(encoder.mlp3.fc2.bias)
            self.w4_sender = _constant(sender4 * scale3)
            self.w4_receiver = _constant(receiver4 * scale3)
            self.w4_skip = _constant(skip4 * scale2)
            self.b4a = _constant(
                encoder.mlp4.fc1.bias + (sender4 + receiver4) @ shift3 + skip4 @ shift2
            )
            self.w4b = _constant(encoder.mlp4.fc2.weight)
            self.b4b = _constant(encoder.mlp4.fc2.bias)
            self.w_out = _constant(out * scale4)
            self.b_out = _constant(encoder.out.bias + out @ shift4)

    def forward(self, trajectories: Tensor) -> Tensor:
        batch, n = trajectories.shape[0], self.vertices
        rows = trajectories.reshape(batch * n, -1)  # [B·n, T·d]
        offsets = torch.arange(batch, device=rows.device).unsqueeze(1) * n  # [B, 1]
        sender_rows = (offsets + self.senders).flatten()  # [B·E]
        receiver_rows = (offsets + self.receivers).flatten()  # [B·E]
        x = F.elu(F.linear(F.elu(F.linear(rows, self.w1a, self.b1a)), self.w1b, self.b1b))
        pre = F.linear(x, self.w2_sender).index_select(0, sender_rows) + F.linear(
            x, self.w2_receiver, self.b2a
        ).index_select(0, receiver_rows)  # [B·E, H]
        skip = F.elu(F.linear(F.elu(pre), self.w2b, self.b2b))  # [B·E, H] (mlp2 before its norm)
        incoming = skip.view(batch * n, n - 1, -1).sum(dim=1)  # [B·n, H], n × the mean
        x = F.elu(F.linear(F.elu(F.linear(incoming, self.w3a, self.b3a)), self.w3b, self.b3b))
        pre = (
            F.linear(x, self.w4_sender).index_select(0, sender_rows)
            + F.linear(x, self.w4_receiver, self.b4a).index_select(0, receiver_rows)
            + F.linear(skip, self.w4_skip)
        )  # [B·E, H]
        x = F.elu(F.linear(F.elu(pre), self.w4b, self.b4b))  # [B·E, H]
        logits = F.linear(x, self.w_out, self.b_out).view(batch, -1)  # [B, E]
        if self.symmetrize:
            logits = (logits + logits.index_select(1, self.reverse)) / 2
        return logits


class _MapSpanningTree(nn.Module):
    """The MAP tree of ``mst_edges`` on NRI edge logits ``[B, E] -> [B, E]``, in fewer graph
    nodes than the solver's own code (no scatters, no shape-dependent expands per step).

    The same Prim steps as the solver, hence the same tree: weights ``w_e = l_e / 2 + l_ē / 2``
    (ē the reverse edge), vertex 0 first; per step the outside vertex with the best offer joins
    (first index on ties) and its row of weights replaces the offers it strictly improves.
    Edge e = (i ← j) is in the tree iff ``parent[i] = j`` or ``parent[j] = i``.
    """

    def __init__(self, vertices: int) -> None:
        super().__init__()
        self.vertices = vertices
        receivers, senders = edge_endpoints(vertices)  # [E] each, receiver-major
        edges = receivers.numel()
        reverse = reverse_edge_index(vertices)  # [E]
        # score[u, v] = w of edge u-v offered by tree vertex u to v; index E holds -inf (no
        # self-loops, and no edge may enter the root 0)
        index = torch.full((vertices, vertices), edges, dtype=torch.long)
        index[receivers, senders] = torch.arange(edges)
        index[:, 0] = edges
        self.reverse = nn.Buffer(reverse, persistent=False)  # [E]
        self.score_index = nn.Buffer(index.flatten(), persistent=False)  # [n²]
        self.root_index = nn.Buffer(index[0].clone(), persistent=False)  # [n]
        self.vertex_ids = nn.Buffer(torch.arange(vertices), persistent=False)  # [n]
        self.receivers = nn.Buffer(receivers, persistent=False)  # [E]
        self.senders = nn.Buffer(senders, persistent=False)  # [E]

    def forward(self, logits: Tensor) -> Tensor:
        batch, n = logits.shape[0], self.vertices
        weights = logits / 2 + logits.index_select(1, self.reverse) / 2  # [B, E], as the solver
        blocked = torch.full_like(weights[:, :1], float("-inf"))  # [B, 1]
        padded = torch.cat([weights, blocked], dim=1)  # [B, E + 1]
        score = padded.index_select(1, self.score_index).view(batch * n, n)  # [B·n, n]
        best = padded.index_select(1, self.root_index)  # [B, n] offers of vertex 0
        parent = torch.where(best > float("-inf"), 0, -1)  # [B, n]
        in_tree = (self.vertex_ids == 0).expand(batch, n)  # [B, n]
        row_offsets = torch.arange(batch, device=logits.device) * n  # [B]
        for _ in range(n - 1):
            joining = best.argmax(dim=1, keepdim=True)  # [B, 1] first index on ties
            in_tree = torch.logical_or(in_tree, joining == self.vertex_ids)
            best = best.masked_fill(in_tree, float("-inf"))
            offered = score.index_select(0, joining.squeeze(1) + row_offsets)  # [B, n]
            offered = offered.masked_fill(in_tree, float("-inf"))
            closer = offered > best  # strict: earlier tree vertices keep ties
            best = torch.where(closer, offered, best)
            parent = torch.where(closer, joining, parent)
        child_of_sender = parent.index_select(1, self.receivers) == self.senders  # [B, E]
        parent_of_sender = parent.index_select(1, self.senders) == self.receivers  # [B, E]
        return torch.logical_or(child_of_sender, parent_of_sender).to(logits.dtype)


class _NRIPath(nn.Module):
    """Trajectories ``[B, n, T, d]`` -> (MAP tree ``[B, E]``, one-step prediction
    ``[B, n, T-1, d]`` of frames 1..T-1 from frames 0..T-2, teacher forced).

    The decoder step of :class:`~aimle_zoo.models.nri.MLPDecoder` with edge weights
    ``(1 - z, z)``: every edge sends exactly one message, of type 1 on the 2(n-1) tree edges
    and of type 0 on the others, so the edges are split by ``topk`` of z instead of computing
    both message types on every edge. The built-in encoder runs as :class:`_NRIEncoderPath`
    (BatchNorms folded away; a subclass's own encoder or ``edge_logits`` runs as it is), and
    the MAP tree of the built-in ``mst_edges`` latent comes from
    :class:`_MapSpanningTree` (the same tree in fewer graph nodes); the linear layers run on
    2-D row matrices (onnxruntime ``Gemm`` with bias and ReLU fused).
    """

    def __init__(self, model: NRITree) -> None:
        super().__init__()
        if (
            type(model.decoder) is not MLPDecoder
            or type(model).reconstruct is not NRITree.reconstruct
        ):
            raise ExportError(
                f"{type(model).__name__} replaces the NRI decoder (or reconstruct), which the "
                "export path computes itself from MLPDecoder's layers; export the network up "
                "to the edge logits with split=True (`--split`), or export your own module"
            )
        self.encoder: nn.Module = _EdgeLogits(model)  # a subclass's own encoder or logits
        if type(model.encoder) is MLPEncoder and type(model).edge_logits is NRITree.edge_logits:
            self.encoder = _NRIEncoderPath(model)
        self.dims = model.dims
        self.vertices = model.num_vertices
        self.tree_edges = 2 * (model.num_vertices - 1)
        self.other_edges = model.num_edges - self.tree_edges
        decoder = model.decoder
        no_edge, edge = (_message_layers(decoder.messages[index]) for index in range(2))
        self.no_edge_first, self.no_edge_second = no_edge
        self.edge_first, self.edge_second = edge
        self.out1, self.out2, self.out3 = decoder.out1, decoder.out2, decoder.out3
        receivers, senders = edge_endpoints(model.num_vertices)  # [E] each, receiver-major
        self.receivers = nn.Buffer(receivers, persistent=False)  # [E]
        self.senders = nn.Buffer(senders, persistent=False)  # [E]
        solver = model.latent_layer.solver
        self.latent: nn.Module = model.latent_layer
        if type(solver) is SpanningTreeEdges:
            self.latent = _MapSpanningTree(model.num_vertices)

    def forward(self, trajectories: Tensor) -> tuple[Tensor, Tensor]:
        tree = self.latent(self.encoder(trajectories))  # [B, E]
        states = trajectories[:, :, :-1]  # [B, n, T-1, d]
        by_vertex = states.flatten(0, 1)  # [B·n, T-1, d]
        tree_edges = torch.topk(tree, self.tree_edges, dim=1).indices  # [B, 2(n-1)]
        incoming = _edge_messages(
            by_vertex,
            tree_edges,
            self.senders,
            self.receivers,
            (self.edge_first.weight, self.edge_first.bias),
            (self.edge_second.weight, self.edge_second.bias),
            self.vertices,
        )  # [B, n, (T-1)·H]
        if self.other_edges > 0:
            other_edges = torch.topk(1 - tree, self.other_edges, dim=1).indices  # [B, E-2(n-1)]
            incoming = incoming + _edge_messages(
                by_vertex,
                other_edges,
                self.senders,
                self.receivers,
                (self.no_edge_first.weight, self.no_edge_first.bias),
                (self.no_edge_second.weight, self.no_edge_second.bias),
                self.vertices,
            )
        rows = by_vertex.reshape(-1, self.dims)  # [B·n·(T-1), d]
        weight = self.out1.weight
        hidden = torch.addmm(
            F.linear(rows, weight[:, : self.dims], self.out1.bias),
            incoming.view(rows.shape[0], -1),
            weight[:, self.dims :].t(),
        )  # [B·n·(T-1), H]
        hidden = F.relu(self.out2(F.relu(hidden)))
        return tree, states + self.out3(hidden).view(states.shape)  # [B, E], [B, n, T-1, d]


def _message_layers(message: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The two Linear layers of a decoder message MLP (Linear, ReLU, Dropout, Linear, ReLU)."""
    layers = [layer for layer in message.modules() if isinstance(layer, nn.Linear)]
    if len(layers) != 2:
        raise ExportError(
            f"the NRI decoder's message MLP has {len(layers)} Linear layers, the export path "
            "expects 2 (Linear, ReLU, Dropout, Linear, ReLU); update aimle_zoo.export._paths"
        )
    return layers[0], layers[1]


class _GridPath(nn.Module):
    """Map images ``[B, C, H·t, W·t]`` -> (vertex costs ``[B, H, W]``, path mask ``[B, H, W]``)."""

    def __init__(self, model: GridPathModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        costs = self.model.vertex_costs(maps)  # [B, H, W]
        return costs, self.model.latent_layer(costs)


class _ThetaPath(nn.Module):
    """The network up to θ, the input of the latent solver: ``inputs -> (θ,)``.

    ``method`` names the model's method computing θ (e.g. ``"token_scores"``).
    """

    def __init__(self, model: ZooModel, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, inputs: Tensor) -> tuple[Tensor]:
        return (getattr(self.model, self.method)(inputs),)


class _SolverPath(nn.Module):
    """A solver on its own: ``θ -> (z,)``."""

    def __init__(self, solver: nn.Module) -> None:
        super().__init__()
        self.solver = solver

    def forward(self, theta: Tensor) -> tuple[Tensor]:
        return (self.solver(theta),)


def _spec(
    name: str,
    example: Tensor,
    shape: Sequence[int | str],
    description: str,
    low: float | None = None,
    high: float | None = None,
    bounded: bool = False,
) -> TensorSpec:
    """A spec whose dtype is the example's and whose fixed sizes are checked against it."""
    if example.dim() != len(shape) or any(
        isinstance(size, int) and size != actual
        for size, actual in zip(shape, example.shape, strict=True)
    ):
        raise ExportError(
            f"{name}: the model produced shape {tuple(example.shape)}, the export path "
            f"declares {list(shape)}"
        )
    dtype = dtype_name(example.dtype)
    return TensorSpec(name, dtype, tuple(shape), description, low, high, bounded=bounded)


def _zoo_path(
    model: ZooModel, split: bool, example_inputs: Sequence[Tensor] | None
) -> InferencePath:
    """The end-to-end (or, with ``split``, up-to-θ) path of a zoo model.

    The example is ``model.example_inputs(2)`` unless given; a batch of one is repeated to
    two rows (exporters treat a size of 1 as a constant).
    """
    if example_inputs is None:
        inputs = tuple(model.example_inputs(2))
    else:
        if len(example_inputs) != 1 or not isinstance(example_inputs[0], Tensor):
            raise ExportError(
                f"{type(model).__name__} takes one input tensor; pass example_inputs=(x,)"
            )
        value = example_inputs[0].detach()
        inputs = (value if value.shape[0] > 1 else value.expand(2, *value.shape[1:]).clone(),)
    (example,) = inputs
    input_spec, output_layout, dims, cases = _zoo_layout(model, example)
    module = path_module(model, split)
    if split:
        output_layout = [("theta", _theta_layout(model)[1], "θ, the input of the latent solver")]
    with torch.no_grad():
        produced = module(*inputs)
    outputs = tuple(
        _spec(name, value, shape, text)
        for (name, shape, text), value in zip(output_layout, produced, strict=True)
    )
    layer = cast(DifferentiableSolver, model.latent_layer)
    solver = solver_info(layer.solver, "latent_layer.solver")
    config = getattr(model, "_hub_mixin_config", None)
    return InferencePath(
        name=model.model_name,
        kind="zoo_model",
        module=module,
        inputs=(input_spec,),
        outputs=outputs,
        example_inputs=inputs,
        dynamic_dims=dims,
        size_cases=cases,
        solvers=() if split else (solver,),
        solver_after=solver if split else None,
        config=_jsonable(config) if isinstance(config, dict) else None,
        model_type=model.model_name,
    )


def _theta_layout(model: ZooModel) -> tuple[str, tuple[int | str, ...]]:
    """The method computing θ and θ's shape."""
    if isinstance(model, L2XText):
        return "token_scores", (BATCH, "length")
    if isinstance(model, L2XTabular):
        return "feature_scores", (BATCH, model.input_dim)
    if isinstance(model, L2XImage):
        return "patch_scores", (BATCH, model.patches_per_side**2)
    if isinstance(model, DiscreteVAE):
        return "encode", (BATCH, model.groups, model.group_size)
    if isinstance(model, NRITree):
        return "edge_logits", (BATCH, model.num_edges)
    if isinstance(model, GridPathModel):
        return "vertex_costs", (BATCH, model.grid_size, model.grid_size)
    raise ExportError(f"no θ path for {type(model).__name__}")  # pragma: no cover


Layout = list[tuple[str, tuple[int | str, ...], str]]


def _zoo_layout(
    model: ZooModel, example: Tensor
) -> tuple[TensorSpec, Layout, dict[str, int], tuple[dict[str, int], ...]]:
    """Input spec, output layout, dynamic dims and size cases of a zoo model."""
    dims = {BATCH: 1}
    cases: tuple[dict[str, int], ...] = ()
    if isinstance(model, L2XText):
        k, length = model.k, example.shape[1]
        vocab = model.embedding.shape[0]
        text = "token ids, 0 = padding"
        spec = _spec("token_ids", example, (BATCH, "length"), text, 0, vocab)
        dims["length"] = k
        cases = tuple({"length": size} for size in sorted({max(k, length // 2), length + 17}))
        outputs: Layout = [
            ("mask", (BATCH, "length"), "selected tokens, top-k of the selector logits"),
            ("prediction", (BATCH,), "predicted score in [0, 1]"),
        ]
    elif isinstance(model, L2XTabular):
        d, classes = model.input_dim, model.num_classes
        spec = _spec("features", example, (BATCH, d), "features", -3.0, 3.0)
        outputs = [
            ("mask", (BATCH, d), "selected features, top-k of the selector logits"),
            ("prediction", (BATCH, classes), "class logits of the masked features"),
        ]
    elif isinstance(model, L2XImage):
        size, patches = model.image_size, model.patches_per_side**2
        shape = (BATCH, 1, size, size)
        text = "intensities in [0, 1]"
        spec = _spec("images", example, shape, text, 0.0, 1.0, bounded=True)
        outputs = [
            ("mask", (BATCH, patches), "selected patches (row-major), top-k"),
            ("prediction", (BATCH, model.num_classes), "class logits of the masked image"),
        ]
    elif isinstance(model, DiscreteVAE):
        pixels, code = model.input_dim, model.groups * model.group_size
        text = "intensities in [0, 1]"
        spec = _spec("images", example, (BATCH, pixels), text, 0.0, 1.0, bounded=True)
        outputs = [
            ("codes", (BATCH, code), f"{model.groups} groups of {model.k}-of-{model.group_size}"),
            ("reconstruction", (BATCH, pixels), "Bernoulli logits of the pixels"),
        ]
    elif isinstance(model, NRITree):
        n, t, d = model.num_vertices, model.timesteps, model.dims
        text = "vertex trajectories (vertices, timesteps, dims)"
        spec = _spec("trajectories", example, (BATCH, n, t, d), text, -1.0, 1.0)
        outputs = [
            ("tree", (BATCH, model.num_edges), "MAP spanning tree, both directions of each edge"),
            ("prediction", (BATCH, n, t - 1, d), "one-step predictions of frames 1..T-1"),
        ]
    elif isinstance(model, GridPathModel):
        size = model.grid_size
        shape = (BATCH, model.in_channels, example.shape[2], example.shape[3])
        spec = _spec("maps", example, shape, "map images, channels first, in [0, 1]", 0.0, 1.0)
        outputs = [
            ("costs", (BATCH, size, size), "predicted vertex costs"),
            ("path", (BATCH, size, size), "cheapest top-left to bottom-right path mask"),
        ]
    else:  # pragma: no cover - guarded by _ZOO_PATHS
        raise ExportError(f"no export path for {type(model).__name__}")
    return spec, outputs, dims, cases


_ZOO_PATHS: dict[str, Callable[[Any], nn.Module]] = {
    "l2x_text": _L2XTextPath,
    "l2x_tabular": _L2XTabularPath,
    "l2x_mnist": _L2XImagePath,
    "discrete_vae": _DiscreteVAEPath,
    "nri_tree": _NRIPath,
    "grid_shortest_path": _GridPath,
}
_ZOO_CLASSES: dict[str, type[ZooModel]] = {
    "l2x_text": L2XText,
    "l2x_tabular": L2XTabular,
    "l2x_mnist": L2XImage,
    "discrete_vae": DiscreteVAE,
    "nri_tree": NRITree,
    "grid_shortest_path": GridPathModel,
}


# ----------------------------------------------------------------------------- solver paths


def _solver_path(solver: nn.Module, example_inputs: Sequence[Tensor] | None) -> InferencePath:
    """``θ -> (z,)`` of a registered solver, with its dynamic problem sizes."""
    info = solver_info(solver, "solver")
    inner = solver.solver if isinstance(solver, ShortestPath) else solver
    theta = example_inputs[0] if example_inputs else _solver_example(inner)
    theta = theta.detach()
    shape, dims, cases, (low, high), symmetric = _solver_layout(inner, theta)
    module = path_module(solver)
    multiple = batch_multiple(inner)
    dims[BATCH] = multiple
    with torch.no_grad():
        (z,) = module(theta)
    text = "solver parameters θ"
    input_spec = TensorSpec("theta", dtype_name(theta.dtype), shape, text, low, high, symmetric)
    values = "0/1" if solver_values(inner) == "binary" else "integer entries"
    output_spec = TensorSpec("z", dtype_name(z.dtype), shape, f"the solution, {values}")
    if tuple(z.shape) != tuple(theta.shape):
        output_spec = TensorSpec("z", dtype_name(z.dtype), (BATCH, *z.shape[1:]), values)
    return InferencePath(
        name=info.name,
        kind="solver",
        module=module,
        inputs=(input_spec,),
        outputs=(output_spec,),
        example_inputs=(theta,),
        dynamic_dims=dims,
        size_cases=cases,
        solvers=(info,),
        batch_multiple=multiple,
        size_forms={"edges": PRONIC} if isinstance(inner, SpanningTreeEdges) else {},
    )


def _solver_example(solver: nn.Module) -> Tensor:
    """A small valid θ for a built-in solver (pass ``example_inputs`` for others)."""
    generator = torch.Generator().manual_seed(0)
    if isinstance(solver, TopK):
        return torch.randn(2, max(2 * solver.k, 10), generator=generator)
    if isinstance(solver, Ranking):
        return torch.randn(2, 10, generator=generator)
    if isinstance(solver, SpanningTree):
        n = solver.mask.shape[-1] if solver.mask is not None else 6
        weights = torch.randn(2, n, n, generator=generator)
        return (weights + weights.transpose(1, 2)) / 2
    if isinstance(solver, SpanningTreeEdges):
        return torch.randn(2, 20, generator=generator)
    if isinstance(solver, LinearAssignment):
        return torch.randn(2, 5, 6, generator=generator)
    if isinstance(solver, GridShortestPath):
        return torch.rand(2, 6, 7, generator=generator)
    if isinstance(solver, GraphShortestPath):
        size = (solver.num_nodes,) * 2 if solver.adjacency_mode else (solver.num_edges,)
        return torch.rand(2 * solver.batch_multiple(), *size, generator=generator)
    raise ExportError(
        f"exporting the solver {type(solver).__name__} needs example_inputs=(theta,), a "
        "small valid batch of its parameters"
    )


def _solver_layout(
    solver: nn.Module, theta: Tensor
) -> tuple[
    tuple[int | str, ...],
    dict[str, int],
    tuple[dict[str, int], ...],
    tuple[float, float],
    bool,
]:
    """Shape, dynamic dims, size cases, value range and symmetry of a built-in solver's θ."""
    sizes = list(theta.shape)
    dims = {BATCH: 1}
    if isinstance(solver, TopK | Ranking):  # over the last dimension; top-k needs n >= k
        smallest = solver.k if isinstance(solver, TopK) else 2
        names = [*(f"dim_{axis}" for axis in range(1, theta.dim() - 1)), "n"]
        dims.update({name: 1 for name in names[:-1]})
        dims["n"] = smallest
        n = sizes[-1]
        cases = tuple({"n": size} for size in sorted({max(smallest, n - 3), n + 7} - {n}))
        return (BATCH, *names), dims, cases, (-1.0, 1.0), False
    if isinstance(solver, SpanningTree):
        n = sizes[-1]
        if solver.mask is not None:
            return (BATCH, n, n), dims, (), (-1.0, 1.0), not solver.symmetrize
        dims["n"] = 1
        cases = ({"n": n + 3}, {"n": max(2, n - 2)})
        return (BATCH, "n", "n"), dims, cases, (-1.0, 1.0), not solver.symmetrize
    if isinstance(solver, SpanningTreeEdges):
        n = (1 + math.isqrt(1 + 4 * sizes[1])) // 2
        dims["edges"] = 2
        cases = ({"edges": (n + 2) * (n + 1)}, {"edges": 6})
        return (BATCH, "edges"), dims, cases, (-1.0, 1.0), False
    if isinstance(solver, LinearAssignment):
        dims.update(m=1, n=1)
        rows, cols = sizes[1], sizes[2]
        cases = ({"m": rows + 3, "n": cols + 1}, {"m": 2, "n": cols + 3})
        return (BATCH, "m", "n"), dims, cases, (-1.0, 1.0), False
    if isinstance(solver, GridShortestPath):
        dims.update(height=1, width=1)
        height, width = sizes[1], sizes[2]
        cases = ({"height": height + 3, "width": width + 5}, {"height": 2, "width": 9})
        return (BATCH, "height", "width"), dims, cases, (0.0, 1.0), False
    if isinstance(solver, GraphShortestPath):
        return (BATCH, *sizes[1:]), dims, (), (0.0, 1.0), False
    low = float(theta.min()) if theta.numel() else -1.0
    high = float(theta.max()) if theta.numel() else 1.0
    return (BATCH, *sizes[1:]), dims, (), (low, high), False


# ----------------------------------------------------------------------------- other modules


def _module_path(
    module: nn.Module,
    example_inputs: Sequence[Tensor] | None,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None,
) -> InferencePath:
    """Any module: axis 0 of every input and output is the dynamic batch, the rest fixed
    unless ``dynamic_dims`` names them (``{input name: {axis: dim name}}``; the sizes are also
    checked at other values, distinct for distinct names, so a graph that ties two of them
    fails the check)."""
    if not example_inputs:
        raise ExportError(
            f"exporting a {type(module).__name__} needs example_inputs: a tuple of tensors "
            "that forward accepts (the batch dimension first)"
        )
    for index, value in enumerate(example_inputs):
        if not isinstance(value, Tensor):
            raise ExportError(
                f"example input {index} of {type(module).__name__} is a {type(value).__name__}, "
                "not a tensor; an exported graph takes tensors only (torch.as_tensor(value))"
            )
    inputs = tuple(value.detach() for value in example_inputs)
    names = list(input_names or _forward_names(module, len(inputs)))
    if len(names) != len(inputs):
        raise ExportError(f"{len(names)} input names given for {len(inputs)} example inputs")
    extra = {name: dict(axes) for name, axes in (dynamic_dims or {}).items()}
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise ExportError(f"dynamic_dims names unknown inputs {unknown}; the inputs are {names}")
    solvers = find_solvers(module)
    multiple = batch_multiple(*(solver for _, solver in solvers))
    dims = {BATCH: multiple}
    input_specs = []
    declared: dict[str, int] = {}
    for name, value in zip(names, inputs, strict=True):
        if value.dim() == 0:
            raise ExportError(f"input {name!r} is a scalar; inputs need a batch dimension")
        shape: list[int | str] = [BATCH, *value.shape[1:]]
        for axis, dim in extra.get(name, {}).items():
            if not 0 < axis < value.dim():
                raise ExportError(f"input {name!r} has no axis {axis} to make dynamic")
            shape[axis] = dim
            dims[dim] = 1
            declared[dim] = int(value.shape[axis])
        low, high = _value_range(value)
        input_specs.append(TensorSpec(name, dtype_name(value.dtype), tuple(shape), "", low, high))
    with torch.no_grad():
        produced = as_tuple(module(*inputs))
    out_names = list(output_names or [f"output_{index}" for index in range(len(produced))])
    if len(out_names) != len(produced):
        raise ExportError(f"{len(out_names)} output names given for {len(produced)} outputs")
    # two probes grow dimension i by 2^i and by 3^i: an output axis that grows by exactly
    # dimension d's steps in both (and has its example size) follows d; a sum or multiple of
    # the sizes cannot match both (c + 2e = 2^i and c + 3e = 3^i hold only for d itself)
    for dim in declared:
        dims[dim] = _smallest_size(module, inputs, names, extra, dim, declared[dim])
    probes = [{dim: base**index for index, dim in enumerate(declared)} for base in (2, 3)]
    grown = [_grown_outputs(module, inputs, names, extra, growth, multiple) for growth in probes]
    output_specs = []
    for position, (name, value) in enumerate(zip(out_names, produced, strict=True)):
        out_shape: list[int | str] = [BATCH]
        for axis in range(1, value.dim()):
            size = int(value.shape[axis])
            steps = [int(outputs[position].shape[axis]) - size for outputs in grown]
            follows = [
                dim
                for dim, example in declared.items()
                if example == size and steps == [growth[dim] for growth in probes]
            ]
            if steps == [0, 0]:
                out_shape.append(size)  # does not follow any dynamic size
            elif follows:
                out_shape.append(follows[0])  # follows one declared dimension
            else:
                out_shape.append(f"{name}_axis{axis}")  # dynamic, some other function of them
        output_specs.append(TensorSpec(name, dtype_name(value.dtype), tuple(out_shape)))
    return InferencePath(
        name=type(module).__name__,
        kind="module",
        module=module,
        inputs=tuple(input_specs),
        outputs=tuple(output_specs),
        example_inputs=inputs,
        dynamic_dims=dims,
        size_cases=(_distinct_sizes(declared),) if declared else (),
        solvers=tuple(solver_info(obj, where) for where, obj in solvers),
        batch_multiple=multiple,
    )


def _distinct_sizes(declared: Mapping[str, int]) -> dict[str, int]:
    """A size case for the declared dimensions: each one larger than its example size, and no
    two alike (equal example sizes would hide a graph that ties two dimensions)."""
    case: dict[str, int] = {}
    for dim, size in declared.items():
        value = size + 1
        while value in case.values():
            value += 1
        case[dim] = value
    return case


def _grown_outputs(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    names: list[str],
    dynamic: Mapping[str, Mapping[int, str]],
    growth: Mapping[str, int],
    multiple: int = 1,
) -> tuple[Tensor, ...]:
    """The outputs at ``multiple`` more rows (the batch step) and ``growth[dim]`` more entries
    along every axis declared as ``dim`` (the last slice repeated). The growths are distinct
    powers of two, so an output axis that grows by one of them follows that dimension."""
    grown = []
    for name, value in zip(names, inputs, strict=True):
        rows = value.narrow(0, value.shape[0] - multiple, multiple)  # keeps whole instances
        value = torch.cat([value, rows])
        for axis, dim in dynamic.get(name, {}).items():
            last = value.narrow(axis, value.shape[axis] - 1, 1)
            value = torch.cat([value, last.repeat_interleave(growth[dim], dim=axis)], dim=axis)
        grown.append(value)
    try:
        with torch.no_grad():
            return as_tuple(module(*grown))
    except Exception as err:
        raise ExportError(
            f"{type(module).__name__} failed on inputs {multiple} larger along the batch and "
            f"larger along the declared dynamic axes {dict(dynamic)} ({err}); declare only "
            "sizes the module accepts any value of"
        ) from err


def _smallest_size(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    names: list[str],
    dynamic: Mapping[str, Mapping[int, str]],
    dim: str,
    example: int,
) -> int:
    """The smallest size of the declared dimension ``dim`` that eager PyTorch accepts (a top-k
    inside needs n >= k, a convolution its kernel size), found by bisection on the example
    cut down along every axis named ``dim``; the runner refuses smaller sizes by name."""

    def runs(size: int) -> bool:
        cut = []
        for name, value in zip(names, inputs, strict=True):
            for axis, named in dynamic.get(name, {}).items():
                if named == dim:
                    value = value.narrow(axis, 0, size)
            cut.append(value)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module(*cut)
        except Exception:
            return False
        return True

    if runs(1):
        return 1
    fails, works = 1, example  # the example itself runs
    while works - fails > 1:
        middle = (fails + works) // 2
        fails, works = (fails, middle) if runs(middle) else (middle, works)
    return works


def _forward_names(module: nn.Module, count: int) -> list[str]:
    """The names of ``forward``'s first ``count`` parameters (``input_i`` if not available)."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [
        p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= count:
        return positional[:count]
    return [f"input_{index}" for index in range(count)]


def _value_range(value: Tensor) -> tuple[float | None, float | None]:
    """Range of fresh inputs like ``value``: its own min/max (integers: max + 1 exclusive)."""
    if value.numel() == 0 or value.dtype == torch.bool:
        return None, None
    low, high = float(value.min()), float(value.max())
    if value.is_floating_point():
        return low, high if high > low else low + 1.0
    return low, high + 1


# ----------------------------------------------------------------------------- public helpers


def inference_path(
    model: nn.Module,
    *,
    example_inputs: Sequence[Tensor] | None = None,
    split: bool = False,
    solver: nn.Module | str | None = None,
    solver_params: Mapping[str, Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
) -> InferencePath:
    """The :class:`InferencePath` of a zoo model, a solver, or any other module.

    Args:
        model: a zoo model, a registered solver (or a ``DifferentiableSolver``), or a module,
            on any device (the path holds it, or a CPU copy: :func:`cpu_model`).
        example_inputs: inputs for ``forward``; zoo models and built-in solvers have defaults
            (sizes a zoo model fixes at export time, such as the map image size of
            ``grid_shortest_path``, are taken from them).
        split: export the network up to θ only; the solver runs after it. A zoo model knows
            its θ network; any other ``model`` *is* the θ network and ``solver`` names the
            solver to run after it (a registered name with ``solver_params``, or a solver).
        input_names, output_names, dynamic_dims: for modules other than zoo models and
            solvers (``dynamic_dims``: ``{input name: {axis: dim name}}``).
    """
    model = cpu_model(model)
    if example_inputs is not None:
        example_inputs = [
            value.cpu() if isinstance(value, Tensor) else value for value in example_inputs
        ]
    if isinstance(model, DifferentiableSolver) and isinstance(model.solver, nn.Module):
        model = model.solver
    if _is_zoo_model(model):
        return _zoo_path(cast(ZooModel, model), split, example_inputs)
    if split:
        return _split_module_path(
            model, example_inputs, solver, solver_params, input_names, dynamic_dims
        )
    if _is_solver(model):
        return _solver_path(model, example_inputs)
    if example_inputs is None and isinstance(model, ZooModel):  # a subclass's own forward
        example_inputs = model.example_inputs(2)
    return _module_path(model, example_inputs, input_names, output_names, dynamic_dims)


def cpu_model(model: ModuleT) -> ModuleT:
    """``model`` itself if its parameters and buffers are on the CPU, else a CPU copy of it.

    Artefacts are built and checked on the CPU: an ONNX file runs on any onnxruntime provider
    and a TorchScript file loads on any device (``torch.jit.load(path, map_location=...)``), so
    a model trained on a GPU exports as it is, and stays where it was. (Tensors held in plain
    attributes, not parameters or buffers, are not moved.)

    Raises:
        ExportError: the model is on another device and cannot be copied.
    """
    tensors = itertools.chain(model.parameters(), model.buffers())
    if all(tensor.device.type == "cpu" for tensor in tensors):
        return model
    try:
        return copy.deepcopy(model).cpu()
    except Exception as err:  # deepcopy fails in as many ways as modules hold state
        raise ExportError(
            f"{type(model).__name__} lives on another device and cannot be copied to the CPU "
            f"for export ({type(err).__name__}: {err}); put a copy of it on the CPU yourself "
            "(with its weights) and export that"
        ) from err


def path_module(model: nn.Module, split: bool = False) -> nn.Module:
    """The eager module an artefact of ``model`` holds (see :func:`inference_path`), on the
    CPU (:func:`cpu_model`)."""
    model = cpu_model(model)
    if isinstance(model, DifferentiableSolver) and isinstance(model.solver, nn.Module):
        model = model.solver
    if _is_zoo_model(model):
        zoo_model = cast(ZooModel, model)
        if split:
            return _ThetaPath(zoo_model, _theta_layout(zoo_model)[0])
        return _ZOO_PATHS[zoo_model.model_name](zoo_model)
    if not split and _is_solver(model):
        return _SolverPath(model)
    return model


def _is_zoo_model(model: nn.Module) -> bool:
    """A zoo model whose export path is known: an instance of its registered class or of a
    subclass that keeps its ``forward``. A subclass with a ``forward`` of its own exports as a
    plain module, so the artefact computes that ``forward`` (the path would skip it)."""
    expected = _ZOO_CLASSES.get(getattr(model, "model_name", ""))
    return (
        expected is not None
        and isinstance(model, expected)
        and type(model).forward is expected.forward
    )


def _is_solver(model: nn.Module) -> bool:
    return isinstance(model, Solver) and solver_spec(model) is not None


def _split_module_path(
    network: nn.Module,
    example_inputs: Sequence[Tensor] | None,
    solver: nn.Module | str | None,
    solver_params: Mapping[str, Any] | None,
    input_names: Sequence[str] | None,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None,
) -> InferencePath:
    """A user network computing θ, with the solver that runs after it."""
    if solver is None:
        raise ExportError(
            "a split export of a module other than a zoo model needs solver=: the registered "
            "name (with solver_params) or the solver object that runs on the network's output θ"
        )
    built = get_solver(solver, **(solver_params or {})) if isinstance(solver, str) else solver
    if isinstance(built, nn.Module):
        built = cpu_model(built)
    path = _module_path(network, example_inputs, input_names, ["theta"], dynamic_dims)
    if len(path.outputs) != 1:
        raise ExportError(
            f"the θ network of a split export must return one tensor θ, it returns "
            f"{len(path.outputs)}"
        )
    path.solver_after = solver_info(built, "after the exported network")
    path.batch_multiple = math.lcm(path.batch_multiple, batch_multiple(built))
    path.dynamic_dims[BATCH] = path.batch_multiple
    with torch.no_grad():
        theta = as_tuple(network(*path.example_inputs))[0]
    check_rebuilds(built, path.solver_after, theta)
    return path


def solver_info(solver: object, location: str) -> SolverInfo:
    """Registry name, parameters, sense and exportability of a solver object (of the solver
    inside a :class:`~aimle_zoo.solvers.CachedSolver`, which in eval mode only calls it)."""
    if isinstance(solver, CachedSolver):
        solver = solver.solver
    spec = solver_spec(solver)
    sense: str
    if spec is not None:
        name, sense, exportable = spec.name, spec.sense, spec.exportable
    else:
        name = getattr(solver, "__qualname__", type(solver).__name__)
        sense, exportable = str(getattr(solver, "sense", "max")), isinstance(solver, nn.Module)
    own_sense = vars(solver).get("sense") if hasattr(solver, "__dict__") else None
    return SolverInfo(
        name=name,
        params=solver_parameters(solver),
        sense=str(own_sense or sense),
        exportable=exportable,
        location=location,
    )


def solver_parameters(solver: object) -> dict[str, Any]:
    """The keyword parameters a solver was built with (JSON-able).

    ``get_solver`` records them; for a solver built directly, the constructor arguments that
    the instance keeps as attributes of the same name are read back.
    """
    recorded = getattr(solver, "params", None)
    if isinstance(recorded, dict):
        return {key: _jsonable(value) for key, value in recorded.items()}
    if not isinstance(solver, nn.Module):
        return {}
    try:
        signature = inspect.signature(type(solver).__init__)
    except (TypeError, ValueError):
        return {}
    params = {}
    for name in list(signature.parameters)[1:]:
        if hasattr(solver, name):
            params[name] = _jsonable(getattr(solver, name))
    return params


def batch_multiple(*solvers: object) -> int:
    """The batch step every one of ``solvers`` accepts: the least common multiple of their
    :meth:`~aimle_zoo.solvers.Solver.batch_multiple` (1 for solvers without one)."""
    multiple = 1
    for solver in solvers:
        if isinstance(solver, DifferentiableSolver):
            solver = solver.solver
        method = getattr(solver, "batch_multiple", None)
        if callable(method):
            multiple = math.lcm(multiple, int(method()))
    return multiple


def find_solvers(module: nn.Module) -> list[tuple[str, object]]:
    """``(location, solver)`` of every solver in ``module`` (not descending into solvers)."""
    found: list[tuple[str, object]] = []

    def visit(node: nn.Module, where: str) -> None:
        if isinstance(node, DifferentiableSolver):
            found.append((f"{where}.solver" if where else "solver", node.solver))
            return
        if isinstance(node, Solver) or solver_spec(node) is not None:
            found.append((where or "<model>", node))
            return
        for name, child in node.named_children():
            visit(child, f"{where}.{name}" if where else name)

    visit(module, "")
    return found


def check_exportable(path: InferencePath) -> None:
    """Raise :class:`NonExportableSolverError` if a solver in ``path`` cannot be exported."""
    for info in path.solvers:
        if info.exportable:
            continue
        raise NonExportableSolverError(
            f"the solver {info.name!r} (at {info.location}) is registered as non-exportable: "
            "its forward is not made of tensor operations, so neither TorchScript nor ONNX can "
            "hold it. Two ways out: (1) implement the solver with tensor operations (batched, "
            "no Python callbacks, no custom autograd Function) and register it with "
            "exportable=True; or (2) export the network up to θ and run the solver after "
            "onnxruntime: aimle_zoo.export.to_onnx(model, path, split=True) for a zoo model, "
            f"or to_onnx(theta_network, path, split=True, solver={info.name!r}) for your "
            "own, then aimle_zoo.export.SplitPipeline(path) runs onnxruntime and the solver."
        )


def check_eval_mode(model: nn.Module) -> None:
    """Raise :class:`ExportError` if ``model`` or a submodule is in training mode.

    Solvers are exempt: they compute the same thing in both modes.

    Raises:
        TypeError: ``model`` is not a module (e.g. arguments swapped).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"expected the model as an nn.Module (a zoo model, a solver or a module), got "
            f"{type(model).__name__}; the model comes first: to_onnx(model, path), "
            "to_torchscript(model, path), verify(model, artefact)"
        )
    solver_parts = {
        id(part)
        for module in model.modules()
        if isinstance(module, Solver)
        for part in module.modules()
    }
    training = [
        name or "<model>"
        for name, module in model.named_modules()
        if module.training and id(module) not in solver_parts
    ]
    if training:
        shown = ", ".join(training[:3]) + (", ..." if len(training) > 3 else "")
        raise ExportError(
            f"{type(model).__name__} is in training mode ({shown}): the export holds the "
            "noise-free MAP path of eval mode (no sampling, no dropout, batch-norm running "
            "statistics); call model.eval() before exporting"
        )


def dims_of(specs: Sequence[TensorSpec], values: Sequence[Tensor]) -> dict[str, int]:
    """Size of every named dimension of ``specs`` in ``values``."""
    sizes: dict[str, int] = {}
    for spec, value in zip(specs, values, strict=True):
        for dim, size in zip(spec.shape, value.shape, strict=True):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    return sizes


def random_inputs(
    specs: Sequence[TensorSpec], sizes: Mapping[str, int], generator: torch.Generator
) -> tuple[Tensor, ...]:
    """Fresh random inputs: uniform in ``[low, high]`` (integers in ``[low, high)``)."""
    values = []
    for spec in specs:
        shape = [sizes[dim] if isinstance(dim, str) else dim for dim in spec.shape]
        dtype = getattr(torch, spec.dtype)
        low = 0.0 if spec.low is None else spec.low
        high = 1.0 if spec.high is None else spec.high
        if dtype == torch.bool:
            value = torch.rand(shape, generator=generator) < 0.5
        elif dtype.is_floating_point:
            value = torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low
            value = value.to(dtype)
        else:
            value = torch.randint(int(low), int(high), shape, generator=generator, dtype=dtype)
        if spec.symmetric:
            value = (value + value.transpose(-1, -2)) / 2
        values.append(value)
    return tuple(values)


def as_tuple(value: object) -> tuple[Tensor, ...]:
    """Outputs as a tuple of tensors (a single tensor becomes a 1-tuple)."""
    if isinstance(value, Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(item, Tensor) for item in value):
        return tuple(value)
    raise ExportError(
        f"forward must return a tensor or a tuple of tensors to be exported, got "
        f"{type(value).__name__}"
    )


def dtype_name(dtype: torch.dtype) -> str:
    """numpy name of a torch dtype (``torch.float32`` -> ``"float32"``)."""
    if dtype not in _DTYPE_NAMES:
        raise ExportError(f"tensors of dtype {dtype} cannot be exported as inputs or outputs")
    return _DTYPE_NAMES[dtype]


#: Tensors up to this many entries are recorded in full (solver masks, edge lists).
_RECORDED_TENSOR_SIZE = 65536


def _jsonable(value: Any) -> Any:
    """``value`` with tuples replaced by lists and tensors by ``{"tensor": nested list,
    "dtype"}`` (:func:`from_jsonable` turns them back), or by ``{"tensor_shape", "dtype"}``
    above :data:`_RECORDED_TENSOR_SIZE` entries."""
    if isinstance(value, Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if value.numel() <= _RECORDED_TENSOR_SIZE:
            return {"tensor": value.tolist(), "dtype": dtype}
        return {"tensor_shape": list(value.shape), "dtype": dtype}
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def from_jsonable(value: Any) -> Any:
    """The inverse of :func:`_jsonable` for recorded values (tensors rebuilt).

    Raises:
        ExportError: a tensor was too large to record.
    """
    if isinstance(value, Mapping):
        if set(value) == {"tensor", "dtype"}:
            return torch.tensor(value["tensor"], dtype=getattr(torch, str(value["dtype"])))
        if set(value) == {"tensor_shape", "dtype"}:
            raise ExportError(
                f"a {value['dtype']} tensor of shape {value['tensor_shape']} was too large to "
                f"record (more than {_RECORDED_TENSOR_SIZE} entries)"
            )
        return {key: from_jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_jsonable(item) for item in value]
    return value


def solver_from_info(info: Mapping[str, Any]) -> nn.Module:
    """The solver a :class:`SolverInfo` (or its JSON) describes, built by ``get_solver``."""
    return get_solver(str(info["name"]), **from_jsonable(dict(info["params"])))


def check_rebuilds(solver: object, info: SolverInfo, theta: Tensor) -> None:
    """The solver after a split export must come back from its recorded name and parameters
    and give the same solution on ``theta``: deployment rebuilds it from the metadata.

    Raises:
        ExportError: it cannot be rebuilt, or the rebuilt solver answers differently.
    """
    what = f"the solver after the split, {info.name} with parameters {info.params}"
    advice = (
        f"build it with get_solver({info.name!r}, **params) so that its parameters are "
        "recorded, or export the whole model instead of a split"
    )
    try:
        rebuilt = solver_from_info(info.to_json())
        with torch.no_grad():
            same = torch.equal(rebuilt(theta), cast(nn.Module, solver)(theta))
    except Exception as err:
        raise ExportError(f"{what} cannot be rebuilt from the metadata ({err}); {advice}") from err
    if not same:
        raise ExportError(
            f"{what} rebuilt from the metadata answers differently from the given solver "
            f"(parameters it keeps but does not record); {advice}"
        )


__all__ = [
    "BATCH",
    "ExportError",
    "InferencePath",
    "NonExportableSolverError",
    "SolverInfo",
    "TensorSpec",
    "as_tuple",
    "check_eval_mode",
    "check_exportable",
    "check_rebuilds",
    "cpu_model",
    "dims_of",
    "find_solvers",
    "from_jsonable",
    "inference_path",
    "path_module",
    "random_inputs",
    "solver_from_info",
    "solver_info",
    "solver_parameters",
]
