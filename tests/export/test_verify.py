"""The tolerance rule of ``verify``, its report, and the checks made before an export is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from aimle_zoo.export import ExportError, TensorSpec, load_exported, to_torchscript
from aimle_zoo.export.verify import RunFn, VerifyCase, VerifyReport, compare

SPEC = TensorSpec("x", "float32", ("batch", 4))


def _artefact(transform: Callable[[np.ndarray], np.ndarray]) -> RunFn:
    """An artefact that answers ``transform(x)`` where eager PyTorch (the identity) gives x."""

    def run(values: tuple[Tensor, ...]) -> list[np.ndarray]:
        return [transform(values[0].numpy())]

    return run


def _case(
    transform: Callable[[np.ndarray], np.ndarray], values: Tensor, atol: float, rtol: float
) -> VerifyCase:
    return compare(nn.Identity(), _artefact(transform), (values,), [SPEC], ["y"], atol, rtol)


def test_the_relative_tolerance_scales_with_the_eager_value() -> None:
    """``|a - e| <= atol + rtol·|e|`` with e the eager value: with rtol = 1, three times e is
    out (|a - e| = 2|e|) although it is within rtol·|a|, and 1.5 times e is in."""
    x = torch.full((2, 4), 2.0)
    assert _case(lambda v: 1.5 * v, x, atol=0.0, rtol=1.0).passed
    tripled = _case(lambda v: 3.0 * v, x, atol=0.0, rtol=1.0)
    assert not tripled.passed
    assert tripled.max_abs_diff == {"y": 4.0}
    assert "y[0, 0]: 6 vs eager 2 (8 element(s) out of tolerance)" in tripled.problem
    assert _case(lambda v: v + 0.5, x, atol=0.5, rtol=0.0).passed  # the bound itself is in
    assert not _case(lambda v: v + 0.5, x, atol=0.49, rtol=0.0).passed


def test_nan_matches_only_nan() -> None:
    """NaN where eager PyTorch gives a number is a mismatch of infinite size; NaN in both
    places (and the same infinity in both) is a match."""
    x = torch.tensor([[1.0, float("nan"), float("inf"), -2.0]] * 2)

    def nan_in_first(values: np.ndarray) -> np.ndarray:
        out = values.copy()
        out[1, 0] = np.nan
        return out

    assert _case(lambda v: v.copy(), x, atol=1e-4, rtol=1e-4).passed
    case = _case(nan_in_first, x, atol=1e-4, rtol=1e-4)
    assert not case.passed and case.max_abs_diff == {"y": float("inf")}
    assert "y[1, 0]: nan vs eager 1" in case.problem
    case = _case(lambda v: np.nan_to_num(v, nan=0.0), x, atol=1e-4, rtol=1e-4)
    assert not case.passed and "y[0, 1]: 0 vs eager nan" in case.problem


def test_an_output_of_another_shape_or_count_fails_its_case() -> None:
    case = _case(lambda v: v[:, :3], torch.zeros(2, 4), atol=1e-4, rtol=1e-4)
    assert not case.passed
    assert "y has shape (2, 3), eager gives (2, 4)" in case.problem
    assert case.max_abs_diff == {"y": float("inf")}
    extra = compare(
        nn.Identity(), lambda values: [values[0].numpy()] * 2, (torch.zeros(2, 4),), [SPEC],
        ["y"], 1e-4, 1e-4,
    )  # fmt: skip
    assert not extra.passed and extra.problem == "2 outputs, eager PyTorch gives 1"


def test_a_report_passes_only_when_every_case_does() -> None:
    x = torch.ones(2, 4)
    good = _case(lambda v: v.copy(), x, atol=1e-4, rtol=1e-4)
    bad = _case(lambda v: v + 1.0, x, atol=1e-4, rtol=1e-4)
    report = VerifyReport("m.onnx", "onnxruntime", 1e-4, 1e-4, [good, bad, good])
    assert not report.passed and report.max_abs_diff == 1.0
    assert "FAILED" in report.summary().splitlines()[0]
    assert VerifyReport("m.onnx", "onnxruntime", 1e-4, 1e-4, [good, good]).passed


class _WeightedRowSum(nn.Module):
    """``Σ_j j·x_j`` (and x_0) by a Python loop over the columns: a trace unrolls it for the
    example's column count and is wrong for any other."""

    def forward(self, x: Tensor) -> Tensor:
        total = x[:, 0]
        for column in range(1, x.shape[1]):
            total = total + x[:, column] * column
        return total


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_an_export_wrong_at_another_problem_size_is_not_written(tmp_path: Path) -> None:
    """The trace is right at the example's size (any batch), so only the check at another
    problem size finds it out; nothing is written."""
    module = _WeightedRowSum().eval()
    target = tmp_path / "rows.pt"
    options = {"example_inputs": (torch.randn(2, 5),), "dynamic_dims": {"x": {1: "n"}}}
    with pytest.raises(ExportError, match=r"torch\.jit\.trace disagrees .* n=6") as caught:
        to_torchscript(module, target, method="trace", **options)  # type: ignore[arg-type]
    assert "nothing was written" in str(caught.value)
    assert not list(tmp_path.iterdir())
    traced = torch.jit.trace(module, (torch.randn(2, 5),))
    x = torch.randn(3, 5)
    torch.testing.assert_close(traced(x), module(x))  # right at the example's size


class _GeneratorSum(nn.Module):
    """``x_0 + 2·x_1 + 3·x_2`` by a generator expression, which ``torch.jit.script`` rejects;
    with three fixed columns the trace is exact."""

    def forward(self, x: Tensor) -> Tensor:  # [B, 3] -> [B]
        return sum((index + 1) * x[:, index] for index in range(3))  # type: ignore[return-value]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_torchscript_falls_back_to_a_checked_trace_and_says_why(tmp_path: Path) -> None:
    module = _GeneratorSum().eval()
    result = to_torchscript(module, tmp_path / "sum.pt", example_inputs=(torch.randn(2, 3),))
    assert result.exporter == "trace"
    assert result.metadata["exporter"] == "trace"
    assert result.metadata["exporter_reason"].startswith("trace, after script: ")
    x = torch.randn(5, 3)
    (produced,) = load_exported(result.path).run({"x": x.numpy()}).values()
    np.testing.assert_allclose(produced, (x[:, 0] + 2 * x[:, 1] + 3 * x[:, 2]).numpy(), 1e-6)


def test_fresh_inputs_are_drawn_in_each_inputs_recorded_range() -> None:
    from aimle_zoo.export._paths import random_inputs

    specs = [
        TensorSpec("x", "float32", ("batch", "n"), low=-3.0, high=-1.0),
        TensorSpec("ids", "int64", ("batch", 4), low=5, high=8),
        TensorSpec("w", "float64", ("batch", "n", "n"), low=0.0, high=1.0, symmetric=True),
    ]
    x, ids, w = random_inputs(specs, {"batch": 400, "n": 6}, torch.Generator().manual_seed(0))
    assert x.shape == (400, 6) and x.dtype == torch.float32
    assert -3.0 <= x.min() < -2.9 and -1.1 < x.max() <= -1.0
    assert ids.dtype == torch.int64 and set(ids.unique().tolist()) == {5, 6, 7}  # high excluded
    assert w.dtype == torch.float64 and torch.equal(w, w.transpose(1, 2))
