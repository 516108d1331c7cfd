"""Saving: atomic replacement, carried-over files, the model card and its metrics."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
from huggingface_hub import ModelCard
from torch import nn

import aimle_zoo
from aimle_zoo import _io
from aimle_zoo.hub import default_repo_id, read_card_metrics, write_model_card
from aimle_zoo.models import ZooModel

from ..models._helpers import tiny_model
from ._helpers import assert_same_model, trained_tiny_model

METRICS = {"nelbo": 61.234567890123, "bce": 55.5, "count": 1000}
COMMAND = "aimle-zoo train discrete_vae --epochs 100 --seed 0"


def _contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_failure_mid_save_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = trained_tiny_model("discrete_vae", seed=1)
    folder = tmp_path / "dvae"
    first.save_pretrained(folder, metrics={"nelbo": 70.0})
    before = _contents(folder)

    def half_written(model: nn.Module, filename: str, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", half_written)
    with pytest.raises(OSError, match="No space left"):
        trained_tiny_model("discrete_vae", seed=2).save_pretrained(folder, metrics={"nelbo": 1.0})
    assert _contents(folder) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundled", "dvae", "hub-cache"]
    monkeypatch.undo()
    assert_same_model(aimle_zoo.from_pretrained(folder), first)


def test_saving_again_replaces_the_checkpoint_and_keeps_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    trained_tiny_model("l2x_tabular", seed=1).save_pretrained(folder)
    (folder / "trainer_state.pt").write_bytes(b"optimizer state")
    (folder / "logs").mkdir()
    (folder / "logs" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    second = trained_tiny_model("l2x_tabular", seed=2)
    second.save_pretrained(folder)
    assert (folder / "trainer_state.pt").read_bytes() == b"optimizer state"
    assert (folder / "logs" / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert_same_model(aimle_zoo.from_pretrained(folder), second)


def test_a_save_over_another_architecture_drops_the_old_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    trained_tiny_model("discrete_vae").save_pretrained(folder)
    (folder / "recipe.json").write_text('{"recipe": "dvae-mnist"}')
    trained_tiny_model("l2x_tabular").save_pretrained(folder)
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]


def test_the_folder_keeps_its_mode_and_no_staging_folder_is_left(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    trained_tiny_model("l2x_tabular", seed=1).save_pretrained(folder)
    folder.chmod(0o750)
    trained_tiny_model("l2x_tabular", seed=2).save_pretrained(folder)
    assert folder.stat().st_mode & 0o777 == 0o750
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundled", "hub-cache", "run"]


def test_without_an_atomic_exchange_a_failed_move_restores_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    first = trained_tiny_model("l2x_tabular", seed=1)
    first.save_pretrained(folder)
    before = _contents(folder)
    monkeypatch.setattr(_io, "_exchange", lambda first, second: False)
    real_replace = os.replace

    def failing_replace(source: Any, destination: Any) -> None:
        if Path(source).name.endswith(".tmp"):  # moving the new folder in
            raise OSError("No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        trained_tiny_model("l2x_tabular", seed=2).save_pretrained(folder)
    monkeypatch.undo()
    assert _contents(folder) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundled", "hub-cache", "run"]
    assert_same_model(aimle_zoo.from_pretrained(folder), first)


def test_without_an_atomic_exchange_a_save_replaces_the_folder_and_keeps_no_old_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    trained_tiny_model("l2x_tabular", seed=1).save_pretrained(folder)
    monkeypatch.setattr(_io, "_exchange", lambda first, second: False)
    second = trained_tiny_model("l2x_tabular", seed=2)
    second.save_pretrained(folder)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundled", "hub-cache", "run"]
    assert_same_model(aimle_zoo.from_pretrained(folder), second)


def test_the_exchange_reports_failures_other_than_a_missing_system_call(tmp_path: Path) -> None:
    """Only "not supported here" falls back to the two-step move; a missing folder raises."""
    (tmp_path / "old").mkdir()
    if _io._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    with pytest.raises(FileNotFoundError):
        _io._exchange(tmp_path / "missing", tmp_path / "old")
    assert (tmp_path / "old").is_dir()


def test_removing_a_link_to_a_folder_removes_the_link_only(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "kept").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    _io.remove_tree(link)
    assert not link.exists() and not link.is_symlink()
    assert (target / "kept").read_text() == "x"


def test_the_exchange_swaps_two_folders_in_one_step(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "a").write_text("old")
    (new / "a").write_text("new")
    if _io._exchange(new, old):  # Linux with renameat2; elsewhere the fallback is tested above
        assert (old / "a").read_text() == "new"
        assert (new / "a").read_text() == "old"
    else:
        assert sys.platform != "linux"


def test_a_read_only_folder_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    trained_tiny_model("l2x_tabular", seed=1).save_pretrained(folder)
    before = _contents(folder)
    folder.chmod(0o555)
    # root may write anywhere: ask the permission check what an ordinary user would get
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: real_access(path, mode) and os.getuid() != 0
    )
    try:
        with pytest.raises(PermissionError, match=r"read-only; make it writable \(chmod u\+w"):
            trained_tiny_model("l2x_tabular", seed=2).save_pretrained(folder)
    finally:
        folder.chmod(0o755)
    assert _contents(folder) == before


def test_folders_that_cannot_be_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_tiny_model("l2x_tabular")
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"keep me")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        model.save_pretrained(a_file)
    assert a_file.read_bytes() == b"keep me"
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for folder in (".", workdir, tmp_path):
        with pytest.raises(ValueError, match="working directory"):
            model.save_pretrained(folder)


def test_an_unregistered_model_cannot_be_saved(tmp_path: Path) -> None:
    class Unregistered(ZooModel):
        def __init__(self, size: int = 2) -> None:
            super().__init__()
            self.linear = nn.Linear(size, size)

    with pytest.raises(TypeError, match="Unregistered is not a registered model"):
        Unregistered().save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_model_card_records_data_metrics_command_and_usage(tmp_path: Path) -> None:
    model = trained_tiny_model("discrete_vae")
    folder = tmp_path / "dvae-mnist"
    model.save_pretrained(folder, metrics=METRICS, command=COMMAND, dataset="ylecun/mnist")

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "aimle_zoo"
    assert card.data.license == "mit"
    assert card.data.datasets == ["ylecun/mnist"]
    assert {"aimle", "discrete_vae", "topk", "model_hub_mixin"} <= set(card.data.tags)
    assert card.data.model_name == "aimle-zoo/dvae-mnist"
    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == {
        name: float(value) for name, value in METRICS.items()
    }
    body = card.text
    assert f"```bash\n{COMMAND}\n```" in body
    assert 'aimle_zoo.from_pretrained("aimle-zoo/dvae-mnist")' in body
    assert "| nelbo | 61.2346 |" in body and "| count | 1000 |" in body
    assert "`ylecun/mnist`" in body
    assert "solver | `topk`" in body and "`k=2`" in body
    assert f"estimator | `{model.latent_layer.estimator.config()['name']}`" in body
    assert "@inproceedings{minervini2023aimle" in body
    assert read_card_metrics(folder) == {name: float(value) for name, value in METRICS.items()}


def test_a_card_without_metrics(tmp_path: Path) -> None:
    trained_tiny_model("nri_tree").save_pretrained(tmp_path / "nri")
    card = ModelCard.load(tmp_path / "nri" / "README.md")
    assert card.data.eval_results is None
    assert "No metrics recorded." in card.text and "Not recorded." in card.text
    assert read_card_metrics(tmp_path / "nri") == {}


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ({"name": "aimle"}, "model.safetensors`: β, the running average"),
        ({"name": "aimle", "target": {"name": "fixed", "lambda_": 1.0}}, "keeps no state"),
        ({"name": "imle"}, "keeps no state"),
    ],
)
def test_the_card_describes_the_estimator_state_the_checkpoint_holds(
    estimator: dict[str, Any], expected: str
) -> None:
    model = tiny_model("l2x_tabular", estimator=estimator)
    text = str(model.generate_model_card())
    assert expected in text
    holds_state = any(key.startswith("latent_layer.estimator") for key in model.state_dict())
    assert holds_state == ("Its adaptive state" in text)


def test_write_model_card_adds_metrics_to_an_existing_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "grid"
    trained_tiny_model("grid_shortest_path").save_pretrained(folder)
    weights = (folder / "model.safetensors").read_bytes()
    write_model_card(folder, metrics={"path_accuracy": 0.875}, command=COMMAND)
    assert read_card_metrics(folder) == {"path_accuracy": 0.875}
    assert (folder / "model.safetensors").read_bytes() == weights
    assert COMMAND in (folder / "README.md").read_text()


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"metrics": {"acc": "high"}}, "metric 'acc' must be a real number"),
        ({"metrics": {"acc": True}}, "metric 'acc' must be a real number"),
        ({"metrics": [0.5]}, "metrics must be a mapping"),
        ({"command": ["aimle-zoo", "train"]}, "command must be a string"),
    ],
)
def test_bad_card_values_fail_before_the_folder_is_touched(
    tmp_path: Path, card: dict[str, Any], message: str
) -> None:
    folder = tmp_path / "l2x"
    trained_tiny_model("l2x_tabular", seed=1).save_pretrained(folder)
    before = _contents(folder)
    with pytest.raises(TypeError, match=message):
        trained_tiny_model("l2x_tabular", seed=2).save_pretrained(folder, **card)
    assert _contents(folder) == before


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_metric_is_refused(tmp_path: Path, value: float) -> None:
    folder = tmp_path / "l2x"
    with pytest.raises(ValueError, match=r"metric 'acc' is (nan|inf); a model card records finite"):
        trained_tiny_model("l2x_tabular").save_pretrained(folder, metrics={"acc": value})
    assert not folder.exists()


def test_the_card_lists_hub_dataset_ids_only_and_the_writers_version(tmp_path: Path) -> None:
    """A description is the card's text and the model index's dataset name, not a
    ``datasets`` entry (those are Hub ids); a rewritten card keeps the version that wrote the
    checkpoint."""
    folder = tmp_path / "vae"
    trained_tiny_model("discrete_vae").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["aimle_zoo_version"] = "0.1.0"
    (folder / "config.json").write_text(json.dumps(config))
    description = "Discrete VAE on MNIST, 20 groups of 10-of-20 codes"
    write_model_card(folder, metrics={"bce": 60.5}, dataset=description)
    card = ModelCard.load(folder / "README.md")
    assert card.data.datasets is None
    (result,) = card.data.eval_results
    assert result.dataset_name == description
    assert result.dataset_type == "discrete-vae-on-mnist-20-groups-of-10-of-20-codes"
    assert "written by aimle-zoo 0.1.0" in card.text
    write_model_card(folder, metrics={"bce": 60.5}, dataset=description, dataset_id="ylecun/mnist")
    card = ModelCard.load(folder / "README.md")
    assert card.data.datasets == ["ylecun/mnist"]
    assert card.data.eval_results[0].dataset_type == "ylecun/mnist"
    assert card.data.eval_results[0].dataset_name == description


def test_default_repository_ids(tmp_path: Path) -> None:
    assert default_repo_id(tmp_path / "dvae-mnist") == "aimle-zoo/dvae-mnist"
    assert default_repo_id(tmp_path / ".best.x1y2.tmp", "discrete_vae") == "aimle-zoo/discrete-vae"
    with pytest.raises(ValueError, match="not a valid Hub repository name"):
        default_repo_id(tmp_path / ".hidden")
    model = trained_tiny_model("l2x_tabular")
    model.save_pretrained(tmp_path / ".staging", repo_id="someone/l2x")
    assert 'from_pretrained("someone/l2x")' in (tmp_path / ".staging" / "README.md").read_text()


def test_push_to_hub_from_save_pretrained_needs_a_repo_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the Hub repo_id"):
        trained_tiny_model("l2x_tabular").save_pretrained(tmp_path / "x", push_to_hub=True)
    assert not (tmp_path / "x").exists()


def test_the_saved_config_rebuilds_the_model(tmp_path: Path) -> None:
    model = trained_tiny_model("l2x_text")
    model.save_pretrained(tmp_path / "text")
    config = json.loads((tmp_path / "text" / "config.json").read_text())
    arguments = {
        key: value
        for key, value in config.items()
        if key not in ("architecture", "format_version", "aimle_zoo_version")
    }
    rebuilt = aimle_zoo.models.create_model(config["architecture"], **arguments)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert rebuilt.latent_layer.estimator.config() == model.latent_layer.estimator.config()


def test_a_tree_that_cannot_be_deleted_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "old"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "file").write_text("x")

    def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(f"cannot delete {path}")

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.warns(RuntimeWarning, match="could not delete"):
        _io.remove_tree(folder)
    monkeypatch.undo()
    assert (folder / "sub" / "file").exists()
