"""A dataset that crashes part-way through an epoch, for the resume tests."""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset, TensorDataset


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
