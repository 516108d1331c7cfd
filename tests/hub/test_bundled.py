"""The bundled ``checkpoints/`` folder: where it is, and that every checkpoint in it is sound."""

from __future__ import annotations

from pathlib import Path

import pytest

import aimle_zoo
from aimle_zoo.data import CACHE_ENV
from aimle_zoo.hub import CHECKPOINTS_ENV, checkpoints_root, list_bundled_checkpoints
from aimle_zoo.recipes import (
    HELDOUT_PREFIX,
    HELDOUT_SIZE,
    DataOptions,
    read_recipe,
    run_evaluation,
)
from tests.conftest import SHARED_DATA

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


BUNDLED = sorted(
    path.name for path in REPOSITORY_CHECKPOINTS.iterdir() if (path / "config.json").is_file()
)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_reproduces_its_recorded_metrics(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-evaluate on the held-out instances named in the card; the numbers must agree."""
    monkeypatch.delenv(CHECKPOINTS_ENV)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    recorded = read_recipe(REPOSITORY_CHECKPOINTS / name)
    assert recorded is not None, f"{name}: no recipe.json"
    assert recorded["smoke"] is False, f"{name}: a smoke run was published"
    card = aimle_zoo.read_card_metrics(name)
    expected = {
        k[len(HELDOUT_PREFIX) :]: v for k, v in card.items() if k.startswith(HELDOUT_PREFIX)
    }
    assert expected, f"{name}: the card records no {HELDOUT_PREFIX}* metrics"
    data_dir = str(Path(SHARED_DATA) / "mnist") if "mnist" in recorded["recipe"] else None
    measured = run_evaluation(
        aimle_zoo.from_pretrained(name),
        recorded["recipe"],
        split="test",
        data_options=DataOptions(data_dir=data_dir, progress=False),
        limit=HELDOUT_SIZE,
    )
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
