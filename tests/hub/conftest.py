"""Hermetic Hub settings for every test here: offline, an empty Hub cache, no bundled models.

huggingface_hub reads ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` once, when it is
imported, so the fixtures set both the variables and the constants read from them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from aimle_zoo.hub import CHECKPOINTS_ENV


@pytest.fixture(autouse=True)
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache in offline mode; the bundled-checkpoint root is an empty folder."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv(CHECKPOINTS_ENV, str(bundled))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def bundled_root(tmp_path: Path) -> Path:
    """The (empty) folder the bundled checkpoints resolve to in these tests."""
    return tmp_path / "bundled"
