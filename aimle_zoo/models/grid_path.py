"""Shortest paths on Warcraft-style terrain maps (the Warcraft task of blackbox-backprop and I-MLE).

A CNN maps a map image ``[B, 3, H·t, W·t]`` to vertex costs θ ``[B, H, W]``; the latent is the
minimum-cost top-left → bottom-right path on the 8-connected grid (solver ``"dijkstra"``, vertex
costs counted at both endpoints, negative costs clamped at 0), made differentiable by the
latent layer (the solver declares ``sense="min"``, so the estimator perturbs and differentiates
accordingly). Training minimises the Hamming loss to the gold path.

Metrics (eval mode, MAP path): exact-path accuracy (the predicted mask equals the gold one),
the cost ratio ⟨w, z⟩ / ⟨w, y⟩ under the true vertex costs w, and below-x-percent accuracy
(⟨w, z⟩ <= (1 + x/100)·⟨w, y⟩: the predicted path is optimal up to x percent even when it is
not the gold path, e.g. under ties).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

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

_ACTIVATIONS = ("abs", "softplus")


def hamming_loss(predicted: Tensor, gold: Tensor) -> Tensor:
    """Σ_cells [z(1−y) + (1−z)y] per row: ``[R, H, W]`` × 2 → ``[R]``, in at least float32
    (under autocast the path is bfloat16, whose integers are exact only up to 256)."""
    dtype = torch.promote_types(predicted.dtype, torch.float32)
    predicted, gold = predicted.to(dtype), gold.to(dtype)
    return (predicted * (1 - gold) + (1 - predicted) * gold).sum(dim=(1, 2))


def path_metrics(
    predicted: Tensor, gold: Tensor, true_costs: Tensor, percents: Sequence[float]
) -> dict[str, Tensor]:
    """Per-instance path metrics of 0/1 masks ``[B, H, W]`` under true costs ``[B, H, W]``.

    Returns ``exact_match``, ``cost_ratio`` (⟨w, z⟩ / ⟨w, y⟩; for a gold path of cost 0 it is
    1 when the predicted path costs 0 too and +inf otherwise) and, for each x in ``percents``,
    ``below_{x:g}_percent`` (⟨w, z⟩ <= (1 + x/100)·⟨w, y⟩), each ``[B]`` (float64).
    """
    weights = true_costs.double()
    predicted_cost = (predicted.double() * weights).sum(dim=(1, 2))
    gold_cost = (gold.double() * weights).sum(dim=(1, 2))
    metrics = {
        "exact_match": (predicted.bool() == gold.bool()).all(dim=2).all(dim=1).double(),
        "cost_ratio": torch.where(
            gold_cost == 0,
            torch.where(predicted_cost == 0, 1.0, torch.inf),  # 0/0: as cheap as gold
            predicted_cost / gold_cost,
        ),
    }
    for percent in percents:
        within = predicted_cost <= gold_cost * (1 + percent / 100)
        metrics[f"below_{percent:g}_percent"] = within.double()
    return metrics


@register_model("grid_shortest_path")
class GridShortestPath(ZooModel, tags=["shortest-path", "warcraft", "grid"]):
    """Warcraft-style shortest paths: CNN vertex costs → Dijkstra path (module docstring).

    Cost network: a stack of Conv(3×3)-BatchNorm-ReLU layers (the first with stride 2, like the
    ResNet stem of the reference), adaptive max-pooling to the H×W grid, the mean over
    channels, then a non-negativity map: ``"abs"`` (the reference CombResnet18's choice; zero
    costs possible) or ``"softplus"`` (smooth, strictly positive).

    Args:
        grid_size: H = W, vertices per side (12 for the 12×12 Warcraft maps).
        in_channels: image channels (3).
        channels: widths of the convolution layers.
        cost_activation: ``"abs"`` or ``"softplus"``.
        estimator: estimator name or config dict; ``None`` is central AIMLE with an adaptive
            target (β₀ = 1, η = 1e-3, c = grid_size) and SoG(k = ⌊1.3·grid_size⌋) noise as in
            the reference Warcraft code, one sample (the reference ships no AIMLE Warcraft
            settings; this default is ours).
    """

    def __init__(
        self,
        grid_size: int = 12,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 64),
        cost_activation: str = "abs",
        estimator: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            type(self).__name__, grid_size=grid_size, in_channels=in_channels, channels=channels
        )
        if cost_activation not in _ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: cost_activation must be one of {list(_ACTIVATIONS)}, "
                f"got {cost_activation!r}"
            )
        self.grid_size = grid_size
        self.in_channels = in_channels
        self.cost_activation = cost_activation
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise([in_channels, *channels])):
            stride = 2 if index == 0 else 1
            layers += [
                nn.Conv2d(fan_in, fan_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(fan_out),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d((grid_size, grid_size))
        self.latent_layer = self._build_latent_layer(
            "dijkstra", estimator, lambda: _default_grid_estimator(grid_size)
        )

    def _check_maps(self, maps: Any, where: str) -> Tensor:
        channels, size = self.in_channels, self.grid_size
        checked = check_tensor(
            f"{type(self).__name__}.{where}",
            "map images",
            maps,
            shape=f"[B, {channels}, H·t, W·t] (channels first, H = W = {size})",
            ndim=4,
            sizes={1: channels},
            nonempty=True,
            finite=True,
        )
        if checked.shape[2] < size or checked.shape[3] < size:
            raise ModelInputError(
                f"{type(self).__name__}.{where}: map images must be at least {size}×{size} "
                f"pixels (one or more per vertex), got shape {tuple(checked.shape)}"
            )
        return checked

    def _check_grid(self, value: Any, batch: int, name: str, where: str) -> Tensor:
        size = self.grid_size
        return check_tensor(
            f"{type(self).__name__}.{where}",
            name,
            value,
            shape=f"[B, {size}, {size}]",
            ndim=3,
            dtype="any",
            sizes={0: batch, 1: size, 2: size},
        )

    def vertex_costs(self, maps: Tensor) -> Tensor:
        """Predicted non-negative vertex costs θ ``[B, H, W]`` of map images ``[B, 3, ·, ·]``.

        The convolutions run in channels-last memory layout (same values, about 30% faster
        forward and backward on a CPU).
        """
        maps = maps.contiguous(memory_format=torch.channels_last)
        costs = self.pool(self.features(maps)).mean(dim=1)  # [B, H, W]
        return costs.abs() if self.cost_activation == "abs" else F.softplus(costs)

    def forward(self, maps: Tensor) -> Tensor:
        """Path masks: ``[B, H, W]`` in eval mode, ``[B·N, H, W]`` samples in training mode."""
        if not torch.jit.is_scripting():
            self._check_maps(maps, "forward")
        return self.latent_layer(self.vertex_costs(maps))

    def _unpack(self, batch: Any, where: str) -> tuple[Tensor, Tensor, Tensor]:
        """Checked ``(maps, true costs, gold paths)`` of a batch in the Warcraft dataset order."""
        maps, costs, paths = unpack_batch(
            f"{type(self).__name__}.{where}", batch, ("maps", "costs", "paths"), 3
        )
        name = f"{type(self).__name__}.{where}"
        maps = self._check_maps(maps, where)
        costs = self._check_grid(costs, maps.shape[0], "true vertex costs", where)
        paths = self._check_grid(paths, maps.shape[0], "gold paths", where)
        if checks_enabled():
            if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
                raise ModelInputError(f"{name}: true vertex costs must be finite and >= 0")
            if bool(((paths != 0) & (paths != 1)).any()):
                raise ModelInputError(
                    f"{name}: gold paths must be 0/1 masks (the batch order is maps, true "
                    "costs, gold paths)"
                )
        return maps, costs, paths

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Hamming loss to the gold path, averaged over samples and batch.

        ``batch = (maps [B, 3, ·, ·], true costs [B, H, W], gold paths [B, H, W])`` (the order
        of :class:`aimle_zoo.data.warcraft.WarcraftDataset`; the costs are not used).
        """
        self._warn_if_eval()
        maps, _, gold = self._unpack(batch, "training_loss")
        predicted = self(maps)  # [B·N, H, W]
        samples = predicted.shape[0] // maps.shape[0]
        loss = hamming_loss(predicted, expand_samples(gold.to(predicted.dtype), samples)).mean()
        return loss, {"hamming": float(loss.detach())}

    def evaluate_batch(
        self, batch: Any, *, percents: Sequence[float] = (0.0001, 1.0)
    ) -> dict[str, Tensor]:
        """Sums over the batch with the MAP path: ``loss_sum`` (Hamming), ``exact_match_sum``,
        ``cost_ratio_sum`` and ``below_{x}_percent_sum`` for each x in ``percents``; ``count``.

        ``batch = (maps, true costs [B, H, W], gold paths [B, H, W])``.
        """
        with self._evaluating():
            maps, costs, gold = self._unpack(batch, "evaluate_batch")
            predicted = self(maps)  # [B, H, W]
            metrics = {
                "loss_sum": batch_total(hamming_loss(predicted, gold.to(predicted.dtype))),
                "count": torch.tensor(maps.shape[0]),
            }
            for name, values in path_metrics(predicted, gold, costs, percents).items():
                metrics[f"{name}_sum"] = batch_total(values)
        return metrics

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Uniform random map images ``[batch_size, 3, 8·H, 8·W]`` (8-pixel tiles)."""
        side = 8 * self.grid_size
        maps = torch.rand(batch_size, self.in_channels, side, side, generator=example_generator())
        return (self._as_input(maps),)


def _default_grid_estimator(grid_size: int) -> Estimator:
    """Central AIMLE, adaptive target β₀ = 1, η = 1e-3, c = grid_size; SoG(⌊1.3·grid_size⌋)
    noise added to the costs as in the reference (``minimizer_noise="add"``)."""
    return AIMLE(
        target=AdaptiveTarget(initial_beta=1.0, target_norm=float(grid_size), update_step=1e-3),
        noise=SumOfGamma(k=int(1.3 * grid_size), iterations=10),
        samples=1,
        input_temperature=1.0,
        target_temperature=1.0,
        symmetric=True,
        minimizer_noise="add",  # the reference's θ + ε: trains better on these maps (README)
    )
