"""``aimle-zoo export``, ``aimle-zoo predict`` and ``aimle-zoo quickstart``."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..export import (
    DEFAULT_OPSET,
    ExportError,
    RunnerInputError,
    SplitPipeline,
    load_exported,
    prediction_output_path,
    read_inputs,
    to_onnx,
    to_torchscript,
    verify,
    write_outputs,
)
from ..export.quickstart import format_table, resolve_model, run_quickstart


class ExportFormat(str, Enum):
    """What ``aimle-zoo export`` writes."""

    torchscript = "torchscript"
    onnx = "onnx"
    all = "all"


def export_command(
    name_or_path: Annotated[
        str,
        typer.Argument(
            help="A checkpoint (bundled name such as dvae-mnist, Hub id, or folder), or a "
            "model name such as l2x_mnist for freshly initialised default weights."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("exported"),
    file_format: Annotated[
        ExportFormat, typer.Option("--format", help="torchscript, onnx or all.")
    ] = ExportFormat.all,
    check: Annotated[
        bool,
        typer.Option("--verify", help="Verify each file against eager PyTorch on fresh inputs."),
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = DEFAULT_OPSET,
    split: Annotated[
        bool, typer.Option(help="ONNX only: export the network up to θ; the solver runs after.")
    ] = False,
) -> None:
    """Export a model to TorchScript (NAME.pt) and/or ONNX (NAME.onnx) in --out."""
    if split and file_format is not ExportFormat.onnx:
        raise typer.BadParameter(
            "--split is for ONNX only (its network runs in onnxruntime, the solver after it); "
            "add --format onnx",
            param_hint="--split",
        )
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"--out names a folder, not a file: {out}", param_hint="--out")
    model, stem, source = resolve_model(name_or_path)
    if source == "untrained":
        typer.echo(f"{name_or_path}: freshly initialised default configuration (untrained)")
    written = []  # ONNX first: its opset and exporter checks fail before anything is written
    if file_format in (ExportFormat.onnx, ExportFormat.all):
        written.append(to_onnx(model, out / f"{stem}.onnx", opset=opset, split=split, name=stem))
    if file_format in (ExportFormat.torchscript, ExportFormat.all):
        written.append(to_torchscript(model, out / f"{stem}.pt", name=stem))
    for result in written:
        opset_text = f", opset {opset}" if result.file_format == "onnx" else ""
        typer.echo(
            f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, {result.file_format} "
            f"via {result.exporter}{opset_text}, {result.seconds:.1f} s)"
        )
        if check:
            typer.echo(verify(model, result.path).summary())


def predict_command(
    model_file: Annotated[Path, typer.Argument(help="An exported .onnx or TorchScript file.")],
    input_file: Annotated[
        Path, typer.Option("--input", help=".npy (one input) or .npz (one array per input).")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", help="Output .npz (default: INPUT.outputs.npz).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the output file if it exists (refused otherwise).")
    ] = False,
) -> None:
    """Run an exported model (onnxruntime or TorchScript) on a .npy/.npz file; write the outputs.

    A split export runs its network in onnxruntime and then its solver, and writes both θ and
    the solution."""
    target = prediction_output_path(input_file, output, overwrite=overwrite)
    runtime = load_exported(model_file)
    inputs = read_inputs(input_file, [info.name for info in runtime.inputs])
    after = runtime.metadata.get("solver_after")
    pipeline = SplitPipeline(model_file, providers=runtime.providers) if after else runtime
    try:
        outputs = pipeline.run(inputs)
    except (RunnerInputError, ExportError, ValueError):
        raise
    except Exception as err:  # onnxruntime's and TorchScript's own errors: name the files
        raise RuntimeError(f"{model_file} failed on {input_file}: {err}") from err
    write_outputs(target, outputs)
    typer.echo(f"ran {model_file} on {', '.join(runtime.providers)}")
    if after:
        typer.echo(f"  then the solver {after['name']} on θ (split export)")
    for name, value in outputs.items():
        typer.echo(f"  {name}: {value.dtype} {list(value.shape)}")
    typer.echo(f"wrote {target}")


def quickstart_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Keep the exported files here (default: a temporary folder)."),
    ] = None,
) -> None:
    """Load each bundled model, run, export, verify and time it; print a table. Offline."""

    def progress(text: str) -> None:
        typer.echo(text, err=True)

    if out is not None:
        rows = run_quickstart(out, progress=progress)
    else:
        with tempfile.TemporaryDirectory(prefix="aimle-zoo-quickstart-") as folder:
            rows = run_quickstart(folder, progress=progress)
    typer.echo(format_table(rows))
    if out is not None:
        typer.echo(f"exported files in {out}")
