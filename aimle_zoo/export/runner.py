"""Serve an exported ONNX model with onnxruntime: this file needs only numpy and onnxruntime.

It imports nothing from torch or aimle_zoo, so a deployment can copy it next to the model, or
load it straight from the installed package without importing the package (and torch)::

    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("aimle_runner", "/path/to/runner.py")
    runner_module = sys.modules["aimle_runner"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_module)

    runner = runner_module.OnnxRunner("l2x-mnist.onnx")     # CUDA when available, else CPU
    outputs = runner.run({"images": images})                # {"mask": ..., "prediction": ...}

The runner checks the inputs against the model's own input list (names, dtypes, ranks, fixed
sizes, and that a dynamic dimension such as ``batch`` has one size across all inputs) and
raises :class:`RunnerInputError` saying what to change; a missing, empty, truncated or
non-ONNX file raises :class:`ModelFileError`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

#: The form of a size that counts the directed edges of an n-vertex graph.
PRONIC = "n(n-1)"

#: Execution providers in order of preference; CPU is always last.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider",)
CPU_PROVIDER = "CPUExecutionProvider"

#: ONNX tensor types onnxruntime reports -> numpy dtypes.
ONNX_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

_METADATA_KEY = "aimle_zoo"

#: Solvers whose exported graph marks the instances eager PyTorch refuses (a negative-cost
#: cycle before the target, an unreachable target, a non-finite cost) with NaN rows, since an
#: ONNX graph cannot raise.
NAN_ROW_SOLVERS = frozenset(("graph_shortest_path", "grid_shortest_path", "dijkstra"))

#: Solvers that, built with an ``adjacency`` matrix, read an infinite cost as a missing edge
#: (``dijkstra`` with an adjacency is the graph shortest path).
ADJACENCY_SOLVERS = frozenset(("graph_shortest_path", "dijkstra"))


class ModelFileError(OSError):
    """An exported model file is missing, empty, truncated or not an ONNX model."""


class RunnerInputError(ValueError):
    """Inputs do not match the exported model (names, dtypes, ranks or sizes)."""


class SolverRefusedError(RunnerInputError):
    """The solver inside the graph found no solution for some instances (NaN rows)."""


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of the model: name, numpy dtype name and sizes.

    A ``str`` size names a dynamic dimension; ``None`` is dynamic and unnamed.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        """E.g. ``images float32 [batch, 1, 28, 28]``."""
        sizes = ", ".join("?" if size is None else str(size) for size in self.shape)
        return f"{self.name} {self.dtype} [{sizes}]"


@functools.lru_cache(maxsize=64)
def _numpy_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


def select_providers(available: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use: CUDA when listed as available, then CPU.

    Args:
        available: providers of the onnxruntime build (default
            ``onnxruntime.get_available_providers()``).
    """
    listed = list(ort.get_available_providers() if available is None else available)
    return [name for name in PREFERRED_PROVIDERS if name in listed] + [CPU_PROVIDER]


@dataclass(frozen=True)
class InputLimits:
    """What the metadata says about valid inputs beyond dtypes and ranks.

    Attributes:
        minimums: the smallest size of each named dynamic dimension (``batch`` >= 1; a top-k
            over ``n`` needs n >= k).
        ranges: ``{input name: (low, high)}`` valid values of integer inputs, ``high``
            exclusive (token ids below the vocabulary size).
        bounds: ``{input name: (low, high)}`` valid values of float inputs, both ends
            included (image intensities in [0, 1] where eager PyTorch refuses others).
        batch_multiple: the batch must be a multiple of it (a solver with per-instance data
            for that many instances).
        forms: ``{dim name: form}`` for sizes with a form (:data:`PRONIC`).
        finite: ``"finite"`` (no NaN or ±inf in floating inputs), ``"no_nan"`` (±inf allowed:
            a graph shortest path on an adjacency matrix reads an infinite cost as a missing
            edge) or ``None`` (no check: a module of the user's, whose contract the metadata
            does not know).
        nan_rows: the names of the solvers inside whose NaN rows in an output mark instances
            eager PyTorch refuses (:data:`NAN_ROW_SOLVERS`); empty when there are none.
    """

    minimums: Mapping[str, int] = field(default_factory=dict)
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    batch_multiple: int = 1
    finite: str | None = None
    forms: Mapping[str, str] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    nan_rows: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> InputLimits:
        """The limits recorded by aimle_zoo.export (integer ranges of zoo models only: for
        other modules they are the example's range, not a constraint)."""
        minimums = {str(k): int(v) for k, v in (metadata.get("dynamic_dims") or {}).items()}
        ranges, bounds = {}, {}
        if metadata.get("kind") == "zoo_model":
            for spec in metadata.get("inputs") or []:
                if spec.get("low") is None or spec.get("high") is None:
                    continue
                name, low, high = str(spec["name"]), spec["low"], spec["high"]
                if np.issubdtype(np.dtype(spec.get("dtype", "float32")), np.integer):
                    ranges[name] = (int(low), int(high))
                elif spec.get("bounded"):
                    bounds[name] = (float(low), float(high))
        finite = None
        solvers = [info for info in metadata.get("solvers") or [] if isinstance(info, dict)]
        if metadata.get("kind") in ("zoo_model", "solver"):  # eager PyTorch refuses them
            takes_inf = any(
                info.get("name") in ADJACENCY_SOLVERS
                and (info.get("params") or {}).get("adjacency") is not None
                for info in solvers
            )
            finite = "no_nan" if takes_inf else "finite"
        forms = {str(k): str(v) for k, v in (metadata.get("size_forms") or {}).items()}
        batch_multiple = int(metadata.get("batch_multiple") or 1)
        nan_rows = tuple(
            sorted({str(info["name"]) for info in solvers if info.get("name") in NAN_ROW_SOLVERS})
        )
        if metadata.get("solver_after"):  # a split export: the solver runs after onnxruntime
            nan_rows = ()
        return cls(minimums, ranges, batch_multiple, finite, forms, bounds, nan_rows)


def check_inputs(
    specs: Sequence[TensorInfo],
    inputs: Mapping[str, Any] | Sequence[Any] | Any,
    limits: InputLimits | None = None,
) -> dict[str, np.ndarray]:
    """Match ``inputs`` to ``specs`` and check them; return the feed ``{name: array}``.

    ``inputs`` is a mapping name -> array, a sequence of arrays in input order, or one array
    when the model has one input. Dtypes must match exactly (no silent casts).

    Raises:
        RunnerInputError: a missing or unexpected name, a wrong number of arrays, a non-array,
            a wrong dtype, rank or fixed size, one dynamic dimension with two sizes, or (with
            ``limits``) a dimension below its minimum, an integer or bounded float outside
            its range, or a NaN or inf value.
    """

    def expected() -> str:  # only an error message needs it
        return "; ".join(spec.describe() for spec in specs)

    names = [spec.name for spec in specs]
    if isinstance(inputs, Mapping):
        missing = [name for name in names if name not in inputs]
        unexpected = [str(name) for name in inputs if name not in names]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if unexpected:
                parts.append(f"unexpected input(s) {unexpected}")
            raise RunnerInputError(f"{' and '.join(parts)}; the model takes: {expected()}")
        values = [inputs[name] for name in names]
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) != len(specs):
            raise RunnerInputError(
                f"got {len(inputs)} input arrays, the model takes {len(specs)}: {expected()}"
            )
        values = list(inputs)
    elif len(specs) == 1:
        values = [inputs]
    else:
        raise RunnerInputError(
            f"the model takes {len(specs)} inputs, pass them as a mapping name -> array: "
            f"{expected()}"
        )
    sizes: dict[str, tuple[int, str]] = {}
    feed = {}
    for spec, value in zip(specs, values, strict=True):
        feed[spec.name] = _check_one(spec, value, sizes, limits or InputLimits())
    return feed


def _check_one(
    spec: TensorInfo, value: Any, sizes: dict[str, tuple[int, str]], limits: InputLimits
) -> np.ndarray:
    """Check one array against its spec; ``sizes`` collects the dynamic sizes seen so far."""
    if not isinstance(value, np.ndarray):
        raise RunnerInputError(
            f"input {spec.name!r} must be a numpy array, got {type(value).__name__}; expected "
            f"{spec.describe()} (convert with np.asarray(value, dtype=np.{spec.dtype}))"
        )
    if value.dtype != _numpy_dtype(spec.dtype):  # byte order included
        raise RunnerInputError(
            f"input {spec.name!r} has dtype {value.dtype}, the model expects {spec.dtype}; "
            f"convert it with .astype(np.{spec.dtype})"
        )
    if value.ndim != len(spec.shape):
        raise RunnerInputError(
            f"input {spec.name!r} has shape {tuple(value.shape)} ({value.ndim}-D), the model "
            f"expects {spec.describe()} ({len(spec.shape)}-D)"
        )
    for axis, (size, actual) in enumerate(zip(spec.shape, value.shape, strict=True)):
        if isinstance(size, int) and size != actual:
            raise RunnerInputError(
                f"input {spec.name!r} has shape {tuple(value.shape)}, the model expects "
                f"{spec.describe()}: axis {axis} must be {size} (fixed at export time)"
            )
        if isinstance(size, str):
            seen = sizes.setdefault(size, (int(actual), spec.name))
            if seen[0] != actual:
                raise RunnerInputError(
                    f"dimension {size!r} is {seen[0]} in input {seen[1]!r} but {actual} in "
                    f"input {spec.name!r}; all inputs must agree on it"
                )
            if limits.forms.get(size) == PRONIC and not _is_pronic(int(actual)):
                raise RunnerInputError(
                    f"input {spec.name!r} has shape {tuple(value.shape)}: dimension {size!r} "
                    f"(axis {axis}) is {actual}, the model needs n(n-1) for a whole n (2, 6, 12, "
                    "20, 30, ...): one score per directed edge of an n-vertex graph"
                )
            least = limits.minimums.get(size)
            if least is not None and actual < least:
                raise RunnerInputError(
                    f"input {spec.name!r} has shape {tuple(value.shape)}: dimension {size!r} "
                    f"(axis {axis}) is {actual}, the model needs at least {least}"
                )
            if size == "batch" and actual % limits.batch_multiple:
                raise RunnerInputError(
                    f"input {spec.name!r} has batch {actual}, the model takes batches that are "
                    f"multiples of {limits.batch_multiple} (its solver holds per-instance data "
                    f"for {limits.batch_multiple} instances); pad or split the batch"
                )
    closed = limits.bounds.get(spec.name)
    within = False  # inside finite closed bounds, hence finite: no NaN/inf screen needed
    if closed is not None and value.size:
        low_f, high_f = closed
        smallest_f, largest_f = float(value.min()), float(value.max())  # NaN if any NaN
        within = math.isfinite(low_f) and math.isfinite(high_f)
        within = within and low_f <= smallest_f and largest_f <= high_f  # False for NaN
    if limits.finite is not None and value.size and value.dtype.kind == "f" and not within:
        _check_finite(spec.name, value, allow_inf=limits.finite == "no_nan")
    bounds = limits.ranges.get(spec.name)
    if bounds is not None and value.size:
        low, high = bounds
        smallest, largest = int(value.min()), int(value.max())
        if smallest < low or largest >= high:
            raise RunnerInputError(
                f"input {spec.name!r} holds values in [{smallest}, {largest}], the model takes "
                f"[{low}, {high - 1}] (e.g. token ids below the vocabulary size)"
            )
    if closed is not None and value.size and (smallest_f < low_f or largest_f > high_f):
        raise RunnerInputError(
            f"input {spec.name!r} holds values in [{smallest_f:g}, {largest_f:g}], the model "
            f"takes [{low_f:g}, {high_f:g}]; scale the values as in training (8-bit pixels "
            "divided by 255)"
        )
    return value


def _is_pronic(size: int) -> bool:
    """Whether ``size = n(n-1)`` for a whole n >= 1."""
    n = (1 + math.isqrt(1 + 4 * size)) // 2
    return size >= 0 and n * (n - 1) == size


def check_outputs(outputs: Mapping[str, np.ndarray], limits: InputLimits) -> None:
    """Raise :class:`SolverRefusedError` when a solver listed in ``limits.nan_rows`` marked
    instances as refused: NaN in a floating output, which the solvers never return for inputs
    eager PyTorch accepts."""
    if not limits.nan_rows:
        return
    for name, value in outputs.items():
        if value.dtype.kind != "f" or not value.size or not np.isnan(value.sum(dtype=np.float64)):
            continue
        shown = _bad_rows(np.isnan(value))
        if not shown:
            continue  # the sum overflowed
        raise SolverRefusedError(
            f"output {name!r} is NaN in instance(s) {shown}: the {', '.join(limits.nan_rows)} "
            "solver found no valid solution there (a negative-cost cycle before the target, an "
            "unreachable target, or a NaN or infinite cost on a real edge); eager PyTorch "
            "raises SolverInputError on these inputs. Check the costs of those instances"
        )


def _bad_rows(bad: np.ndarray) -> str:
    """The instances (axis 0) with a true entry in ``bad``, as ``"1, 4, ..."`` (``""`` if none)."""
    rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
    return ", ".join(str(row) for row in rows[:5]) + (", ..." if len(rows) > 5 else "")


def _check_finite(name: str, value: np.ndarray, allow_inf: bool) -> None:
    """Refuse NaN (and ±inf unless ``allow_inf``), naming the instances (rows) that hold them.

    One sum screens the common case: a finite sum proves every entry finite (an overflowing
    sum, silenced, sends the rows to the exact check)."""
    if value.dtype == np.float64:  # only a float64 sum can overflow (float32 values cannot)
        with np.errstate(over="ignore"):
            total = value.sum()
    else:
        total = value.sum(dtype=np.float64)
    if np.isfinite(total) or (allow_inf and not np.isnan(total)):
        return
    shown = _bad_rows(np.isnan(value) if allow_inf else ~np.isfinite(value))
    if not shown:
        return  # an overflowing sum of finite values
    what = "NaN" if allow_inf else "NaN or inf"
    raise RunnerInputError(
        f"input {name!r} holds {what} values in instance(s) {shown}; the model needs finite "
        "values (eager PyTorch refuses them too)"
    )


class OnnxRunner:
    """An exported ONNX model in an onnxruntime session.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers (default :func:`select_providers`: CUDA when
            available, else CPU).
        threads: intra-op threads (default: onnxruntime's choice).
        require_metadata: refuse a file without aimle_zoo's metadata (default). Its value
            checks (NaN/inf, bounds, minimum sizes, refused solver instances) need it; pass
            ``False`` to run another ONNX file with the name, dtype and shape checks alone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        require_metadata: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(
                f"no exported model at {self.path}; export one with "
                "`aimle-zoo export NAME --format onnx --out DIR`"
            )
        if self.path.stat().st_size == 0:
            raise ModelFileError(f"{self.path} is empty; export the model again")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        chosen = list(providers) if providers is not None else select_providers()
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own exception types on bad files
            raise ModelFileError(
                f"{self.path} could not be loaded by onnxruntime: it is truncated, corrupt or "
                f"not an ONNX model ({type(err).__name__}: {err}); export it again"
            ) from err
        self.inputs = tuple(_info(arg) for arg in self.session.get_inputs())
        self.outputs = tuple(_info(arg) for arg in self.session.get_outputs())
        self.metadata = _metadata(self.session)
        if require_metadata and not self.metadata:
            raise ModelFileError(
                f"{self.path} carries no aimle_zoo metadata (it was not written by "
                "aimle_zoo.export.to_onnx, or a tool stripped its metadata_props), so the "
                "runner cannot check input values; export it again, or pass "
                "require_metadata=False to run it with name, dtype and shape checks only"
            )
        self.limits = InputLimits.from_metadata(self.metadata)  # read once, not per call

    @property
    def providers(self) -> list[str]:
        """The providers the session runs on."""
        return list(self.session.get_providers())

    def run(self, inputs: Mapping[str, Any] | Sequence[Any] | Any) -> dict[str, np.ndarray]:
        """Check ``inputs`` (see :func:`check_inputs`) and run; returns ``{output name: array}``."""
        feed = check_inputs(self.inputs, inputs, self.limits)
        values = self.session.run(None, feed)
        outputs = {info.name: value for info, value in zip(self.outputs, values, strict=True)}
        check_outputs(outputs, self.limits)
        return outputs

    __call__ = run

    def describe(self) -> str:
        """Inputs, outputs and providers, one per line."""
        lines = [f"{self.path} on {', '.join(self.providers)}"]
        lines += [f"  input  {info.describe()}" for info in self.inputs]
        lines += [f"  output {info.describe()}" for info in self.outputs]
        return "\n".join(lines)


def _info(arg: Any) -> TensorInfo:
    dtype = ONNX_DTYPES.get(arg.type)
    name = np.dtype(dtype).name if dtype is not None else str(arg.type)
    shape = tuple(size if isinstance(size, (int, str)) else None for size in arg.shape)
    return TensorInfo(arg.name, name, shape)


def _metadata(session: ort.InferenceSession) -> dict[str, Any]:
    """The aimle_zoo metadata of the model (empty if absent or unreadable)."""
    text = session.get_modelmeta().custom_metadata_map.get(_METADATA_KEY)
    if not text:
        return {}
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return metadata if isinstance(metadata, dict) else {}
