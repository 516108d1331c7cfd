"""The four synthetic feature-selection benchmarks of L2X (Chen et al., ICML 2018), with metrics.

Every example has ``X ~ N(0, I_10)`` and a binary label with ``P(Y = 1 | X) = sigmoid(f(X))``
(features below are 1-based, as in the paper):

- ``"xor"``: ``f = X1 X2``; relevant features {1, 2}.
- ``"orange_skin"``: ``f = sum_{i<=4} X_i^2 - 4``; relevant {1, 2, 3, 4}.
- ``"nonlinear_additive"``: ``f = -100 sin(2 X1) + 2 |X2| + X3 + exp(-X4)``; relevant {1..4}.
- ``"switch"``: ``X10`` is drawn from an equal mixture of ``N(3, 1)`` and ``N(-3, 1)``; for the
  ``+3`` component ``f`` is orange skin on ``X1..X4`` (relevant {1..4, 10}), for the ``-3``
  component ``f`` is nonlinear additive on ``X5..X8`` (relevant {5..8, 10}). The selector of
  the mixture component, ``X10``, counts as relevant, as in the paper's evaluation.

These are the paper's definitions, except the switch layout: the paper writes the mixture
selector as X1, while its released script (and this module) uses X10 with the two models on
X1..X4 and X5..X8; which features matter, relative to the selector, is the same. The released
script differs in two more ways that do not change which features matter: it labels class 1
with ``sigmoid(-f)`` (the label polarity is swapped), and its nonlinear additive model is
``-100 sin(0.2 X1) + |X2| + X3 + exp(-X4) - 2.4``. It also builds the switch mixture from
exactly half of the examples per component and then shuffles them; here each example draws
its component independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import expit
from torch import Tensor
from torch.utils.data import TensorDataset

from ._common import DatasetError, check_choice, check_positive_int

SyntheticName = Literal["xor", "orange_skin", "nonlinear_additive", "switch"]

SYNTHETIC_NAMES: tuple[SyntheticName, ...] = ("xor", "orange_skin", "nonlinear_additive", "switch")
NUM_FEATURES = 10

#: Number of relevant features per example (the k the paper selects).
NUM_RELEVANT: dict[str, int] = {"xor": 2, "orange_skin": 4, "nonlinear_additive": 4, "switch": 5}

_SWITCH_SHIFT = 3.0


def xor_logit(x: np.ndarray) -> np.ndarray:
    """``f = X1 X2`` of ``x [N, >=2]`` -> ``[N]``."""
    return x[:, 0] * x[:, 1]


def orange_skin_logit(x: np.ndarray) -> np.ndarray:
    """``f = sum_{i<=4} X_i^2 - 4`` of ``x [N, >=4]`` -> ``[N]``."""
    return np.sum(x[:, :4] ** 2, axis=1) - 4.0


def nonlinear_additive_logit(x: np.ndarray) -> np.ndarray:
    """``f = -100 sin(2 X1) + 2 |X2| + X3 + exp(-X4)`` of ``x [N, >=4]`` -> ``[N]``."""
    return -100.0 * np.sin(2.0 * x[:, 0]) + 2.0 * np.abs(x[:, 1]) + x[:, 2] + np.exp(-x[:, 3])


@dataclass(frozen=True)
class SyntheticL2X:
    """A generated benchmark (numpy arrays).

    Attributes:
        x: float32 ``[N, 10]`` features.
        logit: float64 ``[N]`` ``f(X)``.
        prob: float64 ``[N]`` ``P(Y = 1 | X) = sigmoid(f(X))``.
        y: int64 ``[N]`` labels drawn from ``Bernoulli(prob)``.
        relevant: bool ``[N, 10]`` ground-truth relevant features of each example.
        component: int64 ``[N]``; for ``"switch"`` 0 = orange skin on X1..X4, 1 = nonlinear
            additive on X5..X8; all 0 for the other benchmarks.
    """

    x: np.ndarray
    logit: np.ndarray
    prob: np.ndarray
    y: np.ndarray
    relevant: np.ndarray
    component: np.ndarray

    def one_hot(self) -> np.ndarray:
        """Labels as float32 one-hot ``[N, 2]`` (column 1 is class 1)."""
        return np.eye(2, dtype=np.float32)[self.y]


def generate_l2x_synthetic(name: SyntheticName, num_samples: int, seed: int = 0) -> SyntheticL2X:
    """Generate ``num_samples`` examples of benchmark ``name``, deterministically from ``seed``.

    Draw order from ``numpy.random.default_rng(seed)``: ``X [N, 10]``, then (switch only) the
    components ``[N]``, then the uniforms ``[N]`` that sample the labels.
    """
    check_choice("name", name, SYNTHETIC_NAMES)
    count = check_positive_int("num_samples", num_samples)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, NUM_FEATURES)).astype(np.float32)  # [N, 10]
    component = np.zeros(count, dtype=np.int64)
    relevant = np.zeros((count, NUM_FEATURES), dtype=bool)
    if name == "xor":
        logit = xor_logit(x.astype(np.float64))
        relevant[:, :2] = True
    elif name == "orange_skin":
        logit = orange_skin_logit(x.astype(np.float64))
        relevant[:, :4] = True
    elif name == "nonlinear_additive":
        logit = nonlinear_additive_logit(x.astype(np.float64))
        relevant[:, :4] = True
    else:
        component = (rng.random(count) < 0.5).astype(np.int64)
        x[:, 9] += np.where(component == 0, _SWITCH_SHIFT, -_SWITCH_SHIFT).astype(np.float32)
        exact = x.astype(np.float64)  # labels are computed from the stored float32 features
        logit = np.where(
            component == 0,
            orange_skin_logit(exact[:, :4]),
            nonlinear_additive_logit(exact[:, 4:8]),
        )
        relevant[component == 0, :4] = True
        relevant[component == 1, 4:8] = True
        relevant[:, 9] = True
    prob = expit(logit)
    y = (rng.random(count) < prob).astype(np.int64)
    return SyntheticL2X(
        x=x,
        logit=logit,
        prob=prob,
        y=y,
        relevant=relevant,
        component=component,
    )


def l2x_synthetic_dataset(name: SyntheticName, num_samples: int, seed: int = 0) -> TensorDataset:
    """A ``TensorDataset`` of ``(x float32 [N, 10], y int64 [N], relevant bool [N, 10])``."""
    data = generate_l2x_synthetic(name, num_samples, seed)
    return TensorDataset(
        torch.from_numpy(data.x), torch.from_numpy(data.y), torch.from_numpy(data.relevant)
    )


# ----------------------------------------------------------------------------- metrics


def feature_ranks(scores: np.ndarray | Tensor, *, seed: int = 0) -> np.ndarray:
    """Rank the features of each example by decreasing score: 1 = most important.

    Ties are broken uniformly at random (with ``seed``), as in the L2X evaluation, so a
    constant score gives a random ranking rather than favouring the first features.

    Args:
        scores: ``[N, d]`` importance scores (pass ``abs(scores)`` for signed attributions).

    Returns:
        int64 ``[N, d]`` ranks in ``1..d``.
    """
    values = _as_2d_float(scores, "scores")
    tie_break = np.random.default_rng(seed).random(values.shape)  # [N, d]
    order = np.lexsort((tie_break, -values), axis=-1)  # [N, d] feature indices, best first
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, values.shape[1] + 1)[None, :], axis=1)
    return ranks


def median_rank(
    scores: np.ndarray | Tensor, relevant: np.ndarray | Tensor, *, seed: int = 0
) -> np.ndarray:
    """Median rank of the relevant features of each example under ``scores`` (L2X's metric).

    Args:
        scores: ``[N, d]`` importance scores (higher = more important).
        relevant: ``[N, d]`` bool ground truth, at least one relevant feature per example.

    Returns:
        float64 ``[N]``; the best possible value is ``(k + 1) / 2`` for k relevant features.
    """
    mask = _as_bool_mask(relevant, "relevant")
    ranks = feature_ranks(scores, seed=seed).astype(np.float64)
    if ranks.shape != mask.shape:
        raise DatasetError(f"scores {ranks.shape} and relevant {mask.shape} differ in shape")
    if not mask.any(axis=1).all():
        raise DatasetError("every example needs at least one relevant feature")
    return np.nanmedian(np.where(mask, ranks, np.nan), axis=1)


def feature_precision_recall(
    selected: np.ndarray | Tensor, relevant: np.ndarray | Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example precision ``|S ∩ R| / |S|`` and recall ``|S ∩ R| / |R|`` of a selection.

    Args:
        selected: ``[N, d]`` bool (or 0/1) selected features S.
        relevant: ``[N, d]`` bool ground-truth features R.

    Returns:
        float64 ``[N]`` precision (0 where nothing is selected) and ``[N]`` recall (0 where
        nothing is relevant).
    """
    chosen = _as_bool_mask(selected, "selected")
    truth = _as_bool_mask(relevant, "relevant")
    if chosen.shape != truth.shape:
        raise DatasetError(f"selected {chosen.shape} and relevant {truth.shape} differ in shape")
    hits = (chosen & truth).sum(axis=1).astype(np.float64)  # [N]
    num_chosen, num_true = chosen.sum(axis=1), truth.sum(axis=1)
    precision = np.divide(hits, num_chosen, out=np.zeros_like(hits), where=num_chosen > 0)
    recall = np.divide(hits, num_true, out=np.zeros_like(hits), where=num_true > 0)
    return precision, recall


def _as_2d_float(values: np.ndarray | Tensor, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 2:
        raise DatasetError(f"{name} must have shape [N, d], got {array.shape}")
    array = array.astype(np.float64)
    if np.isnan(array).any():
        raise DatasetError(f"{name} contains NaN")
    return array


def _as_bool_mask(values: np.ndarray | Tensor, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 2:
        raise DatasetError(f"{name} must have shape [N, d], got {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise DatasetError(f"{name} must be boolean or 0/1")
    return array.astype(bool)
