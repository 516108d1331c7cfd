"""L2X models: selection semantics, loss conventions and metrics against direct computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from aimle_zoo.data.l2x_synthetic import median_rank as data_median_rank
from aimle_zoo.data.mnist import pixel_mask_to_patch_mask
from aimle_zoo.models import ModelInputError
from aimle_zoo.models.l2x import median_rank, selection_median_rank

from ._helpers import make_batch, tiny_model


def _reference_median_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Ranks by descending score (ties: their average rank) with scipy, median with numpy."""
    medians = []
    for row_scores, row_relevant in zip(scores, relevant, strict=True):
        ranks = rankdata(-row_scores, method="average")
        medians.append(np.median(ranks[row_relevant]) if row_relevant.any() else np.nan)
    return np.array(medians)


def test_median_rank_matches_scipy_ranks_and_numpy_median() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (200, 10), generator=generator).double()  # many ties
    relevant = torch.rand(200, 10, generator=generator) < 0.3
    expected = _reference_median_ranks(scores.numpy(), relevant.numpy())
    np.testing.assert_allclose(median_rank(scores, relevant).numpy(), expected, equal_nan=True)


def test_median_rank_agrees_with_the_dataset_metric_without_ties() -> None:
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(100, 10, generator=generator, dtype=torch.float64)
    relevant = torch.rand(100, 10, generator=generator) < 0.4
    relevant[:, 0] = True  # the dataset metric needs one relevant feature per row
    np.testing.assert_allclose(
        median_rank(scores, relevant).numpy(), data_median_rank(scores, relevant)
    )


def test_a_selector_with_constant_scores_scores_like_chance() -> None:
    """Ties are not broken towards the lowest indices, where the benchmarks' relevant features
    are: a dead selector gets median rank (d + 1)/2 and the precision of a random pick."""
    generator = torch.Generator().manual_seed(0)
    model = tiny_model("l2x_tabular")  # d = 6, k = 2
    with torch.no_grad():
        for parameter in model.selector.parameters():
            parameter.zero_()
    x = torch.randn(2000, model.input_dim, generator=generator)
    labels = torch.randint(0, 2, (2000,), generator=generator)
    relevant = torch.zeros(2000, model.input_dim, dtype=torch.bool)
    relevant[:, :2] = True  # the lowest indices, as in XOR
    metrics = model.reduce_metrics([model.eval().evaluate_batch((x, labels, relevant))])
    d, r = model.input_dim, 2
    assert metrics["median_rank"] == pytest.approx((d + 1) / 2)
    assert metrics["precision"] == pytest.approx(r / d, abs=0.03)
    picks = torch.tensor(
        [[float(i in pair) for i in range(d)] for pair in itertools.combinations(range(d), r)]
    )
    chance = selection_median_rank(picks, relevant[: len(picks)]).mean().item()  # every pick
    assert metrics["selection_median_rank"] == pytest.approx(chance, abs=0.1)
    assert chance > 3.0  # far from the optimum 1.5
    # the tie order is the row's own, however the rows are batched (a fixed seed per batch
    # gave row i of every batch the same pick: one batch of 40 and 40 of 1 disagreed)
    one_by_one = model.reduce_metrics(
        [
            model.evaluate_batch((x[i : i + 1], labels[i : i + 1], relevant[i : i + 1]))
            for i in range(40)
        ]
    )
    together = model.reduce_metrics([model.evaluate_batch((x[:40], labels[:40], relevant[:40]))])
    for key in ("precision", "selection_median_rank"):
        assert one_by_one[key] == pytest.approx(together[key], rel=1e-12)


def test_median_rank_hand_checked_case() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])  # ranks 4, 1, 3, 2
    assert median_rank(scores, torch.tensor([[True, True, False, False]])).item() == 2.5
    assert median_rank(scores, torch.tensor([[True, False, True, True]])).item() == 3.0


def _enumerated_selection_median_rank(selected: np.ndarray, relevant: np.ndarray) -> float:
    """Mean over every tie-break order of the median relevant rank, selected features first."""
    medians = []
    for order in itertools.permutations(range(selected.size)):
        keys = [(-int(selected[i]), order[i]) for i in range(selected.size)]  # ties by `order`
        ranking = sorted(range(selected.size), key=keys.__getitem__)
        ranks = np.empty(selected.size)
        ranks[ranking] = np.arange(1, selected.size + 1)
        medians.append(np.median(ranks[relevant]))
    return float(np.mean(medians))


def test_selection_median_rank_equals_exact_enumeration_of_random_ties() -> None:
    generator = torch.Generator().manual_seed(3)
    selected = torch.rand(25, 6, generator=generator) < 0.5
    relevant = torch.rand(25, 6, generator=generator) < 0.5
    relevant[0] = False  # no relevant feature: NaN
    selected[1], relevant[1] = False, True  # nothing selected
    expected = [
        _enumerated_selection_median_rank(s, r) if r.any() else np.nan
        for s, r in zip(selected.numpy(), relevant.numpy(), strict=True)
    ]
    found = selection_median_rank(selected.float(), relevant)
    assert found.dtype == torch.float32
    np.testing.assert_allclose(found.numpy(), expected, rtol=1e-6, equal_nan=True)


def test_selection_median_rank_is_the_mean_of_the_dataset_metric_on_a_mask() -> None:
    generator = torch.Generator().manual_seed(4)
    selected = (torch.rand(50, 10, generator=generator) < 0.4).double()
    relevant = torch.rand(50, 10, generator=generator) < 0.4
    relevant[:, 3] = True
    sampled = np.mean([data_median_rank(selected, relevant, seed=s) for s in range(400)], 0)
    expected = selection_median_rank(selected, relevant).numpy()
    np.testing.assert_allclose(sampled, expected, atol=0.25)  # Monte Carlo, 400 tie-breaks
    perfect = relevant.double()
    counts = relevant.sum(1).double()
    assert torch.allclose(selection_median_rank(perfect, relevant), (counts + 1) / 2)


def test_text_threshold_ties_select_every_tied_token_and_exact_selects_k() -> None:
    threshold = tiny_model("l2x_text", ties="threshold").eval()
    exact = tiny_model("l2x_text", ties="exact").eval()
    ids = torch.zeros(2, 20, dtype=torch.long)  # all PAD: identical logits everywhere
    ids[1, :5] = torch.arange(3, 8)
    for model, pad_only_count in ((threshold, 20), (exact, 3)):
        mask = model.select(ids)
        assert mask.shape == (2, 20)
        assert mask[0].sum() == pad_only_count
        scores = model.token_scores(ids)[1]
        kth = scores.topk(3).values[-1]
        if model is threshold:
            assert torch.equal(mask[1].bool(), scores >= kth)
        else:
            assert mask[1].sum() == 3


def test_text_prediction_matches_the_formula() -> None:
    model = tiny_model("l2x_text").eval()
    (ids,) = model.example_inputs(4)
    logits = model.token_scores(ids)
    kth = logits.topk(model.k, dim=1).values[:, -1:]
    mask = (logits >= kth).float()  # the reference's threshold rule
    pooled = (model.embedding[ids] * mask.unsqueeze(-1)).sum(1) / model.k
    first, second = model.predictor[0], model.predictor[2]
    expected = torch.sigmoid(second(torch.relu(first(pooled)))).squeeze(-1)
    torch.testing.assert_close(model(ids), expected)


def test_text_loss_sums_samples_and_averages_the_batch_on_a_partial_batch() -> None:
    samples = 3
    model = tiny_model("l2x_text", estimator={"name": "ste", "samples": samples})
    model.train()
    ids, scores = make_batch("l2x_text", model, 5)  # 5 is not a multiple of any batch size
    torch.manual_seed(3)
    loss, _ = model.training_loss((ids, scores))
    torch.manual_seed(3)
    predictions = model(ids).reshape(5, samples)
    expected = ((predictions - scores[:, None]) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)


def test_text_evaluation_reports_the_mse_of_map_predictions() -> None:
    model = tiny_model("l2x_text")
    ids, scores = make_batch("l2x_text", model, 6)
    metrics = model.evaluate_batch((ids, scores))
    model.eval()
    with torch.no_grad():
        expected = float(((model(ids) - scores) ** 2).sum())
    assert metrics["mse_sum"].item() == pytest.approx(expected)
    assert metrics["count"].item() == 6
    assert model.reduce_metrics([metrics])["mse"] == pytest.approx(expected / 6)


def test_text_rejects_out_of_vocabulary_ids_and_wrong_embeddings() -> None:
    model = tiny_model("l2x_text")
    with pytest.raises(ModelInputError, match=r"token ids must lie in \[0, 49\]"):
        model(torch.full((1, 20), 50))
    with pytest.raises(ModelInputError, match="at least k=3 tokens"):
        model(torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ModelInputError, match=r"set_embeddings.*\[50, 8\]"):
        model.set_embeddings(torch.zeros(49, 8))
    vectors = torch.randn(50, 8)
    model.set_embeddings(vectors)
    assert torch.equal(model.embedding, vectors)


def test_tabular_evaluation_against_direct_computation() -> None:
    model = tiny_model("l2x_tabular")
    x, labels, relevant = make_batch("l2x_tabular", model, 12)
    metrics = model.evaluate_batch((x, labels, relevant))
    model.eval()
    with torch.no_grad():
        scores = model.feature_scores(x).numpy()
        logits = model(x).numpy()
    selected = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(selected, np.argsort(-scores, axis=1)[:, :4], True, axis=1)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert metrics["loss_sum"].item() == pytest.approx(
        -log_probs[np.arange(12), labels].sum(), rel=1e-5
    )
    assert metrics["accuracy_sum"].item() == (logits.argmax(1) == labels.numpy()).sum()
    expected_ranks = _reference_median_ranks(scores, relevant.numpy())
    assert metrics["median_rank_sum"].item() == pytest.approx(expected_ranks.sum())
    precision = (selected & relevant.numpy()).sum(1) / 4
    assert metrics["precision_sum"].item() == pytest.approx(precision.sum())
    protocol = selection_median_rank(torch.from_numpy(selected), relevant)
    assert metrics["selection_median_rank_sum"].item() == pytest.approx(protocol.sum().item())


def test_tabular_accepts_one_hot_labels() -> None:
    model = tiny_model("l2x_tabular")
    x, labels, _ = make_batch("l2x_tabular", model, 6)
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model.training_loss((x, one_hot))[0], model.training_loss((x, labels))[0]
        )
        with pytest.raises(ModelInputError, match=r"labels must lie in \[0, 1\]"):
            model.training_loss((x, labels + 2))


def test_image_patch_mask_upsampling_matches_kronecker_product() -> None:
    model = tiny_model("l2x_mnist")
    generator = torch.Generator().manual_seed(4)
    patch_mask = (torch.rand(3, 49, generator=generator) < 0.2).float()
    pixels = model.pixel_mask(patch_mask)
    assert pixels.shape == (3, 1, 28, 28)
    for row in range(3):
        expected = np.kron(patch_mask[row].reshape(7, 7).numpy(), np.ones((4, 4)))
        np.testing.assert_array_equal(pixels[row, 0].numpy(), expected)
    back = pixel_mask_to_patch_mask(pixels[:, 0], patch_size=4, reduce="all")
    assert torch.equal(back, patch_mask.bool())  # the dataset's row-major patch order


def test_image_selects_k_patches_and_classifies_the_masked_image() -> None:
    model = tiny_model("l2x_mnist").eval()
    images, labels = make_batch("l2x_mnist", model, 5)
    scores = model.patch_scores(images)
    mask = model.latent_layer(scores)
    assert scores.shape == (5, 49)
    assert torch.equal(mask.sum(1), torch.full((5,), 4.0))
    expected_mask = torch.zeros(5, 49).scatter_(1, scores.topk(4, dim=1).indices, 1.0)
    assert torch.equal(mask, expected_mask)
    hidden = model.features(images * model.pixel_mask(mask)).flatten(1)
    torch.testing.assert_close(model(images), model.classifier(hidden))
    metrics = model.evaluate_batch((images, labels))
    assert metrics["accuracy_sum"].item() == (model(images).argmax(1) == labels).sum().item()
    assert torch.equal(model(images[:, 0]), model(images))  # [B, 28, 28] is accepted too


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\]"):
        tiny_model("l2x_tabular", k=11)
    with pytest.raises(ValueError, match="ties must be one of"):
        tiny_model("l2x_text", ties="random")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_model("l2x_mnist", image_size=30)
    with pytest.raises(TypeError, match="estimator must be a name"):
        tiny_model("l2x_tabular", estimator=3)


def test_image_intensities_outside_the_unit_interval_are_refused() -> None:
    model = tiny_model("l2x_mnist")
    (images,) = model.example_inputs(2)
    with pytest.raises(ModelInputError, match=r"intensities must lie in \[0, 1\].*divide uint8"):
        model(images * 255)


@pytest.mark.parametrize("name", ["l2x_tabular", "l2x_mnist"])
def test_classification_loss_pairs_every_sample_with_its_own_instance(name: str) -> None:
    """Cross-entropy of each sampled mask on its own instance, summed over the samples and
    averaged over the batch, against a loop over (instance, sample) pairs."""
    samples, batch = 3, 4
    model = tiny_model(name, estimator={"name": "aimle", "samples": samples}).double().train()
    inputs, labels = make_batch(name, model, batch)[:2]
    inputs = inputs.double()
    torch.manual_seed(0)
    loss, logs = model.training_loss((inputs, labels))
    torch.manual_seed(0)
    with torch.no_grad():
        if name == "l2x_tabular":
            masks = model.latent_layer(model.feature_scores(inputs))
        else:
            masks = model.latent_layer(model.patch_scores(inputs))
        assert not torch.equal(masks[0], masks[1])  # the samples differ
        total, correct = 0.0, 0
        for row in range(batch):
            for sample in range(samples):
                mask = masks[row * samples + sample].unsqueeze(0)
                if name == "l2x_tabular":
                    logits = model.predictor(inputs[row : row + 1] * mask)
                else:
                    logits = model.classify_masked(inputs[row : row + 1], mask)
                total += float(torch.nn.functional.cross_entropy(logits, labels[row : row + 1]))
                correct += int(logits.argmax(1).item() == labels[row].item())
    assert loss.item() == pytest.approx(total / batch, rel=1e-10)
    assert logs["accuracy"] == pytest.approx(correct / (batch * samples))


def test_labels_are_checked_at_the_boundaries_of_their_range() -> None:
    model = tiny_model("l2x_tabular")  # 2 classes
    x, labels, _ = make_batch("l2x_tabular", model, 4)
    for bad in (torch.full_like(labels, 2), torch.full_like(labels, -1)):
        with pytest.raises(ModelInputError, match=r"labels must lie in \[0, 1\]"):
            model.evaluate_batch((x, bad))
    rows = torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.0, 1.0], [0.6, 0.4]])
    as_indices = model.evaluate_batch((x, torch.tensor([1, 0, 1, 0])))
    for key, value in model.evaluate_batch((x, rows)).items():  # probability rows: argmax
        assert torch.equal(value, as_indices[key]), key
    for bad_row in ([0.0, 0.0], [0.5, 0.5], [-1.0, 0.0]):  # none, tied, or not positive
        spoiled = rows.clone()
        spoiled[2] = torch.tensor(bad_row)
        with pytest.raises(ModelInputError, match=r"one largest, positive entry.*rows \[2\]"):
            model.evaluate_batch((x, spoiled))


def test_precision_divides_by_the_selected_count_when_threshold_ties_select_more() -> None:
    model = tiny_model("l2x_tabular", ties="threshold")  # d = 10, k = 4
    with torch.no_grad():
        for parameter in model.selector.parameters():
            parameter.zero_()  # equal scores: the threshold rule selects all 10 features
    x, labels, relevant = make_batch("l2x_tabular", model, 5)  # 2 relevant per row
    metrics = model.evaluate_batch((x, labels, relevant))
    assert metrics["precision_sum"].item() == pytest.approx(5 * 2 / 10)
    everything = selection_median_rank(torch.ones(5, 10), relevant)
    assert metrics["selection_median_rank_sum"].item() == pytest.approx(everything.sum().item())


def test_rows_without_relevant_features_are_left_out_of_the_rank_metrics() -> None:
    model = tiny_model("l2x_tabular")
    x, labels, relevant = make_batch("l2x_tabular", model, 6)
    relevant[[1, 4]] = False
    metrics = model.evaluate_batch((x, labels, relevant))
    with torch.no_grad():
        scores = model.eval().feature_scores(x).numpy()
    expected = _reference_median_ranks(scores, relevant.numpy())  # NaN for rows 1 and 4
    reduced = model.reduce_metrics([metrics])
    assert metrics["median_rank_count"].item() == 4
    assert metrics["selection_median_rank_count"].item() == 4
    assert reduced["median_rank"] == pytest.approx(np.nanmean(expected))
    assert np.isfinite(reduced["selection_median_rank"])
    assert metrics["count"].item() == 6  # precision is over every row (0 without relevance)


def test_inputs_on_the_edges_of_their_valid_ranges_are_accepted() -> None:
    text = tiny_model("l2x_text").eval()  # k = 3
    ids, _ = make_batch("l2x_text", text, 2)
    assert text(ids[:, :3]).shape == (2,)  # a review of exactly k tokens
    metrics = text.evaluate_batch((ids, torch.tensor([0.0, 1.0])))  # the extreme scores
    assert metrics["count"].item() == 2
    with pytest.raises(ModelInputError, match=r"aspect scores must lie in \[0, 1\]"):
        text.evaluate_batch((ids, torch.tensor([0.0, 1.001])))
    image = tiny_model("l2x_mnist").eval()
    binary = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    assert image(binary).shape == (2, 2)  # intensities exactly 0 and 1
    with pytest.raises(ModelInputError, match=r"expected single-channel images \[B, 1, 28, 28\]"):
        image(binary.expand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="must be a multiple of patch_size=2 and of 4"):
        tiny_model("l2x_mnist", image_size=6, patch_size=2, k=2)


def test_image_patch_scores_average_each_patch_in_row_major_order() -> None:
    model = tiny_model("l2x_mnist").double()
    images = make_batch("l2x_mnist", model, 3)[0].double()
    first, _, second, _, _, logit = model.selector
    with torch.no_grad():
        features = torch.relu(second(torch.relu(first(images))))  # [B, c, 28, 28]
        patches = features.reshape(3, -1, 7, 4, 7, 4).mean(dim=(3, 5))  # [B, c, 7, 7]
        expected = torch.einsum("bcij,c->bij", patches, logit.weight[0, :, 0, 0]) + logit.bias
        torch.testing.assert_close(model.patch_scores(images), expected.reshape(3, 49))


def test_image_evaluation_loss_and_text_training_log() -> None:
    model = tiny_model("l2x_mnist")
    images, labels = make_batch("l2x_mnist", model, 4)
    metrics = model.evaluate_batch((images, labels))
    with torch.no_grad():
        logits = model.eval()(images)
    expected = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert metrics["loss_sum"].item() == pytest.approx(expected.item(), rel=1e-6)
    text = tiny_model(
        "l2x_text", estimator={"name": "ste", "noise": None, "samples": 2}, dropout=0.0
    )
    ids, scores = make_batch("l2x_text", text, 5)
    _, logs = text.train().training_loss((ids, scores))
    with torch.no_grad():
        predictions = text.eval()(ids)  # noise off: every sample is the MAP mask
    assert logs["mse"] == pytest.approx(((predictions - scores) ** 2).mean().item(), rel=1e-5)


def test_the_selector_dropout_rate_is_the_argument() -> None:
    assert tiny_model("l2x_text", dropout=0.3).selector.dropout.p == 0.3


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_integer_labels_of_any_width_are_class_indices(dtype: torch.dtype) -> None:
    model = tiny_model("l2x_tabular", estimator={"name": "ste", "noise": None}).train()
    x, labels, _ = make_batch("l2x_tabular", model, 4)
    expected, _ = model.training_loss((x, labels))
    narrow, _ = model.training_loss((x, labels.to(dtype)))
    assert torch.equal(narrow, expected)
