"""The bundled ``checkpoints/`` folder: where it is, and that every checkpoint in it is sound."""

from __future__ import annotations

from pathlib import Path

import pytest

import aimle_zoo
from aimle_zoo.hub import CHECKPOINTS_ENV, checkpoints_root, list_bundled_checkpoints

REPOSITORY_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


def test_the_default_root_is_the_repository_checkpoints_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CHECKPOINTS_ENV)
    assert checkpoints_root() == REPOSITORY_CHECKPOINTS
    assert (REPOSITORY_CHECKPOINTS / "README.md").is_file()


def test_every_bundled_checkpoint_loads_strictly_and_records_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CHECKPOINTS_ENV)
    folders = sorted(path.name for path in REPOSITORY_CHECKPOINTS.iterdir() if path.is_dir())
    assert list_bundled_checkpoints() == folders  # every folder holds a config.json
    for name in folders:
        model = aimle_zoo.from_pretrained(name)
        assert not model.training
        assert aimle_zoo.read_card_metrics(name), f"{name}: the card records no metrics"
