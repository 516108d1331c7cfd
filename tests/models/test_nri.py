"""NRI with a spanning-tree latent: edge layout, loss pieces, rollout, MAP tree and metrics."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from aimle_zoo.data.nri import directed_edges
from aimle_zoo.models import ModelInputError
from aimle_zoo.models.nri import (
    edge_metrics,
    gaussian_nll,
    gumbel_kl,
    relation_matrices,
    reverse_edge_index,
)

from ._helpers import make_batch, tiny_model

N = 4  # vertices of the tiny model


def _directed(matrix: np.ndarray) -> np.ndarray:
    """``[..., n, n]`` → ``[..., n(n-1)]``: entry (receiver i, sender j), receiver-major."""
    n = matrix.shape[-1]
    return matrix[..., ~np.eye(n, dtype=bool)]


def _networkx_tree(logits: np.ndarray) -> np.ndarray:
    """Maximum spanning tree of symmetric directed-edge logits, as a directed 0/1 vector."""
    receivers, senders = np.nonzero(~np.eye(N, dtype=bool))
    graph = nx.Graph()
    for weight, i, j in zip(logits, receivers, senders, strict=True):
        if i < j:
            graph.add_edge(int(i), int(j), weight=float(weight))
    adjacency = np.zeros((N, N))
    for i, j in nx.maximum_spanning_tree(graph).edges():
        adjacency[i, j] = adjacency[j, i] = 1
    return _directed(adjacency)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_relation_matrices_follow_the_reference_order(n: int) -> None:
    receivers, senders = relation_matrices(n)
    off_diagonal = np.ones((n, n)) - np.eye(n)
    np.testing.assert_array_equal(receivers.argmax(1).numpy(), np.where(off_diagonal)[0])
    np.testing.assert_array_equal(senders.argmax(1).numpy(), np.where(off_diagonal)[1])
    data_receivers, data_senders = directed_edges(n)
    np.testing.assert_array_equal(receivers.argmax(1).numpy(), data_receivers)
    np.testing.assert_array_equal(senders.argmax(1).numpy(), data_senders)
    assert torch.equal(receivers.sum(1), torch.ones(n * (n - 1)))


@pytest.mark.parametrize("n", [2, 3, 6])
def test_reverse_edge_index_transposes_the_adjacency(n: int) -> None:
    matrix = np.random.default_rng(n).random((n, n))
    reverse = reverse_edge_index(n).numpy()
    np.testing.assert_array_equal(_directed(matrix)[reverse], _directed(matrix.T))


def test_gaussian_nll_matches_the_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(3, 5, 4, 2, generator=generator, dtype=torch.float64)
    target = torch.randn(3, 5, 4, 2, generator=generator, dtype=torch.float64)
    expected = ((prediction - target) ** 2 / (2 * 5e-5)).numpy().reshape(3, -1).sum(1) / 5
    np.testing.assert_allclose(gaussian_nll(prediction, target, 5e-5).numpy(), expected)


@pytest.mark.parametrize("location", [-1.5, 0.0, 0.7, 2.0])
def test_gumbel_kl_matches_numerical_integration(location: float) -> None:
    posterior, prior = stats.gumbel_r(loc=location), stats.gumbel_r()

    def integrand(x: float) -> float:
        return posterior.pdf(x) * (posterior.logpdf(x) - prior.logpdf(x))

    expected, _ = integrate.quad(integrand, -20, 40, limit=200)
    logits = torch.full((1, N * (N - 1)), location, dtype=torch.float64)
    assert gumbel_kl(logits, N).item() == pytest.approx(N * (N - 1) * expected / N, abs=1e-7)


def test_edge_metrics_hand_checked_case() -> None:
    predicted = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    truth = torch.tensor([[1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    accuracy, precision, recall = edge_metrics(predicted, truth)
    torch.testing.assert_close(accuracy, torch.tensor([4 / 6, 5 / 6], dtype=torch.float64))
    torch.testing.assert_close(precision, torch.tensor([2 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(recall, torch.tensor([2 / 3, 0.0], dtype=torch.float64))


def test_logits_are_symmetrised_and_the_map_tree_is_the_maximum_spanning_tree() -> None:
    model = tiny_model("nri_tree").eval()
    trajectories, _ = make_batch("nri_tree", model, 6)
    with torch.no_grad():
        raw = model.encoder(trajectories).numpy()
        logits = model.edge_logits(trajectories).numpy()
        tree = model(trajectories).numpy()
    reverse = reverse_edge_index(N).numpy()
    np.testing.assert_allclose(logits, (raw + raw[:, reverse]) / 2, rtol=1e-6)
    for row in range(6):
        np.testing.assert_array_equal(tree[row], _networkx_tree(logits[row]))


def _manual_rollout(
    model: torch.nn.Module, trajectories: torch.Tensor, edges: torch.Tensor, steps: int
) -> torch.Tensor:
    """Frame t+1 predicted by rolling out from the last restart frame ⌊t/steps⌋·steps."""
    frames = trajectories.transpose(1, 2)  # [B, T, n, d]
    weights = edges.unsqueeze(1)
    predictions = []
    for t in range(frames.shape[1] - 1):
        start = (t // steps) * steps
        state = frames[:, start : start + 1]
        for _ in range(t - start + 1):
            state = model.decoder.step(state, weights)
        predictions.append(state[:, 0])
    return torch.stack(predictions, dim=2)  # [B, n, T-1, d]


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_decoder_rollouts_restart_from_every_steps_th_frame(steps: int) -> None:
    model = tiny_model("nri_tree").eval()
    trajectories, truth = make_batch("nri_tree", model, 3)
    with torch.no_grad():
        rolled = model.reconstruct(trajectories, truth.float(), steps)
        manual = _manual_rollout(
            model, trajectories, torch.stack([1 - truth, truth], -1).float(), steps
        )
    assert rolled.shape == (3, N, 3, 2)
    torch.testing.assert_close(rolled, manual)


def test_training_loss_is_nll_plus_kl_summed_over_samples() -> None:
    samples = 2
    model = tiny_model("nri_tree", estimator={"name": "ste", "noise": None, "samples": samples})
    model.train()
    trajectories, _ = make_batch("nri_tree", model, 5)
    loss, logs = model.training_loss((trajectories,))
    with torch.no_grad():  # still in training mode: batch-norm uses the same batch statistics
        logits = model.edge_logits(trajectories)
        tree = torch.from_numpy(np.stack([_networkx_tree(row) for row in logits.numpy()])).float()
        prediction = model.reconstruct(trajectories, tree, model.prediction_steps)
    squared = ((prediction - trajectories[:, :, 1:]) ** 2).numpy().reshape(5, -1).sum(1)
    nll = squared / (2 * 5e-5) / N
    kl = (logits + torch.exp(-logits) - 1).numpy().sum(1) / N
    assert loss.item() == pytest.approx((samples * (nll + kl)).mean(), rel=1e-4)
    assert logs["kl"] == pytest.approx(kl.mean(), rel=1e-4)


def test_evaluation_uses_the_map_tree_and_teacher_forcing() -> None:
    model = tiny_model("nri_tree")
    trajectories, truth = make_batch("nri_tree", model, 6)
    model.train()
    metrics = model.evaluate_batch((trajectories, truth))
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model.edge_logits(trajectories)
        tree = model(trajectories)
        prediction = model.reconstruct(trajectories, tree, 1)
    squared = ((prediction - trajectories[:, :, 1:]) ** 2).numpy().reshape(6, -1)
    nll = squared.sum(1) / (2 * 5e-5) / N
    kl = (logits + torch.exp(-logits) - 1).numpy().sum(1) / N
    assert metrics["nll_sum"].item() == pytest.approx(nll.sum(), rel=1e-4)
    assert metrics["elbo_sum"].item() == pytest.approx(-(nll + kl).sum(), rel=1e-4)
    assert metrics["mse_sum"].item() == pytest.approx(squared.mean(1).sum(), rel=1e-4)
    hits = (tree.numpy() * truth.numpy()).sum(1)
    assert metrics["precision_sum"].item() == pytest.approx((hits / (N - 1) / 2).sum())
    assert metrics["recall_sum"].item() == pytest.approx((hits / (N - 1) / 2).sum())
    accuracy = (tree.numpy() == truth.numpy()).mean(1)
    assert metrics["accuracy_sum"].item() == pytest.approx(accuracy.sum())
    assert "accuracy_sum" not in model.evaluate_batch((trajectories,))


def test_invalid_edges_and_arguments() -> None:
    model = tiny_model("nri_tree")
    trajectories, truth = make_batch("nri_tree", model, 2)
    with pytest.raises(ModelInputError, match="0/1 indicators"):
        model.evaluate_batch((trajectories, truth * 2))
    with pytest.raises(ModelInputError, match=r"ground-truth edges.*\[B, 12\]"):
        model.evaluate_batch((trajectories, truth[:, :6]))
    with pytest.raises(ModelInputError, match=r"trajectories.*\[B, 4, 4, 2\]"):
        model(trajectories[:, :3])
    with pytest.raises(ValueError, match=r"prediction_steps must be in \[1, timesteps=4\]"):
        tiny_model("nri_tree", prediction_steps=5)
    assert math.isfinite(
        model.reduce_metrics([model.evaluate_batch((trajectories, truth))])["elbo"]
    )


def test_the_decoder_runs_under_bfloat16_autocast() -> None:
    """Messages come out of autocast's linear layers in bfloat16, the receiver sums are float32:
    index_add_ refused the mix."""
    model = tiny_model("nri_tree").train()
    (trajectories,) = model.example_inputs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.training_loss((trajectories,))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)


def test_edge_metrics_precision_and_recall_have_their_own_denominators() -> None:
    """Precision divides by the predicted edges, recall by the true ones (counted by hand)."""
    predicted = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    truth = torch.tensor([[1, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]])
    accuracy, precision, recall = edge_metrics(predicted, truth)
    torch.testing.assert_close(accuracy, torch.tensor([2 / 6, 1 / 6], dtype=torch.float64))
    torch.testing.assert_close(precision, torch.tensor([1 / 2, 1 / 5], dtype=torch.float64))
    torch.testing.assert_close(recall, torch.tensor([1 / 4, 1 / 2], dtype=torch.float64))


def test_unsymmetrised_logits_are_the_encoder_outputs() -> None:
    model = tiny_model("nri_tree", symmetrize_logits=False).eval()
    trajectories, _ = make_batch("nri_tree", model, 3)
    with torch.no_grad():
        raw = model.encoder(trajectories)
        logits = model.edge_logits(trajectories)
    assert torch.equal(logits, raw)
    assert not torch.allclose(raw, raw[:, reverse_edge_index(N)])  # so the check has teeth


def test_encoder_mlp_is_linear_elu_linear_elu_batch_norm() -> None:
    """Each encoder MLP against the formula, batch norm with the batch's own statistics."""
    torch.manual_seed(0)
    model = tiny_model("nri_tree").double().train()
    mlp = model.encoder.mlp2
    with torch.no_grad():  # non-trivial affine batch-norm parameters
        mlp.norm.weight.uniform_(0.5, 2.0)
        mlp.norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 7, mlp.fc1.in_features, generator=torch.Generator().manual_seed(1))
    x = x.double()
    pre = x @ mlp.fc1.weight.T + mlp.fc1.bias
    hidden = torch.where(pre > 0, pre, torch.expm1(pre))  # ELU
    pre = hidden @ mlp.fc2.weight.T + mlp.fc2.bias
    out = torch.where(pre > 0, pre, torch.expm1(pre)).reshape(-1, pre.shape[-1])
    mean, variance = out.mean(0), out.var(0, unbiased=False)
    normed = (out - mean) / torch.sqrt(variance + mlp.norm.eps)
    expected = (normed * mlp.norm.weight + mlp.norm.bias).reshape(3, 7, -1)
    torch.testing.assert_close(mlp(x), expected)


def test_encoder_linear_layers_start_xavier_normal_with_bias_one_tenth() -> None:
    torch.manual_seed(0)
    encoder = tiny_model("nri_tree", encoder_hidden=256).encoder
    linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 9
    for layer in linears:
        assert torch.equal(layer.bias, torch.full_like(layer.bias, 0.1))
    square = encoder.mlp3.fc1.weight  # [256, 256]: std √(2 / 512)
    assert square.mean().item() == pytest.approx(0.0, abs=0.003)
    assert square.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)


def test_training_loss_adds_the_kl_once_per_sample_and_logs_means() -> None:
    """With σ² large the NLL does not swamp the KL, so the KL's multiplicity shows."""
    samples = 3
    model = tiny_model(
        "nri_tree",
        estimator={"name": "ste", "noise": None, "samples": samples},
        output_variance=50.0,
    ).double()
    model.train()
    trajectories, _ = make_batch("nri_tree", model, 5)
    trajectories = trajectories.double()
    loss, logs = model.training_loss((trajectories,))
    with torch.no_grad():
        logits = model.edge_logits(trajectories)
        tree = torch.from_numpy(np.stack([_networkx_tree(row) for row in logits.numpy()]))
        prediction = model.reconstruct(trajectories, tree, model.prediction_steps)
    squared = ((prediction - trajectories[:, :, 1:]) ** 2).numpy().reshape(5, -1).sum(1)
    nll = squared / (2 * 50.0) / N
    kl = (logits + torch.exp(-logits) - 1).numpy().sum(1) / N
    assert kl.mean() > 0.1 * nll.mean()
    assert loss.item() == pytest.approx((samples * (nll + kl)).mean(), rel=1e-9)
    assert logs["nll"] == pytest.approx(nll.mean(), rel=1e-9)
    assert logs["kl"] == pytest.approx(kl.mean(), rel=1e-9)


def test_the_smallest_graph_and_the_shortest_trajectories() -> None:
    model = tiny_model("nri_tree", num_vertices=2).eval()
    (trajectories,) = model.example_inputs(3)
    assert torch.equal(model(trajectories), torch.ones(3, 2))  # the one tree: both directions
    with pytest.raises(ValueError, match="num_vertices must be >= 2, got 1"):
        tiny_model("nri_tree", num_vertices=1)
    with pytest.raises(ValueError, match=r"timesteps must be >= 2 \(a frame to predict\)"):
        tiny_model("nri_tree", timesteps=1, prediction_steps=1)


def test_every_evaluation_sum() -> None:
    model = tiny_model("nri_tree", output_variance=50.0)  # the KL is not lost in the NLL
    trajectories, truth = make_batch("nri_tree", model, 5)
    metrics = model.evaluate_batch((trajectories, truth))
    model.eval()
    with torch.no_grad():
        logits = model.edge_logits(trajectories)
        prediction = model.reconstruct(trajectories, model(trajectories), 1)
    squared = ((prediction - trajectories[:, :, 1:]) ** 2).numpy().reshape(5, -1)
    nll = squared.sum(1) / (2 * 50.0) / N
    kl = (logits + torch.exp(-logits) - 1).numpy().sum(1) / N
    assert kl.sum() > 0.1 * nll.sum()
    assert metrics["nll_sum"].item() == pytest.approx(nll.sum(), rel=1e-5)
    assert metrics["kl_sum"].item() == pytest.approx(kl.sum(), rel=1e-5)
    assert metrics["loss_sum"].item() == pytest.approx((nll + kl).sum(), rel=1e-5)
    assert metrics["elbo_sum"].item() == pytest.approx(-(nll + kl).sum(), rel=1e-5)
    assert metrics["count"].item() == 5


def test_dropout_rates_reach_the_encoder_and_the_decoder() -> None:
    model = tiny_model("nri_tree", encoder_dropout=0.25, decoder_dropout=0.5)
    encoder = [m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)]
    decoder = [m.p for m in model.decoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert encoder == [0.25] * 4
    assert decoder == [0.5] * 3  # one per message MLP and the output MLP's


def test_example_trajectories_cover_the_normalised_range() -> None:
    (trajectories,) = tiny_model("nri_tree").example_inputs(8)
    assert trajectories.min() >= -1 and trajectories.max() <= 1
    assert trajectories.min() < -0.5 and trajectories.max() > 0.5


@pytest.mark.parametrize("argument", ["num_vertices", "timesteps", "prediction_steps"])
@pytest.mark.parametrize("bad", [3.0, True])
def test_sizes_must_be_integers_when_the_model_is_built(argument: str, bad: object) -> None:
    """A float such as 2.0 used to pass the range checks and fail at the first training step
    (a slice with a float step) or inside torch.eye."""
    with pytest.raises(ValueError, match=rf"{argument} must be an integer >= 1, got {bad!r}"):
        tiny_model("nri_tree", **{argument: bad})
