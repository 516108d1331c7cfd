"""Small solvers, oracles and noise stand-ins shared by the estimator tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from aimle_zoo.estimators import Noise


def topk_mask(theta: Tensor, k: int) -> Tensor:
    """Batched top-k indicator over the last dimension (the solver under test)."""
    return torch.zeros_like(theta).scatter_(-1, theta.topk(k, dim=-1).indices, 1.0)


def numpy_topk(theta: np.ndarray, k: int) -> np.ndarray:
    """Independent top-k oracle: argsort in NumPy."""
    order = np.argsort(-theta, axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(theta)
    np.put_along_axis(out, order, 1.0, axis=-1)
    return out


class CountingSolver:
    """Top-k that records the number of rows of every call."""

    def __init__(self, k: int, sense: str = "max") -> None:
        self.k = k
        self.sense = sense
        self.rows: list[int] = []

    def __call__(self, theta: Tensor) -> Tensor:
        self.rows.append(theta.shape[0])
        return topk_mask(-theta if self.sense == "min" else theta, self.k)


class FixedNoise(Noise):
    """Returns a preset tensor, so closed forms can use the exact ε of a run.

    ``like`` lends its density gradient (for the perturbed optimizer).
    """

    name = "fixed-test"

    def __init__(self, values: Tensor, like: Noise | None = None) -> None:
        self.values = values
        self.like = like
        self.has_density_gradient = like is not None and like.has_density_gradient  # type: ignore[misc]

    def density_gradient(self, eps: Tensor) -> Tensor:
        assert self.like is not None
        return self.like.density_gradient(eps)

    def _draw(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> Tensor:
        assert tuple(shape) == tuple(self.values.shape), (shape, self.values.shape)
        return self.values.to(
            device=device, dtype=dtype, copy=True
        )  # estimators may negate it in place


def tile(x: np.ndarray, samples: int) -> np.ndarray:
    """NumPy version of the sample-minor layout: row b·N + n is row b."""
    return np.repeat(x, samples, axis=0)


def group_mean(x: np.ndarray, groups: Sequence[int]) -> np.ndarray:
    """Mean of ``x [prod(groups)·rest...]`` over every axis of ``groups`` after the first."""
    shaped = x.reshape(*groups, *x.shape[1:])
    return shaped.mean(axis=tuple(range(1, len(groups))))
