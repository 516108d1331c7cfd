"""Every built-in solver on its own: exported to both formats, checked against scipy/argsort on
batch sizes and problem sizes other than the export example's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aimle_zoo import AIMLE, DifferentiableSolver
from aimle_zoo.export import load_exported, read_metadata, to_onnx, to_torchscript, verify
from aimle_zoo.export.runner import RunnerInputError
from aimle_zoo.solvers import edges_to_matrix, get_solver, matrix_to_edges, sorting_weights
from aimle_zoo.solvers.reference.assignment import linear_assignment_scipy
from aimle_zoo.solvers.reference.ranking import ranks_scipy
from aimle_zoo.solvers.reference.shortest_path import (
    graph_shortest_path_scipy,
    grid_shortest_path_scipy,
)
from aimle_zoo.solvers.reference.spanning_tree import spanning_tree_scipy
from aimle_zoo.solvers.reference.topk import topk_argsort
from aimle_zoo.solvers.shortest_path import GraphShortestPath, grid_path_cost

#: A DAG on 7 vertices with the chain 0 → 1 → ... → 6 (every target reachable) and shortcuts.
DAG = [[0, 1, 2, 3, 4, 5, 0, 0, 1, 2, 3, 1], [1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 6]]
DAG_ADJACENCY = torch.zeros(7, 7, dtype=torch.bool)
DAG_ADJACENCY[DAG[0], DAG[1]] = True


def _symmetric(batch: int, n: int, generator: torch.Generator) -> Tensor:
    weights = torch.rand(batch, n, n, generator=generator) * 2 - 1
    return (weights + weights.transpose(1, 2)) / 2


def _tree_edges_reference(theta: Tensor) -> Tensor:
    """Maximum spanning tree of directed-edge scores by scipy, as a directed-edge vector."""
    scores = edges_to_matrix(theta)
    return matrix_to_edges(spanning_tree_scipy((scores + scores.transpose(1, 2)) / 2))


Case = tuple[str, dict[str, Any], Callable[[int, int, torch.Generator], Tensor], Callable]

#: (solver, parameters, theta(batch, size, generator), reference(theta) -> z), sizes as below.
CASES: dict[str, Case] = {
    "topk": (
        "topk",
        {"k": 3},
        lambda b, n, g: torch.randn(b, n, generator=g),
        lambda theta: topk_argsort(theta, 3),
    ),
    "topk-threshold-ties": (
        "topk",
        {"k": 4, "ties": "threshold"},
        lambda b, n, g: torch.randint(0, 3, (b, n), generator=g).float(),  # many ties
        lambda theta: topk_argsort(theta, 4, ties="threshold"),
    ),
    "ranking": (
        "ranking",
        {},
        lambda b, n, g: torch.randint(0, 4, (b, n), generator=g).float(),  # many ties
        ranks_scipy,
    ),
    "ranking-descending": (
        "ranking",
        {"descending": True},
        lambda b, n, g: torch.randint(0, 4, (b, n), generator=g).float(),
        lambda theta: ranks_scipy(theta, descending=True),
    ),
    "mst": ("mst", {}, _symmetric, spanning_tree_scipy),
    "minimum_spanning_tree": (
        "minimum_spanning_tree",
        {},
        _symmetric,
        lambda theta: spanning_tree_scipy(theta, maximum=False),
    ),
    "mst_edges": (
        "mst_edges",
        {},
        lambda b, n, g: torch.randn(b, n * (n - 1), generator=g),
        _tree_edges_reference,
    ),
    "linear_assignment": (
        "linear_assignment",
        {},
        lambda b, n, g: torch.randn(b, n, n + 2, generator=g),
        linear_assignment_scipy,
    ),
    "minimum_assignment-tall": (
        "minimum_assignment",
        {},
        lambda b, n, g: torch.rand(b, n + 3, n, generator=g),
        lambda theta: linear_assignment_scipy(theta, maximum=False),
    ),
    "grid_shortest_path": (
        "grid_shortest_path",
        {},
        lambda b, n, g: torch.rand(b, n, n + 3, generator=g),
        grid_shortest_path_scipy,
    ),
    "grid_shortest_path-4": (
        "grid_shortest_path",
        {"neighbourhood": 4},
        lambda b, n, g: torch.rand(b, n + 2, n, generator=g),
        lambda theta: grid_shortest_path_scipy(theta, 4),
    ),
    "dijkstra": (
        "dijkstra",
        {},
        lambda b, n, g: torch.rand(b, n, n, generator=g) * 4 - 1,  # negatives count as 0
        grid_shortest_path_scipy,
    ),
    "graph_shortest_path": (
        "graph_shortest_path",
        {"edge_index": DAG, "num_nodes": 7},
        lambda b, n, g: torch.rand(b, len(DAG[0]), generator=g),
        lambda theta: graph_shortest_path_scipy(theta, torch.tensor(DAG), 7, 0, 6),
    ),
    "dijkstra-adjacency": (
        "dijkstra",
        {"adjacency": DAG_ADJACENCY},
        lambda b, n, g: torch.rand(b, 7, 7, generator=g),
        lambda theta: _dense_reference(theta),
    ),
}


def _dense_reference(theta: Tensor) -> Tensor:
    """Graph paths on ``[B, V, V]`` costs: scipy on the edge list, scattered back."""
    edges = DAG_ADJACENCY.nonzero().t()
    costs = theta[:, edges[0], edges[1]]
    path = graph_shortest_path_scipy(costs, edges, 7, 0, 6)
    dense = torch.zeros_like(theta)
    dense[:, edges[0], edges[1]] = path
    return dense


#: (batch, size) checked against the reference; the export examples have other sizes.
SIZES = [(1, 9), (13, 4)]

#: Grid paths are compared by cost: zero-cost cells make ties that scipy breaks differently.
BY_COST = {"grid_shortest_path", "grid_shortest_path-4", "dijkstra"}


@pytest.mark.parametrize("file_format", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_solver_exports_and_matches_the_reference_on_new_sizes(
    tmp_path: Path, case: str, file_format: str
) -> None:
    name, params, make_theta, reference = CASES[case]
    solver = get_solver(name, **params)
    export = to_onnx if file_format == "onnx" else to_torchscript
    result = export(solver, tmp_path / f"{case}.{file_format}")
    report = verify(solver, result.path, batch_sizes=(1, 7))
    assert report.passed
    assert report.runtime == ("onnxruntime" if file_format == "onnx" else "torchscript")
    assert report.summary().startswith(f"{result.path.name} ({report.runtime}) vs eager PyTorch")
    metadata = read_metadata(result.path)
    assert metadata["solvers"][0]["name"] == name
    dynamic = {dim for dim in metadata["inputs"][0]["shape"] if isinstance(dim, str)}
    runtime = load_exported(result.path)
    generator = torch.Generator().manual_seed(3)
    fixed_size = name == "graph_shortest_path" or "adjacency" in params
    for batch, size in SIZES:
        theta = make_theta(batch, size, generator)
        if not fixed_size:
            shape = metadata["inputs"][0]["shape"]
            example = metadata["example_sizes"]
            new_sizes = [
                theta.shape[axis] != example[dim]
                for axis, dim in enumerate(shape)
                if isinstance(dim, str) and dim != "batch"
            ]
            assert any(new_sizes)  # a problem size the export example did not have
        (z,) = runtime.run([theta.numpy()]).values()
        with torch.no_grad():
            np.testing.assert_array_equal(z, solver(theta).numpy())  # eager, ties and all
        expected = reference(theta)
        if case in BY_COST:
            assert set(np.unique(z).tolist()) <= {0.0, 1.0}
            got_cost = grid_path_cost(theta, torch.from_numpy(z))
            torch.testing.assert_close(got_cost, grid_path_cost(theta, expected))
            assert z[:, 0, 0].all() and z[:, -1, -1].all()
        else:
            np.testing.assert_array_equal(z, expected.numpy())
    if fixed_size:
        assert dynamic == {"batch"}
    else:
        assert len(dynamic) >= 2  # batch and at least one problem size stay dynamic


class _PerInstancePaths(nn.Module):
    """Edge costs from features, then paths with per-instance (source, target) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.costs = nn.Linear(3, len(DAG[0]))
        sources, targets = torch.tensor([0, 1, 2]), torch.tensor([6, 5, 6])
        self.paths = GraphShortestPath(DAG, 7, source=sources, target=targets)

    def forward(self, features: Tensor) -> Tensor:
        return self.paths(F.softplus(self.costs(features)))


@pytest.mark.parametrize("file_format", ["onnx", "torchscript"])
def test_per_instance_sources_export_with_batches_in_multiples(
    tmp_path: Path, file_format: str
) -> None:
    torch.manual_seed(0)
    model = _PerInstancePaths().eval()
    example = torch.randn(6, 3)
    export = to_onnx if file_format == "onnx" else to_torchscript
    result = export(model, tmp_path / f"paths.{file_format}", example_inputs=(example,))
    assert result.metadata["batch_multiple"] == 3
    assert result.metadata["dynamic_dims"]["batch"] == 3
    report = verify(model, result.path)
    assert report.passed
    assert all(case.batch_size % 3 == 0 for case in report.cases)
    runtime = load_exported(result.path)
    features = torch.randn(9, 3)
    (z,) = runtime.run([features.numpy()]).values()
    with torch.no_grad():
        costs = F.softplus(model.costs(features))
    expected = graph_shortest_path_scipy(
        costs, torch.tensor(DAG), 7, torch.tensor([0, 1, 2]), torch.tensor([6, 5, 6])
    )
    np.testing.assert_array_equal(z, expected.numpy())
    with pytest.raises(RunnerInputError, match="multiples of 3"):
        runtime.run([torch.randn(4, 3).numpy()])


def test_a_split_export_takes_the_batch_multiple_of_the_solver_after(tmp_path: Path) -> None:
    model = _PerInstancePaths().eval()
    network = nn.Sequential(model.costs, nn.Softplus()).eval()
    result = to_onnx(
        network,
        tmp_path / "costs.onnx",
        example_inputs=(torch.randn(3, 3),),
        split=True,
        solver=model.paths,
    )
    assert result.metadata["batch_multiple"] == 3
    assert verify(network, result.path).passed
    with pytest.raises(RunnerInputError, match="multiples of 3"):
        load_exported(result.path).run([torch.randn(4, 3).numpy()])


@pytest.mark.parametrize(
    ("name", "params", "loops"),
    [
        ("topk", {"k": 2}, False),
        ("grid_shortest_path", {}, True),
        ("dijkstra", {}, True),
        ("graph_shortest_path", {"edge_index": DAG, "num_nodes": 7}, True),
        ("mst", {}, True),
        ("minimum_spanning_tree", {}, True),
        ("mst_edges", {}, True),
    ],
)
def test_loop_solvers_and_plugins_are_never_traced(
    name: str, params: dict[str, Any], loops: bool
) -> None:
    """A trace records the example's loop count, so a solver that loops (or a plugin, which
    may) gets the scripted exporters only first, and TorchScript has no trace fallback; a
    loop-free top-k prefers dynamo and may fall back to a trace."""
    from dataclasses import replace

    from aimle_zoo.export import SolverInfo, choose_exporter, inference_path
    from aimle_zoo.export.choice import check_opset

    path = inference_path(get_solver(name, **params))
    onnx_choice = choose_exporter(path, "onnx").candidates
    script_choice = choose_exporter(path, "torchscript").candidates
    if loops:
        assert onnx_choice == ("legacy_script", "dynamo") and script_choice == ("script",)
    else:
        assert onnx_choice == ("dynamo", "legacy_script")
        assert script_choice == ("script", "trace")
        assert check_opset(21, onnx_choice) == ("dynamo",)  # legacy_script stops at opset 20
    plugin = replace(path, solvers=(SolverInfo("my_solver", {}, "max", True, "solver"),))
    assert choose_exporter(plugin, "onnx").candidates == ("legacy_script", "dynamo")
    assert choose_exporter(plugin, "torchscript").candidates == ("script",)
    assert "my_solver (not a built-in; it may loop)" in choose_exporter(plugin, "onnx").reason


def test_a_spanning_tree_that_refuses_asymmetric_weights_is_checked_on_symmetric_ones(
    tmp_path: Path,
) -> None:
    """``mst`` with ``symmetrize=False`` refuses asymmetric θ; its input is recorded as
    symmetric, so the checks before writing and verify draw symmetric weights."""
    solver = get_solver("mst", symmetrize=False)
    with pytest.raises(ValueError, match="symmetri"):
        solver(torch.randn(2, 5, 5))
    result = to_onnx(solver, tmp_path / "mst.onnx")
    assert result.metadata["inputs"][0]["symmetric"] is True
    assert verify(solver, result.path, batch_sizes=(3,)).passed
    theta = _symmetric(4, 8, torch.Generator().manual_seed(5))  # n = 8: not the example's 6
    (z,) = load_exported(result.path).run([theta.numpy()]).values()
    np.testing.assert_array_equal(z, spanning_tree_scipy(theta).numpy())


class _TwoPathSolvers(nn.Module):
    """Two per-instance path solvers, for 2 and 3 instances: the batch steps by 6."""

    def __init__(self) -> None:
        super().__init__()
        self.costs = nn.Linear(3, len(DAG[0]))
        self.pairs = GraphShortestPath(DAG, 7, source=torch.tensor([0, 1]))
        self.triples = GraphShortestPath(DAG, 7, source=torch.tensor([0, 1, 2]))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        costs = F.softplus(self.costs(features))
        return self.pairs(costs), self.triples(costs)


def test_the_batch_multiple_of_several_solvers_is_their_least_common_multiple() -> None:
    from aimle_zoo.export import inference_path

    path = inference_path(_TwoPathSolvers().eval(), example_inputs=(torch.randn(6, 3),))
    assert path.batch_multiple == 6 and path.dynamic_dims["batch"] == 6


def test_recorded_solver_tensors_come_back_with_their_dtype_and_values() -> None:
    """Solver parameters in the metadata: tensors as nested lists with their dtype."""
    import json

    from aimle_zoo.export._paths import _jsonable, from_jsonable

    params = {
        "mask": torch.tensor([[True, False], [False, True]]),
        "source": torch.tensor([0, 3], dtype=torch.int32),
        "scale": torch.tensor([0.1, 1e-300], dtype=torch.float64),
        "pair": (1, 2),
    }
    back = from_jsonable(json.loads(json.dumps(_jsonable(params))))
    assert back["pair"] == [1, 2]
    for key in ("mask", "source", "scale"):
        assert back[key].dtype == params[key].dtype and torch.equal(back[key], params[key])


@pytest.mark.parametrize("file_format", ["onnx", "torchscript"])
def test_grid_paths_of_one_row_or_one_column_run_as_in_eager(
    tmp_path: Path, file_format: str
) -> None:
    """Every grid size eager PyTorch takes, down to 1×1, is taken by the exported file too."""
    solver = get_solver("grid_shortest_path")
    export = to_onnx if file_format == "onnx" else to_torchscript
    runtime = load_exported(export(solver, tmp_path / f"grid.{file_format}").path)
    generator = torch.Generator().manual_seed(0)
    for shape in ((2, 1, 5), (3, 6, 1), (1, 1, 1)):
        theta = torch.rand(shape, generator=generator)
        (z,) = runtime.run([theta.numpy()]).values()
        np.testing.assert_array_equal(z, solver(theta).numpy())
        assert z.sum() == theta.shape[0] * (shape[1] + shape[2] - 1)  # the only path


@pytest.mark.parametrize(
    ("name", "params"),
    [("topk", {"k": 3}), ("grid_shortest_path", {}), ("mst", {}), ("mst_edges", {})],
)
def test_each_solver_is_checked_at_problem_sizes_other_than_the_examples(
    name: str, params: dict[str, Any]
) -> None:
    """The check before writing and verify use the recorded other sizes: every dynamic
    problem size differs from the example's in each of them (else an exporter that fixed it
    would pass)."""
    from aimle_zoo.export import inference_path

    path = inference_path(get_solver(name, **params))
    example = path.example_sizes()
    problem_dims = {dim for dim in example if dim != "batch"}
    assert path.size_cases
    for case in path.size_cases:
        assert set(case) == problem_dims
        assert all(case[dim] != example[dim] for dim in problem_dims)
        assert all(case[dim] >= path.dynamic_dims[dim] for dim in problem_dims)


class _Ranker(nn.Module):
    """Item features ``[B, n, 4]`` -> a score per item -> the permutation matrix that sorts
    them (θ_ij = s_i · j through an AIMLE assignment layer), n free."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.permute = DifferentiableSolver("linear_assignment", AIMLE())

    def forward(self, items: Tensor) -> Tensor:
        return self.permute(sorting_weights(self.score(items).squeeze(-1)))  # [B, n, n]


@pytest.mark.parametrize("file_format", ["onnx", "torchscript"])
def test_a_model_ending_in_an_assignment_exports_with_a_free_number_of_items(
    tmp_path: Path, file_format: str
) -> None:
    torch.manual_seed(0)
    model = _Ranker().eval()
    export = to_onnx if file_format == "onnx" else to_torchscript
    result = export(
        model,
        tmp_path / f"ranker.{file_format}",
        example_inputs=(torch.randn(3, 6, 4),),
        dynamic_dims={"items": {1: "n"}},
    )
    assert verify(model, result.path).passed
    runtime = load_exported(result.path)
    items = torch.randn(9, 11, 4)  # new batch and n
    (z,) = runtime.run([items.numpy()]).values()
    ranks = model.score(items).squeeze(-1).argsort(dim=1).argsort(dim=1)  # [B, n]
    np.testing.assert_array_equal(z.argmax(axis=2), ranks.numpy())
