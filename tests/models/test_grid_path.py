"""Grid shortest-path model: costs, Hamming loss and path metrics against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimle_zoo.models import ModelInputError
from aimle_zoo.models.grid_path import hamming_loss, path_metrics

from ._helpers import grid_path_oracle, make_batch, tiny_model


def test_hamming_loss_counts_differing_cells() -> None:
    generator = torch.Generator().manual_seed(0)
    predicted = (torch.rand(5, 4, 4, generator=generator) < 0.5).float()
    gold = (torch.rand(5, 4, 4, generator=generator) < 0.5).float()
    expected = (predicted.numpy() != gold.numpy()).reshape(5, -1).sum(1)
    np.testing.assert_array_equal(hamming_loss(predicted, gold).numpy(), expected)


def test_hamming_loss_counts_exactly_in_bfloat16() -> None:
    """A bfloat16 path (the model under CPU autocast) on a 30×30 grid: counts above 256 are
    not bfloat16 integers, so the loss counts in float32."""
    generator = torch.Generator().manual_seed(0)
    predicted = (torch.rand(3, 30, 30, generator=generator) < 0.5).to(torch.bfloat16)
    gold = (torch.rand(3, 30, 30, generator=generator) < 0.5).to(torch.bfloat16)
    expected = (predicted.float().numpy() != gold.float().numpy()).reshape(3, -1).sum(1)
    assert (expected > 256).all() and (expected % 2 == 1).any()  # not all bfloat16 integers
    loss = hamming_loss(predicted, gold)
    assert loss.dtype == torch.float32
    np.testing.assert_array_equal(loss.numpy(), expected)


def test_path_metrics_hand_checked_cases() -> None:
    costs = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    diagonal_via_centre = torch.eye(3)  # cost 1 + 5 + 1 = 7
    top_right = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # cost 4
    bottom_left = top_right.T.clone()  # also cost 4: a tie with the gold path
    long_way = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # cost 5
    predicted = torch.stack([top_right, bottom_left, diagonal_via_centre, long_way])
    gold = top_right.expand(4, 3, 3)
    metrics = path_metrics(predicted, gold, costs.expand(4, 3, 3), percents=(0.0001, 30.0))
    np.testing.assert_array_equal(metrics["exact_match"].numpy(), [1, 0, 0, 0])
    np.testing.assert_allclose(metrics["cost_ratio"].numpy(), [1, 1, 7 / 4, 5 / 4])
    np.testing.assert_array_equal(metrics["below_0.0001_percent"].numpy(), [1, 1, 0, 0])
    np.testing.assert_array_equal(metrics["below_30_percent"].numpy(), [1, 1, 0, 1])


def test_path_metrics_cost_ratio_of_a_free_gold_path() -> None:
    """A gold path of cost 0: ratio 1 for a predicted path costing 0 too, +inf otherwise
    (not 0/0 = NaN, which would turn a whole evaluation's mean into NaN)."""
    costs = torch.tensor([[0.0, 0.0, 3.0], [2.0, 0.0, 1.0], [2.0, 2.0, 0.0]])
    gold = torch.eye(3)  # cost 0
    free_detour = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # cost 0
    paid = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # cost 6
    predicted = torch.stack([gold, free_detour, paid])
    metrics = path_metrics(predicted, gold.expand(3, 3, 3), costs.expand(3, 3, 3), (0.0,))
    np.testing.assert_array_equal(metrics["cost_ratio"].numpy(), [1.0, 1.0, np.inf])
    np.testing.assert_array_equal(metrics["below_0_percent"].numpy(), [1, 1, 0])


@pytest.mark.parametrize("activation", ["abs", "softplus"])
def test_vertex_costs_are_non_negative(activation: str) -> None:
    model = tiny_model("grid_shortest_path", cost_activation=activation).eval()
    maps, _, _ = make_batch("grid_shortest_path", model, 3)
    with torch.no_grad():
        costs = model.vertex_costs(maps)
        raw = model.pool(model.features(maps)).mean(dim=1)
    assert costs.shape == (3, 4, 4)
    expected = raw.abs() if activation == "abs" else torch.nn.functional.softplus(raw)
    torch.testing.assert_close(costs, expected)
    assert (costs >= 0).all()


def test_map_path_is_the_shortest_path_of_the_predicted_costs() -> None:
    model = tiny_model("grid_shortest_path", cost_activation="softplus").eval()
    maps, _, _ = make_batch("grid_shortest_path", model, 4)
    with torch.no_grad():
        costs = model.vertex_costs(maps)
        paths = model(maps)
    for row in range(4):
        oracle = grid_path_oracle(costs[row])
        assert float((paths[row] * costs[row]).sum()) == pytest.approx(
            float((oracle * costs[row]).sum()), rel=1e-5
        )


def test_evaluation_metrics_match_a_numpy_computation() -> None:
    model = tiny_model("grid_shortest_path")
    maps, costs, gold = make_batch("grid_shortest_path", model, 6)
    metrics = model.evaluate_batch((maps, costs, gold), percents=(0.0001, 10.0))
    model.eval()
    with torch.no_grad():
        predicted = model(maps).numpy()
    true_cost = (predicted * costs.numpy()).reshape(6, -1).sum(1)
    gold_cost = (gold.numpy() * costs.numpy()).reshape(6, -1).sum(1)
    differing = (predicted != gold.numpy()).reshape(6, -1)
    assert metrics["loss_sum"].item() == differing.sum()
    assert metrics["exact_match_sum"].item() == (~differing.any(1)).sum()
    assert metrics["cost_ratio_sum"].item() == pytest.approx((true_cost / gold_cost).sum())
    for percent in (0.0001, 10.0):
        within = true_cost <= gold_cost * (1 + percent / 100)
        assert metrics[f"below_{percent:g}_percent_sum"].item() == within.sum()


def test_training_loss_tiles_the_gold_path_over_samples() -> None:
    samples = 3
    model = tiny_model(
        "grid_shortest_path", estimator={"name": "ste", "noise": None, "samples": samples}
    )
    model.train()
    maps, costs, gold = make_batch("grid_shortest_path", model, 4)
    loss, logs = model.training_loss((maps, costs, gold))
    with torch.no_grad():  # noise off: every sample is the path of the (training-mode) costs
        paths = model.latent_layer.solver(model.vertex_costs(maps)).numpy()
    expected = (paths != gold.numpy()).reshape(4, -1).sum(1).mean()
    assert model(maps).shape == (4 * samples, 4, 4)
    assert loss.item() == pytest.approx(expected)
    assert logs["hamming"] == pytest.approx(expected)


def test_bad_grids_are_rejected() -> None:
    model = tiny_model("grid_shortest_path")
    maps, costs, gold = make_batch("grid_shortest_path", model, 2)
    with pytest.raises(ModelInputError, match=r"gold paths.*\[B, 4, 4\]"):
        model.training_loss((maps, costs, gold[:, :3]))
    with pytest.raises(ModelInputError, match="true vertex costs must be finite and >= 0"):
        model.evaluate_batch((maps, -costs, gold))
    with pytest.raises(ModelInputError, match="true vertex costs must be finite"):
        model.evaluate_batch((maps, costs.index_fill(1, torch.tensor([0]), float("nan")), gold))
    with pytest.raises(ModelInputError, match="gold paths must be 0/1 masks"):
        model.training_loss((maps, costs, 2 * gold))
    with pytest.raises(ModelInputError, match="gold paths must be 0/1 masks"):
        model.training_loss((maps, gold, costs))  # costs and paths swapped
    with pytest.raises(ModelInputError, match="at least 4×4 pixels"):
        model(maps[:, :, :3, :3])
    with pytest.raises(ModelInputError, match=r"map images.*\[B, 3, H·t, W·t\]"):
        model(maps[:, :2])
    with pytest.raises(ValueError, match="cost_activation must be one of"):
        tiny_model("grid_shortest_path", cost_activation="relu")


def test_zero_percent_counts_a_tied_path_as_optimal() -> None:
    """x = 0 is the optimal-path rate: a path as cheap as the gold one counts, a dearer not."""
    costs = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    top_right = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    predicted = torch.stack([top_right, top_right.T.clone(), torch.eye(3)])
    gold = top_right.expand(3, 3, 3)
    metrics = path_metrics(predicted, gold, costs.expand(3, 3, 3), percents=(0.0,))
    np.testing.assert_array_equal(metrics["below_0_percent"].numpy(), [1, 1, 0])


def test_map_images_need_one_pixel_per_vertex_in_both_directions() -> None:
    model = tiny_model("grid_shortest_path").eval()  # 4 × 4 vertices
    maps, _, _ = make_batch("grid_shortest_path", model, 2)
    assert model(maps[:, :, :4, :4]).shape == (2, 4, 4)  # exactly one pixel per vertex
    for narrow in (maps[:, :, :, :3], maps[:, :, :3, :]):
        with pytest.raises(ModelInputError, match="at least 4×4 pixels"):
            model(narrow)


def test_the_cost_network_downsamples_once_like_the_resnet_stem() -> None:
    model = tiny_model("grid_shortest_path", channels=[4, 4, 4])
    convolutions = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convolutions] == [(2, 2), (1, 1), (1, 1)]
    assert [c.out_channels for c in convolutions] == [4, 4, 4]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convolutions)


def test_vertex_costs_are_the_channel_mean_of_the_cell_maxima() -> None:
    model = tiny_model("grid_shortest_path").double().eval()  # 4 × 4 vertices, 8-pixel tiles
    maps = make_batch("grid_shortest_path", model, 2)[0].double()
    with torch.no_grad():
        features = model.features(maps)  # [B, C, 16, 16]: 4 × 4 pixels per vertex
        cells = features.reshape(2, -1, 4, 4, 4, 4).amax(dim=(3, 5))  # [B, C, 4, 4]
        torch.testing.assert_close(model.vertex_costs(maps), cells.mean(dim=1).abs())


def test_training_loss_pairs_every_sampled_path_with_its_own_gold_path() -> None:
    samples, batch = 3, 4
    model = tiny_model("grid_shortest_path", estimator={"name": "aimle", "samples": samples})
    model.train()
    maps, costs, gold = make_batch("grid_shortest_path", model, batch)
    torch.manual_seed(0)
    loss, _ = model.training_loss((maps, costs, gold))
    torch.manual_seed(0)
    with torch.no_grad():  # training mode: the same batch statistics, the same noise
        paths = model.latent_layer(model.vertex_costs(maps))
    differing = [
        float((paths[row * samples + sample] != gold[row]).sum())
        for row in range(batch)
        for sample in range(samples)
    ]
    assert loss.item() == pytest.approx(np.mean(differing))
    assert not torch.equal(gold[0], gold[1])  # so the pairing matters
