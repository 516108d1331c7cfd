"""The trainer on its own: divergence stops a run without harming its checkpoints, and
gradient clipping reaches the optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    training_loss = model.training_loss
    calls = 0

    def diverging_after_one_epoch(batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        nonlocal calls
        calls += 1
        loss, logs = training_loss(batch)
        return (loss * float("nan") if calls > 4 else loss), logs  # 4 steps per epoch

    model.training_loss = diverging_after_one_epoch  # type: ignore[method-assign]
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss nan at epoch 1, step 0"
    ):
        train(model, _dataset(), None, tmp_path, _config(epochs=2))
    kept = load_file(str(tmp_path / "last" / "model.safetensors"))
    state = model.state_dict()  # the weights after epoch 0: the NaN step was not taken
    assert kept.keys() == state.keys()
    assert all(torch.equal(kept[key], state[key]) for key in state)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0]


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path: Path) -> None:
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config())
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    old_weights = load_file(str(tmp_path / "last" / "model.safetensors"))
    with pytest.raises(FileExistsError, match=r"already holds a training run \(metrics\.jsonl"):
        train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(seed=1))
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing touched
    with pytest.raises(ValueError, match="resume=True continues the run"):
        train(
            tiny_model("l2x_tabular"), data, None, tmp_path, _config(), resume=True, overwrite=True
        )
    (tmp_path / "test_metrics.json").write_text("{}")  # as run_training leaves it
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(seed=1), overwrite=True)
    assert not (tmp_path / "test_metrics.json").exists()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0]  # one run's log, not two
    replaced = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert not torch.equal(replaced["predictor.0.weight"], old_weights["predictor.0.weight"])


def test_resume_rewrites_the_log_from_the_saved_state(tmp_path: Path) -> None:
    """A stop between the log line and the checkpoint of an epoch must not log it twice."""
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config())
    log = tmp_path / "metrics.jsonl"
    log.write_text(log.read_text() + json.dumps({"epoch": 1, "train": {}}) + "\n")
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=2), resume=True)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [0, 1]
    assert "loss" in json.loads(log.read_text().splitlines()[1])["train"]


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


def test_resume_refuses_settings_that_would_not_continue_the_run(tmp_path: Path) -> None:
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(checkpoint_every=2))
    saved = (tmp_path / "last" / "model.safetensors").read_bytes()
    for change in ({"batch_size": 4}, {"lr": 1e-2}, {"seed": 3}):
        with pytest.raises(ValueError, match=f"cannot resume .* {next(iter(change))}="):
            train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(**change), resume=True)
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == saved
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=2), resume=True)
