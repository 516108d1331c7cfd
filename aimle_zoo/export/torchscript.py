"""``to_torchscript``: export a model, solver or module to a TorchScript file.

The module is compiled with ``torch.jit.script`` (loops stay loops, so the solvers keep dynamic
sizes); graphs without loop solvers fall back to ``torch.jit.trace`` when they cannot be
scripted. The file carries the metadata as the extra file ``aimle_zoo.json`` and loads with
``torch.jit.load`` in a process that has torch but not aimle_zoo. Like :func:`to_onnx`, the
export is compared with eager PyTorch before it is written atomically.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_file
from ._paths import (
    ExportError,
    InferencePath,
    as_tuple,
    check_eval_mode,
    check_exportable,
    inference_path,
)
from .choice import choose_exporter
from .metadata import TORCHSCRIPT_METADATA_FILE, ExportResult, build_metadata
from .verify import brief_error, check_export


def to_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    example_inputs: Sequence[Tensor] | None = None,
    method: str = "auto",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
    name: str | None = None,
    check: bool = True,
) -> ExportResult:
    """Export the eval-mode inference path of ``model`` to the TorchScript file ``path``.

    The file returns the outputs as a tuple (for zoo models, e.g. ``(mask, prediction)``).

    Args:
        model: a zoo model, a registered solver, or any module; in eval mode, on any device
            (a CPU copy is exported; the file loads onto any device with ``map_location``).
        path: the file to write (conventionally ``.pt``; its folder is created).
        example_inputs: inputs for ``forward`` (zoo models and built-in solvers have defaults).
        method: ``"auto"``, ``"script"`` or ``"trace"``.
        input_names, output_names, dynamic_dims: as in :func:`~aimle_zoo.export.to_onnx`.
        name: the model name recorded in the metadata.
        check: compare with eager PyTorch on a new batch and problem size before writing.

    Raises:
        ExportError: training mode, or no method produced a module that matches eager PyTorch.
        NonExportableSolverError: a non-exportable solver (the message gives the ways out).
    """
    check_eval_mode(model)
    started = time.perf_counter()
    target = Path(path)
    route = inference_path(
        model,
        example_inputs=example_inputs,
        input_names=input_names,
        output_names=output_names,
        dynamic_dims=dynamic_dims,
    )
    if name is not None:
        route.name = name
    check_exportable(route)
    choice = choose_exporter(route, "torchscript", method)
    failures: list[str] = []
    last_error: Exception | None = None
    for candidate in choice.candidates:
        reason = choice.reason if not failures else f"{candidate}, after {'; '.join(failures)}"
        metadata = build_metadata(
            route, file_format="torchscript", exporter=candidate, exporter_reason=reason
        )
        try:
            data = _export_checked(route, candidate, json.dumps(metadata, sort_keys=True), check)
        except Exception as err:  # scripting and tracing fail in many ways; try the next one
            failures.append(f"{candidate}: {brief_error(err)}")
            last_error = err
            continue
        with atomic_file(target) as handle:
            handle.write(data)
        seconds = time.perf_counter() - started
        return ExportResult(target, "torchscript", candidate, seconds, len(data), metadata)
    raise ExportError(
        f"could not export {route.name} to TorchScript; nothing was written. Tried:\n  "
        + "\n  ".join(failures)
        + "\nMake forward scriptable (type annotations, no Python-only calls), or export to "
        "ONNX with aimle_zoo.export.to_onnx."
    ) from last_error


def _export_checked(route: InferencePath, method: str, metadata: str, check: bool) -> bytes:
    """Script (or trace) the module, save it with the metadata, reload and check it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "script":
            compiled = torch.jit.script(route.module)
        else:
            compiled = torch.jit.trace(route.module, route.example_inputs, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(compiled, buffer, _extra_files={TORCHSCRIPT_METADATA_FILE: metadata})
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data))
    if check:

        def run(values: tuple[Tensor, ...]) -> list[np.ndarray]:
            with torch.no_grad():
                return [value.numpy() for value in as_tuple(loaded(*values))]

        check_export(route, run, f"the TorchScript module from torch.jit.{method}")
    return data
