"""Run any exported file (ONNX through onnxruntime, TorchScript through ``torch.jit.load``) on
numpy inputs, and read/write the ``.npy``/``.npz`` files of ``aimle-zoo predict``."""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_file
from ._paths import as_tuple
from .metadata import TORCHSCRIPT_METADATA_FILE, _parse, is_torchscript_file
from .runner import (
    InputLimits,
    ModelFileError,
    OnnxRunner,
    RunnerInputError,
    TensorInfo,
    check_inputs,
)


class TorchScriptModel:
    """An exported TorchScript file with the same interface as :class:`OnnxRunner`.

    The inputs are checked against the specification recorded in the file's metadata.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(
                f"no exported model at {self.path}; export one with "
                "`aimle-zoo export NAME --format torchscript --out DIR`"
            )
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                self.module = torch.jit.load(os.fspath(self.path), _extra_files=extra)
        except (RuntimeError, ValueError, zipfile.BadZipFile) as err:
            raise ModelFileError(
                f"{self.path} could not be loaded by torch.jit.load: it is truncated, corrupt "
                f"or not a TorchScript file ({err}); export it again"
            ) from err
        text: str | bytes = extra[TORCHSCRIPT_METADATA_FILE]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        self.metadata = _parse(text, self.path) if text else {}
        self.inputs = tuple(_spec_info(spec) for spec in self.metadata.get("inputs", []))
        self.outputs = tuple(_spec_info(spec) for spec in self.metadata.get("outputs", []))
        self.limits = InputLimits.from_metadata(self.metadata)  # read once, not per call
        if not self.inputs:
            raise ModelFileError(
                f"{self.path} has no aimle_zoo input specification; export it with "
                "aimle_zoo.export.to_torchscript"
            )

    @property
    def providers(self) -> list[str]:
        """``["torchscript"]`` (the interface of :class:`OnnxRunner`)."""
        return ["torchscript"]

    def run(self, inputs: Mapping[str, Any] | Sequence[Any] | Any) -> dict[str, np.ndarray]:
        """Check ``inputs`` and run; returns ``{output name: array}``."""
        feed = check_inputs(self.inputs, inputs, self.limits)
        tensors = [torch.from_numpy(_writable(feed[info.name])) for info in self.inputs]
        with torch.inference_mode():
            values = as_tuple(self.module(*tensors))
        names = [info.name for info in self.outputs] or [f"output_{i}" for i in range(len(values))]
        return {name: value.numpy() for name, value in zip(names, values, strict=True)}

    __call__ = run


def _spec_info(spec: Mapping[str, Any]) -> TensorInfo:
    shape = tuple(size if isinstance(size, (int, str)) else None for size in spec["shape"])
    return TensorInfo(str(spec["name"]), str(spec["dtype"]), shape)


def load_exported(
    path: str | os.PathLike[str], *, threads: int | None = None
) -> OnnxRunner | TorchScriptModel:
    """An exported file ready to run: :class:`OnnxRunner` (ONNX) or :class:`TorchScriptModel`.

    The format is read from the file's first bytes (a TorchScript file is a zip archive).

    Raises:
        ModelFileError: missing, empty, truncated or unreadable file.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelFileError(f"no exported model at {file}")
    if is_torchscript_file(file):
        return TorchScriptModel(file)
    return OnnxRunner(file, threads=threads)


def read_inputs(path: str | os.PathLike[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The inputs stored in a ``.npy`` (one input) or ``.npz`` file, by input name.

    An ``.npz`` holds one array per input, under the input names or, positionally, under
    ``arr_0``, ``arr_1``, ... (what ``np.savez(file, a, b)`` writes).

    Raises:
        FileNotFoundError: no such file.
        RunnerInputError: the file does not hold the inputs the model takes.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no input file at {file}")
    names = list(input_names)
    try:
        loaded = np.load(file, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise RunnerInputError(f"{file} is not a readable .npy or .npz file: {err}") from err
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise RunnerInputError(
                f"{file} holds one array but the model takes {len(names)} inputs {names}; "
                "save them with np.savez(file, **{name: array})"
            )
        return {names[0]: loaded}
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    positional = [f"arr_{index}" for index in range(len(names))]
    if set(arrays) == set(positional) and not set(arrays) & set(names):
        return {name: arrays[key] for name, key in zip(names, positional, strict=True)}
    return arrays


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if outputs can be written there: a ``.npz`` name, not a folder."""
    file = Path(path)
    if file.suffix != ".npz":
        raise ValueError(f"outputs are written as .npz, got {file}; name the file *.npz")
    if file.is_dir():
        raise ValueError(f"{file} is a folder; name the output file, e.g. {file / 'out.npz'}")
    return file


def prediction_output_path(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Where ``aimle-zoo predict`` writes the outputs of ``input_path``: ``output``, or by
    default ``INPUT_STEM.outputs.npz`` beside the input.

    Raises:
        ValueError: the name is not ``.npz`` or is a folder; it names the input file itself;
            or it exists and ``overwrite`` is false (``x.npy`` and ``x.npz`` share a default
            name, so a second run never replaces the first one's outputs unasked).
    """
    source = Path(input_path)
    file = check_output_path(output or source.with_name(f"{source.stem}.outputs.npz"))
    if file.exists() and source.exists() and file.samefile(source):
        raise ValueError(f"{file} is the input file; name another output file with --output")
    if file.exists() and not overwrite:
        raise ValueError(
            f"{file} already exists; pass --overwrite to replace it, or name another output "
            "file with --output"
        )
    return file


def write_outputs(path: str | os.PathLike[str], outputs: Mapping[str, np.ndarray]) -> Path:
    """Write ``outputs`` to ``path`` (``.npz``, one array per output name) atomically."""
    file = check_output_path(path)
    buffer = io.BytesIO()
    save: Callable[..., None] = np.savez  # keyword arrays (numpy's stubs type them as flags)
    save(buffer, **dict(outputs))
    with atomic_file(file) as handle:
        handle.write(buffer.getvalue())
    return file


def _writable(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array torch can share memory with: a read-only one is copied (sharing it
    makes torch warn that writes through the tensor are undefined)."""
    if not array.flags.writeable:
        return np.array(array, order="C", copy=True)
    return np.ascontiguousarray(array)
