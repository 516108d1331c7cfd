"""``verify``: compare an exported file with eager PyTorch on fresh random inputs.

Every case draws new inputs (a seeded generator, values in each input's recorded range), runs
them through the artefact (onnxruntime or TorchScript) and through the same inference path in
eager PyTorch, and records the largest absolute difference of every output. The cases are the
given batch sizes at the export's problem sizes, then each other problem size recorded in the
metadata (``verified_sizes``: e.g. other sequence lengths, grid sizes or vertex counts). An
element passes when ``|exported - eager| <= atol + rtol·|eager|``; the solutions (masks,
trees, paths) are 0/1, so a single flipped entry fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._paths import (
    ExportError,
    InferencePath,
    TensorSpec,
    as_tuple,
    check_eval_mode,
    path_module,
    random_inputs,
)
from .metadata import read_metadata
from .predict import load_exported

#: Default batch sizes of :func:`verify` (the exports use batch 2 as their example).
DEFAULT_BATCH_SIZES = (1, 5, 16)

RunFn = Callable[[tuple[Tensor, ...]], list[np.ndarray]]


@dataclass(frozen=True)
class VerifyCase:
    """One comparison: the sizes used and the largest difference of every output."""

    batch_size: int
    sizes: dict[str, int]
    max_abs_diff: dict[str, float]
    passed: bool
    problem: str = ""

    def describe(self) -> str:
        """E.g. ``batch=5 length=37: mask 0, prediction 2.4e-07``."""
        sizes = " ".join(f"{key}={value}" for key, value in self.sizes.items())
        diffs = ", ".join(f"{name} {value:.2g}" for name, value in self.max_abs_diff.items())
        status = "ok" if self.passed else f"FAILED {self.problem}".rstrip()
        return f"{sizes}: {diffs or '-'} [{status}]"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`."""

    artefact: str
    runtime: str
    atol: float
    rtol: float
    cases: list[VerifyCase] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every case within tolerance."""
        return all(case.passed for case in self.cases)

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute difference over all cases and outputs."""
        return max((max(c.max_abs_diff.values(), default=0.0) for c in self.cases), default=0.0)

    def summary(self) -> str:
        """One line per case under a headline."""
        verdict = "passed" if self.passed else "FAILED"
        head = (
            f"{self.artefact} ({self.runtime}) vs eager PyTorch: {verdict}, max abs diff "
            f"{self.max_abs_diff:.3g} (atol={self.atol:g}, rtol={self.rtol:g})"
        )
        return "\n".join([head, *(f"  {case.describe()}" for case in self.cases)])

    def __str__(self) -> str:
        return self.summary()


class VerificationError(ExportError):
    """An exported file disagrees with eager PyTorch beyond tolerance."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(
            f"{report.summary()}\nThe exported graph does not reproduce eager PyTorch. A "
            "difference of 1 in a 0/1 output is a different solution: a near-tie in θ that "
            "rounding decides differently, or an exporter that fixed a size or a loop count "
            "of the example; re-export, or report it with this table."
        )
        self.report = report


def verify(
    model: nn.Module,
    artefact: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    problem_sizes: bool = True,
    seed: int = 0,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    inputs: Sequence[Sequence[Tensor]] | None = None,
    raise_on_failure: bool = True,
) -> VerifyReport:
    """Compare an exported file with ``model`` in eager PyTorch on fresh random inputs.

    Args:
        model: the eval-mode model (or solver, or module) that was exported, on any device
            (a CPU copy runs as the reference).
        artefact: the ``.onnx`` or TorchScript file.
        batch_sizes: batch sizes to check at the export's problem sizes.
        problem_sizes: also check the other problem sizes recorded in the metadata.
        seed: seed of the random inputs (case i uses ``seed + i``).
        atol, rtol: tolerance per element, ``|a - e| <= atol + rtol·|e|``.
        inputs: explicit input tuples to check instead of random ones.
        raise_on_failure: raise :class:`VerificationError` if a case fails.

    Returns:
        The :class:`VerifyReport` (every case, the maximum difference).
    """
    check_eval_mode(model)
    read_metadata(artefact)  # refuses a file not written by aimle_zoo.export, by name
    runtime = load_exported(artefact, threads=1)
    metadata = runtime.metadata
    specs = [TensorSpec.from_json(spec) for spec in metadata.get("inputs", [])]
    eager = path_module(model, split=bool(metadata.get("solver_after")))
    output_names = [info.name for info in runtime.outputs]

    def run_artefact(values: tuple[Tensor, ...]) -> list[np.ndarray]:
        feed = {spec.name: value.numpy() for spec, value in zip(specs, values, strict=True)}
        produced = runtime.run(feed)
        return [produced[name] for name in output_names]

    if inputs is not None:
        cases = [tuple(value.detach().cpu() for value in case) for case in inputs]
    else:
        cases = list(_random_cases(specs, metadata, batch_sizes, problem_sizes, seed))
    report = VerifyReport(
        artefact=Path(artefact).name,
        runtime="onnxruntime" if runtime.providers != ["torchscript"] else "torchscript",
        atol=atol,
        rtol=rtol,
    )
    report.cases = [
        compare(eager, run_artefact, values, specs, output_names, atol, rtol) for values in cases
    ]
    if raise_on_failure and not report.passed:
        raise VerificationError(report)
    return report


def _random_cases(
    specs: Sequence[TensorSpec],
    metadata: Mapping[str, Any],
    batch_sizes: Sequence[int],
    problem_sizes: bool,
    seed: int,
) -> list[tuple[Tensor, ...]]:
    """Fresh inputs: each batch size at the example sizes, then each other problem size.

    A model whose batch must be a multiple of m (``batch_multiple``) gets m times each size.
    """
    example = dict(metadata.get("example_sizes", {}))
    multiple = int(metadata.get("batch_multiple") or 1)
    size_sets = [{**example, "batch": int(batch) * multiple} for batch in batch_sizes]
    if problem_sizes:
        size_sets += [
            {**example, "batch": 3 * multiple, **case} for case in metadata["verified_sizes"]
        ]
    return [
        random_inputs(specs, sizes, torch.Generator().manual_seed(seed + index))
        for index, sizes in enumerate(size_sets)
    ]


def compare(
    eager: nn.Module,
    run_artefact: RunFn,
    values: tuple[Tensor, ...],
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    atol: float,
    rtol: float,
) -> VerifyCase:
    """Run one input tuple both ways and compare every output."""
    sizes: dict[str, int] = {"batch": int(values[0].shape[0])} if values else {}
    for spec, value in zip(specs, values, strict=True):
        for dim, size in zip(spec.shape, value.shape, strict=False):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    with torch.no_grad():
        expected = [value.numpy() for value in as_tuple(eager(*values))]
    produced = run_artefact(values)
    names = list(output_names) or [f"output_{index}" for index in range(len(expected))]
    if len(produced) != len(expected):
        problem = f"{len(produced)} outputs, eager PyTorch gives {len(expected)}"
        return VerifyCase(sizes["batch"], sizes, {}, False, problem)
    diffs: dict[str, float] = {}
    problems = []
    for name, got, want in zip(names, produced, expected, strict=True):
        if got.shape != want.shape:
            problems.append(f"{name} has shape {got.shape}, eager gives {want.shape}")
            diffs[name] = float("inf")
            continue
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
            same = (got64 == want64) | (np.isnan(got64) & np.isnan(want64))
            gap = np.where(same, 0.0, np.abs(got64 - want64))
        # an infinite eager value must be matched exactly, not within rtol·inf
        limit = np.where(np.isfinite(want64), atol + rtol * np.abs(want64), 0.0)
        diffs[name] = float(np.nan_to_num(gap, nan=np.inf).max()) if gap.size else 0.0
        bad = ~(gap <= limit)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            problems.append(
                f"{name}{list(where)}: {got64[where]:.6g} vs eager {want64[where]:.6g} "
                f"({int(bad.sum())} element(s) out of tolerance)"
            )
    return VerifyCase(sizes["batch"], sizes, diffs, not problems, "; ".join(problems))


def check_export(path: InferencePath, run_artefact: RunFn, what: str) -> None:
    """Compare a fresh export with eager PyTorch before it is written (batch 3 at the
    example's sizes and the first other problem size at batch 2, times the batch multiple).

    Raises:
        ExportError: out of tolerance: the exporter fixed a size or a loop count, or mistranslated
            an operation.
    """
    generator = torch.Generator().manual_seed(12345)
    example = path.example_sizes()
    multiple = path.batch_multiple
    size_sets = [{**example, "batch": 3 * multiple}]
    size_sets += [{**example, "batch": 2 * multiple, **case} for case in path.size_cases[:1]]
    names = [spec.name for spec in path.outputs]
    for sizes in size_sets:
        values = random_inputs(path.inputs, sizes, generator)
        case = compare(path.module, run_artefact, values, path.inputs, names, 1e-4, 1e-4)
        if not case.passed:
            raise ExportError(
                f"{what} disagrees with eager PyTorch at {case.describe()}; it is not written"
            )


def brief_error(err: BaseException, limit: int = 1200) -> str:
    """``Type: message`` of an exporter error, cut to its gist.

    torch's exporter errors carry pages of advice; the first line and the lines under their
    ``## Exception summary`` heading say what failed. The full error stays chained.
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    kept = lines[:1]
    if "## Exception summary" in lines:
        start = lines.index("## Exception summary") + 1
        kept += lines[start : start + 4]
    else:
        kept += lines[1:6]
    text = "\n    ".join(kept)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"
