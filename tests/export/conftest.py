"""Shared exports of the tiny zoo models (one set per test session, shared by xdist workers)."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from aimle_zoo.export import TensorSpec, inference_path, to_onnx, to_torchscript
from aimle_zoo.export._paths import as_tuple, random_inputs
from aimle_zoo.models import ZooModel

from ..models._helpers import TINY, tiny_model

#: Batch size and sequence length of the saved deployment inputs (not the export example's).
DEPLOY_BATCH = 7


@dataclass(frozen=True)
class Exported:
    """A tiny zoo model, its two exported files and saved inputs / eager outputs."""

    name: str
    model: ZooModel
    onnx: Path
    torchscript: Path
    inputs: Path
    expected: Path


def build_tiny(name: str) -> ZooModel:
    """The tiny model ``name`` in eval mode, with the same weights in every process."""
    torch.manual_seed(0)
    return tiny_model(name).eval()


def _export_all(folder: Path) -> None:
    """Export every tiny model to both formats and save fresh inputs and eager outputs."""
    for name in TINY:
        model = build_tiny(name)
        to_torchscript(model, folder / f"{name}.pt")
        to_onnx(model, folder / f"{name}.onnx")
        path = inference_path(model)
        sizes = {**path.example_sizes(), "batch": DEPLOY_BATCH}
        if "length" in sizes:
            sizes["length"] += 5  # another sequence length than the export example's
        inputs = random_inputs(path.inputs, sizes, torch.Generator().manual_seed(7))
        with torch.no_grad():
            outputs = as_tuple(path.module(*inputs))
        np.savez(folder / f"{name}.inputs.npz", **_arrays(path.inputs, inputs))
        np.savez(folder / f"{name}.expected.npz", **_arrays(path.outputs, outputs))
    (folder / "done.json").write_text(json.dumps(sorted(TINY)))


def _arrays(specs: Sequence[TensorSpec], values: Sequence[Tensor]) -> dict[str, np.ndarray]:
    return {spec.name: value.numpy() for spec, value in zip(specs, values, strict=True)}


@pytest.fixture(scope="session")
def exported_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Path]:
    """The folder of the shared exports; the first xdist worker writes it, the others wait."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    folder = root / "export-zoo"
    folder.mkdir(exist_ok=True)
    with open(root / "export-zoo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (folder / "done.json").is_file():
                _export_all(folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    yield folder


@pytest.fixture(scope="session")
def exported(exported_folder: Path) -> dict[str, Exported]:
    """Every tiny zoo model with its exported files, by model name."""
    return {
        name: Exported(
            name=name,
            model=build_tiny(name),
            onnx=exported_folder / f"{name}.onnx",
            torchscript=exported_folder / f"{name}.pt",
            inputs=exported_folder / f"{name}.inputs.npz",
            expected=exported_folder / f"{name}.expected.npz",
        )
        for name in TINY
    }
