"""Device names as users write them: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, checked against
the GPUs PyTorch can see (faked here, so the tests run on any machine)."""

from __future__ import annotations

import pytest
import torch

from aimle_zoo._devices import resolve_device


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(("count", "expected"), [(0, "cpu"), (2, "cuda")])
def test_auto_takes_a_gpu_only_where_there_is_one(
    count: int, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_gpus(monkeypatch, count)
    assert resolve_device("auto") == torch.device(expected)


def test_a_gpu_index_must_be_below_the_number_of_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' requested but PyTorch sees 2 CUDA device"):
        resolve_device("cuda:2")


def test_cuda_without_a_gpu_is_refused_with_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 0)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"sees 0 CUDA device\(s\) here; use cpu"):
            resolve_device(name)


def test_every_cpu_name_is_the_one_cpu_device() -> None:
    for name in ("cpu", "cpu:0", torch.device("cpu", 0)):
        resolved = resolve_device(name)
        assert resolved == torch.device("cpu") and resolved.index is None
    with pytest.raises(ValueError, match="unknown device 'gpu'; use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")
