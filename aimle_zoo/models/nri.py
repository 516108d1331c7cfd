"""Neural relational inference with a spanning-tree latent (the AIMLE and SST graph layouts).

Directed edges of an n-vertex graph are numbered e = i·(n−1) + j′ (receiver i, sender j, j′ =
j with the diagonal removed), E = n(n−1) of them; every edge vector below is ``[B, E]`` in that
order. The factor-graph encoder maps trajectories ``[B, n, T, d]`` to one logit per directed
edge, symmetrised by the mean of both directions; the latent is the maximum spanning tree of
those logits (solver ``"mst_edges"``, both directions of each tree edge set) made
differentiable by the latent layer; the decoder predicts the trajectories with messages along
two edge types, ``edges = stack(1 − z, z)`` (type 0 = "no edge").

Loss per instance (summed over the N latent samples, averaged over the batch):
NLL = Σ_{vertices, t, dims} (x̂ − x)² / (2σ²) / n with σ² = 5e-5, and the Gumbel-to-Gumbel KL
of the logits, KL = Σ_e (l_e + e^{−l_e} − 1) / n; ELBO = −(NLL + KL).

Evaluation runs in eval mode with the MAP tree and 1-step teacher forcing; the edge accuracy,
precision and recall are those of the MAP tree (the reference scored one Gumbel-perturbed tree).
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..estimators import AIMLE, AdaptiveTarget, Estimator, SumOfGamma, expand_samples
from ..solvers import checks_enabled
from ._base import (
    ModelInputError,
    ZooModel,
    batch_total,
    check_sizes,
    check_tensor,
    example_generator,
    unpack_batch,
)
from ._registry import register_model


def edge_endpoints(num_vertices: int) -> tuple[Tensor, Tensor]:
    """Receiver i and sender j ``[E]`` of every directed edge e = i·(n−1) + j′."""
    off_diagonal = ~torch.eye(num_vertices, dtype=torch.bool)
    receivers, senders = off_diagonal.nonzero(as_tuple=True)  # row-major: receiver-major
    return receivers, senders


def relation_matrices(num_vertices: int) -> tuple[Tensor, Tensor]:
    """One-hot receiver and sender matrices ``[E, n]`` of the directed edges.

    Row e of the receiver matrix is the one-hot of i and of the sender matrix of j, for
    e = i·(n−1) + j′.
    """
    receivers, senders = edge_endpoints(num_vertices)
    return (
        F.one_hot(receivers, num_vertices).float(),
        F.one_hot(senders, num_vertices).float(),
    )


def reverse_edge_index(num_vertices: int) -> Tensor:
    """``[E]`` index of the reverse edge (j → i) of every directed edge (i ← j)."""
    receivers, senders = edge_endpoints(num_vertices)
    # position of (receiver j, sender i): j·(n−1) + (i if i < j else i − 1)
    return senders * (num_vertices - 1) + receivers - (receivers > senders).long()


def gaussian_nll(prediction: Tensor, target: Tensor, variance: float) -> Tensor:
    """Σ_{vertices, t, dims} (x̂ − x)² / (2σ²) / n per instance: ``[R, n, T, d]`` → ``[R]``."""
    squared = ((prediction - target) ** 2).sum(dim=(1, 2, 3))
    return squared / (2 * variance) / prediction.shape[1]


def gumbel_kl(logits: Tensor, num_vertices: int) -> Tensor:
    """KL(Gumbel(l) ‖ Gumbel(0)) = Σ_e (l_e + e^{−l_e} − 1) / n per instance.

    ``logits [B, E]`` → ``[B]``.
    """
    return (logits + torch.exp(-logits) - 1).sum(dim=1) / num_vertices


def edge_metrics(predicted: Tensor, truth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-instance accuracy, precision and recall of 0/1 edge vectors ``[B, E]`` → 3 × ``[B]``.

    Precision (recall) is 0 for an instance with no predicted (true) edge.
    """
    predicted, truth = predicted.bool(), truth.bool()
    true_positive = (predicted & truth).sum(dim=1).double()
    accuracy = (predicted == truth).double().mean(dim=1)
    precision = true_positive / predicted.sum(dim=1).clamp_min(1)
    recall = true_positive / truth.sum(dim=1).clamp_min(1)
    return accuracy, precision, recall


def incoming_edge_sum(edge_values: Tensor, num_vertices: int) -> Tensor:
    """Σ over each vertex's incoming edges: ``[B, E, *F]`` → ``[B, n, *F]``.

    Edges are receiver-major, so the n − 1 incoming edges of vertex i are the consecutive
    entries i·(n−1) … i·(n−1) + n − 2 (the same sum as ``receivers.t() @ edge_values``).
    """
    return edge_values.unflatten(1, (num_vertices, num_vertices - 1)).sum(dim=2)


def pair_linear(
    x: Tensor,
    senders: Tensor,
    receivers: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    skip: Tensor | None = None,
) -> Tensor:
    """A linear layer on edge features [x_sender, x_receiver(, skip)] without building them.

    W·[x_j; x_i; s_e] + b = (x W_sᵀ)_j + (x W_rᵀ + b)_i + s_e W_kᵀ: the two vertex terms are
    computed once per vertex and gathered to the edges (n instead of n(n−1) rows).

    Args:
        x: vertex features ``[B, n, F]``.
        senders, receivers: ``[E]`` vertex index of every edge.
        weight: ``[out, 2F]`` (or ``[out, 2F + F_skip]`` with ``skip``), bias ``[out]``.
        skip: optional edge features ``[B, E, F_skip]`` appended to the pair.

    Returns:
        ``[B, E, out]``.
    """
    width = x.shape[-1]
    by_sender = F.linear(x, weight[:, :width])  # [B, n, out]
    by_receiver = F.linear(x, weight[:, width : 2 * width], bias)  # [B, n, out]
    out = by_sender.index_select(1, senders) + by_receiver.index_select(1, receivers)
    if skip is not None:
        out = out + F.linear(skip, weight[:, 2 * width :])
    return out  # [B, E, out]


class _NodeMLP(nn.Module):
    """Linear → ELU → dropout → Linear → ELU → BatchNorm1d over the feature dimension."""

    def __init__(self, fan_in: int, hidden: int, fan_out: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(fan_in, hidden)
        self.fc2 = nn.Linear(hidden, fan_out)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(fan_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.after_first_layer(self.fc1(x))

    def after_first_layer(self, pre_activation: Tensor) -> Tensor:
        """The MLP from fc1's output ``[B, items, hidden]`` on → ``[B, items, F]``."""
        hidden = self.dropout(F.elu(pre_activation))
        out = F.elu(self.fc2(hidden))  # [B, items, F]
        return self.norm(out.reshape(-1, out.shape[-1])).reshape(out.shape)


class MLPEncoder(nn.Module):
    """The factor-graph NRI encoder: trajectories ``[B, n, T, d]`` → edge logits ``[B, E]``.

    mlp1 on each vertex's flattened trajectory; vertex → edge ([sender, receiver]) → mlp2
    (= skip); edge → vertex (sum over incoming edges / n) → mlp3; vertex → edge, concatenated
    with the skip → mlp4; a Linear to one logit per edge. Linear layers use Xavier-normal
    weights and biases 0.1. The first layers of mlp2 and mlp4 run on vertices, not on the
    concatenated edge features (:func:`pair_linear`).
    """

    def __init__(self, inputs: int, hidden: int, num_vertices: int, dropout: float) -> None:
        super().__init__()
        self.num_vertices = num_vertices
        self.mlp1 = _NodeMLP(inputs, hidden, hidden, dropout)
        self.mlp2 = _NodeMLP(2 * hidden, hidden, hidden, dropout)
        self.mlp3 = _NodeMLP(hidden, hidden, hidden, dropout)
        self.mlp4 = _NodeMLP(3 * hidden, hidden, hidden, dropout)
        self.out = nn.Linear(hidden, 1)
        receivers, senders = edge_endpoints(num_vertices)
        self.receiver_index = nn.Buffer(receivers, persistent=False)  # [E]
        self.sender_index = nn.Buffer(senders, persistent=False)  # [E]
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.constant_(module.bias, 0.1)

    def edge_to_node(self, x: Tensor) -> Tensor:
        """``[B, E, F]`` → ``[B, n, F]``: sum over incoming edges, divided by n."""
        return incoming_edge_sum(x, self.num_vertices) / self.num_vertices

    def forward(self, trajectories: Tensor) -> Tensor:
        senders, receivers = self.sender_index, self.receiver_index
        x = self.mlp1(trajectories.flatten(2))  # [B, n, H]
        first = self.mlp2.fc1
        skip = self.mlp2.after_first_layer(
            pair_linear(x, senders, receivers, first.weight, first.bias)
        )  # [B, E, H]
        x = self.mlp3(self.edge_to_node(skip))  # [B, n, H]
        first = self.mlp4.fc1
        x = self.mlp4.after_first_layer(
            pair_linear(x, senders, receivers, first.weight, first.bias, skip)
        )  # [B, E, H]
        return self.out(x).squeeze(-1)  # [B, E]


class _EdgeGroup(NamedTuple):
    """The edges of one edge type whose weight is non-zero (or zero), as flat rows b·E + e.

    ``senders``/``receivers`` are the flat vertex rows b·n + j / b·n + i of those edges and
    ``weights`` their edge weights ``[rows]``.
    """

    senders: Tensor
    receivers: Tensor
    weights: Tensor


class _ZeroWeightEdges(torch.autograd.Function):
    """Identity on the aggregated messages; its backward adds ∂L/∂w of zero-weight edges.

    An edge of weight w = 0 adds w·m = 0 to its receiver, so its message m is not needed in
    the value, only in ∂L/∂w = Σ_{t, h} g_{receiver, t, h} · m_{t, h}.
    """

    @staticmethod
    def forward(
        ctx: Any, incoming: Tensor, weights: Tensor, messages: Tensor, receivers: Tensor
    ) -> Tensor:
        ctx.save_for_backward(messages, receivers)
        return incoming

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        messages, receivers = ctx.saved_tensors  # [rows, T', H], [rows]
        weight_grad = (grad.index_select(0, receivers) * messages).sum(dim=(1, 2))  # [rows]
        return grad, weight_grad, None, None


class MLPDecoder(nn.Module):
    """The NRI MLP decoder with per-edge-type messages; predicts x_{t+1} = x_t + Δx.

    For every edge type τ a 2-layer ReLU MLP maps [sender, receiver] states to a message,
    weighted by ``edges[..., τ]``; messages are summed at the receivers and a 3-layer ReLU MLP
    on [x, messages] gives Δx. With ``steps`` prediction steps, every ``steps``-th true frame
    starts an autoregressive rollout of ``steps`` steps (steps = 1: teacher forcing).

    The computation skips what cannot change the output or the gradients: rollout steps whose
    frame lies beyond the last one (for T = 10 and 9 steps only the rollout from frame 0 is
    needed), and messages of edges of weight 0, which are computed without autograd and only
    enter ∂L/∂edges (:class:`_ZeroWeightEdges`), or not at all when the edge weights need no
    gradient. With 0/1 edges (a tree and its complement) each edge then backpropagates through
    one message MLP instead of two.
    """

    def __init__(
        self, dims: int, hidden: int, num_vertices: int, edge_types: int, dropout: float
    ) -> None:
        super().__init__()
        self.messages = nn.ModuleList(
            nn.Sequential(
                nn.Linear(2 * dims, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
            )
            for _ in range(edge_types)
        )
        self.out1 = nn.Linear(dims + hidden, hidden)
        self.out2 = nn.Linear(hidden, hidden)
        self.out3 = nn.Linear(hidden, dims)
        self.dropout = nn.Dropout(dropout)
        self.num_vertices = num_vertices
        receivers, senders = edge_endpoints(num_vertices)
        self.receiver_index = nn.Buffer(receivers, persistent=False)  # [E]
        self.sender_index = nn.Buffer(senders, persistent=False)  # [E]

    @torch.jit.unused
    def step(self, x: Tensor, edges: Tensor) -> Tensor:
        """One step x_t → x_{t+1} in the reference layout (``forward`` works vertex-major).

        ``x [B, T', n, d]`` states, ``edges [B, 1, E, types]`` edge weights → ``[B, T', n, d]``.
        """
        groups = self._edge_groups(edges.flatten(1, 2))
        return self._step(x.transpose(1, 2), groups).transpose(1, 2)

    @torch.jit.unused
    def forward(self, trajectories: Tensor, edges: Tensor, steps: int) -> Tensor:
        """Predictions of frames 1..T−1 (training and evaluation only, not scripted).

        ``trajectories [B, n, T, d]``, ``edges [B, E, types]`` → ``[B, n, T−1, d]``.
        """
        frames = trajectories.shape[2] - 1  # to predict
        groups = self._edge_groups(edges)
        state = trajectories[:, :, 0::steps]  # [B, n, T', d], a rollout from every start
        rollout: list[Tensor] = []
        for step in range(steps):
            # start t' predicts frame t'·steps + step + 1: only those <= T − 1 are kept
            starts = (frames - 1 - step) // steps + 1
            if starts <= 0:
                break
            state = self._step(state[:, :, :starts], groups)
            rollout.append(state)
        predicted = [rollout[frame % steps][:, :, frame // steps] for frame in range(frames)]
        return torch.stack(predicted, dim=2)  # [B, n, T−1, d]

    def _edge_groups(self, edges: Tensor) -> list[tuple[_EdgeGroup, _EdgeGroup | None]]:
        """Per edge type: the edges of non-zero weight, and those of zero weight when the
        weights need a gradient (else ``None``). ``edges [B, E, types]``."""
        batch, num_edges, _ = edges.shape
        offsets = torch.arange(batch, device=edges.device).mul_(self.num_vertices)  # [B]
        senders = (offsets[:, None] + self.sender_index).flatten()  # [B·E]
        receivers = (offsets[:, None] + self.receiver_index).flatten()  # [B·E]
        flat = edges.reshape(batch * num_edges, -1)  # [B·E, types]
        groups = []
        for weights in flat.unbind(1):
            nonzero = weights != 0
            active = self._group(nonzero, senders, receivers, weights)
            idle = None
            if weights.requires_grad:
                idle = self._group(~nonzero, senders, receivers, weights)
            groups.append((active, idle))
        return groups

    @staticmethod
    def _group(rows: Tensor, senders: Tensor, receivers: Tensor, weights: Tensor) -> _EdgeGroup:
        index = rows.nonzero().squeeze(1)
        return _EdgeGroup(senders[index], receivers[index], weights[index])

    def _step(self, x: Tensor, groups: list[tuple[_EdgeGroup, _EdgeGroup | None]]) -> Tensor:
        """One step x_t → x_{t+1} in vertex-major layout ``[B, n, T', d]``.

        The first message layer runs on vertices, W·[x_j; x_i] + b = (W_s x)_j + (W_r x + b)_i,
        and so does out1 on [x, messages]; the messages are added to their receivers with
        ``index_add``.
        """
        batch, vertices, starts, dims = x.shape
        states = x.reshape(batch * vertices, starts, dims)  # [B·n, T', d]
        incoming = x.new_zeros(batch * vertices, starts, self.out2.in_features)  # [B·n, T', H]
        idle_messages = []
        for module, (active, idle) in zip(self.messages, groups, strict=True):
            message = cast(nn.Sequential, module)
            first = cast(nn.Linear, message[0])
            by_sender = F.linear(states, first.weight[:, :dims])  # [B·n, T', H]
            by_receiver = F.linear(states, first.weight[:, dims:], first.bias)  # [B·n, T', H]
            sent = self._message(message, by_sender, by_receiver, active)  # [rows, T', H]
            weighted = (sent * active.weights[:, None, None]).to(incoming.dtype)  # autocast
            incoming.index_add_(0, active.receivers, weighted)
            if idle is not None and idle.weights.numel():
                with torch.no_grad():
                    idle_messages.append(
                        (idle, self._message(message, by_sender, by_receiver, idle))
                    )
        for idle, sent in idle_messages:
            incoming = _ZeroWeightEdges.apply(incoming, idle.weights, sent, idle.receivers)
        incoming = incoming.reshape(batch, vertices, starts, -1)  # [B, n, T', H]
        weight = self.out1.weight
        hidden = F.linear(x, weight[:, :dims]) + F.linear(
            incoming, weight[:, dims:], self.out1.bias
        )
        hidden = self.dropout(F.relu(hidden))
        hidden = self.dropout(F.relu(self.out2(hidden)))
        return x + self.out3(hidden)

    @staticmethod
    def _message(
        message: nn.Sequential, by_sender: Tensor, by_receiver: Tensor, group: _EdgeGroup
    ) -> Tensor:
        """The message MLP on the edges of ``group``: ``[rows, T', H]``."""
        hidden = by_sender.index_select(0, group.senders) + by_receiver.index_select(
            0, group.receivers
        )
        hidden = message[2](message[1](hidden))  # ReLU, dropout
        return message[4](message[3](hidden))  # Linear, ReLU


@register_model("nri_tree")
class NRITree(ZooModel, tags=["nri", "graph-layout", "spanning-tree"]):
    """NRI with a spanning-tree latent (see the module docstring).

    Args:
        num_vertices: n.
        timesteps: T, frames per trajectory.
        dims: d, coordinates per frame (2).
        encoder_hidden: encoder width (256).
        decoder_hidden: decoder message and output width (256).
        prediction_steps: autoregressive steps during training (9 for T = 10, 10 for T = 20).
        output_variance: σ² of the Gaussian likelihood (5e-5).
        encoder_dropout: dropout inside the encoder MLPs.
        decoder_dropout: dropout inside the decoder.
        symmetrize_logits: replace l_ij and l_ji by their mean before the latent and the KL
            (the reference's default).
        estimator: estimator name or config dict; ``None`` is the reference T = 10 forward
            recipe (forward-difference AIMLE, SoG(k = n, s = 10) noise, τ = 1, adaptive target
            β₀ = 0, η = 1e-3, c = 1, one sample).
    """

    def __init__(
        self,
        num_vertices: int = 10,
        timesteps: int = 10,
        dims: int = 2,
        encoder_hidden: int = 256,
        decoder_hidden: int = 256,
        prediction_steps: int = 9,
        output_variance: float = 5e-5,
        encoder_dropout: float = 0.0,
        decoder_dropout: float = 0.0,
        symmetrize_logits: bool = True,
        estimator: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_sizes(
            name,
            num_vertices=num_vertices,
            timesteps=timesteps,
            dims=dims,
            encoder_hidden=encoder_hidden,
            decoder_hidden=decoder_hidden,
            prediction_steps=prediction_steps,
        )
        if num_vertices < 2:
            raise ValueError(f"{name}: num_vertices must be >= 2, got {num_vertices}")
        if not 1 <= prediction_steps <= timesteps:
            raise ValueError(
                f"{name}: prediction_steps must be in [1, timesteps={timesteps}], "
                f"got {prediction_steps}"
            )
        if timesteps < 2:
            raise ValueError(
                f"{name}: timesteps must be >= 2 (a frame to predict), got {timesteps}"
            )
        self.num_vertices = num_vertices
        self.num_edges = num_vertices * (num_vertices - 1)
        self.timesteps = timesteps
        self.dims = dims
        self.prediction_steps = prediction_steps
        self.output_variance = output_variance
        self.symmetrize_logits = symmetrize_logits
        self.encoder = MLPEncoder(timesteps * dims, encoder_hidden, num_vertices, encoder_dropout)
        self.decoder = MLPDecoder(dims, decoder_hidden, num_vertices, 2, decoder_dropout)
        self.reverse_edges = nn.Buffer(reverse_edge_index(num_vertices), persistent=False)
        self.latent_layer = self._build_latent_layer(
            "mst_edges", estimator, lambda: _default_nri_estimator(num_vertices)
        )

    def _check_trajectories(self, trajectories: Any, where: str) -> Tensor:
        n, t, d = self.num_vertices, self.timesteps, self.dims
        return check_tensor(
            f"{type(self).__name__}.{where}",
            "trajectories",
            trajectories,
            shape=f"[B, {n}, {t}, {d}] (vertices, timesteps, dims)",
            ndim=4,
            sizes={1: n, 2: t, 3: d},
            nonempty=True,
            finite=True,
        )

    def _check_edges(self, edges: Any, batch: int, where: str) -> Tensor:
        name = f"{type(self).__name__}.{where}"
        checked = check_tensor(
            name,
            "ground-truth edges",
            edges,
            shape=f"[B, {self.num_edges}] (directed edges, 0/1)",
            ndim=2,
            dtype="any",
            sizes={0: batch, 1: self.num_edges},
        )
        if checks_enabled() and bool(((checked != 0) & (checked != 1)).any()):
            raise ModelInputError(f"{name}: ground-truth edges must be 0/1 indicators")
        return checked

    def edge_logits(self, trajectories: Tensor) -> Tensor:
        """Encoder logits ``[B, E]``, symmetrised if ``symmetrize_logits``."""
        logits = self.encoder(trajectories)
        if self.symmetrize_logits:
            logits = (logits + logits[:, self.reverse_edges]) / 2
        return logits

    def sample_edges(self, logits: Tensor) -> Tensor:
        """Tree indicators ``[B·N, E]`` (``[B, E]`` MAP tree in eval mode)."""
        return self.latent_layer(logits)

    def forward(self, trajectories: Tensor) -> Tensor:
        """The inferred tree ``[B, E]`` (0/1 per directed edge; ``[B·N, E]`` samples in
        training mode) of trajectories ``[B, n, T, d]``."""
        if not torch.jit.is_scripting():
            self._check_trajectories(trajectories, "forward")
        return self.sample_edges(self.edge_logits(trajectories))

    def reconstruct(self, trajectories: Tensor, tree: Tensor, steps: int) -> Tensor:
        """Decoder predictions ``[R, n, T−1, d]`` of trajectories ``[R, n, T, d]`` given tree
        indicators ``[R, E]``."""
        edges = torch.stack([1 - tree, tree], dim=-1)  # [R, E, 2]
        return self.decoder(trajectories, edges, steps)

    def _terms(self, trajectories: Tensor, steps: int) -> tuple[Tensor, Tensor, int]:
        """NLL per row ``[B·N]``, KL per instance ``[B]`` and N, with the current mode."""
        logits = self.edge_logits(trajectories)  # [B, E]
        tree = self.sample_edges(logits)  # [B·N, E]
        samples = tree.shape[0] // trajectories.shape[0]
        tiled = expand_samples(trajectories, samples)
        prediction = self.reconstruct(tiled, tree, steps)
        nll = gaussian_nll(prediction, tiled[:, :, 1:], self.output_variance)
        return nll, gumbel_kl(logits, self.num_vertices), samples

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """mean_b Σ_s (NLL_bs + KL_b) with ``prediction_steps`` rollouts.

        ``batch = (trajectories [B, n, T, d][, edges [B, E]])``.
        """
        self._warn_if_eval()
        trajectories, _ = unpack_batch(
            f"{type(self).__name__}.training_loss", batch, ("trajectories", "edges"), 1
        )
        trajectories = self._check_trajectories(trajectories, "training_loss")
        nll, kl, samples = self._terms(trajectories, self.prediction_steps)
        loss = (nll.reshape(-1, samples) + kl.unsqueeze(1)).sum(dim=1).mean()
        return loss, {"nll": float(nll.detach().mean()), "kl": float(kl.detach().mean())}

    def evaluate_batch(self, batch: Any) -> dict[str, Tensor]:
        """Sums with the MAP tree and 1-step teacher forcing: ``nll_sum``, ``kl_sum``,
        ``loss_sum`` (NLL + KL), ``elbo_sum`` (−loss), ``mse_sum`` (mean squared error per
        instance), and with ground-truth edges ``accuracy_sum``, ``precision_sum``,
        ``recall_sum``; ``count``. ``batch = (trajectories [B, n, T, d][, edges [B, E]])``."""
        where = f"{type(self).__name__}.evaluate_batch"
        trajectories, edges = unpack_batch(where, batch, ("trajectories", "edges"), 1)
        with self._evaluating():
            trajectories = self._check_trajectories(trajectories, "evaluate_batch")
            logits = self.edge_logits(trajectories)
            tree = self.sample_edges(logits)  # [B, E]
            prediction = self.reconstruct(trajectories, tree, 1)
            target = trajectories[:, :, 1:]
            nll = gaussian_nll(prediction, target, self.output_variance)
            kl = gumbel_kl(logits, self.num_vertices)
            metrics = {
                "nll_sum": batch_total(nll),
                "kl_sum": batch_total(kl),
                "loss_sum": batch_total(nll + kl),
                "elbo_sum": -batch_total(nll + kl),
                "mse_sum": batch_total(((prediction - target) ** 2).mean(dim=(1, 2, 3))),
                "count": torch.tensor(trajectories.shape[0]),
            }
            if edges is not None:
                truth = self._check_edges(edges, trajectories.shape[0], "evaluate_batch")
                accuracy, precision, recall = edge_metrics(tree, truth)
                metrics.update(
                    accuracy_sum=batch_total(accuracy),
                    precision_sum=batch_total(precision),
                    recall_sum=batch_total(recall),
                )
        return metrics

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Uniform random trajectories ``[batch_size, n, T, d]`` in [−1, 1]."""
        shape = (batch_size, self.num_vertices, self.timesteps, self.dims)
        trajectories = torch.rand(shape, generator=example_generator()) * 2 - 1
        return (self._as_input(trajectories),)


def _default_nri_estimator(num_vertices: int) -> Estimator:
    """The AIMLE authors' NRI T = 10 forward recipe: forward-difference AIMLE,
    SoG(k = n, s = 10) noise with τ = 1, adaptive target β₀ = 0, η = 1e-3, c = 1, μ = 0."""
    return AIMLE(
        target=AdaptiveTarget(initial_beta=0.0, target_norm=1.0, update_step=1e-3, momentum=0.0),
        noise=SumOfGamma(k=num_vertices, iterations=10),
        samples=1,
        input_temperature=1.0,
        target_temperature=1.0,
        symmetric=False,
    )
