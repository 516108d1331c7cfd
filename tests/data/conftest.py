"""Fixtures of the dataset tests: an isolated cache root for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimle_zoo.data import CACHE_ENV


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$AIMLE_ZOO_CACHE`` at a fresh directory so no test touches the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root
