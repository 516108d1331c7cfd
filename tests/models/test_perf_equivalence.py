"""The fast model computations against straightforward implementations, values and gradients.

The straightforward versions are written as in the reference code (relation matrices, both
edge types on every edge, every rollout start for every step, concatenated features), in
float64, so the comparisons are tight.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aimle_zoo.models import create_model
from aimle_zoo.models.grid_path import GridShortestPath
from aimle_zoo.models.l2x import L2XText
from aimle_zoo.models.nri import (
    MLPDecoder,
    MLPEncoder,
    incoming_edge_sum,
    pair_linear,
    relation_matrices,
)

from ._helpers import make_batch, random_tree_edges, tiny_model


def _relations(n: int) -> tuple[Tensor, Tensor]:
    receivers, senders = relation_matrices(n)
    return receivers.double(), senders.double()


def _dense_decoder(decoder: MLPDecoder, trajectories: Tensor, edges: Tensor, steps: int) -> Tensor:
    """The reference decoder, dropout 0: ``[B, n, T, d]``, ``[B, E, 2]`` → ``[B, n, T−1, d]``."""
    receivers, senders = _relations(trajectories.shape[1])
    frames = trajectories.transpose(1, 2)  # [B, T, n, d]
    weights = edges.unsqueeze(1)  # [B, 1, E, types]
    state = frames[:, 0::steps]
    rollout = []
    for _ in range(steps):
        pairs = torch.cat([senders @ state, receivers @ state], dim=-1)  # [B, T', E, 2d]
        messages = sum(
            message(pairs) * weights[..., kind : kind + 1]
            for kind, message in enumerate(decoder.messages)
        )
        incoming = receivers.t() @ messages  # [B, T', n, H]
        hidden = F.relu(decoder.out1(torch.cat([state, incoming], dim=-1)))
        state = state + decoder.out3(F.relu(decoder.out2(hidden)))
        rollout.append(state)
    predicted = torch.stack(rollout, dim=2).flatten(1, 2)
    return predicted[:, : frames.shape[1] - 1].transpose(1, 2)


def _dense_encoder(encoder: MLPEncoder, trajectories: Tensor) -> Tensor:
    """The reference factor-graph encoder with concatenated edge features: ``[B, E]``."""
    n = trajectories.shape[1]
    receivers, senders = _relations(n)

    def node_to_edge(x: Tensor) -> Tensor:
        return torch.cat([senders @ x, receivers @ x], dim=-1)

    x = encoder.mlp1(trajectories.flatten(2))
    skip = encoder.mlp2(node_to_edge(x))
    x = encoder.mlp3(receivers.t() @ skip / n)
    x = encoder.mlp4(torch.cat([node_to_edge(x), skip], dim=-1))
    return encoder.out(x).squeeze(-1)


def _gradients(
    module: nn.Module, inputs: list[Tensor], run: object, seed: int = 0
) -> tuple[Tensor, list[Tensor]]:
    """Output and the gradients of a fixed random projection of it w.r.t. parameters and
    the inputs that require grad."""
    module.zero_grad()
    for tensor in inputs:
        tensor.grad = None
    output = run()  # type: ignore[operator]
    projection = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    (output * projection.to(output.dtype)).sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    grads += [t.grad.clone() for t in inputs if t.requires_grad]
    return output.detach(), grads


def _assert_same(first: tuple[Tensor, list[Tensor]], second: tuple[Tensor, list[Tensor]]) -> None:
    torch.testing.assert_close(first[0], second[0], rtol=1e-10, atol=1e-10)
    assert len(first[1]) == len(second[1])
    for one, other in zip(first[1], second[1], strict=True):
        torch.testing.assert_close(one, other, rtol=1e-9, atol=1e-9)


def _edges(kind: str, batch: int, n: int, generator: torch.Generator) -> Tensor:
    """Edge weights ``[B, E, 2]``: a tree and its complement, soft weights with zeros, signed
    weights with zeros, or positive weights with a single zero per edge type."""
    if kind == "tree":
        tree = torch.stack([random_tree_edges(n, generator) for _ in range(batch)]).double()
        return torch.stack([1 - tree, tree], dim=-1)
    weights = torch.rand(batch, n * (n - 1), 2, generator=generator, dtype=torch.float64)
    if kind == "signed":
        weights = 2 * weights - 1
    elif kind == "one_zero":
        weights = weights.clamp_min(0.5)
        weights[-1, 1] = 0.0  # one zero-weight edge of each type in the whole batch
        return weights
    return torch.where(weights.abs() < 0.3, torch.zeros_like(weights), weights)


@pytest.mark.parametrize(("timesteps", "steps"), [(7, 3), (6, 1), (5, 5), (8, 2)])
@pytest.mark.parametrize("kind", ["tree", "soft", "signed", "one_zero"])
@pytest.mark.parametrize("edges_need_grad", [True, False])
def test_decoder_matches_the_dense_reference(
    timesteps: int, steps: int, kind: str, edges_need_grad: bool
) -> None:
    n, batch = 5, 3
    generator = torch.Generator().manual_seed(timesteps * 10 + steps)
    torch.manual_seed(1)
    decoder = MLPDecoder(2, 8, n, 2, 0.0).double()
    trajectories = torch.randn(batch, n, timesteps, 2, generator=generator, dtype=torch.float64)
    trajectories.requires_grad_()
    edges = _edges(kind, batch, n, generator).requires_grad_(edges_need_grad)
    inputs = [trajectories, edges]
    fast = _gradients(decoder, inputs, lambda: decoder(trajectories, edges, steps))
    dense = _gradients(decoder, inputs, lambda: _dense_decoder(decoder, trajectories, edges, steps))
    assert fast[0].shape == (batch, n, timesteps - 1, 2)
    _assert_same(fast, dense)


def test_decoder_step_matches_the_dense_reference() -> None:
    n = 4
    generator = torch.Generator().manual_seed(0)
    decoder = MLPDecoder(2, 6, n, 2, 0.0).double()
    state = torch.randn(2, 3, n, 2, generator=generator, dtype=torch.float64)  # [B, T', n, d]
    edges = _edges("soft", 2, n, generator)
    receivers, senders = _relations(n)
    pairs = torch.cat([senders @ state, receivers @ state], dim=-1)
    messages = sum(
        m(pairs) * edges.unsqueeze(1)[..., k : k + 1] for k, m in enumerate(decoder.messages)
    )
    hidden = torch.cat([state, receivers.t() @ messages], dim=-1)
    expected = state + decoder.out3(F.relu(decoder.out2(F.relu(decoder.out1(hidden)))))
    torch.testing.assert_close(decoder.step(state, edges.unsqueeze(1)), expected)


def test_encoder_matches_the_concatenating_reference() -> None:
    n = 6
    torch.manual_seed(2)
    encoder = MLPEncoder(10, 12, n, 0.0).double().train()
    generator = torch.Generator().manual_seed(2)
    trajectories = torch.randn(4, n, 5, 2, generator=generator, dtype=torch.float64)
    trajectories.requires_grad_()
    fast = _gradients(encoder, [trajectories], lambda: encoder(trajectories))
    dense = _gradients(encoder, [trajectories], lambda: _dense_encoder(encoder, trajectories))
    _assert_same(fast, dense)


def test_pair_linear_and_incoming_sum_match_concatenation_and_relation_matrices() -> None:
    n, width = 5, 3
    generator = torch.Generator().manual_seed(4)
    receivers, senders = _relations(n)
    x = torch.randn(2, n, width, generator=generator, dtype=torch.float64)
    skip = torch.randn(2, n * (n - 1), 4, generator=generator, dtype=torch.float64)
    layer = nn.Linear(2 * width + 4, 7).double()
    expected = layer(torch.cat([senders @ x, receivers @ x, skip], dim=-1))
    index_r, index_s = receivers.argmax(1), senders.argmax(1)
    got = pair_linear(x, index_s, index_r, layer.weight, layer.bias, skip)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(incoming_edge_sum(skip, n), receivers.t() @ skip)


def test_nri_training_gradients_match_the_dense_model() -> None:
    """A whole training step (straight-through latent) against the dense decoder and encoder."""
    torch.manual_seed(0)
    model = tiny_model("nri_tree", estimator={"name": "ste", "noise": None}).double().train()
    trajectories = make_batch("nri_tree", model, 4)[0].double()

    def dense_loss() -> Tensor:
        logits = _dense_encoder(model.encoder, trajectories)
        logits = (logits + logits[:, model.reverse_edges]) / 2
        tree = model.sample_edges(logits)
        edges = torch.stack([1 - tree, tree], dim=-1)
        prediction = _dense_decoder(model.decoder, trajectories, edges, model.prediction_steps)
        squared = ((prediction - trajectories[:, :, 1:]) ** 2).sum(dim=(1, 2, 3))
        nll = squared / (2 * model.output_variance) / model.num_vertices
        kl = (logits + torch.exp(-logits) - 1).sum(dim=1) / model.num_vertices
        return (nll + kl).mean()

    fast = _gradients(model, [], lambda: model.training_loss((trajectories,))[0])
    dense = _gradients(model, [], dense_loss)
    _assert_same(fast, dense)


def _cat_selector_logits(model: L2XText, ids: Tensor) -> Tensor:
    """The text selector with the concatenated [global tiled; local] features."""
    selector = model.selector
    features = F.relu(selector.features(F.embedding(ids, model.embedding).transpose(1, 2)))
    global_ = F.relu(selector.global_dense(features.amax(dim=2)))
    local = F.relu(selector.local_2(F.relu(selector.local_1(features))))
    combined = torch.cat([global_.unsqueeze(2).expand_as(local), local], dim=1)
    hidden = F.relu(selector.merge(selector.dropout(combined)))
    return selector.logit(hidden).squeeze(1)


class _DoubleIt(nn.Module):
    """A deterministic stand-in for dropout (an elementwise map) that keeps ``p`` > 0."""

    p = 0.5

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


@pytest.mark.parametrize("mode", ["eval", "dropout"])
def test_text_selector_merge_matches_the_concatenation(mode: str) -> None:
    model = tiny_model("l2x_text").double()
    assert isinstance(model, L2XText)
    if mode == "eval":
        model.eval()
    else:  # the training path, with an elementwise map in place of the random mask
        model.selector.dropout = _DoubleIt().train()
    (ids,) = model.example_inputs(3)
    fast = _gradients(model.selector, [], lambda: model.token_scores(ids))
    concatenated = _gradients(model.selector, [], lambda: _cat_selector_logits(model, ids))
    _assert_same(fast, concatenated)


def test_text_predictions_of_several_masks_match_the_masked_sum() -> None:
    model = tiny_model("l2x_text").double()
    assert isinstance(model, L2XText)
    (ids,) = model.example_inputs(3)
    masks = torch.rand(6, ids.shape[1], generator=torch.Generator().manual_seed(0)) < 0.3
    masks = masks.double().requires_grad_()
    embedded = F.embedding(ids, model.embedding)

    def direct() -> Tensor:
        tiled = embedded.repeat_interleave(2, dim=0)  # [B·N, L, D], sample-minor
        pooled = (tiled * masks.unsqueeze(-1)).sum(1) / model.k
        return torch.sigmoid(model.predictor(pooled)).squeeze(-1)

    predictor = model.predictor
    fast = _gradients(predictor, [masks], lambda: model._predict(embedded, masks))
    _assert_same(fast, _gradients(predictor, [masks], direct))


def test_dvae_loss_matches_bce_on_tiled_targets() -> None:
    model = tiny_model("discrete_vae", estimator={"name": "ste", "samples": 3}).double().train()
    (images,) = make_batch("discrete_vae", model, 4)
    images = images.double()
    torch.manual_seed(5)
    loss, _ = model.training_loss(images)
    torch.manual_seed(5)
    logits = model.encode(images)
    reconstruction = model.decode(model.sample_codes(logits))
    bce = F.binary_cross_entropy_with_logits(
        reconstruction, images.repeat_interleave(3, dim=0), reduction="none"
    ).sum(1)
    log_q = F.log_softmax(logits, dim=-1)
    kl = (log_q.exp() * (log_q + torch.log(torch.tensor(5.0)))).sum(dim=(1, 2))
    torch.testing.assert_close(loss, (bce.reshape(4, 3).sum(1) + kl).mean())


def test_grid_costs_in_channels_last_match_the_contiguous_network() -> None:
    model = create_model("grid_shortest_path", grid_size=5, channels=[6, 6]).double().train()
    assert isinstance(model, GridShortestPath)
    maps = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0)).double()

    def contiguous() -> Tensor:
        return model.pool(model.features(maps)).mean(dim=1).abs()

    fast = _gradients(model, [], lambda: model.vertex_costs(maps))
    _assert_same(fast, _gradients(model, [], contiguous))
