"""Every zoo model, end to end: inference paths, both formats, verify, metadata, split export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import aimle_zoo
from aimle_zoo.export import (
    ExportError,
    SplitPipeline,
    inference_path,
    load_exported,
    read_metadata,
    to_onnx,
    to_torchscript,
    verify,
)
from aimle_zoo.export.choice import MODEL_EXPORTERS, choose_exporter
from aimle_zoo.export.verify import DEFAULT_BATCH_SIZES
from aimle_zoo.models import ZooModel
from aimle_zoo.solvers import get_solver, solver_spec

from ..models._helpers import TINY
from .conftest import Exported, build_tiny

MODELS = sorted(TINY)
FORMATS = ["onnx", "torchscript"]

#: The output of each exported path that the model's own ``forward`` returns in eval mode.
FORWARD_OUTPUT = {
    "l2x_text": "prediction",
    "l2x_tabular": "prediction",
    "l2x_mnist": "prediction",
    "discrete_vae": "reconstruction",
    "nri_tree": "tree",
    "grid_shortest_path": "path",
}


def _file(item: Exported, file_format: str) -> Path:
    return item.onnx if file_format == "onnx" else item.torchscript


@pytest.mark.parametrize("name", MODELS)
def test_inference_path_reproduces_the_models_own_outputs(name: str) -> None:
    model = build_tiny(name)
    path = inference_path(model)
    (inputs,) = model.example_inputs(5)
    with torch.no_grad():
        first, second = path.module(inputs)
        forward = model(inputs)
    names = [spec.name for spec in path.outputs]
    produced = dict(zip(names, (first, second), strict=True))
    torch.testing.assert_close(produced[FORWARD_OUTPUT[name]], forward, rtol=1e-5, atol=1e-6)
    layer = model.latent_layer
    if name.startswith("l2x"):
        assert produced["mask"].sum(dim=1).ge(model.k).all()  # top-k: at least k (ties: more)
        assert set(produced["mask"].unique().tolist()) <= {0.0, 1.0}
    elif name == "discrete_vae":
        codes = produced["codes"].view(5, model.groups, model.group_size)
        assert torch.equal(codes.sum(dim=2), torch.full((5, model.groups), float(model.k)))
    elif name == "nri_tree":
        tree = produced["tree"]
        assert torch.equal(tree.sum(dim=1), torch.full((5,), 2.0 * (model.num_vertices - 1)))
        with torch.no_grad():
            reference = model.reconstruct(inputs, tree, 1)  # the model's own decoder
        torch.testing.assert_close(produced["prediction"], reference, rtol=1e-4, atol=1e-5)
    else:
        with torch.no_grad():
            costs = model.vertex_costs(inputs)
        assert torch.equal(produced["costs"], costs)
        assert torch.equal(produced["path"], layer.solver(costs))
        assert produced["path"][:, 0, 0].eq(1).all() and produced["path"][:, -1, -1].eq(1).all()


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_and_passes_verify(
    exported: dict[str, Exported], name: str, file_format: str
) -> None:
    item = exported[name]
    report = verify(item.model, _file(item, file_format))
    assert report.passed and report.max_abs_diff < 1e-4
    checked_batches = [case.batch_size for case in report.cases]
    assert checked_batches[: len(DEFAULT_BATCH_SIZES)] == list(DEFAULT_BATCH_SIZES)
    if name == "l2x_text":  # the sequence length is dynamic: other lengths were checked too
        lengths = {case.sizes["length"] for case in report.cases}
        assert len(lengths) == 3 and TINY[name]["max_length"] in lengths
    # the exported file reproduces the model's own forward, at a batch size never exported
    (inputs,) = item.model.example_inputs(6)
    runtime = load_exported(_file(item, file_format))
    produced = runtime.run([inputs.numpy()])
    with torch.no_grad():
        expected = item.model(inputs).numpy()
    np.testing.assert_allclose(produced[FORWARD_OUTPUT[name]], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_a_published_name_does_not_change_the_exporter(name: str) -> None:
    """``aimle-zoo export nri-t10`` renames the artefact; the choice still follows the model."""
    path = inference_path(build_tiny(name))
    chosen = choose_exporter(path, "onnx")
    path.name = f"{name}-published"
    assert choose_exporter(path, "onnx") == chosen
    assert path.model_type == name
    if name in MODEL_EXPORTERS:
        assert chosen.candidates[0] == MODEL_EXPORTERS[name][0]


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.parametrize("name", MODELS)
def test_both_files_carry_the_metadata(exported: dict[str, Exported], name: str) -> None:
    item = exported[name]
    solver = item.model.latent_layer.solver
    spec = solver_spec(solver)
    assert spec is not None
    path = inference_path(item.model)
    for file_format in FORMATS:
        metadata = read_metadata(_file(item, file_format))
        assert metadata["model_name"] == name and metadata["format"] == file_format
        assert metadata["model_type"] == name
        assert metadata["aimle_zoo_version"] == aimle_zoo.__version__
        for key, value in TINY[name].items():
            assert metadata["config"][key] == (list(value) if isinstance(value, tuple) else value)
        assert metadata["solvers"] == [
            {
                "name": spec.name,
                "params": solver.params,
                "sense": spec.sense,
                "location": "latent_layer.solver",
            }
        ]
        assert [entry["name"] for entry in metadata["inputs"]] == [s.name for s in path.inputs]
        assert [entry["name"] for entry in metadata["outputs"]] == [s.name for s in path.outputs]
        (example,) = item.model.example_inputs(2)
        for entry in metadata["inputs"]:
            assert entry["shape"][0] == "batch"
            fixed = [(axis, size) for axis, size in enumerate(entry["shape"]) if type(size) is int]
            assert all(example.shape[axis] == size for axis, size in fixed)
            assert {f"{entry['name']}[{axis}]": size for axis, size in fixed} == metadata[
                "fixed_dims"
            ]
    model = onnx.load(str(item.onnx))
    properties = {prop.key: prop.value for prop in model.metadata_props}
    assert properties["model_name"] == name and properties["solver"] == spec.name
    assert json.loads(properties["solver_params"]) == [solver.params]
    assert properties["aimle_zoo_version"] == aimle_zoo.__version__
    metadata = json.loads(properties["aimle_zoo"])
    assert json.loads(properties["inputs"]) == metadata["inputs"]
    assert json.loads(properties["outputs"]) == metadata["outputs"]
    graph_input = model.graph.input[0].type.tensor_type.shape.dim
    assert graph_input[0].dim_param == "batch"
    if name == "l2x_text":
        assert graph_input[1].dim_param == "length"
    else:
        assert all(dim.HasField("dim_value") for dim in graph_input[1:])
    extra = {"aimle_zoo.json": ""}
    torch.jit.load(str(item.torchscript), _extra_files=extra)
    assert json.loads(extra["aimle_zoo.json"])["model_name"] == name


THETA_METHODS = {
    "discrete_vae": "encode",
    "grid_shortest_path": "vertex_costs",
    "l2x_mnist": "patch_scores",
    "l2x_tabular": "feature_scores",
    "l2x_text": "token_scores",
    "nri_tree": "edge_logits",
}


@pytest.mark.parametrize("name", MODELS)
def test_split_export_runs_the_latent_solver_after_onnxruntime(name: str, tmp_path: Path) -> None:
    """θ from onnxruntime equals the model's own θ method; the solver after it gives the
    model's MAP latent, on a batch size other than the export's."""
    assert set(THETA_METHODS) == set(MODELS)
    model: ZooModel = build_tiny(name)
    result = to_onnx(model, tmp_path / f"{name}-theta.onnx", split=True)
    metadata = result.metadata
    solver = model.latent_layer.solver
    assert (
        metadata["solvers"] == [] and metadata["solver_after"]["name"] == solver_spec(solver).name
    )
    assert metadata["solver_after"]["params"] == solver.params
    assert [entry["name"] for entry in metadata["outputs"]] == ["theta"]
    assert read_metadata(result.path) == metadata
    properties = {prop.key: prop.value for prop in onnx.load(str(result.path)).metadata_props}
    assert properties["solver"] == solver_spec(solver).name  # the solver after the split
    assert json.loads(properties["solver_params"]) == [solver.params]
    pipeline = SplitPipeline(result.path, threads=1)
    inputs = model.example_inputs(7)
    names = [spec["name"] for spec in metadata["inputs"]]
    feed = {name: value.numpy() for name, value in zip(names, inputs, strict=True)}
    produced = pipeline.run(feed)
    with torch.no_grad():
        theta = getattr(model, THETA_METHODS[name])(*inputs)
        latent = model.latent_layer(theta)
    np.testing.assert_allclose(produced["theta"], theta.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(produced["solution"], latent.numpy())


@pytest.mark.parametrize("vertices", [2, 3, 5, 10, 17])
def test_export_spanning_tree_path_equals_the_solver_under_ties(vertices: int) -> None:
    """The NRI export path's own Prim gives exactly the ``mst_edges`` tree, ties included."""
    from aimle_zoo.export._paths import _MapSpanningTree

    generator = torch.Generator().manual_seed(vertices)
    logits = torch.randint(-2, 3, (64, vertices * (vertices - 1)), generator=generator).float()
    expected = get_solver("mst_edges")(logits)
    assert torch.equal(_MapSpanningTree(vertices)(logits), expected)


def test_nri_export_encoder_folds_trained_batch_norms() -> None:
    """The export path's encoder, with every BatchNorm folded into the next linear layers,
    gives the model's own logits once the norms hold non-trivial running statistics and
    affine parameters (a fresh model's norms are close to the identity and would hide a
    wrongly folded shift or scale)."""
    from aimle_zoo.export._paths import _NRIEncoderPath

    torch.manual_seed(3)
    model = build_tiny("nri_tree")
    norms = [
        module for module in model.encoder.modules() if isinstance(module, torch.nn.BatchNorm1d)
    ]
    assert len(norms) == 4
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
        model.train()
        for _ in range(3):  # running statistics of shifted, scaled inputs
            model.edge_logits(3.0 * torch.randn(8, *model.example_inputs(1)[0].shape[1:]) + 1.0)
        model.eval()
        assert all(norm.running_mean.abs().max() > 0.05 for norm in norms)
        (inputs,) = model.example_inputs(6)
        expected = model.edge_logits(inputs)
        folded = _NRIEncoderPath(model)(inputs)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript and its exporter
@pytest.mark.parametrize("name", MODELS)
def test_a_float64_model_exports_without_example_inputs(
    name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A model converted with ``.double()`` gets float64 example inputs, so it exports with
    no inputs given. TorchScript keeps float64 for every model; onnxruntime has no float64
    ``Conv`` on CPU, so the convolutional models say so instead of failing obscurely."""
    model = build_tiny(name).double().eval()
    (inputs,) = model.example_inputs(3)
    assert inputs.dtype == (torch.int64 if name == "l2x_text" else torch.float64)
    with torch.no_grad():
        model(inputs)  # the model takes its own examples
    scripted = to_torchscript(model, tmp_path / f"{name}.pt")
    assert verify(model, scripted.path).passed
    convolutional = any(isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d) for m in model.modules())
    if convolutional:
        with pytest.raises(ExportError, match="no float64 kernel") as caught:
            to_onnx(model, tmp_path / f"{name}.onnx")
        assert "model.float()" in str(caught.value)
        assert not (tmp_path / f"{name}.onnx").exists()
        assert capfd.readouterr().err == ""  # the failed traces print nothing besides
    else:
        exported = to_onnx(model, tmp_path / f"{name}.onnx")
        assert verify(model, exported.path).passed
        assert read_metadata(exported.path)["inputs"][0]["dtype"] == str(inputs.dtype)[6:]


def test_nri_export_path_runs_a_subclass_encoder_as_it_is() -> None:
    """The folded encoder stands in only for the built-in one: a subclass that changes the
    logits (or its encoder) is exported with its own computation."""
    from aimle_zoo.models import NRITree

    class NegatedLogits(NRITree):
        def edge_logits(self, trajectories: torch.Tensor) -> torch.Tensor:
            return -super().edge_logits(trajectories)

    torch.manual_seed(4)
    plain = build_tiny("nri_tree")
    negated = NegatedLogits(**plain._hub_mixin_config).eval()
    negated.load_state_dict(plain.state_dict())
    (inputs,) = negated.example_inputs(4)
    with torch.no_grad():
        tree, prediction = inference_path(negated).module(inputs)
        expected_tree = negated(inputs)
        expected_prediction = negated.reconstruct(inputs, expected_tree, 1)
        assert not torch.equal(expected_tree, plain(inputs))  # the subclass changes the tree
    assert torch.equal(tree, expected_tree)
    torch.testing.assert_close(prediction, expected_prediction, rtol=1e-4, atol=1e-5)


def test_nri_with_its_own_decoder_step_is_refused_with_the_split_way_out(tmp_path: Path) -> None:
    """The export path computes the decoder step itself, so a subclass that replaces
    ``reconstruct`` cannot be exported end to end; the split export (up to the edge logits)
    still works."""
    from aimle_zoo.models import NRITree

    class DampedDecoder(NRITree):
        def reconstruct(
            self, trajectories: torch.Tensor, tree: torch.Tensor, steps: int
        ) -> torch.Tensor:
            return 0.5 * super().reconstruct(trajectories, tree, steps)

    model = DampedDecoder(**build_tiny("nri_tree")._hub_mixin_config).eval()
    with pytest.raises(ExportError, match=r"replaces the NRI decoder .*split=True"):
        to_onnx(model, tmp_path / "damped.onnx")
    assert not (tmp_path / "damped.onnx").exists()
    exported = to_onnx(model, tmp_path / "damped-theta.onnx", split=True)
    assert verify(model, exported.path).passed


def test_a_subclass_with_its_own_forward_exports_that_forward(tmp_path: Path) -> None:
    """The zoo path computes (mask, prediction) from the class's own methods and would skip a
    subclass's forward; such a subclass exports as a plain module, so the artefacts compute
    ``model(x)``. A subclass that keeps forward still gets the zoo path."""
    from aimle_zoo.models import L2XTabular

    class Calibrated(L2XTabular):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return super().forward(features) / 10.0

    class Renamed(L2XTabular):
        def training_loss(self, batch):  # type: ignore[no-untyped-def]
            return super().training_loss(batch)

    torch.manual_seed(0)
    plain = L2XTabular(input_dim=10).eval()
    calibrated = Calibrated(input_dim=10).eval()
    calibrated.load_state_dict(plain.state_dict())
    onnx_file = to_onnx(calibrated, tmp_path / "calibrated.onnx")
    script_file = to_torchscript(calibrated, tmp_path / "calibrated.pt")
    features = torch.randn(5, 10)
    with torch.no_grad():
        expected = calibrated(features).numpy()
        assert not np.allclose(expected, plain(features).numpy())
    for artefact in (onnx_file.path, script_file.path):
        (output,) = load_exported(artefact).run({"features": features.numpy()}).values()
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
        assert verify(calibrated, artefact).passed
    renamed = Renamed(input_dim=10).eval()
    assert (
        read_metadata(to_onnx(renamed, tmp_path / "renamed.onnx").path)["outputs"]
        == (read_metadata(to_onnx(plain, tmp_path / "plain.onnx").path)["outputs"])
    )


def test_only_elu_with_alpha_1_is_rewritten_into_elementwise_ops(tmp_path: Path) -> None:
    """``Max(x, Exp(Min(x, 0)) - 1)`` is ELU for alpha = 1 only: an ELU of another alpha keeps
    onnxruntime's ``Elu`` node, and both give eager PyTorch's values."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ELU(alpha=0.3), torch.nn.Linear(8, 8), torch.nn.ELU()
    ).eval()
    import logging

    from aimle_zoo.export.onnx import _QUIET_LOGGERS

    levels = [logging.getLogger(name).level for name in _QUIET_LOGGERS]
    result = to_onnx(module, tmp_path / "elu.onnx", example_inputs=(torch.randn(2, 3),))
    assert [logging.getLogger(name).level for name in _QUIET_LOGGERS] == levels  # put back
    ops = [node.op_type for node in onnx.load(str(result.path)).graph.node]
    assert ops.count("Elu") == 1 and ops.count("Max") == 1  # alpha 0.3 kept, alpha 1 rewritten
    x = 3 * torch.randn(64, 3)  # both signs before each ELU
    with torch.no_grad():
        expected = module(x).numpy()
    produced = load_exported(result.path).run({"input": x.numpy()})["output_0"]
    np.testing.assert_allclose(produced, expected, rtol=1e-5, atol=1e-6)
