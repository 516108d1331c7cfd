"""The trainer on its own: divergence stops a run without harming its checkpoints, and
gradient clipping reaches the optimizer."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from aimle_zoo.data import l2x_synthetic_dataset
from aimle_zoo.models import create_model
from aimle_zoo.training import (
    _STOP_SIGNALS,
    TrainConfig,
    TrainingStopped,
    _DistInfo,
    _resolve_device,
    save_checkpoint,
    seed_everything,
    train,
)

from ..models._helpers import make_batch, tiny_model
from ._helpers import PowerCut


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


class _CountingDataset(TensorDataset):
    """A TensorDataset that counts the items the loader fetches."""

    fetched = 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        self.fetched += 1
        return super().__getitem__(index)


def test_an_epoch_cut_short_loads_no_batch_beyond_its_last_step(tmp_path: Path) -> None:
    data = _CountingDataset(*_dataset().tensors)
    config = _config(epochs=2, max_steps_per_epoch=2, shuffle=False)
    train(tiny_model("l2x_tabular"), data, None, tmp_path, config)
    assert data.fetched == 2 * 2 * config.batch_size  # epochs × steps × batch


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_steps_per_epoch": -2}, "max_steps_per_epoch must be at least 1"),
        ({"checkpoint_every": -1}, "checkpoint_every must be at least 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"grad_clip": -1.0}, "grad_clip must be a finite number > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
        ({"select_mode": "best"}, "select_mode must be min, max or last"),
        ({"lr_gamma": 1.5}, r"lr_gamma must be in \(0, 1\]"),
        ({"lr_gamma": 0.0}, r"lr_gamma must be in \(0, 1\]"),
        ({"lr_milestones": (0, 3)}, "lr_milestones must be epochs >= 1"),
    ],
)
def test_settings_no_run_can_use_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**change)


def test_a_failed_start_never_deletes_the_run_it_would_overwrite(tmp_path: Path) -> None:
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config())
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match="CUDA device"):
        train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(device="cuda:99"),
              overwrite=True)  # fmt: skip
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(
    ("world_size", "local_rank", "visible", "expected"),
    [(1, 0, 4, "cuda:2"), (4, 1, 4, "cuda:1"), (4, 3, 1, "cuda:0"), (4, 2, 2, "error")],
)
def test_cuda_without_an_index_names_this_process_gpu(
    world_size: int, local_rank: int, visible: int, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``torch.cuda.set_device`` needs an index: plain "cuda" becomes the current GPU, or the
    local rank's under torchrun (the only one where the launcher shows each rank one GPU).
    (The CUDA queries are stood in for: this machine has no GPU; tests/gpu trains on one.)"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    info = _DistInfo(rank=local_rank, world_size=world_size, local_rank=local_rank)
    if expected == "error":  # more processes than GPUs: NCCL would fail later, less clearly
        with pytest.raises(ValueError, match=r"local rank 2 but sees 2 GPUs.*--nproc_per_node 2"):
            _resolve_device("cuda", info)
        return
    assert _resolve_device("cuda", info) == torch.device(expected)
    assert _resolve_device(f"cuda:{visible - 1}", info) == torch.device("cuda", visible - 1)
    assert _resolve_device("cpu", info) == torch.device("cpu")


def test_resume_refuses_another_task_and_fewer_epochs(tmp_path: Path) -> None:
    data = _dataset()
    made = {"recipe": "l2x-xor", "estimator": "aimle", "smoke": True}
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=2, extra=made))
    for key, value in (("recipe", "l2x-switch"), ("estimator", "imle"), ("smoke", False)):
        config = _config(epochs=3, extra={**made, key: value})
        with pytest.raises(ValueError, match=f"cannot resume .*{key}="):
            train(tiny_model("l2x_tabular"), data, None, tmp_path, config, resume=True)
    with pytest.raises(ValueError, match="already trained 2 epochs"):
        train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=1, extra=made),
              resume=True)  # fmt: skip
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=3, extra=made),
          resume=True)  # fmt: skip
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").open()]
    assert epochs == [0, 1, 2]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _drop_optimizer_groups(path: Path) -> None:
    state = json.loads(path.read_text())
    del state["optimizer_groups"]
    path.write_text(json.dumps(state))


def _drop_a_buffer(path: Path) -> None:
    from safetensors.torch import save_file

    tensors = load_file(str(path))
    del tensors[next(name for name in tensors if name.endswith("target.beta"))]
    save_file(tensors, str(path))


def _epoch_as_text(path: Path) -> None:
    state = json.loads(path.read_text())
    state["epoch"] = "two"
    path.write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("trainer_state.json", _epoch_as_text, r"trainer_state.json is not a trainer state"),
        ("model.safetensors", _truncate, r"model.safetensors cannot be read"),
        ("trainer_state.safetensors", _truncate, r"trainer_state.safetensors cannot be read"),
        ("trainer_state.json", _drop_optimizer_groups, r"incomplete .*optimizer_groups"),
        ("model.safetensors", _drop_a_buffer, r"model.safetensors does not fit the model"),
    ],
)
def test_a_damaged_last_checkpoint_is_named_on_resume(
    name: str, damage: Any, message: str, tmp_path: Path
) -> None:
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=1))
    damage(tmp_path / "last" / name)
    before = {path.name: path.read_bytes() for path in (tmp_path / "last").iterdir()}
    with pytest.raises(ValueError, match=message) as err:
        train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=2), resume=True)
    assert "restore last/ from a copy of the run, or start over with --overwrite" in str(err.value)
    after = {path.name: path.read_bytes() for path in (tmp_path / "last").iterdir()}
    assert after == before  # nothing touched


def test_the_cards_of_a_run_name_the_run(tmp_path: Path) -> None:
    """best/ and last/ are written through hidden staging folders; their cards name the run
    (aimle-zoo/<run folder>), the repository a push of either goes to by default."""
    run = tmp_path / "xor-long"
    train(tiny_model("l2x_tabular"), _dataset(), None, run, _config(epochs=1))
    for folder in ("best", "last"):
        card = (run / folder / "README.md").read_text()
        assert "# aimle-zoo/xor-long" in card and 'from_pretrained("aimle-zoo/xor-long")' in card


def test_every_file_of_a_run_has_a_normal_files_mode(tmp_path: Path) -> None:
    """0o666 less the umask, like any file the user writes (temporary files start at 0600)."""
    train(tiny_model("l2x_tabular"), _dataset(), None, tmp_path, _config(epochs=1))
    mask = os.umask(0)
    os.umask(mask)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"trainer_state.safetensors", "model.safetensors"}
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_an_epoch_cut_by_a_stop_logs_its_whole_training_time(tmp_path: Path) -> None:
    data = _dataset(64)
    config = _config(checkpoint_every=4)
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny_model("l2x_tabular"), PowerCut(data, 8 * 5, delay=0.01), None, tmp_path, config)
    before = json.loads((tmp_path / "last" / "trainer_state.json").read_text())["seconds"]
    assert before >= 4 * 8 * 0.01  # four slow steps before the checkpoint
    train(tiny_model("l2x_tabular"), data, None, tmp_path, config, resume=True)
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert record["seconds"] >= before


def test_stale_staging_folders_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config())
    for name in (".last.k2j3.tmp", ".best.x9.tmp", ".last.old-4242", "..best.x9.tmp.q1.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config(epochs=2), resume=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best", "last", "metrics.jsonl"]


@pytest.fixture
def sigint_not_ignored() -> Iterator[None]:
    """Python's own SIGINT handler for the test: a suite started as a background job (``cmd &``
    in a script, ``nohup``) inherits SIGINT ignored, which training rightly leaves ignored
    (:func:`test_an_ignored_sigint_stays_ignored_during_training`), so a test that sends
    SIGINT to itself must first take it back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_not_ignored")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_a_save_waits_for_the_save_to_finish(stop: int, tmp_path: Path) -> None:
    """The signal arrives while ``model.safetensors`` is being written: the checkpoint is
    completed, then the stop is raised; no staging folder is left."""
    model = tiny_model("l2x_tabular")
    save_pretrained = model.save_pretrained
    finished: list[Path] = []

    def save_and_get_stopped(folder: Path, **options: Any) -> None:
        os.kill(os.getpid(), stop)  # handled at the next bytecode: held, not raised
        save_pretrained(folder, **options)
        finished.append(folder)

    model.save_pretrained = save_and_get_stopped  # type: ignore[method-assign]
    with _STOP_SIGNALS.installed(), pytest.raises(KeyboardInterrupt, match="after finishing"):
        save_checkpoint(model, tmp_path / "last")
    assert finished and (tmp_path / "last" / "model.safetensors").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last"]
    with _STOP_SIGNALS.installed(), pytest.raises(KeyboardInterrupt, match=f"signal {stop}$"):
        os.kill(os.getpid(), stop)  # outside a save: raised at once
        time.sleep(5)
    assert signal.getsignal(stop) != _STOP_SIGNALS.handle  # restored afterwards


def test_a_failed_save_keeps_its_error_and_the_stop_comes_at_the_next_save(
    tmp_path: Path,
) -> None:
    """A stop held during a save that then fails: the save's own error propagates (nothing is
    left behind), and the stop is raised when the next save completes."""
    model = tiny_model("l2x_tabular")

    def stopped_then_full(folder: Path, **options: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise OSError(28, "No space left on device")

    with _STOP_SIGNALS.installed():
        broken = tiny_model("l2x_tabular")
        broken.save_pretrained = stopped_then_full  # type: ignore[method-assign]
        with pytest.raises(OSError, match="No space left"):
            save_checkpoint(broken, tmp_path / "last")
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(KeyboardInterrupt, match="after finishing a save"):
            save_checkpoint(model, tmp_path / "last")
    assert (tmp_path / "last" / "model.safetensors").exists()
    assert _STOP_SIGNALS.held is None


def test_an_ignored_sigint_stays_ignored_during_training() -> None:
    """A background job started with SIGINT ignored (``cmd &`` in a script) keeps ignoring it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _STOP_SIGNALS.installed():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == _STOP_SIGNALS.handle
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_saves_on_other_threads_do_not_hold_the_main_threads_stop(tmp_path: Path) -> None:
    """Signals go to the main thread: a save on another thread must not swallow them."""
    import threading

    entered, release = threading.Event(), threading.Event()

    def slow_save() -> None:
        with _STOP_SIGNALS.writes():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=slow_save)
    with _STOP_SIGNALS.installed():
        worker.start()
        entered.wait(10)
        try:
            with pytest.raises(KeyboardInterrupt, match=r"signal \d+$"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        finally:
            release.set()
            worker.join()


def test_sigterm_stops_training_like_ctrl_c_and_leaves_no_staging_folder(tmp_path: Path) -> None:
    """A scheduler's SIGTERM mid-run: the save in progress cleans up, ``last/`` stays whole."""
    script = (
        "import sys, torch\n"
        "from aimle_zoo.training import TrainConfig, train\n"
        "from tests.training.test_trainer import _dataset\n"
        "from tests.models._helpers import tiny_model\n"
        "config = TrainConfig(epochs=10_000, batch_size=8, progress=False, checkpoint_every=1)\n"
        "train(tiny_model('l2x_tabular'), _dataset(), None, sys.argv[1], config)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], env=env, cwd=Path(__file__).parents[2],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    log = tmp_path / "metrics.jsonl"
    while time.monotonic() < deadline and (
        not log.exists() or len(log.read_text().splitlines()) < 2
    ):
        time.sleep(0.1)  # two epochs in, saving last/ after every step
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "TrainingStopped: stopped by signal" in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best", "last", "metrics.jsonl"]
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert state["epoch"] >= 1  # a step of epoch 1 or later was saved whole
    assert load_file(str(tmp_path / "last" / "model.safetensors"))


def test_training_stopped_survives_pickling_with_its_signal() -> None:
    """A stop raised in a worker process reaches the parent with its signal number."""
    stop = pickle.loads(pickle.dumps(TrainingStopped(signal.SIGTERM, "stopped by signal 15")))
    assert isinstance(stop, KeyboardInterrupt)
    assert stop.signum == signal.SIGTERM and str(stop) == "stopped by signal 15"


def test_the_learning_rate_steps_down_at_its_milestones_as_multisteplr_does(
    tmp_path: Path,
) -> None:
    """lr_at(e) equals MultiStepLR stepped once per epoch; a run logs and uses it, and a run
    resumed past a milestone continues at the decayed rate."""
    config = TrainConfig(epochs=50, lr=5e-4, lr_milestones=(30, 40), lr_gamma=0.1)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[30, 40], gamma=0.1)
    for epoch in range(50):
        assert config.lr_at(epoch) == pytest.approx(schedule.get_last_lr()[0], rel=1e-12)
        optimizer.step()
        schedule.step()
    data = l2x_synthetic_dataset("xor", 32, seed=0)
    short = TrainConfig(epochs=3, batch_size=8, lr=1e-2, lr_milestones=(1, 2), lr_gamma=0.5,
                        progress=False)  # fmt: skip
    model = create_model("l2x_tabular", k=2, selector_hidden=(8,), predictor_hidden=(8,))
    train(model, data, None, tmp_path / "run", replace(short, epochs=2))
    train(model, data, None, tmp_path / "run", short, resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [record["lr"] for record in records] == [1e-2, 5e-3, 2.5e-3]
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert state["optimizer_groups"][0]["lr"] == 2.5e-3
    with pytest.raises(ValueError, match="lr_milestones must increase"):
        TrainConfig(lr_milestones=(40, 30))
    with pytest.raises(ValueError, match=r"lr_milestones=\[1, 2\] \(now \(1,\)\)"):
        train(model, data, None, tmp_path / "run", replace(short, epochs=4, lr_milestones=(1,)),
              resume=True)  # fmt: skip


def test_empty_splits_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """An empty validation set used to end a run with best_epoch -1, no best/ and no error."""
    from aimle_zoo.training import evaluate

    data = l2x_synthetic_dataset("xor", 16, seed=0)
    empty = torch.utils.data.Subset(data, [])
    model = create_model("l2x_tabular", k=2, selector_hidden=(8,), predictor_hidden=(8,))
    config = TrainConfig(epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"the validation set .* is empty"):
        train(model, data, empty, tmp_path / "run", config)
    with pytest.raises(ValueError, match="the training set is empty"):
        train(model, empty, data, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="evaluate: the dataset is empty"):
        evaluate(model, empty)


def _noisy_steps(model: Any, seen: list[dict[str, float]]) -> None:
    """Make every training step of ``model`` also draw from Python's and NumPy's random
    streams, log the draws, and record the step's logs in ``seen``."""
    import random

    import numpy as np

    training_loss = model.training_loss

    def logged(batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = training_loss(batch)
        logs = {**logs, "python_draw": random.random(), "numpy_draw": float(np.random.rand())}
        seen.append({"loss": float(loss.detach()), **logs})
        return loss, logs

    model.training_loss = logged  # type: ignore[method-assign]


def test_the_epoch_log_is_the_mean_of_its_steps_also_across_a_resume(tmp_path: Path) -> None:
    """Each epoch's train logs are the means of its steps' logs (recomputed here), and a run
    stopped mid-epoch and resumed logs the same numbers: the running sums, and the Python and
    NumPy random states, come back with the checkpoint."""
    data = _dataset(40)  # 5 steps per epoch, the last on a short batch
    config = _config(epochs=2, checkpoint_every=2)
    seen: list[dict[str, float]] = []

    def fresh(record: list[dict[str, float]]) -> Any:
        seed_everything(0)
        model = tiny_model("l2x_tabular")
        _noisy_steps(model, record)
        return model

    train(fresh(seen), data, None, tmp_path / "straight", config)
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    assert len(seen) == 10
    for epoch, record in enumerate(straight):
        steps = seen[5 * epoch : 5 * epoch + 5]
        assert record["train"].keys() == steps[0].keys()
        for key, value in record["train"].items():
            assert value == pytest.approx(sum(step[key] for step in steps) / 5, rel=1e-12), key
    with pytest.raises(RuntimeError, match="power cut"):  # in epoch 0's step 4; saved at 2
        train(fresh([]), PowerCut(data, 8 * 3 + 3), None, tmp_path / "cut", config)
    train(fresh([]), data, None, tmp_path / "cut", config, resume=True)
    logs = [json.loads(line)["train"] for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    assert logs == [record["train"] for record in straight]


def _scripted_validation(model: Any, values: list[float]) -> None:
    """Make the validation ``loss`` of ``model``'s successive evaluations ``values``."""
    remaining = iter(values)

    def scripted(batch: Any) -> dict[str, torch.Tensor]:
        return {"loss_sum": torch.tensor(next(remaining)), "count": torch.tensor(1.0)}

    model.evaluate_batch = scripted  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("mode", "values", "best"),
    [
        ("min", [3.0, 1.0, 1.0, 2.0], 1),  # a tie keeps the earlier epoch
        ("max", [1.0, 3.0, 3.0, 2.0], 1),
        ("min", [math.nan, 2.0, 1.0, 3.0], 2),  # a NaN is never the best
        ("max", [2.0, math.nan, 1.0, 0.5], 0),
        ("last", [1.0, 2.0, 3.0, 4.0], 3),
    ],
)
def test_the_best_epoch_is_the_first_best_finite_value_of_the_selected_metric(
    mode: str, values: list[float], best: int, tmp_path: Path
) -> None:
    model = tiny_model("l2x_tabular")
    _scripted_validation(model, values)
    config = _config(epochs=4, select_mode=mode)
    result = train(model, _dataset(), _dataset(8), tmp_path, config)
    assert result.best_epoch == best
    assert result.best_metrics == {"loss": values[best], "count": 1.0}
    saved = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert saved["best_epoch"] == best


def test_a_resumed_run_keeps_the_best_epoch_of_the_epochs_before_the_stop(
    tmp_path: Path,
) -> None:
    """Epoch 1 stays the best after a resume whose epochs are all worse: its best/ is kept."""
    data, valid = _dataset(), _dataset(8)
    model = tiny_model("l2x_tabular")
    _scripted_validation(model, [3.0, 1.0])
    train(model, data, valid, tmp_path, _config(epochs=2))
    kept = (tmp_path / "best" / "model.safetensors").read_bytes()
    resumed = tiny_model("l2x_tabular")
    _scripted_validation(resumed, [2.0, 1.5])
    result = train(resumed, data, valid, tmp_path, _config(epochs=4), resume=True)
    assert (result.best_epoch, result.best_metrics["loss"]) == (1, 1.0)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == kept


def test_resume_refuses_a_change_of_any_setting_that_shapes_the_run(tmp_path: Path) -> None:
    """Every field of RESUME_FIELDS, changed alone, is named; ``epochs`` may change."""
    from aimle_zoo.training import RESUME_FIELDS

    changes: dict[str, object] = {
        "batch_size": 4, "lr": 1e-2, "lr_milestones": (1,), "lr_gamma": 0.5, "adam_eps": 1e-6,
        "weight_decay": 0.1, "grad_clip": 1.0, "seed": 3, "select_metric": "accuracy",
        "select_mode": "max", "max_steps_per_epoch": 2, "shuffle": False,
    }  # fmt: skip
    assert set(changes) == set(RESUME_FIELDS)
    data = _dataset()
    train(tiny_model("l2x_tabular"), data, None, tmp_path, _config())
    for key, value in changes.items():
        with pytest.raises(ValueError, match=f"cannot resume .* {key}="):
            train(tiny_model("l2x_tabular"), data, None, tmp_path,
                  _config(epochs=2, **{key: value}), resume=True)  # fmt: skip


def test_without_a_validation_set_the_best_checkpoint_is_the_last_epoch(tmp_path: Path) -> None:
    """With no validation set, best/ follows every epoch, even one whose train metric is
    worse (the train metric is no model-selection signal)."""
    model = tiny_model("l2x_tabular")
    training_loss = model.training_loss
    steps = 0

    def rising(batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        nonlocal steps
        steps += 1
        loss, logs = training_loss(batch)
        return loss, {**logs, "rising": float(steps)}

    model.training_loss = rising  # type: ignore[method-assign]
    result = train(model, _dataset(), None, tmp_path, _config(epochs=3, select_metric="rising"))
    assert result.best_epoch == 2 and result.best_metrics["rising"] == 10.5  # steps 9..12


class _PerInstance(torch.nn.Module):
    """A model whose evaluation returns per-instance values: its inputs, plus uniform noise."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def evaluate_batch(self, batch: Any) -> dict[str, torch.Tensor]:
        (values,) = batch
        return {"value": values, "noise": torch.rand(values.shape[0])}


def test_evaluate_averages_over_instances_with_its_own_seeded_noise() -> None:
    """Without ``reduce_metrics`` a metric is the mean over every instance (not the mean of
    unequal batches' means); the noise is drawn from ``seed`` alone and the caller's random
    stream is left where it was."""
    from aimle_zoo.training import evaluate

    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 30.0])
    data = TensorDataset(values)
    model = _PerInstance()
    torch.manual_seed(123)
    first = evaluate(model, data, batch_size=3)  # batches of 3, 3 and 2
    after = torch.rand(1)
    torch.manual_seed(123)
    torch.rand(5)  # another state of the caller's stream: the evaluation noise is the same
    again = evaluate(model, data, batch_size=3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # evaluate drew nothing from the caller's stream
    assert first["value"] == pytest.approx(float(values.mean()))  # 7.5, not 6.5
    assert first["noise"] == again["noise"]
    assert evaluate(model, data, batch_size=3, seed=1)["noise"] != first["noise"]


def test_a_trainer_state_whose_extra_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    """The recipe, estimator and smoke flag a resume compares live in the config's ``extra``;
    a state where it is no mapping is refused as damaged (not read as recording nothing)."""
    from aimle_zoo.training import check_run_folder

    made = _config(extra={"recipe": "l2x-xor", "estimator": "aimle"})
    train(tiny_model("l2x_tabular"), _dataset(), None, tmp_path, made)
    path = tmp_path / "last" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["config"]["extra"] = ["l2x-switch", "imle"]
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"trainer_state.json is not a trainer state"):
        check_run_folder(tmp_path, replace(made, epochs=2), resume=True, overwrite=False)
