"""Export refusals with clear messages, and no partial file left behind on any failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch
from torch import Tensor, nn

from aimle_zoo import DifferentiableSolver, get_solver
from aimle_zoo.export import (
    ExportError,
    ModelFileError,
    NonExportableSolverError,
    OnnxRunner,
    SplitPipeline,
    UnsupportedOpsetError,
    VerificationError,
    load_exported,
    read_metadata,
    to_onnx,
    to_torchscript,
    verify,
)
from aimle_zoo.solvers import MinimumSpanningTree, ShortestPath
from aimle_zoo.solvers.reference.shortest_path import grid_shortest_path_scipy

from ..models._helpers import tiny_model


class ScipyCall(nn.Module):
    """Leaves torch for scipy: no exporter can hold it."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.from_numpy(scipy.special.expit(x.numpy()))


class WeightedRowSum(nn.Module):
    """A Python loop over a size: dynamo fixes that size, the scripted export keeps a Loop."""

    def forward(self, x: Tensor) -> Tensor:
        total = x[:, 0]
        for column in range(1, x.shape[1]):
            total = total + x[:, column] * column
        return total


def _costs_network() -> nn.Module:
    """x [B, 4] -> grid costs θ [B, 3, 4]."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 4))).eval()


def _files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()) if folder.exists() else []


def test_a_model_in_training_mode_is_refused(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular")  # models are built in training mode
    for export in (to_onnx, to_torchscript):
        with pytest.raises(ExportError, match=r"training mode .*call model.eval\(\)"):
            export(model, tmp_path / "model.out")
    assert _files(tmp_path) == []
    with pytest.raises(ExportError, match="training mode"):
        verify(model, tmp_path / "model.out")


def test_swapped_arguments_say_the_model_comes_first(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular").eval()
    written = to_onnx(model, tmp_path / "model.onnx")
    with pytest.raises(TypeError, match=r"got ExportResult; the model comes first"):
        verify(written, model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got str; the model comes first"):
        to_onnx(str(tmp_path / "b.onnx"), model)  # type: ignore[arg-type]
    assert _files(tmp_path) == ["model.onnx"]


def test_unsupported_opsets_are_refused_with_the_supported_range(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular").eval()
    with pytest.raises(UnsupportedOpsetError, match=r"opset 17 is not supported.*18\.\.23"):
        to_onnx(model, tmp_path / "a.onnx", opset=17)
    with pytest.raises(UnsupportedOpsetError, match="must be an integer"):
        to_onnx(model, tmp_path / "a.onnx", opset="18")  # type: ignore[arg-type]
    solver = get_solver("grid_shortest_path")  # needs the scripted exporter: opsets 18..20
    with pytest.raises(
        UnsupportedOpsetError, match=r"opset 22 .*needs \(legacy_script: opsets 18\.\.20\)"
    ):
        to_onnx(solver, tmp_path / "b.onnx", opset=22)
    assert _files(tmp_path) == []
    result = to_onnx(solver, tmp_path / "b.onnx", opset=20)
    assert read_metadata(result.path)["opset"] == 20
    assert verify(solver, result.path, batch_sizes=(2,)).passed


def test_a_non_exportable_solver_names_itself_and_both_ways_out(tmp_path: Path) -> None:
    model = nn.Sequential(_costs_network(), DifferentiableSolver("dijkstra_scipy")).eval()
    example = (torch.randn(2, 4),)
    for export in (to_onnx, to_torchscript):
        with pytest.raises(NonExportableSolverError) as raised:
            export(model, tmp_path / "model.out", example_inputs=example)
        message = str(raised.value)
        assert "'dijkstra_scipy' (at 1.solver) is registered as non-exportable" in message
        assert "implement the solver with tensor operations" in message
        assert "split=True, solver='dijkstra_scipy'" in message and "SplitPipeline" in message
    assert _files(tmp_path) == []


def test_split_export_runs_a_non_exportable_solver_after_onnxruntime(tmp_path: Path) -> None:
    network = _costs_network()
    full = nn.Sequential(network, DifferentiableSolver("dijkstra_scipy")).eval()
    result = to_onnx(
        network,
        tmp_path / "costs.onnx",
        example_inputs=(torch.randn(2, 4),),
        split=True,
        solver="dijkstra_scipy",
    )
    assert result.metadata["solver_after"]["name"] == "dijkstra_scipy"
    pipeline = SplitPipeline(result.path)
    x = torch.randn(6, 4)
    produced = pipeline.run({"input": x.numpy()})
    with torch.no_grad():
        theta = network(x)
        expected = full(x)
    np.testing.assert_allclose(produced["theta"], theta.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(produced["solution"], expected.numpy())
    np.testing.assert_array_equal(
        produced["solution"], grid_shortest_path_scipy(torch.from_numpy(produced["theta"])).numpy()
    )
    plain = to_onnx(network, tmp_path / "plain.onnx", example_inputs=(x,))
    with pytest.raises(ExportError, match="not a split export"):
        SplitPipeline(plain.path)


def _split_solution(network: nn.Module, solver: nn.Module, folder: Path, x: Tensor) -> Tensor:
    """The solution a split export of ``network`` + ``solver`` gives in deployment."""
    result = to_onnx(
        network, folder / "split.onnx", example_inputs=(x[:2],), split=True, solver=solver
    )
    return torch.from_numpy(SplitPipeline(result.path).run({"input": x.numpy()})["solution"])


def test_split_export_records_what_rebuilds_a_solver_built_directly(tmp_path: Path) -> None:
    """A 4-neighbourhood grid and a masked spanning tree, built without get_solver, come back
    from the metadata as they were (the defaults would give other solutions)."""
    x = torch.randn(16, 4)
    network = nn.Sequential(_costs_network(), nn.Softplus()).eval()
    grid = ShortestPath(neighbourhood=4)
    with torch.no_grad():
        expected = grid(network(x))
    assert not torch.equal(expected, ShortestPath()(network(x)))
    assert torch.equal(_split_solution(network, grid, tmp_path, x), expected)
    mask = ~torch.eye(5, dtype=torch.bool)
    mask[0, 1:4] = mask[1:4, 0] = False  # vertex 0 hangs on vertex 4
    tree = MinimumSpanningTree(mask=mask)
    weights = nn.Sequential(nn.Linear(4, 25), nn.Unflatten(1, (5, 5))).eval()
    with torch.no_grad():
        expected = tree(weights(x))
    assert torch.equal(_split_solution(weights, tree, tmp_path, x), expected)


def test_split_export_refuses_a_solver_its_metadata_cannot_rebuild(tmp_path: Path) -> None:
    class Sharpened(ShortestPath):  # not registered: no name to rebuild it by
        def forward(self, theta: Tensor) -> Tensor:
            return super().forward(theta**3)

    changed = get_solver("grid_shortest_path")
    changed.neighbourhood = 4  # set after construction: recorded parameters say 8
    network = nn.Sequential(_costs_network(), nn.Softplus()).eval()
    example = (torch.randn(8, 4),)
    for solver, message in (
        (Sharpened(), "cannot be rebuilt from the metadata .*unknown solver 'Sharpened'"),
        (changed, "answers differently from the given solver"),
    ):
        with pytest.raises(ExportError, match=message):
            to_onnx(network, tmp_path / "s.onnx", example_inputs=example, split=True, solver=solver)
        assert not list(tmp_path.iterdir())


def test_a_failed_export_leaves_no_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    previous = tmp_path / "model.onnx"
    previous.write_bytes(b"previous export")
    for export, target in ((to_onnx, previous), (to_torchscript, tmp_path / "model.pt")):
        with pytest.raises(ExportError, match="nothing was written"):
            export(ScipyCall().eval(), target, example_inputs=(torch.randn(2, 5),))
    assert _files(tmp_path) == ["model.onnx"]  # no temporary or partial file
    assert previous.read_bytes() == b"previous export"


def test_silent_specialisation_is_refused_and_auto_falls_back(tmp_path: Path) -> None:
    module = WeightedRowSum().eval()
    options = {"example_inputs": (torch.randn(2, 5),), "dynamic_dims": {"x": {1: "n"}}}
    with pytest.raises(ExportError, match=r"fixed axis 1 \('n'\) of input 'x' to 5"):
        to_onnx(module, tmp_path / "dynamo.onnx", exporter="dynamo", **options)
    assert _files(tmp_path) == []
    result = to_onnx(module, tmp_path / "auto.onnx", **options)
    assert result.exporter == "legacy_script"
    assert "dynamo: ExportError: the exporter fixed axis 1" in result.metadata["exporter_reason"]
    other_sizes = [(torch.randn(3, 2),), (torch.randn(4, 11),)]
    report = verify(module, result.path, inputs=other_sizes)
    assert report.passed and [case.sizes["n"] for case in report.cases] == [2, 11]


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_verify_fails_loudly_when_the_file_disagrees_with_the_model(
    suffix: str, tmp_path: Path
) -> None:
    """A shift δ of the predictor's output bias moves every logit by exactly δ (the selection
    is upstream of it), so the file must fail by δ above tolerance and pass below it."""
    model = tiny_model("l2x_tabular").eval()
    export = to_onnx if suffix == ".onnx" else to_torchscript
    path = export(model, tmp_path / f"model{suffix}").path
    output_bias = model.predictor[-1].bias
    for shift, fails in ((1e-2, True), (1e-6, False)):
        with torch.no_grad():
            output_bias.add_(shift)
        report = verify(model, path, raise_on_failure=False)
        with torch.no_grad():
            output_bias.sub_(shift)
        assert report.passed is not fails
        assert report.max_abs_diff == pytest.approx(shift, rel=0.05, abs=2e-6)
    with torch.no_grad():
        output_bias.add_(1e-2)
    with pytest.raises(VerificationError, match=r"FAILED, max abs diff 0\.01") as caught:
        verify(model, path)
    assert "does not reproduce eager PyTorch" in str(caught.value)
    assert not caught.value.report.passed
    assert all(not case.passed for case in caught.value.report.cases)


def test_a_custom_modules_description_is_checked_before_exporting(tmp_path: Path) -> None:
    module = nn.Linear(4, 3).eval()
    x = (torch.randn(2, 4),)
    target = tmp_path / "linear.onnx"
    refused = [
        ({}, "needs example_inputs"),
        ({"example_inputs": x, "input_names": ["a", "b"]}, "2 input names given for 1 example"),
        ({"example_inputs": x, "dynamic_dims": {"y": {1: "n"}}}, r"unknown inputs \['y'\]"),
        ({"example_inputs": (torch.tensor(1.0),)}, "is a scalar"),
        ({"example_inputs": x, "dynamic_dims": {"input": {2: "n"}}}, "has no axis 2"),
        ({"example_inputs": x, "dynamic_dims": {"input": {0: "n"}}}, "has no axis 0"),
        ({"example_inputs": x, "output_names": ["a", "b"]}, "2 output names given for 1 outputs"),
    ]
    for options, message in refused:
        with pytest.raises(ExportError, match=message):
            to_onnx(module, target, **options)
        assert _files(tmp_path) == []
    exported = to_onnx(module, target, example_inputs=x, output_names=["y"])
    assert [spec["name"] for spec in exported.metadata["inputs"]] == ["input"]
    assert verify(module, exported.path).passed


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")  # script, save
def test_metadata_of_foreign_truncated_or_tampered_files_is_refused(tmp_path: Path) -> None:
    import onnx

    with pytest.raises(FileNotFoundError, match="no exported model at"):
        read_metadata(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.onnx is empty \(an interrupted copy\?\)"):
        read_metadata(tmp_path / "empty.onnx")
    module = nn.Linear(4, 3).eval()
    exported = to_onnx(module, tmp_path / "ours.onnx", example_inputs=(torch.randn(2, 4),))
    assert read_metadata(exported.path)["inputs"][0]["name"] == "input"
    scripted = to_torchscript(module, tmp_path / "ours.pt", example_inputs=(torch.randn(2, 4),))
    for result in (exported, scripted):  # the metadata comes back as it was written
        assert read_metadata(result.path) == result.metadata
        assert load_exported(result.path).metadata == result.metadata
        assert result.size_bytes == result.path.stat().st_size
    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(module), str(foreign))
    with pytest.raises(ValueError, match="TorchScript file without aimle_zoo metadata"):
        read_metadata(foreign)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(foreign.read_bytes()[:100])  # keeps the zip magic, loses the directory
    with pytest.raises(ValueError, match="not a readable TorchScript archive"):
        read_metadata(cut)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + b"\xff" * 40)
    with pytest.raises(ValueError, match="neither a TorchScript nor a readable ONNX file"):
        read_metadata(garbage)
    proto = onnx.load(str(exported.path))
    for value, message in (("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object")):
        for prop in proto.metadata_props:
            if prop.key == "aimle_zoo":
                prop.value = value
        onnx.save(proto, str(tmp_path / "tampered.onnx"))
        with pytest.raises(ValueError, match=message):
            read_metadata(tmp_path / "tampered.onnx")
        with pytest.raises(ModelFileError, match="carries no aimle_zoo metadata"):
            OnnxRunner(tmp_path / "tampered.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="ONNX file without aimle_zoo metadata"):
        read_metadata(tmp_path / "bare.onnx")


class _Differences(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, 1:] - x[:, :-1]  # [B, n - 1]


class _TenSums(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=1, keepdim=True) * torch.arange(1.0, 11.0)  # [B, 10] for any n


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (_Differences(), ["batch", "y_axis1"]),  # a function of n: dynamic, its own name
        (_TenSums(), ["batch", 10]),  # 10 = n at the example, but fixed
        (nn.Identity(), ["batch", "n"]),
        (nn.Sequential(nn.Unflatten(1, (-1, 1)), nn.Linear(1, 10)), ["batch", "n", 10]),
    ],
)
def test_output_shapes_of_a_module_with_a_dynamic_size_are_measured(
    module: nn.Module, shape: list[object], tmp_path: Path
) -> None:
    """An output size equal to n at the example (10) need not follow n, and one that follows
    n need not equal it; the recorded and the graph's shapes must say which."""
    x = torch.randn(2, 10)
    options = {
        "example_inputs": (x,),
        "input_names": ["input"],
        "dynamic_dims": {"input": {1: "n"}},
        "output_names": ["y"],
    }
    for export in (to_onnx, to_torchscript):
        result = export(module.eval(), tmp_path / f"m.{'onnx' if export is to_onnx else 'pt'}",
                        **options)  # fmt: skip
        assert read_metadata(result.path)["outputs"][0]["shape"] == shape
        assert verify(module, result.path).passed
    import onnx

    graph_shape = [
        dim.dim_param or dim.dim_value
        for dim in onnx.load(str(tmp_path / "m.onnx")).graph.output[0].type.tensor_type.shape.dim
    ]
    assert graph_shape == shape


class _RowSums(nn.Module):
    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        both = torch.cat([x, y], dim=1).sum(-1)  # [B, n + m]
        return x.sum(-1), y.sum(-1), both  # [B, n], [B, m], [B, n + m]


class _TiedRows(nn.Module):
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return (x + y).sum(-1)  # only runs when m = n


def test_two_dynamic_sizes_equal_at_the_example_are_told_apart(tmp_path: Path) -> None:
    """n = m = 5 in the example: each output axis is named after the size it follows, and the
    export checks the sizes at different values, so a graph that ties them fails."""
    examples = (torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    options = {"example_inputs": examples, "dynamic_dims": {"x": {1: "n"}, "y": {1: "m"}}}
    for export, suffix in ((to_onnx, "onnx"), (to_torchscript, "pt")):
        result = export(_RowSums().eval(), tmp_path / f"rows.{suffix}", **options)
        shapes = [output["shape"] for output in read_metadata(result.path)["outputs"]]
        assert shapes == [["batch", "n"], ["batch", "m"], ["batch", "output_2_axis1"]]
        sizes = read_metadata(result.path)["verified_sizes"]
        assert any(case.get("n") != case.get("m") for case in sizes)
        outputs = load_exported(result.path).run(
            {"x": np.ones((3, 7, 4), np.float32), "y": np.ones((3, 2, 4), np.float32)}
        )
        assert [value.shape for value in outputs.values()] == [(3, 7), (3, 2), (3, 9)]
    with pytest.raises(ExportError):
        to_onnx(_TiedRows().eval(), tmp_path / "tied.onnx", **options)
    assert not (tmp_path / "tied.onnx").exists()


class _Doubled(nn.Module):
    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cat([x, x], dim=1), 2 * y  # [B, 2n], [B, m]


def test_an_output_of_twice_one_size_is_not_named_after_another_that_equals_it(
    tmp_path: Path,
) -> None:
    """With n = 3 and m = 6 at the example, an axis of 2n has m's size and, under a single
    probe, could grow by m's step; it follows no declared size alone."""
    options = {
        "example_inputs": (torch.randn(2, 3), torch.randn(2, 6)),
        "dynamic_dims": {"x": {1: "n"}, "y": {1: "m"}},
    }
    result = to_onnx(_Doubled().eval(), tmp_path / "doubled.onnx", **options)
    shapes = [output["shape"] for output in read_metadata(result.path)["outputs"]]
    assert shapes == [["batch", "output_0_axis1"], ["batch", "m"]]


@pytest.mark.parametrize("value", [2.0, np.ones((3, 4), dtype=np.float32), None])
def test_an_example_input_that_is_not_a_tensor_is_named(value: object, tmp_path: Path) -> None:
    module = nn.Linear(4, 2).eval()
    with pytest.raises(ExportError, match=r"example input 1 of Linear is a \w+, not a tensor"):
        to_onnx(module, tmp_path / "m.onnx", example_inputs=(torch.randn(3, 4), value))  # type: ignore[arg-type]
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_elsewhere_that_cannot_be_copied_to_the_cpu_is_refused(tmp_path: Path) -> None:
    """A model off the CPU is exported from a CPU copy; one without data (the meta device)
    cannot be copied, and the error says so instead of failing inside the exporter."""
    module = nn.Linear(4, 2, device="meta").eval()
    with pytest.raises(ExportError, match="cannot be copied to the CPU for export"):
        to_onnx(module, tmp_path / "m.onnx", example_inputs=(torch.randn(3, 4),))
    assert not (tmp_path / "m.onnx").exists()


def test_a_write_that_fails_on_disk_leaves_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is written beside the target and renamed into place only once it is on disk:
    a failure while writing (here the flush to disk) leaves the previous file as it was and
    no temporary file behind."""
    import aimle_zoo._io
    from aimle_zoo.export import write_outputs

    module = nn.Linear(4, 3).eval()
    example = (torch.randn(2, 4),)
    targets = [tmp_path / "model.onnx", tmp_path / "model.pt", tmp_path / "out.npz"]
    for target in targets:
        target.write_bytes(b"previous")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aimle_zoo._io.os, "fsync", disk_full)
    writes = [
        lambda: to_onnx(module, targets[0], example_inputs=example),
        lambda: to_torchscript(module, targets[1], example_inputs=example),
        lambda: write_outputs(targets[2], {"y": np.zeros(3)}),
    ]
    for write in writes:
        with pytest.raises(OSError, match="No space left on device"):
            write()
    assert _files(tmp_path) == ["model.onnx", "model.pt", "out.npz"]
    assert all(target.read_bytes() == b"previous" for target in targets)


def test_a_split_pipeline_runs_the_solver_it_is_given_instead_of_the_recorded_one(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    network = nn.Linear(4, 6).eval()
    result = to_onnx(
        network,
        tmp_path / "scores.onnx",
        example_inputs=(torch.randn(2, 4),),
        split=True,
        solver="topk",
        solver_params={"k": 2},
    )
    x = torch.randn(5, 4)
    with torch.no_grad():
        theta = network(x)
    recorded = SplitPipeline(result.path).run([x.numpy()])["solution"]
    np.testing.assert_array_equal(recorded, get_solver("topk", k=2)(theta).numpy())
    given = SplitPipeline(result.path, solver=get_solver("topk", k=1)).run([x.numpy()])
    np.testing.assert_array_equal(given["solution"], get_solver("topk", k=1)(theta).numpy())
    assert given["solution"].sum(axis=1).tolist() == [1.0] * 5


def test_a_dynamic_size_any_value_of_which_runs_has_minimum_1() -> None:
    from aimle_zoo.export import inference_path

    options = {"example_inputs": (torch.randn(2, 10),), "dynamic_dims": {"input": {1: "n"}}}
    assert inference_path(nn.Identity(), **options).dynamic_dims == {"batch": 1, "n": 1}
    conv = nn.Conv1d(1, 1, kernel_size=4).eval()  # needs n >= 4
    options = {"example_inputs": (torch.randn(2, 1, 10),), "dynamic_dims": {"input": {2: "n"}}}
    assert inference_path(conv, **options).dynamic_dims == {"batch": 1, "n": 4}


def test_an_onnx_graph_that_computes_something_else_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each exporter's graph is run in onnxruntime against eager PyTorch before anything is
    written; a graph with altered weights (as a mistranslation would give) is refused."""
    import onnx

    import aimle_zoo.export.onnx as onnx_export

    expand = onnx_export._expand_elu

    def doubled_weights(proto: onnx.ModelProto) -> None:
        expand(proto)
        for tensor in proto.graph.initializer:
            array = onnx.numpy_helper.to_array(tensor)
            if array.dtype == np.float32 and array.ndim == 2:  # the Linear weight
                tensor.CopyFrom(onnx.numpy_helper.from_array(2 * array, tensor.name))

    monkeypatch.setattr(onnx_export, "_expand_elu", doubled_weights)
    target = tmp_path / "linear.onnx"
    with pytest.raises(ExportError, match="nothing was written") as caught:
        to_onnx(nn.Linear(4, 3).eval(), target, example_inputs=(torch.randn(2, 4),))
    message = str(caught.value)
    for exporter in ("dynamo", "legacy_script"):
        assert f"the ONNX graph from the {exporter} exporter disagrees with eager" in message
    assert _files(tmp_path) == []
