"""``aimle-zoo quickstart``: the whole export path on every bundled model, offline.

For each bundled checkpoint (``checkpoints/<name>/``, see :func:`aimle_zoo.hub.checkpoints_root`)
it loads the model, runs it on the bundled sample inputs (``sample_inputs.npz`` in the
checkpoint folder, else ``model.example_inputs``), exports it to TorchScript and ONNX, verifies
both against eager PyTorch (onnxruntime and TorchScript), times the three on the sample inputs
(one thread each, the minimum over rounds) and returns one table row per model. With no
checkpoint bundled it says so and uses freshly initialised models of the default
configuration, so the export path is still demonstrated; the ``source`` column says which was
used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..hub import checkpoints_root, from_pretrained, list_bundled_checkpoints
from ..models import ZooModel, create_model, list_models
from ._paths import as_tuple, inference_path
from .onnx import to_onnx
from .predict import TorchScriptModel, read_inputs
from .runner import OnnxRunner
from .torchscript import to_torchscript
from .verify import verify

#: The file in a checkpoint folder holding sample inputs (keys: the model's input names).
SAMPLE_INPUTS_FILE = "sample_inputs.npz"

#: Batch size of the sample inputs made with ``model.example_inputs`` when none are bundled.
SAMPLE_BATCH = 4

Progress = Callable[[str], None]


@dataclass(frozen=True)
class QuickstartRow:
    """One model's line of the quickstart table (times in ms on the sample inputs)."""

    model: str
    source: str
    parameters: int
    eager_ms: float
    torchscript_ms: float
    onnxruntime_ms: float
    max_abs_diff: float
    onnx_path: Path
    torchscript_path: Path


@dataclass(frozen=True)
class _Entry:
    """A model to demonstrate: its table name, how it was obtained, and the model."""

    name: str
    source: str
    model: ZooModel
    folder: Path | None


def quickstart_models(
    progress: Progress,
    fallback_configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[_Entry]:
    """The bundled checkpoints, loaded; or, with none bundled, fresh default models.

    ``fallback_configs`` maps model names to constructor arguments for the fallback (default:
    every registered model with its default configuration).
    """
    names = list_bundled_checkpoints()
    if names:
        entries = []
        for name in names:
            progress(f"loading bundled checkpoint {name}")
            folder = checkpoints_root() / name
            entries.append(_Entry(name, "checkpoint", from_pretrained(folder), folder))
        return entries
    progress(
        f"no bundled checkpoints in {checkpoints_root()}: using freshly initialised models of "
        "the default configuration (untrained weights; the export path is the same)"
    )
    configs = fallback_configs or {name: {} for name in list_models()}
    entries = []
    for name, config in configs.items():
        torch.manual_seed(0)
        entries.append(_Entry(name, "untrained", create_model(name, **config).eval(), None))
    return entries


def sample_inputs(entry: _Entry) -> tuple[Tensor, ...]:
    """The bundled sample inputs of a checkpoint, else ``model.example_inputs``."""
    path = inference_path(entry.model)
    file = entry.folder / SAMPLE_INPUTS_FILE if entry.folder is not None else None
    if file is None or not file.is_file():
        return tuple(entry.model.example_inputs(SAMPLE_BATCH))
    arrays = read_inputs(file, [spec.name for spec in path.inputs])
    return tuple(torch.from_numpy(np.asarray(arrays[spec.name])) for spec in path.inputs)


def run_quickstart(
    out_dir: str | Path,
    *,
    progress: Progress = print,
    fallback_configs: Mapping[str, Mapping[str, Any]] | None = None,
    repeats: int = 5,
) -> list[QuickstartRow]:
    """Load, run, export (both formats), verify and time every bundled model.

    Args:
        out_dir: where the ``<name>.onnx`` and ``<name>.pt`` files go.
        progress: called with a line of text at every step.
        fallback_configs: see :func:`quickstart_models`.
        repeats: timing rounds (the minimum is reported).

    Raises:
        VerificationError: an export disagrees with eager PyTorch.
    """
    folder = Path(out_dir)
    entries = quickstart_models(progress, fallback_configs)
    rows = []
    for index, entry in enumerate(entries, start=1):
        step = f"[{index}/{len(entries)}] {entry.name}"

        def report(text: str, step: str = step) -> None:
            progress(f"{step}: {text}")

        rows.append(_demonstrate(entry, folder, repeats, report))
    return rows


def _demonstrate(entry: _Entry, folder: Path, repeats: int, progress: Progress) -> QuickstartRow:
    model = entry.model
    inputs = sample_inputs(entry)
    path = inference_path(model, example_inputs=inputs)
    progress(f"running on sample inputs {[tuple(value.shape) for value in inputs]}")
    with torch.no_grad():
        expected = [value.numpy() for value in as_tuple(path.module(*inputs))]
    progress("exporting TorchScript")
    scripted = to_torchscript(
        model, folder / f"{entry.name}.pt", example_inputs=inputs, name=entry.name
    )
    progress("exporting ONNX")
    exported = to_onnx(model, folder / f"{entry.name}.onnx", example_inputs=inputs, name=entry.name)
    progress(f"verifying in onnxruntime ({exported.exporter} graph) and TorchScript")
    reports = [verify(model, exported.path), verify(model, scripted.path)]
    runner = OnnxRunner(exported.path, threads=1)
    loaded = TorchScriptModel(scripted.path).module
    feed = {spec.name: value.numpy() for spec, value in zip(path.inputs, inputs, strict=True)}
    onnx_outputs = list(runner.run(feed).values())
    with torch.no_grad():
        script_outputs = [value.numpy() for value in as_tuple(loaded(*inputs))]
    sample_gap = max(
        float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
        for outputs in (onnx_outputs, script_outputs)
        for got, want in zip(outputs, expected, strict=True)
    )
    progress("timing eager PyTorch, TorchScript and onnxruntime (one thread each)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like onnxruntime's session; stable on a busy machine
    try:
        with torch.inference_mode():
            eager_s = _best(lambda: path.module(*inputs), repeats)
            script_s = _best(lambda: loaded(*inputs), repeats)
    finally:
        torch.set_num_threads(threads)
    onnx_s = _best(lambda: runner.session.run(None, feed), repeats)
    return QuickstartRow(
        model=entry.name,
        source=entry.source,
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        eager_ms=eager_s * 1e3,
        torchscript_ms=script_s * 1e3,
        onnxruntime_ms=onnx_s * 1e3,
        max_abs_diff=max(sample_gap, *(report.max_abs_diff for report in reports)),
        onnx_path=exported.path,
        torchscript_path=scripted.path,
    )


def _best(fn: Callable[[], object], repeats: int, min_seconds: float = 0.05) -> float:
    """Seconds per call: the minimum over ``repeats`` rounds of a timed loop."""
    fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= 1024:
            break
        calls *= 2
    rounds = [elapsed / calls]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return min(rounds)


def format_table(rows: Sequence[QuickstartRow]) -> str:
    """The quickstart table in Markdown."""
    header = [
        "model",
        "source",
        "parameters",
        "eager ms",
        "TorchScript ms",
        "onnxruntime ms",
        "max abs diff",
    ]
    cells = [
        [
            row.model,
            row.source,
            f"{row.parameters:,}",
            f"{row.eager_ms:.3g}",
            f"{row.torchscript_ms:.3g}",
            f"{row.onnxruntime_ms:.3g}",
            f"{row.max_abs_diff:.2g}",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in cells:
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def resolve_model(name_or_path: str) -> tuple[ZooModel, str, str]:
    """``(model, file name stem, source)`` for ``aimle-zoo export NAME_OR_PATH``.

    A registered model name (e.g. ``"l2x_mnist"``) that is neither a folder nor a bundled
    checkpoint gives a freshly initialised model of the default configuration (source
    ``"untrained"``); anything else is a checkpoint (bundled name, Hub id or folder) loaded
    with :func:`aimle_zoo.from_pretrained` (source ``"checkpoint"``).

    Raises:
        CheckpointError: no such checkpoint.
    """
    bundled = checkpoints_root() / name_or_path
    if name_or_path in list_models() and not Path(name_or_path).is_dir() and not bundled.is_dir():
        torch.manual_seed(0)
        return create_model(name_or_path).eval(), name_or_path, "untrained"
    model = from_pretrained(name_or_path)
    folder = Path(name_or_path.rstrip("/"))
    stem = folder.name or model.model_name
    if stem in ("best", "last") and folder.parent.name not in ("", "."):
        stem = f"{folder.parent.name}-{stem}"  # runs/A/best -> A-best, not best for every run
    return model.eval(), stem, "checkpoint"
