"""L2X synthetic benchmarks: label functions, relevant features, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from aimle_zoo.data import (
    DatasetError,
    feature_precision_recall,
    feature_ranks,
    generate_l2x_synthetic,
    l2x_synthetic_dataset,
    median_rank,
)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def paper_logit(name: str, x: np.ndarray, component: np.ndarray) -> np.ndarray:
    """The defining functions written directly from the paper, one example at a time."""
    out = np.empty(len(x))
    for i, row in enumerate(x.astype(np.float64)):
        x1, x2, x3, x4 = (row[0:4] if name != "switch" or component[i] == 0 else row[4:8]).tolist()
        if name == "xor":
            out[i] = x1 * x2
        elif name == "orange_skin" or (name == "switch" and component[i] == 0):
            out[i] = x1**2 + x2**2 + x3**2 + x4**2 - 4
        else:
            out[i] = -100 * np.sin(2 * x1) + 2 * abs(x2) + x3 + np.exp(-x4)
    return out


RELEVANT_SETS = {
    "xor": {0, 1},
    "orange_skin": {0, 1, 2, 3},
    "nonlinear_additive": {0, 1, 2, 3},
}


@pytest.mark.parametrize("name", ["xor", "orange_skin", "nonlinear_additive", "switch"])
def test_labels_follow_the_paper_formulas(name: str) -> None:
    data = generate_l2x_synthetic(name, 400, seed=3)
    assert data.x.shape == (400, 10) and data.x.dtype == np.float32
    expected = paper_logit(name, data.x, data.component)
    np.testing.assert_allclose(data.logit, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(data.prob, sigmoid(data.logit), rtol=1e-12)
    assert set(np.unique(data.y)) <= {0, 1} and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.one_hot().argmax(axis=1), data.y)


@pytest.mark.parametrize("name", ["xor", "orange_skin", "nonlinear_additive"])
def test_relevant_masks_of_fixed_benchmarks(name: str) -> None:
    data = generate_l2x_synthetic(name, 50, seed=0)
    for row in data.relevant:
        assert set(np.flatnonzero(row)) == RELEVANT_SETS[name]


def test_switch_components_and_masks() -> None:
    data = generate_l2x_synthetic("switch", 4000, seed=1)
    orange = data.component == 0
    assert 0.45 < orange.mean() < 0.55
    x10 = data.x[:, 9]
    assert abs(x10[orange].mean() - 3) < 0.1 and abs(x10[~orange].mean() + 3) < 0.1
    assert abs(x10[orange].std() - 1) < 0.1
    for row, component in zip(data.relevant, data.component, strict=True):
        wanted = {0, 1, 2, 3, 9} if component == 0 else {4, 5, 6, 7, 9}
        assert set(np.flatnonzero(row)) == wanted


def test_labels_are_bernoulli_draws_of_the_probabilities() -> None:
    data = generate_l2x_synthetic("orange_skin", 20_000, seed=2)
    # the mean label matches the mean probability within 4 standard errors
    tolerance = 4 * np.sqrt(np.mean(data.prob * (1 - data.prob)) / len(data.y))
    assert abs(data.y.mean() - data.prob.mean()) < tolerance
    confident = data.prob > 0.95
    assert data.y[confident].mean() > 0.9 and data.y[data.prob < 0.05].mean() < 0.1


def test_determinism_and_dataset() -> None:
    a = generate_l2x_synthetic("switch", 64, seed=9)
    b = generate_l2x_synthetic("switch", 64, seed=9)
    c = generate_l2x_synthetic("switch", 64, seed=10)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    x, y, relevant = l2x_synthetic_dataset("switch", 64, seed=9).tensors
    assert torch.equal(x, torch.from_numpy(a.x)) and torch.equal(y, torch.from_numpy(a.y))
    assert relevant.dtype == torch.bool and torch.equal(relevant, torch.from_numpy(a.relevant))


def test_bad_generation_arguments() -> None:
    with pytest.raises(DatasetError, match="name must be one of"):
        generate_l2x_synthetic("xnor", 10)
    with pytest.raises(DatasetError, match="num_samples"):
        generate_l2x_synthetic("xor", 0)
    for seed in (-1, 1.5, True):
        with pytest.raises(DatasetError, match=rf"seed must be an integer >= 0, got {seed}"):
            generate_l2x_synthetic("xor", 10, seed=seed)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- metrics


def test_ranks_match_scipy_without_ties() -> None:
    scores = np.random.default_rng(4).normal(size=(30, 10))
    expected = np.stack([rankdata(-row, method="ordinal") for row in scores])
    np.testing.assert_array_equal(feature_ranks(scores), expected)
    np.testing.assert_array_equal(feature_ranks(torch.from_numpy(scores)), expected)


def test_ties_are_broken_at_random() -> None:
    scores = np.zeros((400, 10))
    scores[:, 7] = 1.0
    ranks = feature_ranks(scores, seed=1)
    assert (ranks[:, 7] == 1).all()
    for row in ranks:
        assert sorted(row.tolist()) == list(range(1, 11))
    # each tied feature takes rank 2 about equally often (not always the first one)
    counts = np.bincount(np.argmax(ranks == 2, axis=1), minlength=10)
    assert counts[7] == 0 and counts.max() < 80
    assert not np.array_equal(ranks, feature_ranks(scores, seed=2))


def test_median_rank_against_a_loop() -> None:
    data = generate_l2x_synthetic("switch", 60, seed=0)
    scores = np.random.default_rng(1).normal(size=(60, 10))
    found = median_rank(scores, data.relevant)
    for i in range(60):
        ranks = rankdata(-scores[i], method="ordinal")
        assert found[i] == np.median(ranks[data.relevant[i]])
    perfect = median_rank(data.relevant.astype(float) + 0.01 * scores, data.relevant)
    np.testing.assert_array_equal(perfect, np.full(60, 3.0))  # ranks 1..5 -> median 3


def test_precision_recall_against_a_loop() -> None:
    rng = np.random.default_rng(6)
    selected = rng.random((50, 10)) < 0.3
    selected[0] = False
    relevant = rng.random((50, 10)) < 0.4
    relevant[1] = False
    precision, recall = feature_precision_recall(torch.from_numpy(selected), relevant)
    for i in range(50):
        hits = len(set(np.flatnonzero(selected[i])) & set(np.flatnonzero(relevant[i])))
        assert precision[i] == (hits / selected[i].sum() if selected[i].any() else 0.0)
        assert recall[i] == (hits / relevant[i].sum() if relevant[i].any() else 0.0)


def test_metric_input_errors() -> None:
    with pytest.raises(DatasetError, match=r"\[N, d\]"):
        median_rank(np.zeros(10), np.ones((1, 10), dtype=bool))
    with pytest.raises(DatasetError, match="differ in shape"):
        median_rank(np.zeros((2, 10)), np.ones((2, 9), dtype=bool))
    with pytest.raises(DatasetError, match="at least one relevant"):
        median_rank(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(DatasetError, match="NaN"):
        feature_ranks(np.array([[0.0, np.nan]]))
    with pytest.raises(DatasetError, match="boolean or 0/1"):
        feature_precision_recall(np.full((1, 3), 0.5), np.ones((1, 3)))
