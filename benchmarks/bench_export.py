"""Exported zoo models: eager PyTorch vs TorchScript vs onnxruntime latency, export time, size.

Run: ``cd benchmarks && python bench_export.py`` (``--quick`` for fewer repeats, ``--models`` to
pick some). Every model has its default configuration (freshly initialised weights: latency
does not depend on training). One thread everywhere (torch and onnxruntime), minimum over
repeated rounds; the rounds of eager PyTorch, TorchScript and onnxruntime alternate, so every
ratio compares timings taken in the same run under the same machine load. Eager PyTorch runs
the same inference path as the exports, in eval mode under ``torch.inference_mode``.
onnxruntime is timed twice: ``InferenceSession.run`` alone, and ``OnnxRunner.run`` (``ORT
runner``: the input checks every deployment through the runner pays, names, dtypes, sizes and a
NaN/inf screen; eager PyTorch pays its own checks). ``ORT up to θ`` times the split export
(the network before the solver); for a model whose solver is its last step (the grid model),
eager / that time is the largest speed-up onnxruntime could reach with a free solver.

The arithmetic floor bounds every speed-up: the matrix-product and convolution FLOPs of the
path (``torch.utils.flop_counter``), divided by the best single-thread float32 rate measured
in the same run (onnxruntime ``MatMul`` on square matrices and ``Conv`` on 64 channels). A
float32 runtime doing that arithmetic cannot beat the floor by more than the probe's margin
(a kernel tuned for one shape can beat the probe's rate by a few percent), so "eager / floor"
estimates the largest speed-up over eager that an exporter could give ("none" for a path
without matrix products or convolutions: no floor bounds it).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from _timing import best_time, print_table
from onnx import TensorProto, helper
from onnxruntime import InferenceSession, SessionOptions
from torch.utils.flop_counter import FlopCounterMode

from aimle_zoo.export import (
    InferencePath,
    OnnxRunner,
    TorchScriptModel,
    inference_path,
    to_onnx,
    to_torchscript,
)
from aimle_zoo.export._paths import as_tuple
from aimle_zoo.models import ZooModel, create_model, list_models

BATCH_SIZES = (1, 64)
PEAK_SIZES = (256, 512)


def peak_flops(repeats: int) -> float:
    """The best float32 FLOP/s of one onnxruntime thread: ``n×n @ n×n`` products and a
    64 -> 64 channel 3×3 convolution with constant weights (onnxruntime's blocked convolution
    kernel runs a little faster than its matrix product)."""
    rng = np.random.default_rng(0)
    rates = []
    for size in PEAK_SIZES:
        matrix = rng.standard_normal((size, size), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        inputs = {"a": matrix, "b": matrix}
        rates.append(_ort_rate(node, inputs, {}, [size, size], 2 * size**3, repeats))
    image = rng.standard_normal((1, 64, 48, 48), dtype=np.float32)
    kernel = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    node = helper.make_node("Conv", ["a", "b"], ["c"], pads=[1, 1, 1, 1])
    flops = 2 * 48 * 48 * 64 * 64 * 9
    rates.append(_ort_rate(node, {"a": image}, {"b": kernel}, [1, 64, 48, 48], flops, repeats))
    return max(rates)


def _ort_rate(
    node: onnx.NodeProto,
    inputs: dict[str, np.ndarray],
    constants: dict[str, np.ndarray],
    out_shape: list[int],
    flops: int,
    repeats: int,
) -> float:
    """FLOP/s of a one-node graph in a one-thread onnxruntime session."""
    graph = helper.make_graph(
        [node],
        "peak",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list(array.shape))
            for name, array in inputs.items()
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, out_shape)],
        initializer=[
            onnx.numpy_helper.from_array(array, name) for name, array in constants.items()
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    options = SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return flops / best_time(functools.partial(session.run, None, inputs), repeats=repeats)


def path_flops(path: InferencePath, inputs: tuple[torch.Tensor, ...]) -> int:
    """Matrix-product and convolution FLOPs of one call of the path (multiply-add = 2)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        path.module(*inputs)
    return int(counter.get_total_flops())


def bench_model(
    name: str, folder: Path, repeats: int, peak: float
) -> tuple[list[object], list[list[object]]]:
    """One export row and one latency row per batch size for model ``name``."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    path = inference_path(model)
    scripted = to_torchscript(model, folder / f"{name}.pt")
    exported = to_onnx(model, folder / f"{name}.onnx")
    theta = to_onnx(model, folder / f"{name}-theta.onnx", split=True)
    loaded = TorchScriptModel(scripted.path).module
    runner = OnnxRunner(exported.path, threads=1, providers=["CPUExecutionProvider"])
    theta_session = OnnxRunner(theta.path, threads=1, providers=["CPUExecutionProvider"]).session
    parameters = sum(p.numel() for p in model.parameters())
    export_row: list[object] = [
        name,
        f"{parameters / 1e6:.2f}M",
        exported.exporter,
        exported.seconds,
        scripted.seconds,
        exported.size_bytes / 1e6,
        scripted.size_bytes / 1e6,
    ]
    rows = [
        _latency_row(name, batch, model, path, loaded, (runner, theta_session), repeats, peak)
        for batch in BATCH_SIZES
    ]
    return export_row, rows


def _latency_row(
    name: str,
    batch: int,
    model: ZooModel,
    path: InferencePath,
    loaded: torch.jit.ScriptModule,
    sessions: tuple[OnnxRunner, InferenceSession],
    repeats: int,
    peak: float,
) -> list[object]:
    """Eager, TorchScript, onnxruntime (session alone, and through the runner's checks)
    milliseconds per call at one batch size, onnxruntime up to θ (the split export: the
    network before the solver), and the arithmetic floor at ``peak`` FLOP/s with the
    speed-up over eager it allows."""
    inputs = tuple(model.example_inputs(batch))
    feed = {spec.name: value.numpy() for spec, value in zip(path.inputs, inputs, strict=True)}
    runner, theta_session = sessions
    session = runner.session
    timings: list[list[float]] = [[], [], [], [], []]
    with torch.inference_mode():
        for _ in range(repeats):  # interleaved rounds: all five see the same machine load
            timings[0].append(best_time(lambda: as_tuple(path.module(*inputs)), repeats=1))
            timings[1].append(best_time(lambda: loaded(*inputs), repeats=1))
            timings[2].append(best_time(lambda: session.run(None, feed), repeats=1))
            timings[3].append(best_time(lambda: runner.run(feed), repeats=1))
            timings[4].append(best_time(lambda: theta_session.run(None, feed), repeats=1))
    eager_s, script_s, ort_s, runner_s, theta_s = (min(rounds) for rounds in timings)
    speed_ups = [f"{eager_s / script_s:.2f}x", f"{eager_s / ort_s:.2f}x"]
    speed_ups.append(f"{eager_s / runner_s:.2f}x")
    floor_s = path_flops(path, inputs) / peak
    bound = [floor_s * 1e3, f"{eager_s / floor_s:.2f}x" if floor_s > 0 else "none"]
    return [
        name,
        batch,
        eager_s * 1e3,
        script_s * 1e3,
        ort_s * 1e3,
        runner_s * 1e3,
        *speed_ups,
        theta_s * 1e3,
        *bound,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--models", nargs="*", default=list_models(), help="models to run")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    peak = peak_flops(repeats)
    export_rows, latency_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            export_row, rows = bench_model(name, Path(folder), repeats, peak)
            export_rows.append(export_row)
            latency_rows.extend(rows)
    print("Latency (ms per call, 1 thread; speed-up over eager PyTorch in the same run)")
    print(f"Arithmetic floor at {peak / 1e9:.0f} GFLOP/s, the best measured float32 rate\n")
    header = [
        "model",
        "batch",
        "eager",
        "TorchScript",
        "onnxruntime",
        "ORT runner",
        "TS speed-up",
        "ORT speed-up",
        "runner speed-up",
        "ORT up to θ",
        "floor",
        "eager / floor",
    ]
    print_table(header, latency_rows)
    print("\nExport (seconds, including the check against eager PyTorch) and file size (MB)\n")
    print_table(
        ["model", "parameters", "ONNX exporter", "ONNX s", "TorchScript s", "ONNX MB", "TS MB"],
        export_rows,
    )


if __name__ == "__main__":
    main()
