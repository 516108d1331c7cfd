"""Which exporter makes each artefact: the one place where that choice is made, with the evidence.

Measured with torch 2.13 and onnxruntime 1.32 on CPU (exports compared with eager PyTorch on
new batch sizes and new problem sizes; ``legacy_script`` is
``torch.onnx.export(torch.jit.script(m), dynamo=False)``, ``dynamo`` is
``torch.onnx.export(m, dynamo=True)``):

- Loop-free graphs (top-k, and every zoo network around it): both exporters are exact with a
  dynamic batch and dynamic sequence length, and onnxruntime runs both graphs equally fast
  (L2X tabular 0.015 ms, L2X text 1.7–1.9 ms, DVAE 0.09–0.13 ms at batch 1). ``dynamo`` is
  preferred: it is torch's supported exporter (the other is deprecated), and it runs the
  onnxscript graph optimiser; ``legacy_script`` is 10–20× faster to export and is the fallback.
- Ranking: neither exporter holds a stable sort (``dynamo``: no ONNX function for
  ``aten.sort.stable``; ``legacy_script``: "Sort, Out parameter is not supported"), so the
  exported graph ranks by two plain sorts, the second on distinct integer keys
  (:func:`~aimle_zoo.solvers.ranking.ranks_by_unique_keys`): loop-free, and exact with ties
  whatever order the runtime's ``TopK`` gives equal values.
- Shortest paths (grid and graph): the Bellman–Ford loop runs until no distance changes, a
  data-dependent ``while``. ``dynamo`` cannot export it (``GuardOnDataDependentSymNode``);
  tracing (``torch.jit.trace`` or the trace-based legacy exporter) records the example's
  iteration count and is wrong on other inputs. The scripted module exports to an ONNX
  ``Loop`` with a data-dependent condition and dynamic batch, height and width: exact.
- Spanning trees (Prim, ``for _ in range(n - 1)``): ``dynamo`` unrolls the loop for the
  example's n and silently fixes n (shape-locked graph); tracing is wrong for larger n. The
  scripted module exports to a ``Loop`` with dynamic n: exact.
- Assignments (the Hungarian method): a phase per row, each a data-dependent ``while`` over
  columns and one over the augmenting path. As for shortest paths, only the scripted module
  is exact (ONNX ``Loop`` s inside a ``Loop``, dynamic batch, m and n).
- ``nri_tree``: ``legacy_script`` fails on the encoder (slices of a weight by a size read from
  a tensor shape: "Rank must be 0 or 1"), while n is fixed by the model anyway (its edge index
  buffers), so ``dynamo``'s unrolled n - 1 Prim steps are exact for every input it accepts.
- TorchScript: ``torch.jit.script`` keeps loops as loops and works for every built-in solver and
  zoo model; ``torch.jit.trace`` is only a fallback for graphs without loop solvers.

Solvers that are not in these tables (plugins) are treated like loop solvers: the scripted
export is right whether or not they loop. Every export is still checked after the fact: the
graph's input sizes must stay dynamic where declared (no silent specialisation) and the
exported graph must match eager PyTorch on a new batch size and a new problem size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._paths import ExportError, InferencePath

#: The ONNX exporters and the TorchScript methods.
ONNX_EXPORTERS = ("dynamo", "legacy_script")
TORCHSCRIPT_METHODS = ("script", "trace")

#: Opsets each ONNX exporter handles here: ``dynamo`` implements nothing below 18 and the
#: TorchScript-based exporter stops at 20; 18 is needed for ``scatter_reduce`` (graph paths).
OPSETS = {"dynamo": range(18, 24), "legacy_script": range(18, 21)}
DEFAULT_OPSET = 18

#: Built-in solvers whose forward loops (registry name -> why only scripting keeps it exact).
LOOP_SOLVERS = {
    "grid_shortest_path": "data-dependent Bellman-Ford loop",
    "graph_shortest_path": "data-dependent Bellman-Ford loop",
    "dijkstra": "data-dependent Bellman-Ford loop",
    "mst": "Prim's n - 1 steps",
    "minimum_spanning_tree": "Prim's n - 1 steps",
    "mst_edges": "Prim's n - 1 steps",
    "linear_assignment": "the Hungarian method's data-dependent augmenting-path loops",
    "minimum_assignment": "the Hungarian method's data-dependent augmenting-path loops",
}

#: Built-in solvers made of a fixed number of tensor operations.
LOOP_FREE_SOLVERS = frozenset({"topk", "ranking"})

#: Zoo models whose ONNX exporter differs from the rule above (model name -> exporter, why).
MODEL_EXPORTERS = {
    "nri_tree": (
        "dynamo",
        "the TorchScript-based exporter fails on the encoder's shape-dependent weight slices; "
        "n is fixed by the model, so the unrolled n - 1 Prim steps of dynamo are exact",
    ),
}


class UnsupportedOpsetError(ExportError, ValueError):
    """The requested ONNX opset is outside what the exporters and onnxruntime support here."""


@dataclass(frozen=True)
class ExporterChoice:
    """The exporters to try, in order, and why the first one."""

    candidates: tuple[str, ...]
    reason: str


def choose_exporter(
    path: InferencePath, file_format: str, requested: str = "auto"
) -> ExporterChoice:
    """The exporters to try for ``path`` in ``file_format`` (``"onnx"`` or ``"torchscript"``).

    ``requested`` forces one (``"dynamo"``, ``"legacy_script"``, ``"script"``, ``"trace"``).
    """
    allowed = ONNX_EXPORTERS if file_format == "onnx" else TORCHSCRIPT_METHODS
    if requested != "auto":
        if requested not in allowed:
            raise ExportError(
                f"unknown {file_format} exporter {requested!r}; choose 'auto' or one of "
                f"{list(allowed)}"
            )
        return ExporterChoice((requested,), "requested")
    loops = sorted({info.name for info in path.solvers if info.name in LOOP_SOLVERS})
    unknown = sorted(
        {
            info.name
            for info in path.solvers
            if info.name not in LOOP_SOLVERS and info.name not in LOOP_FREE_SOLVERS
        }
    )
    if file_format == "torchscript":
        if loops or unknown:
            why = _solver_reason(loops, unknown)
            return ExporterChoice(("script",), f"script: {why} (a trace would fix loop counts)")
        return ExporterChoice(("script", "trace"), "script: keeps any control flow exact")
    if path.model_type in MODEL_EXPORTERS and path.solver_after is None:
        exporter, why = MODEL_EXPORTERS[path.model_type]
        return ExporterChoice(_with_fallback(exporter), f"{exporter}: {why}")
    if loops or unknown:
        why = _solver_reason(loops, unknown)
        return ExporterChoice(
            ("legacy_script", "dynamo"),
            f"legacy_script: {why}; the scripted module keeps it an ONNX Loop with dynamic sizes",
        )
    return ExporterChoice(
        ("dynamo", "legacy_script"),
        "dynamo: loop-free graph; torch's supported exporter, as fast in onnxruntime",
    )


def check_opset(opset: object, candidates: Sequence[str]) -> tuple[str, ...]:
    """The candidates that support ``opset``; the first (preferred) exporter must.

    Raises:
        UnsupportedOpsetError: ``opset`` is not an int, or the preferred exporter (the one this
            artefact needs) does not support it.
    """
    supported = sorted({version for name in ONNX_EXPORTERS for version in OPSETS[name]})
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise UnsupportedOpsetError(f"the opset must be an integer, got {opset!r}")
    if opset not in supported:
        raise UnsupportedOpsetError(
            f"ONNX opset {opset} is not supported: the exporters here support opsets "
            f"{supported[0]}..{supported[-1]} (default {DEFAULT_OPSET}); pass one of those"
        )
    first = candidates[0]
    if opset not in OPSETS[first]:
        raise UnsupportedOpsetError(
            f"ONNX opset {opset} is not supported by the exporter this model needs ({first}: "
            f"opsets {_span(OPSETS[first])}); pass an opset in that range (default "
            f"{DEFAULT_OPSET})"
        )
    return tuple(name for name in candidates if opset in OPSETS[name])


def _with_fallback(first: str) -> tuple[str, ...]:
    return (first, *(name for name in ONNX_EXPORTERS if name != first))


def _solver_reason(loops: list[str], unknown: list[str]) -> str:
    parts = [f"{name} ({LOOP_SOLVERS[name]})" for name in loops]
    parts += [f"{name} (not a built-in; it may loop)" for name in unknown]
    return "solver " + ", ".join(parts)


def _span(versions: range) -> str:
    return f"{versions.start}..{versions.stop - 1}"
