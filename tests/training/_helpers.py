"""Test helpers: a dataset that crashes part-way through an epoch, for the resume tests, and
a recipe whose AIMLE default changes, for the tests of runs made under an older one."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from aimle_zoo.recipes import Recipe


class PowerCut(Dataset[tuple[torch.Tensor, ...]]):
    """``data`` whose item reads fail after ``budget`` of them (a crash in the middle of an
    epoch); every read first takes ``delay`` seconds."""

    def __init__(self, data: TensorDataset, budget: int, delay: float = 0.0) -> None:
        self.data, self.budget, self.delay = data, budget, delay

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        self.budget -= 1
        if self.budget < 0:
            raise RuntimeError("power cut")
        if self.delay:
            time.sleep(self.delay)
        return self.data[index]


def change_aimle_step_size(monkeypatch: pytest.MonkeyPatch, update_step: float) -> None:
    """Make every recipe's AIMLE target use ``update_step`` from now on (a changed default)."""
    original = Recipe._variant_config

    def new_default(self: Recipe, variant: str) -> dict[str, Any] | None:
        config = original(self, variant)
        if config is not None and "target" in config:
            config["target"] = {**config["target"], "update_step": update_step}
        return config

    monkeypatch.setattr(Recipe, "_variant_config", new_default)
