"""``to_onnx``: export a model, solver or module to one self-contained ``.onnx`` file.

The exporter comes from :func:`~aimle_zoo.export.choice.choose_exporter`. Each export is checked
before anything is written: the graph's input and output sizes must stay dynamic where the
inference path declares them dynamic (an exporter that fixed one to the example's size is
refused), and onnxruntime must reproduce eager PyTorch on a new batch size and a new problem
size. Before that check, each float32 ``Elu`` of the top graph is rewritten into element-wise
ops that onnxruntime runs about three times faster (same values up to rounding). The file is
then written atomically (a temporary file renamed into place), with the metadata in
``metadata_props``; a failure leaves no file behind. Weights are stored inside the file (no
``.onnx.data`` next to it).

A split export (``split=True``) holds the network up to θ, the solver's input; the solver named
in the metadata runs after onnxruntime (:class:`SplitPipeline`). It is the way to deploy a
model whose solver is not made of tensor operations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from .._io import atomic_file
from ._paths import (
    ExportError,
    InferencePath,
    TensorSpec,
    check_eval_mode,
    check_exportable,
    inference_path,
    solver_from_info,
)
from .choice import DEFAULT_OPSET, check_opset, choose_exporter
from .metadata import ExportResult, build_metadata, onnx_properties
from .runner import OnnxRunner
from .verify import brief_error, check_export

_QUIET_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "torch.fx.experimental.symbolic_shapes",  # a failed trace logs its whole graph as a warning
)


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    example_inputs: Sequence[Tensor] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    split: bool = False,
    solver: nn.Module | str | None = None,
    solver_params: Mapping[str, Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
    name: str | None = None,
    check: bool = True,
) -> ExportResult:
    """Export the eval-mode inference path of ``model`` to the ONNX file ``path``.

    Args:
        model: a zoo model, a registered solver, or any module (see
            :func:`~aimle_zoo.export.inference_path`); in eval mode, on any device (a CPU
            copy is exported).
        path: the ``.onnx`` file to write (its folder is created).
        example_inputs: inputs for ``forward`` (zoo models and built-in solvers have defaults).
        opset: ONNX opset (18..20 for loop solvers, 18..23 otherwise).
        exporter: ``"auto"`` (see :mod:`aimle_zoo.export.choice`), ``"dynamo"`` or
            ``"legacy_script"``.
        split: export the network up to θ only (the solver runs after onnxruntime).
        solver, solver_params: with ``split`` for a module other than a zoo model: the solver
            that runs on its output θ.
        input_names, output_names, dynamic_dims: naming and extra dynamic dimensions of other
            modules (``dynamic_dims``: ``{input name: {axis: dim name}}``).
        name: the model name recorded in the metadata (default: registry or class name).
        check: compare with eager PyTorch on a new batch and problem size before writing.

    Raises:
        ExportError: training mode; every candidate exporter failed or disagreed with eager
            PyTorch. :class:`NonExportableSolverError`: a non-exportable solver (the message
            gives both ways out). :class:`UnsupportedOpsetError`: an unsupported opset.
    """
    check_eval_mode(model)
    started = time.perf_counter()
    target = Path(path)
    route = inference_path(
        model,
        example_inputs=example_inputs,
        split=split,
        solver=solver,
        solver_params=solver_params,
        input_names=input_names,
        output_names=output_names,
        dynamic_dims=dynamic_dims,
    )
    if name is not None:
        route.name = name
    if not split:
        check_exportable(route)
    choice = choose_exporter(route, "onnx", exporter)
    candidates = check_opset(opset, choice.candidates)
    failures: list[str] = []
    last_error: Exception | None = None
    for candidate in candidates:
        try:
            proto = _export_checked(route, candidate, opset, check)
        except Exception as err:  # each exporter fails in its own way; try the next one
            failures.append(f"{candidate}: {brief_error(err)}")
            last_error = err
            continue
        reason = choice.reason if not failures else f"{candidate}, after {'; '.join(failures)}"
        metadata = build_metadata(
            route, file_format="onnx", exporter=candidate, exporter_reason=reason, opset=opset
        )
        data = _with_metadata(proto, metadata)
        with atomic_file(target) as handle:
            handle.write(data)
        return ExportResult(
            target, "onnx", candidate, time.perf_counter() - started, len(data), metadata
        )
    hint = ""
    if any("NOT_IMPLEMENTED" in failure for failure in failures) and any(
        spec.dtype == "float64" for spec in (*route.inputs, *route.outputs)
    ):
        hint = (
            "\nonnxruntime has no float64 kernel for an operation of this model (on CPU: "
            "Conv); export a float32 copy (`model.float()`), or use to_torchscript, which "
            "keeps float64"
        )
    raise ExportError(
        f"could not export {route.name} to ONNX; nothing was written. Tried:\n  "
        + "\n  ".join(failures)
        + hint
    ) from last_error


def _export_checked(
    route: InferencePath, exporter: str, opset: int, check: bool
) -> onnx.ModelProto:
    """Export with one exporter, fix the interface sizes, and check against eager PyTorch."""
    with _quiet(), _modes_kept(route.module):
        if exporter == "legacy_script":
            proto = _legacy_script(route, opset)
        else:
            proto = _dynamo(route, opset)
    _set_interface(proto, route)
    _expand_elu(proto)
    if check:
        data = proto.SerializeToString()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        names = [spec.name for spec in route.inputs]

        def run(values: tuple[Tensor, ...]) -> list[np.ndarray]:
            feed = {name: value.numpy() for name, value in zip(names, values, strict=True)}
            return list(session.run(None, feed))

        check_export(route, run, f"the ONNX graph from the {exporter} exporter")
    return proto


def _legacy_script(route: InferencePath, opset: int) -> onnx.ModelProto:
    """``torch.onnx.export(torch.jit.script(module), dynamo=False)`` into memory."""
    scripted = torch.jit.script(route.module)
    specs = [*route.inputs, *route.outputs]
    dynamic_axes = {
        spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for spec in specs
    }
    with tempfile.TemporaryDirectory(prefix="aimle-zoo-onnx-") as folder:
        file = os.path.join(folder, "model.onnx")
        torch.onnx.export(
            scripted,
            route.example_inputs,
            file,
            dynamo=False,
            input_names=[spec.name for spec in route.inputs],
            output_names=[spec.name for spec in route.outputs],
            dynamic_axes={name: axes for name, axes in dynamic_axes.items() if axes},
            opset_version=opset,
        )
        proto = onnx.load(file)
    _drop_shape_hints(proto.graph, top=True)
    return proto


def _drop_shape_hints(graph: onnx.GraphProto, *, top: bool) -> None:
    """Remove the intermediate shape annotations of a graph and its subgraphs.

    The TorchScript-based exporter annotates values inside ``Loop``/``If`` bodies with shapes
    that hold for the example only (e.g. ``[-1]`` for a ``[B, n]`` tensor); onnxruntime infers
    the shapes itself and would warn on every run. The top graph keeps its input and output
    shapes (the interface).
    """
    del graph.value_info[:]
    if not top:
        for value in graph.output:
            if value.type.tensor_type.elem_type:
                value.type.tensor_type.ClearField("shape")
            else:  # no element type either: drop the whole annotation
                value.ClearField("type")
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _drop_shape_hints(attribute.g, top=False)
            for subgraph in attribute.graphs:
                _drop_shape_hints(subgraph, top=False)


def _dynamo(route: InferencePath, opset: int) -> onnx.ModelProto:
    """``torch.onnx.export(module, dynamo=True)`` with the declared dynamic dimensions."""
    used = {dim for spec in route.inputs for dim in spec.shape if isinstance(dim, str)}
    dims = {
        name: torch.export.Dim(name, min=minimum)
        for name, minimum in route.dynamic_dims.items()
        if name in used
    }
    dynamic_shapes = tuple(
        {axis: dims[dim] for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for spec in route.inputs
    )
    program = torch.onnx.export(
        route.module,
        route.example_inputs,
        dynamo=True,
        verbose=False,
        input_names=[spec.name for spec in route.inputs],
        output_names=[spec.name for spec in route.outputs],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
    )
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise ExportError("the dynamo exporter returned no program")
    return program.model_proto


def _expand_elu(proto: onnx.ModelProto) -> None:
    """Replace every float32 ``Elu`` (alpha 1) by ``Max(x, Exp(Min(x, 0)) - 1)``.

    Both equal ELU (``e^x - 1 >= x`` with equality at 0), with the rounding of onnxruntime's
    own ``Elu`` (``e^x - 1``, not ``expm1``). onnxruntime's CPU ``Elu`` kernel is slow: about
    40 µs on ``[90, 256]`` (one thread) against about 12 µs for the four vectorised ops. Nodes
    inside ``Loop``/``If`` bodies are left alone.
    """
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in (*inferred.graph.value_info, *inferred.graph.input)
    }
    graph = proto.graph
    zero, one = "elu_expanded_zero", "elu_expanded_one"  # shared float32 constants
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        if (
            node.op_type != "Elu"
            or node.domain not in ("", "ai.onnx")
            or alpha != 1.0
            or types.get(node.input[0]) != onnx.TensorProto.FLOAT
        ):
            rewritten.append(node)
            continue
        (value,), (out,) = node.input, node.output
        stem = f"{node.name or out}_expanded"
        make = onnx.helper.make_node
        rewritten += [
            make("Min", [value, zero], [f"{stem}_negative"], f"{stem}_min"),
            make("Exp", [f"{stem}_negative"], [f"{stem}_exp"], f"{stem}_exp"),
            make("Sub", [f"{stem}_exp", one], [f"{stem}_expm1"], f"{stem}_sub"),
            make("Max", [value, f"{stem}_expm1"], [out], f"{stem}_max"),
        ]
    if len(rewritten) == len(graph.node):
        return  # no Elu to expand
    for name, constant in ((zero, 0.0), (one, 1.0)):
        array = np.array(constant, dtype=np.float32)
        graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    del graph.node[:]
    graph.node.extend(rewritten)


def _set_interface(proto: onnx.ModelProto, route: InferencePath) -> None:
    """Check and name the graph's input/output sizes against the declared specs.

    A size the spec declares dynamic must not be a constant in the graph (the exporter fixed
    it to the example's: refused); it gets the spec's dimension name. A fixed size is written.
    """
    for kind, values, specs in (
        ("input", proto.graph.input, route.inputs),
        ("output", proto.graph.output, route.outputs),
    ):
        by_name = {value.name: value for value in values}
        for spec in specs:
            if spec.name not in by_name:
                raise ExportError(f"the exported graph has no {kind} named {spec.name!r}")
            _set_shape(by_name[spec.name], spec, kind)


def _set_shape(value: onnx.ValueInfoProto, spec: TensorSpec, kind: str) -> None:
    shape = value.type.tensor_type.shape
    if len(shape.dim) == 0:
        for _ in spec.shape:
            shape.dim.add()
    if len(shape.dim) != len(spec.shape):
        raise ExportError(
            f"the exported {kind} {spec.name!r} has rank {len(shape.dim)}, expected "
            f"{len(spec.shape)} ({list(spec.shape)})"
        )
    for axis, (dim, size) in enumerate(zip(shape.dim, spec.shape, strict=True)):
        if isinstance(size, str):
            if dim.HasField("dim_value"):
                raise ExportError(
                    f"the exporter fixed axis {axis} ({size!r}) of {kind} {spec.name!r} to "
                    f"{dim.dim_value}, the example's size, although it is declared dynamic: "
                    "the graph would reject or mis-compute other sizes"
                )
            dim.dim_param = size
        else:
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise ExportError(
                    f"axis {axis} of the exported {kind} {spec.name!r} has size "
                    f"{dim.dim_value}, expected {size}"
                )
            dim.dim_value = size


def _with_metadata(proto: onnx.ModelProto, metadata: dict[str, Any]) -> bytes:
    """The serialised model with the metadata in ``metadata_props``."""
    properties = onnx_properties(metadata)
    kept = [prop for prop in proto.metadata_props if prop.key not in properties]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, text in properties.items():
        proto.metadata_props.add(key=key, value=text)
    proto.doc_string = f"aimle_zoo export of {metadata['model_name']} (eval-mode MAP path)"
    return proto.SerializeToString()


@contextmanager
def _modes_kept(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag afterwards (the TorchScript-based exporter
    switches modes and puts some submodules back into training mode)."""
    modes = [(child, child.training) for child in module.modules()]
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings and notices (the result is checked instead)."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # a failed trace also prints its graph to stderr: the ExportError says what failed
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class SplitPipeline:
    """A split export in deployment: onnxruntime computes θ, then the recorded solver runs.

    Args:
        path: an ``.onnx`` file written with ``to_onnx(..., split=True)``.
        providers, threads: as in :class:`~aimle_zoo.export.runner.OnnxRunner`.
        solver: the solver to run (default: built from the metadata, name and parameters).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        solver: nn.Module | None = None,
    ) -> None:
        self.runner = OnnxRunner(path, providers=providers, threads=threads)
        after = self.runner.metadata.get("solver_after")
        if not after:
            raise ExportError(
                f"{path} is not a split export (its metadata names no solver to run after "
                "it); run it with OnnxRunner, or export with to_onnx(..., split=True)"
            )
        self.solver_name = str(after["name"])
        if solver is None:
            solver = solver_from_info(after)
        self.solver = solver

    def run(self, inputs: Mapping[str, Any] | Sequence[Any] | Any) -> dict[str, np.ndarray]:
        """``{"theta": θ, "solution": solver(θ)}`` as numpy arrays."""
        theta = self.runner.run(inputs)["theta"]
        with torch.no_grad():
            solution = self.solver(torch.from_numpy(theta))
        return {"theta": theta, "solution": solution.numpy()}

    __call__ = run
