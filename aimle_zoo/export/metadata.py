"""The metadata every exported file carries, and reading it back without loading the model.

The metadata is one JSON object:

- ``model_name``, ``kind`` (``"zoo_model"``, ``"solver"``, ``"module"``), ``config`` (the
  model's constructor arguments, zoo models);
- ``aimle_zoo_version``, ``torch_version``, ``metadata_version``;
- ``format`` (``"onnx"`` or ``"torchscript"``), ``exporter`` and why it was chosen, ``opset``;
- ``solvers``: ``[{"name", "params", "sense", "location"}]``, the solvers inside the graph;
- ``solver_after``: for a split export, the solver to run on the output θ (else ``null``);
- ``inputs`` / ``outputs``: ``[{"name", "dtype", "shape", ...}]``; a ``str`` in a shape names
  a dynamic dimension, an ``int`` is fixed at export time;
- ``dynamic_dims``: ``{name: minimum size}`` (for a module's declared sizes, the smallest
  that eager PyTorch accepts, found by running it); ``batch_multiple``: the batch must be a
  multiple of it (absent in files from before it was recorded: 1); ``example_sizes``:
  ``{name: size}`` in the example inputs of the export; ``fixed_dims``: ``{"input[axis]":
  size}`` for every size fixed at export time; ``verified_sizes``: the other problem sizes
  checked.

ONNX files hold it in ``metadata_props``: the whole object under ``aimle_zoo`` plus the keys
``model_name``, ``aimle_zoo_version``, ``solver``, ``solver_params``, ``inputs`` and
``outputs`` (JSON strings) for tools that show flat properties. TorchScript files hold it as the
extra file ``aimle_zoo.json`` (``torch.jit.load(path, _extra_files={"aimle_zoo.json": ""})``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._paths import InferencePath

#: Version of the metadata layout.
METADATA_VERSION = 1

#: ONNX ``metadata_props`` key of the whole metadata object.
ONNX_METADATA_KEY = "aimle_zoo"

#: Name of the TorchScript extra file holding the metadata.
TORCHSCRIPT_METADATA_FILE = "aimle_zoo.json"

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ExportResult:
    """A written artefact: where, which format and exporter, export time, size, metadata."""

    path: Path
    file_format: str
    exporter: str
    seconds: float
    size_bytes: int
    metadata: dict[str, Any]


def build_metadata(
    path: InferencePath,
    *,
    file_format: str,
    exporter: str,
    exporter_reason: str,
    opset: int | None = None,
) -> dict[str, Any]:
    """The metadata object of an artefact exported from ``path``."""
    from .. import __version__

    fixed = {
        f"{spec.name}[{axis}]": size
        for spec in path.inputs
        for axis, size in enumerate(spec.shape)
        if isinstance(size, int)
    }
    return {
        "metadata_version": METADATA_VERSION,
        "model_name": path.name,
        "kind": path.kind,
        "model_type": path.model_type,
        "config": path.config,
        "aimle_zoo_version": __version__,
        "torch_version": torch.__version__,
        "format": file_format,
        "exporter": exporter,
        "exporter_reason": exporter_reason,
        "opset": opset,
        "solvers": [info.to_json() for info in path.solvers],
        "solver_after": path.solver_after.to_json() if path.solver_after else None,
        "inputs": [spec.to_json() for spec in path.inputs],
        "outputs": [spec.to_json() for spec in path.outputs],
        "dynamic_dims": dict(path.dynamic_dims),
        "batch_multiple": path.batch_multiple,
        "size_forms": dict(path.size_forms),
        "example_sizes": path.example_sizes(),
        "fixed_dims": fixed,
        "verified_sizes": [dict(case) for case in path.size_cases],
    }


def onnx_properties(metadata: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` entries of an ONNX file (string values)."""
    solvers = metadata["solvers"] or (
        [metadata["solver_after"]] if metadata["solver_after"] else []
    )
    return {
        ONNX_METADATA_KEY: json.dumps(metadata, sort_keys=True),
        "model_name": str(metadata["model_name"]),
        "aimle_zoo_version": str(metadata["aimle_zoo_version"]),
        "solver": ", ".join(str(solver["name"]) for solver in solvers),
        "solver_params": json.dumps([solver["params"] for solver in solvers], sort_keys=True),
        "inputs": json.dumps(metadata["inputs"]),
        "outputs": json.dumps(metadata["outputs"]),
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of an exported ``.onnx`` or TorchScript file, without running the model.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an ONNX or TorchScript file written by aimle_zoo.export
            (truncated, corrupt, or exported by other means).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no exported model at {file}")
    if file.stat().st_size == 0:
        raise ValueError(f"{file} is empty (an interrupted copy?); export the model again")
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic == _ZIP_MAGIC:
        return _torchscript_metadata(file)
    return _onnx_metadata(file)


def is_torchscript_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip file) rather than an ONNX protobuf."""
    with Path(path).open("rb") as handle:
        return handle.read(4) == _ZIP_MAGIC


def _torchscript_metadata(file: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(file) as archive:
            names = [
                name
                for name in archive.namelist()
                if name.endswith(f"/extra/{TORCHSCRIPT_METADATA_FILE}")
            ]
            if not names:
                raise ValueError(
                    f"{file} is a TorchScript file without aimle_zoo metadata; it was not "
                    "written by aimle_zoo.export.to_torchscript"
                )
            text = archive.read(names[0]).decode("utf-8")
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{file} is not a readable TorchScript archive (truncated or corrupt: {err}); "
            "export it again"
        ) from err
    return _parse(text, file)


def _onnx_metadata(file: Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(os.fspath(file), load_external_data=False)
    except Exception as err:  # protobuf raises several unrelated types on bad input
        raise ValueError(
            f"{file} is neither a TorchScript nor a readable ONNX file (truncated or corrupt: "
            f"{err}); export it again"
        ) from err
    properties = {prop.key: prop.value for prop in model.metadata_props}
    if ONNX_METADATA_KEY not in properties:
        raise ValueError(
            f"{file} is an ONNX file without aimle_zoo metadata; it was not written by "
            "aimle_zoo.export.to_onnx"
        )
    return _parse(properties[ONNX_METADATA_KEY], file)


def _parse(text: str, file: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: the aimle_zoo metadata is not valid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise ValueError(f"{file}: the aimle_zoo metadata is not a JSON object")
    return metadata
