"""The onnxruntime runner: provider selection, input checks, bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from aimle_zoo import DifferentiableSolver, get_solver
from aimle_zoo.export import (
    ModelFileError,
    OnnxRunner,
    RunnerInputError,
    TorchScriptModel,
    load_exported,
    select_providers,
    to_onnx,
    to_torchscript,
    verify,
)
from aimle_zoo.export.predict import read_inputs, write_outputs
from aimle_zoo.export.runner import InputLimits, TensorInfo, check_inputs

from .conftest import Exported


def test_providers_prefer_cuda_when_the_build_lists_it() -> None:
    cpu_build = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(cpu_build) == ["CPUExecutionProvider"]
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers([]) == ["CPUExecutionProvider"]
    assert select_providers() == ["CPUExecutionProvider"]  # this machine's CPU build


def test_runner_runs_on_the_selected_provider_and_returns_named_arrays(
    exported: dict[str, Exported],
) -> None:
    item = exported["l2x_tabular"]
    runner = OnnxRunner(item.onnx, threads=1)
    assert runner.providers == ["CPUExecutionProvider"]
    assert [info.describe() for info in runner.inputs] == ["features float32 [batch, 10]"]
    (features,) = item.model.example_inputs(3)
    by_name = runner.run({"features": features.numpy()})
    assert list(by_name) == ["mask", "prediction"]
    positional = runner([features.numpy()])
    single = runner(features.numpy())
    with torch.no_grad():
        logits = item.model(features).numpy()
    for outputs in (by_name, positional, single):
        np.testing.assert_allclose(outputs["prediction"], logits, rtol=1e-4, atol=1e-5)
    assert "output mask float32 [batch, 10]" in runner.describe()


def test_runner_names_what_is_wrong_with_the_inputs(exported: dict[str, Exported]) -> None:
    runner = OnnxRunner(exported["l2x_tabular"].onnx)
    good = np.zeros((2, 10), dtype=np.float32)
    with pytest.raises(RunnerInputError, match=r"dtype float64.*astype\(np.float32\)"):
        runner.run({"features": good.astype(np.float64)})
    with pytest.raises(RunnerInputError, match=r"shape \(2, 10, 1\) \(3-D\).*\(2-D\)"):
        runner.run({"features": good[..., None]})
    with pytest.raises(RunnerInputError, match=r"axis 1 must be 10 \(fixed at export time\)"):
        runner.run({"features": np.zeros((2, 9), dtype=np.float32)})
    with pytest.raises(RunnerInputError, match=r"missing input\(s\) \['features'\]"):
        runner.run({"x": good})
    with pytest.raises(RunnerInputError, match=r"unexpected input\(s\) \['extra'\]"):
        runner.run({"features": good, "extra": good})
    with pytest.raises(RunnerInputError, match="must be a numpy array, got list"):
        runner.run({"features": good.tolist()})
    with pytest.raises(RunnerInputError, match="got 2 input arrays, the model takes 1"):
        runner.run([good, good])
    text = OnnxRunner(exported["l2x_text"].onnx)
    with pytest.raises(RunnerInputError, match=r"dtype int32.*astype\(np.int64\)"):
        text.run({"token_ids": np.zeros((2, 20), dtype=np.int32)})


def test_dynamic_dimensions_must_agree_across_inputs() -> None:
    specs = [TensorInfo("a", "float32", ("batch", 3)), TensorInfo("b", "int64", ("batch",))]
    a, b = np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.int64)
    assert list(check_inputs(specs, {"b": b, "a": a})) == ["a", "b"]
    with pytest.raises(RunnerInputError, match="dimension 'batch' is 4 in input 'a' but 5"):
        check_inputs(specs, {"a": a, "b": np.zeros(5, dtype=np.int64)})
    with pytest.raises(RunnerInputError, match="pass them as a mapping"):
        check_inputs(specs, a)


def test_missing_empty_truncated_and_foreign_files_are_refused(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    with pytest.raises(ModelFileError, match=r"no exported model at .*missing\.onnx"):
        OnnxRunner(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        OnnxRunner(empty)
    data = exported["l2x_tabular"].onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated, corrupt or not an ONNX model"):
        OnnxRunner(truncated)
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("not a model at all\n" * 20)
    with pytest.raises(ModelFileError, match="could not be loaded by onnxruntime"):
        load_exported(foreign)
    scripted = exported["l2x_tabular"].torchscript.read_bytes()
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(scripted[: len(scripted) // 2])
    with pytest.raises(ModelFileError, match=r"could not be loaded by torch\.jit\.load"):
        TorchScriptModel(cut)
    with pytest.raises(ModelFileError, match=r"could not be loaded by torch\.jit\.load"):
        load_exported(cut)


def test_torchscript_model_checks_inputs_like_the_runner(exported: dict[str, Exported]) -> None:
    item = exported["nri_tree"]
    model = load_exported(item.torchscript)
    assert isinstance(model, TorchScriptModel)
    (trajectories,) = item.model.example_inputs(3)
    outputs = model.run({"trajectories": trajectories.numpy()})
    with torch.no_grad():
        tree = item.model(trajectories).numpy()
    np.testing.assert_array_equal(outputs["tree"], tree)
    with pytest.raises(RunnerInputError, match=r"axis 1 must be 4"):
        model.run({"trajectories": np.zeros((3, 5, 4, 2), dtype=np.float32)})


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")  # script, save
def test_torchscript_files_without_our_metadata_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"no exported model at .*missing\.pt"):
        TorchScriptModel(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(plain))
    with pytest.raises(ModelFileError, match="has no aimle_zoo input specification"):
        TorchScriptModel(plain)


def test_input_files_map_to_the_model_inputs_or_say_why_not(tmp_path: Path) -> None:
    first, second = np.zeros((2, 3), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(FileNotFoundError, match="no input file at"):
        read_inputs(tmp_path / "missing.npz", ["x"])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x00not numpy")
    with pytest.raises(RunnerInputError, match=r"not a readable \.npy or \.npz file"):
        read_inputs(garbage, ["x"])
    np.save(tmp_path / "one.npy", first)
    with pytest.raises(RunnerInputError, match=r"holds one array but the model takes 2 inputs"):
        read_inputs(tmp_path / "one.npy", ["x", "y"])
    np.savez(tmp_path / "positional.npz", first, second)  # arr_0, arr_1: in input order
    mapped = read_inputs(tmp_path / "positional.npz", ["x", "y"])
    assert list(mapped) == ["x", "y"]
    np.testing.assert_array_equal(mapped["x"], first)
    np.testing.assert_array_equal(mapped["y"], second)
    np.savez(tmp_path / "named.npz", y=second, x=first)
    named = read_inputs(tmp_path / "named.npz", ["x", "y"])
    np.testing.assert_array_equal(named["x"], first)
    np.testing.assert_array_equal(named["y"], second)


def test_outputs_are_written_as_npz_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"name the file \*\.npz"):
        write_outputs(tmp_path / "out.npy", {"z": np.zeros(2)})
    assert not list(tmp_path.iterdir())
    written = write_outputs(tmp_path / "out.npz", {"z": np.arange(3.0)})
    with np.load(written) as loaded:
        np.testing.assert_array_equal(loaded["z"], np.arange(3.0))


def test_sizes_below_the_recorded_minimum_are_refused(tmp_path: Path) -> None:
    exported = to_onnx(get_solver("topk", k=3), tmp_path / "topk.onnx")
    assert exported.metadata["dynamic_dims"]["batch"] == 1
    for model in (OnnxRunner(exported.path), TorchScriptModel(
        to_torchscript(get_solver("topk", k=3), tmp_path / "topk.pt").path
    )):  # fmt: skip
        name = model.inputs[0].name
        n = exported.metadata["dynamic_dims"][model.inputs[0].shape[1]]
        with pytest.raises(RunnerInputError, match=rf"axis 1\) is 2, the model needs at least {n}"):
            model.run({name: np.zeros((4, 2), np.float32)})
        with pytest.raises(RunnerInputError, match=r"'batch' \(axis 0\) is 0, .* at least 1"):
            model.run({name: np.zeros((0, 5), np.float32)})
        assert model.run({name: np.arange(10, dtype=np.float32).reshape(2, 5)})


class _TokenSelector(nn.Module):
    """A user's module: per-token scores, the top 3 of them, the selected scores' sum."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.select = DifferentiableSolver("topk", "aimle", k=3)

    def forward(self, tokens: Tensor) -> Tensor:  # [B, L, 4] -> [B]
        scores = self.score(tokens).squeeze(-1)  # [B, L]
        return (self.select(scores) * scores).sum(dim=1)


@pytest.mark.parametrize("export, suffix", [(to_onnx, ".onnx"), (to_torchscript, ".pt")])
def test_a_user_modules_dynamic_size_records_the_smallest_size_eager_accepts(
    export: object, suffix: str, tmp_path: Path
) -> None:
    """The top-k inside needs L >= k = 3; the export finds that minimum by running the
    module, and the runners refuse a shorter sequence by name instead of failing inside."""
    module = _TokenSelector().eval()
    with pytest.raises(ValueError, match="k"):
        module(torch.randn(2, 2, 4))  # eager refuses L = 2
    options = {"example_inputs": (torch.randn(2, 9, 4),), "dynamic_dims": {"tokens": {1: "L"}}}
    result = export(module, tmp_path / f"selector{suffix}", **options)  # type: ignore[operator]
    assert result.metadata["dynamic_dims"] == {"batch": 1, "L": 3}
    model = (OnnxRunner if result.file_format == "onnx" else TorchScriptModel)(result.path)
    with pytest.raises(RunnerInputError, match=r"'L' \(axis 1\) is 2, the model needs at least 3"):
        model.run({"tokens": np.zeros((1, 2, 4), np.float32)})
    tokens = torch.randn(2, 3, 4)
    expected = module(tokens).detach().numpy()
    np.testing.assert_allclose(model.run({"tokens": tokens.numpy()})["output_0"], expected, 1e-5)


def test_token_ids_outside_the_vocabulary_are_refused(exported: dict[str, Exported]) -> None:
    item = exported["l2x_text"]
    (ids,) = item.model.example_inputs(2)
    vocabulary = item.model.embedding.shape[0]
    for model in (OnnxRunner(item.onnx), TorchScriptModel(item.torchscript)):
        name = model.inputs[0].name
        for bad in (-1, vocabulary):
            wrong = ids.numpy().copy()
            wrong[0, 0] = bad
            with pytest.raises(RunnerInputError, match=rf"takes \[0, {vocabulary - 1}\]"):
                model.run({name: wrong})
        assert model.run({name: ids.numpy()})


@pytest.mark.parametrize("model_name", ["discrete_vae", "l2x_mnist"])
def test_intensities_outside_0_1_are_refused_as_eager_pytorch_refuses_them(
    exported: dict[str, Exported], model_name: str
) -> None:
    """Both image models refuse intensities outside [0, 1] in eager mode (8-bit pixels not
    divided by 255); the exported files record the bound and the runners refuse them too."""
    item = exported[model_name]
    (images,) = item.model.example_inputs(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        item.model(images * 255)  # eager refuses
    for model in (OnnxRunner(item.onnx), TorchScriptModel(item.torchscript)):
        name = model.inputs[0].name
        assert model.metadata["inputs"][0]["bounded"] is True
        for bad in (-0.5, 255.0):
            wrong = images.numpy().copy()
            wrong.reshape(-1)[7] = bad
            with pytest.raises(RunnerInputError, match=r"takes \[0, 1\]; scale the values"):
                model.run({name: wrong})
        for bad in (np.nan, np.inf):  # the bounds screen inputs: these fail it and get named
            wrong = images.numpy().copy()
            wrong.reshape(2, -1)[1, 5] = bad
            with pytest.raises(RunnerInputError, match=r"NaN or inf values in instance\(s\) 1;"):
                model.run({name: wrong})
        edges = images.numpy().copy()
        edges.reshape(2, -1)[0, :2] = (0.0, 1.0)  # both ends are valid
        assert model.run({name: edges})


def test_float_ranges_of_other_inputs_only_guide_random_inputs(
    exported: dict[str, Exported],
) -> None:
    """NRI's example trajectories lie in [-1, 1], but the model takes any finite values:
    the range is not recorded as a bound and the runner accepts values beyond it."""
    item = exported["nri_tree"]
    runner = OnnxRunner(item.onnx)
    assert "bounded" not in runner.metadata["inputs"][0]
    (trajectories,) = item.model.example_inputs(2)
    assert runner.run({"trajectories": trajectories.numpy() * 5})


def test_non_finite_inputs_are_refused_as_eager_pytorch_refuses_them(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    """The solvers' NaN/inf checks do not run inside an exported graph; the runner does them
    (for zoo models and solvers, whose contracts it knows). A graph shortest path takes +inf
    as a missing edge, so only NaN is refused there."""
    item = exported["grid_shortest_path"]
    (maps,) = item.model.example_inputs(3)
    with pytest.raises(ValueError, match="NaN or inf"):
        item.model(maps.index_fill(0, torch.tensor([1]), float("nan")))  # eager refuses
    for model in (OnnxRunner(item.onnx), TorchScriptModel(item.torchscript)):
        name = model.inputs[0].name
        for bad in (np.nan, np.inf, -np.inf):
            wrong = maps.numpy().copy()
            wrong[1, 0, 2, 3] = bad
            with pytest.raises(RunnerInputError, match=r"NaN or inf values in instance\(s\) 1;"):
                model.run({name: wrong})
        assert model.run({name: maps.numpy()})
    adjacency = torch.ones(4, 4, dtype=torch.bool)
    adjacency[1, 2] = False
    graph = get_solver("graph_shortest_path", adjacency=adjacency)
    runner = OnnxRunner(to_onnx(graph, tmp_path / "graph.onnx").path)
    costs = np.ones((2, 4, 4), np.float32)
    costs[0, 1, 2] = np.inf  # off the graph: ignored
    assert runner.run({"theta": costs})
    costs[1, 0, 3] = np.nan
    with pytest.raises(RunnerInputError, match=r"holds NaN values in instance\(s\) 1;"):
        runner.run({"theta": costs})
    edges = get_solver("graph_shortest_path", edge_index=[[0, 1], [1, 2]], num_nodes=3)
    edge_runner = OnnxRunner(to_onnx(edges, tmp_path / "edges.onnx").path)
    with pytest.raises(RunnerInputError, match=r"holds NaN or inf values in instance\(s\) 0;"):
        edge_runner.run({"theta": np.array([[1.0, np.inf]], np.float32)})  # no inf edges


def test_verify_refuses_a_file_without_the_metadata(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    import onnx

    item = exported["l2x_tabular"]
    proto = onnx.load(str(item.onnx))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="without aimle_zoo metadata"):
        verify(item.model, tmp_path / "foreign.onnx")


def test_an_edge_count_that_is_not_n_times_n_minus_1_is_refused(tmp_path: Path) -> None:
    """mst_edges infers n from the edge count; inside an exported graph a count such as 7
    gave a truncated answer (TorchScript) or an obscure onnxruntime error."""
    solver = get_solver("mst_edges")
    exported = to_onnx(solver, tmp_path / "edges.onnx")
    assert exported.metadata["size_forms"] == {"edges": "n(n-1)"}
    script = to_torchscript(solver, tmp_path / "edges.pt")
    with pytest.raises(ValueError, match="n\\(n-1\\)"):
        solver(torch.rand(2, 7))  # eager refuses it too
    for model in (OnnxRunner(exported.path), TorchScriptModel(script.path)):
        for bad in (7, 10, 13):
            with pytest.raises(
                RunnerInputError, match=rf"'edges' \(axis 1\) is {bad}, .* n\(n-1\)"
            ):
                model.run({"theta": np.random.rand(2, bad).astype(np.float32)})
        theta = torch.randn(3, 20)
        np.testing.assert_array_equal(model.run({"theta": theta.numpy()})["z"], solver(theta))


def _graph_with_a_cycle() -> tuple[nn.Module, np.ndarray]:
    """A 5-vertex graph 0 → 1 ⇄ 2, 1 → 3 → 4 (edge list) and costs for three instances:
    plain, a negative cycle 1 → 2 → 1 on the way to the target, and an unreachable target."""
    solver = get_solver("graph_shortest_path", edge_index=[[0, 1, 2, 1, 3], [1, 2, 1, 3, 4]])
    costs = np.array(
        [[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, -2.0, -2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]],
        np.float32,
    )
    return solver, costs


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_instances_a_graph_path_solver_refuses_come_out_of_onnx_as_nan_rows(
    tmp_path: Path,
) -> None:
    """An ONNX graph cannot raise: the instances eager PyTorch refuses (a negative cycle before
    the target, an unreachable target) come out as NaN rows, and the runner raises on them."""
    import onnxruntime as ort

    from aimle_zoo.export.runner import SolverRefusedError
    from aimle_zoo.solvers import SolverInputError

    solver, costs = _graph_with_a_cycle()
    adjacency = get_solver("graph_shortest_path", adjacency=torch.ones(3, 3, dtype=torch.bool))
    for module, path in ((solver, tmp_path / "edges.onnx"), (adjacency, tmp_path / "adj.onnx")):
        to_onnx(module, path)
    with pytest.raises(SolverInputError, match=r"negative-cost cycle .* instance\(s\) \[1\]"):
        solver(torch.from_numpy(costs[:2]))
    session = ort.InferenceSession(str(tmp_path / "edges.onnx"))
    (z,) = session.run(None, {"theta": costs[:2]})
    assert np.isnan(z[1]).all() and not np.isnan(z[0]).any()
    np.testing.assert_array_equal(z[0], solver(torch.from_numpy(costs[:1]))[0].numpy())
    with pytest.raises(SolverRefusedError, match=r"output 'z' is NaN in instance\(s\) 1:"):
        OnnxRunner(tmp_path / "edges.onnx").run({"theta": costs[:2]})

    # the adjacency form: +inf off the graph is a missing edge, on a real edge it is refused
    square = np.ones((3, 3, 3), np.float32)
    square[1, 0, 1] = np.inf  # instance 1: edge 0 -> 1 costs +inf
    square[2, :, 2] = np.inf  # instance 2: every edge into the target 2 costs +inf
    eager = [adjacency(torch.from_numpy(square[i : i + 1])) for i in (0,)]
    with pytest.raises(SolverInputError, match=r"NaN or inf values in instance\(s\) 1, 2"):
        adjacency(torch.from_numpy(square))
    (z,) = ort.InferenceSession(str(tmp_path / "adj.onnx")).run(None, {"theta": square})
    assert np.isnan(z[1:]).all() and np.array_equal(z[0], eager[0][0].numpy())
    with pytest.raises(SolverRefusedError, match=r"instance\(s\) 1, 2:"):
        OnnxRunner(tmp_path / "adj.onnx").run({"theta": square})
    scripted = torch.jit.script(adjacency)  # TorchScript keeps the raises
    with pytest.raises(torch.jit.Error, match=r"NaN or infinite edge costs in instance\(s\)"):
        scripted(torch.from_numpy(square))


def test_a_grid_path_exported_to_onnx_stops_on_non_finite_costs(tmp_path: Path) -> None:
    """A raw onnxruntime session (no runner checks) given costs eager PyTorch refuses stops:
    on NaN with an error or NaN rows, never looping for ever nor returning a plain path; a
    +inf cell is a wall that the path goes round."""
    import onnxruntime as ort

    solver = get_solver("grid_shortest_path")
    to_onnx(solver, tmp_path / "grid.onnx")
    session = ort.InferenceSession(str(tmp_path / "grid.onnx"))
    costs = np.random.default_rng(0).random((3, 6, 7)).astype(np.float32)
    costs[1, 2, 3] = np.nan
    try:
        (z,) = session.run(None, {"theta": costs})
        assert np.isnan(z[1]).any()
    except Exception as err:  # onnxruntime's own error types
        assert "ONNXRuntimeError" in str(err)
    costs[1, 2, 3] = np.inf
    (z,) = session.run(None, {"theta": costs})
    assert z[1, 2, 3] == 0 and z[1, 0, 0] == z[1, -1, -1] == 1


def test_a_file_without_the_metadata_needs_require_metadata_false(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    """Without the metadata the value checks (NaN, bounds, minimum sizes) cannot run: the
    runner refuses such a file unless asked to run it with the structural checks alone."""
    import onnx

    item = exported["l2x_tabular"]
    proto = onnx.load(str(item.onnx))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "stripped.onnx"))
    with pytest.raises(ModelFileError, match=r"no aimle_zoo metadata .* require_metadata=False"):
        OnnxRunner(tmp_path / "stripped.onnx")
    runner = OnnxRunner(tmp_path / "stripped.onnx", require_metadata=False)
    features = item.model.example_inputs(2)[0].numpy()
    np.testing.assert_array_equal(
        runner.run({"features": features})["mask"],
        OnnxRunner(item.onnx).run({"features": features})["mask"],
    )
    with pytest.raises(RunnerInputError, match="dtype float64"):
        runner.run({"features": features.astype(np.float64)})


def test_outputs_that_are_the_same_infinity_verify(tmp_path: Path) -> None:
    """Masked logits (-inf off the selection) are equal in eager and in the file; a finite
    value where eager gives an infinity is a mismatch, whatever the relative tolerance."""
    from aimle_zoo.export._paths import TensorSpec
    from aimle_zoo.export.verify import compare

    class MaskedLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.score = nn.Linear(6, 1)
            self.pick = DifferentiableSolver("topk", k=2)

        def forward(self, x: Tensor) -> Tensor:  # [B, n, 6] -> [B, n]
            scores = self.score(x).squeeze(-1)
            return scores.masked_fill(self.pick(scores) == 0, float("-inf"))

    model = MaskedLogits().eval()
    example = (torch.randn(2, 8, 6),)
    for export, name in ((to_onnx, "masked.onnx"), (to_torchscript, "masked.pt")):
        export(model, tmp_path / name, example_inputs=example)
        assert verify(model, tmp_path / name).passed

    def finite_instead(values: tuple[Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            return [np.nan_to_num(model(*values).numpy(), neginf=-3e38)]  # float32's end

    spec = TensorSpec("x", "float32", ("batch", "n", 6))
    case = compare(model, finite_instead, example, [spec], ["logits"], atol=1e-4, rtol=1e-4)
    assert not case.passed and "vs eager -inf" in case.problem


def test_integer_ranges_take_both_ends_and_refuse_the_next_value_out() -> None:
    """Token ids in ``[0, vocabulary)``: 0 (padding) and the last id are valid."""
    specs = [TensorInfo("token_ids", "int64", ("batch", "length"))]
    limits = InputLimits(ranges={"token_ids": (0, 10)})
    assert check_inputs(specs, np.array([[0, 9, 3]]), limits)
    for bad, shown in ((-1, r"\[-1, 9\]"), (10, r"\[0, 10\]")):
        with pytest.raises(RunnerInputError, match=rf"values in {shown}, the model takes \[0, 9\]"):
            check_inputs(specs, np.array([[0, 9, bad]]), limits)


class _ScaledIds(nn.Module):
    """A user's module with an integer and a float input: ``x · ids``, defined for any values."""

    def forward(self, ids: Tensor, x: Tensor) -> Tensor:  # [B, 3] each -> [B, 3]
        return x * ids


def test_a_user_modules_value_ranges_are_not_enforced(tmp_path: Path) -> None:
    """The metadata records a module's example ranges (to draw inputs for verify), but its
    contract is unknown: the runner refuses neither integers beyond the example's range nor
    infinities, which eager PyTorch computes with."""
    ids, x = torch.tensor([[1, 2, 3], [2, 2, 1]]), torch.rand(2, 3)
    result = to_onnx(_ScaledIds().eval(), tmp_path / "scaled.onnx", example_inputs=(ids, x))
    assert result.metadata["inputs"][0]["high"] == 4  # recorded, but not a bound
    runner = OnnxRunner(result.path)
    wide = np.array([[-5, 40, 0]], np.int64)
    infinite = np.array([[np.inf, 1.0, -np.inf]], np.float32)
    produced = runner.run({"ids": wide, "x": infinite})["output_0"]
    with torch.no_grad():
        expected = _ScaledIds()(torch.from_numpy(wide), torch.from_numpy(infinite)).numpy()
    np.testing.assert_array_equal(produced, expected)


def test_an_overflowing_sum_of_finite_values_is_not_taken_for_inf() -> None:
    """The finiteness screen sums the values; float64 values near its end overflow that sum,
    and the rows are then checked one by one, which finds nothing to refuse (and says
    nothing: no numpy overflow warning)."""
    specs = [TensorInfo("theta", "float64", ("batch", "n"))]
    huge = np.full((2, 3), 1e308)
    for finite in ("finite", "no_nan"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_inputs(specs, huge, InputLimits(finite=finite))
    huge[1, 2] = np.inf
    with pytest.raises(RunnerInputError, match=r"NaN or inf values in instance\(s\) 1;"):
        check_inputs(specs, huge, InputLimits(finite="finite"))


def test_refused_instances_are_listed_up_to_five() -> None:
    specs = [TensorInfo("theta", "float32", ("batch", "n"))]
    values = np.zeros((9, 3), np.float32)
    values[[1, 2, 4, 5, 7, 8], 0] = np.nan
    with pytest.raises(RunnerInputError, match=r"instance\(s\) 1, 2, 4, 5, 7, \.\.\.;"):
        check_inputs(specs, values, InputLimits(finite="finite"))
    with pytest.raises(RunnerInputError, match=r"instance\(s\) 1, 2, 4, 5, 7;"):
        check_inputs(specs, values[:8], InputLimits(finite="finite"))


class _PickAndScale(nn.Module):
    """A user's module with a top-k inside: the top-2 mask of ``scores`` and ``2·values``."""

    def __init__(self) -> None:
        super().__init__()
        self.pick = DifferentiableSolver("topk", k=2)

    def forward(self, scores: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self.pick(scores), 2 * values  # [B, 5], [B, 3]


def test_nan_outputs_are_refused_instances_only_for_the_path_solvers(tmp_path: Path) -> None:
    """NaN rows mean "refused" only for the graph and grid path solvers; a module with a top-k
    passes NaN that its own computation yields through, as eager PyTorch does."""
    module = _PickAndScale().eval()
    example = (torch.randn(2, 5), torch.randn(2, 3))
    runner = OnnxRunner(to_onnx(module, tmp_path / "pick.onnx", example_inputs=example).path)
    assert runner.limits.nan_rows == ()
    values = np.array([[1.0, np.nan, 3.0]], np.float32)
    scores = np.array([[0.1, 0.5, 0.3, 0.9, 0.2]], np.float32)
    outputs = runner.run({"scores": scores, "values": values})
    np.testing.assert_array_equal(outputs["output_0"], [[0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(outputs["output_1"], 2 * values)


def test_inputs_named_like_numpys_positional_keys_are_read_by_name(tmp_path: Path) -> None:
    """A model whose inputs are called ``arr_1`` and ``arr_0`` reads a file saved with those
    names by name, not by position."""
    first, second = np.zeros((2, 3), np.float32), np.ones((2, 4), np.float32)
    np.savez(tmp_path / "named.npz", arr_0=first, arr_1=second)
    mapped = read_inputs(tmp_path / "named.npz", ["arr_1", "arr_0"])
    np.testing.assert_array_equal(mapped["arr_0"], first)
    np.testing.assert_array_equal(mapped["arr_1"], second)


def test_outputs_are_not_written_over_a_folder(tmp_path: Path) -> None:
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(ValueError, match=r"out\.npz is a folder; name the output file"):
        write_outputs(tmp_path / "out.npz", {"z": np.zeros(2)})
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.npz"]
    assert not list((tmp_path / "out.npz").iterdir())


def test_a_review_shorter_than_k_is_refused_by_name(exported: dict[str, Exported]) -> None:
    """Eager L2X text refuses fewer than k tokens; so do both runners, before the graph's
    top-k fails inside."""
    item = exported["l2x_text"]
    k = item.model.k
    (ids,) = item.model.example_inputs(2)
    with pytest.raises(ValueError, match=rf"at least k={k} tokens"):
        item.model(ids[:, : k - 1])
    with torch.no_grad():
        expected = item.model(ids[:, :k]).numpy()  # k tokens: all of them selected
    for model in (OnnxRunner(item.onnx), TorchScriptModel(item.torchscript)):
        with pytest.raises(RunnerInputError, match=rf"'length' \(axis 1\) .* at least {k}"):
            model.run({"token_ids": ids[:, : k - 1].numpy()})
        outputs = model.run({"token_ids": ids[:, :k].numpy()})
        np.testing.assert_array_equal(outputs["mask"], np.ones((2, k), np.float32))
        np.testing.assert_allclose(outputs["prediction"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["graph_shortest_path", "dijkstra"])
def test_an_adjacency_path_solver_takes_inf_off_the_graph_under_either_name(
    name: str, tmp_path: Path
) -> None:
    """``dijkstra`` built with an adjacency is the graph shortest path: eager PyTorch reads
    +inf off the graph as a missing edge, and so does the runner (only NaN is refused)."""
    adjacency = torch.ones(4, 4, dtype=torch.bool)
    adjacency[1, 2] = False
    solver = get_solver(name, adjacency=adjacency)
    runner = OnnxRunner(to_onnx(solver, tmp_path / f"{name}.onnx").path)
    costs = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    costs[0, 1, 2] = np.inf  # off the graph
    with torch.no_grad():
        expected = solver(torch.from_numpy(costs)).numpy()
    np.testing.assert_array_equal(runner.run({"theta": costs})["z"], expected)
    costs[1, 0, 3] = np.nan
    with pytest.raises(RunnerInputError, match=r"holds NaN values in instance\(s\) 1;"):
        runner.run({"theta": costs})
