"""The trainer on its own: divergence stops a run without harming its checkpoints, and
gradient clipping reaches the optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from aimle_zoo.training import TrainConfig, train

from ..models._helpers import make_batch, tiny_model


def _dataset(size: int = 32) -> TensorDataset:
    model = tiny_model("l2x_tabular")
    return TensorDataset(*make_batch("l2x_tabular", model, size))


def _config(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {"epochs": 1, "batch_size": 8, "progress": False}
    return TrainConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular")
    data = _dataset()
    train(model, data, None, tmp_path, _config())
    saved = load_file(str(tmp_path / "last" / "model.safetensors"))
    with torch.no_grad():
        model.predictor[-1].bias.fill_(float("inf"))  # logits ±inf: the loss is NaN
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss nan at epoch 0, step 0"
    ):
        train(model, data, None, tmp_path, _config())
    assert (tmp_path / "last").is_dir()
    kept = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert kept.keys() == saved.keys()
    assert all(torch.equal(kept[key], saved[key]) for key in saved)


@pytest.mark.parametrize("clip", [None, 1e-12])
def test_gradient_clipping_reaches_the_optimizer(clip: float | None, tmp_path: Path) -> None:
    """Adam's first step moves every weight with a gradient g by lr·g/(|g| + ε): about lr
    unclipped, and at most lr·1e-12/1e-8 once the gradient norm is clipped to 1e-12."""
    model = tiny_model("l2x_tabular")
    before = {name: p.detach().clone() for name, p in model.predictor.named_parameters()}
    lr = 1e-2
    config = _config(lr=lr, grad_clip=clip, max_steps_per_epoch=1, shuffle=False)
    train(model, _dataset(), None, tmp_path, config)
    moved = max(
        float((p.detach() - before[name]).abs().max())
        for name, p in model.predictor.named_parameters()
    )
    if clip is None:
        assert moved == pytest.approx(lr, rel=1e-3)
    else:
        assert moved <= lr * clip / 1e-8
