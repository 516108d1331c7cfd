"""The library on a GPU: solvers, estimators, models, bundled checkpoints, training, export.

Each test runs on ``DEVICE`` and compares with the same computation on the CPU. ``DEVICE`` is
the device named by ``AIMLE_ZOO_TEST_DEVICE``, else CUDA where PyTorch sees a GPU, else the CPU:
there the comparisons are trivial, but the code paths and the tests themselves stay checked.
On a GPU machine: ``python -m pytest tests/gpu``.

float32 matrix products and convolutions run without TF32 here, so that the GPU computes what the
CPU computes up to float32 rounding.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

import aimle_zoo
from aimle_zoo import DifferentiableSolver, build_estimator, list_estimators
from aimle_zoo.data import CACHE_ENV
from aimle_zoo.export import SplitPipeline, load_exported, to_onnx, to_torchscript, verify
from aimle_zoo.export._paths import path_module
from aimle_zoo.hub import read_card_metrics
from aimle_zoo.recipes import (
    HELDOUT_PREFIX,
    HELDOUT_SIZE,
    DataOptions,
    read_recipe,
    run_evaluation,
    run_training,
)
from aimle_zoo.solvers import get_solver, get_solver_spec, list_solvers, solver_registry
from aimle_zoo.solvers.testing import check_solver, linear_objective
from aimle_zoo.training import move_to
from tests.conftest import SHARED_DATA
from tests.data.test_beer import write_beer

from ..estimators._helpers import FixedNoise
from ..models._helpers import TINY, make_batch, tiny_model

DEVICE = torch.device(
    os.environ.get("AIMLE_ZOO_TEST_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
)

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
BUNDLED = sorted(path.name for path in CHECKPOINTS.iterdir() if (path / "config.json").is_file())
MNIST = Path(SHARED_DATA) / "mnist"
BUILTIN_SOLVERS = [name for name in list_solvers() if get_solver_spec(name).source == "builtin"]


@pytest.fixture(autouse=True)
def _full_float32() -> Iterator[None]:
    """No TF32 in matrix products and convolutions while a test runs."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _on_device(value: Tensor) -> bool:
    return value.device.type == DEVICE.type


def _tensors(value: Any) -> list[Tensor]:
    """The tensors of a (nested) output, in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _assert_outputs_match(on_device: Any, on_cpu: Any, atol: float = 1e-4) -> None:
    produced, expected = _tensors(on_device), _tensors(on_cpu)
    assert len(produced) == len(expected) > 0
    for got, want in zip(produced, expected, strict=True):
        assert _on_device(got), f"an output is on {got.device}, not {DEVICE}"
        torch.testing.assert_close(got.cpu(), want, atol=atol, rtol=1e-4)


# --- solvers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_SOLVERS)
def test_solver_honours_the_contract_on_the_device(name: str) -> None:
    check_solver(name, batch_size=6, seed=0, device=DEVICE).raise_for_failures()


def _large_instances(name: str, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    """Many more and larger instances than the registry example, of the solver's input kind."""
    shape = solver_registry[name].input_shape
    if name == "topk":
        return {"k": 37}, torch.randn(64, 500, generator=generator)
    if name == "ranking":  # long rows, every other one full of ties
        scores = torch.randn(64, 2000, generator=generator)
        scores[::2] = scores[::2].mul(4).round()
        return {}, scores
    if shape.startswith("[B, H, W]"):  # grid paths: non-negative vertex costs
        return {}, torch.rand(48, 30, 30, generator=generator) + 0.1
    if shape == "[B, n, n]":  # spanning trees: symmetric weights
        weights = torch.randn(48, 24, 24, generator=generator)
        return {}, weights + weights.transpose(1, 2)
    if shape == "[B, n(n-1)]":
        return {}, torch.randn(48, 16 * 15, generator=generator)
    if shape == "[B, m, n]":  # assignments: wide weights, some instances full of ties
        weights = torch.randn(48, 24, 30, generator=generator)
        weights[::4] = weights[::4].round()
        return {}, weights
    if name == "graph_shortest_path":  # a DAG (u < v) with a path 0 -> 1 -> ... -> n - 1
        nodes = 40
        pairs = torch.triu_indices(nodes, nodes, offset=1)
        keep = (pairs[1] == pairs[0] + 1) | (torch.rand(pairs.shape[1], generator=generator) < 0.2)
        edge_index = pairs[:, keep]
        params = {"edge_index": edge_index.tolist(), "num_nodes": nodes, "target": nodes - 1}
        return params, torch.randn(48, edge_index.shape[1], generator=generator)
    raise AssertionError(f"no large instances for {name} ({shape}); add them here")


@pytest.mark.parametrize("name", BUILTIN_SOLVERS)
@pytest.mark.parametrize("size", ["example", "large"])
def test_solver_on_the_device_is_as_good_as_on_the_cpu(name: str, size: str) -> None:
    """Same instances on both devices: the device's solutions score the CPU's objective
    (ties may be broken differently, so objectives are compared, not indicators)."""
    generator = torch.Generator().manual_seed(3)
    spec = solver_registry[name]
    params, theta = (
        spec.example(32, generator) if size == "example" else _large_instances(name, generator)
    )
    solver = get_solver(name, **params)
    expected = solver(theta)
    produced = copy.deepcopy(solver).to(DEVICE)(theta.to(DEVICE))
    assert _on_device(produced) and produced.dtype == theta.dtype
    objective = spec.objective or linear_objective
    torch.testing.assert_close(
        objective(theta.double(), produced.cpu().double()),
        objective(theta.double(), expected.double()),
        rtol=1e-6,
        atol=1e-6,
    )


# --- estimators ------------------------------------------------------------------------------


def _steps(estimator: str, seed: int) -> tuple[DifferentiableSolver, Tensor, Tensor]:
    """Three gradient steps of a top-3 layer on the device; returns the layer, z and ∇θ."""
    torch.manual_seed(seed)
    layer = DifferentiableSolver("topk", build_estimator(estimator), k=3).to(DEVICE)
    theta = torch.randn(16, 10, device=DEVICE, requires_grad=True)
    weights = torch.randn(16, 10, device=DEVICE)
    for _ in range(3):
        z = layer(theta)  # [B·N, 10]
        (z * weights.repeat(z.shape[0] // 16, 1)).sum().backward()
    assert theta.grad is not None
    return layer, z, theta.grad


@pytest.mark.parametrize("estimator", list_estimators())
def test_estimator_gradients_and_state_stay_on_the_device(estimator: str) -> None:
    layer, z, grad = _steps(estimator, seed=0)
    assert _on_device(z) and _on_device(grad)
    assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)
    assert all(_on_device(value) for value in layer.state_dict().values())
    _, z_again, grad_again = _steps(estimator, seed=0)
    assert torch.equal(z, z_again) and torch.equal(grad, grad_again), "not reproducible"


@pytest.mark.parametrize(("solver", "params", "shape"), [
    ("topk", {"k": 10}, (40, 350)),  # the product tree
    ("topk", {"k": 10}, (2000, 20)),  # the sequential recursion
    ("mst_edges", {}, (64, 90)),
])  # fmt: skip
def test_exact_marginals_and_samples_on_the_device_match_the_cpu(
    solver: str, params: dict[str, Any], shape: tuple[int, ...]
) -> None:
    """SIMPLE's two solver methods: the marginals agree with the CPU's in float64; the draws
    (the device's own generator) have the solver's structure and average to the marginals."""
    from aimle_zoo.solvers import get_solver

    layer = get_solver(solver, **params)
    theta = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    device_marginals = layer.marginals(theta.to(DEVICE), 0.7)
    assert _on_device(device_marginals)
    torch.testing.assert_close(device_marginals.cpu(), layer.marginals(theta, 0.7))
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    draws = layer.sample(theta[:2].to(DEVICE), 0.7, generator, samples=4000)  # [2·4000, ...]
    assert _on_device(draws)
    expected = torch.full((8000,), float(params.get("k", 2 * 9)), dtype=torch.float64)
    torch.testing.assert_close(draws.sum(dim=1).cpu(), expected)
    means = draws.reshape(2, 4000, -1).mean(dim=1).cpu()
    torch.testing.assert_close(means, device_marginals[:2].cpu(), rtol=0, atol=0.04)


@pytest.mark.parametrize("solver", ["topk", "dijkstra"])
def test_fenchel_young_loss_on_the_device_matches_the_cpu_on_the_same_noise(solver: str) -> None:
    """The noise is drawn on the CPU and handed to both (each device's generator draws its
    own stream): loss and gradient agree, and stay on the device."""
    shape = (6, 12) if solver == "topk" else (6, 5, 5)
    params = {"k": 3} if solver == "topk" else {}
    generator = torch.Generator().manual_seed(0)
    theta = torch.rand(shape, generator=generator) * 4
    noise = torch.randn((shape[0] * 4, *shape[1:]), generator=generator)
    target = get_solver(solver, **params)(torch.rand(shape, generator=generator))
    results = []
    for device in (torch.device("cpu"), DEVICE):
        loss_fn = aimle_zoo.FenchelYoungLoss(
            solver, noise=FixedNoise(noise), sigma=0.5, samples=4, **params
        )
        leaf = theta.to(device).requires_grad_()
        loss = loss_fn(leaf, target.to(device))
        loss.backward()
        assert leaf.grad is not None
        assert loss.device.type == leaf.grad.device.type == device.type
        results.append((loss.detach().cpu(), leaf.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)


def test_a_solution_cache_on_the_device_answers_as_on_the_cpu() -> None:
    """The pool lives on the cache's device; its answers (grid paths pooled from 40 maps,
    looked up for 8 perturbed ones) are the CPU's."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(40, 6, 6, generator=generator)
    answers = []
    for device in (torch.device("cpu"), DEVICE):
        cache = aimle_zoo.CachedSolver("dijkstra", solve_ratio=0.0).to(device)
        cache.add(cache.solver(maps.to(device)))
        z = cache(maps[:8].to(device) + 0.01)
        assert z.device.type == cache.pool.device.type == device.type
        assert cache.pool_answers == 1
        answers.append(z.cpu())
    torch.testing.assert_close(answers[1], answers[0], rtol=0, atol=0)


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_trains_and_infers_on_the_device_as_on_the_cpu(name: str) -> None:
    model = tiny_model(name).eval()
    on_device = copy.deepcopy(model).to(DEVICE)
    inputs = model.example_inputs(8)
    batch = make_batch(name, model, 8, seed=1)
    with torch.no_grad():
        _assert_outputs_match(on_device(*move_to(inputs, DEVICE)), model(*inputs))
        metrics = on_device.evaluate_batch(move_to(batch, DEVICE))
        expected = model.evaluate_batch(batch)
    assert metrics.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(metrics[key].cpu(), expected[key], atol=1e-4, rtol=1e-4)

    on_device.train()
    loss, logs = on_device.training_loss(move_to(make_batch(name, model, 8), DEVICE))
    loss.backward()
    assert math.isfinite(loss.item()) and all(math.isfinite(value) for value in logs.values())
    for parameter_name, parameter in on_device.named_parameters():
        assert parameter.grad is None or (
            _on_device(parameter.grad) and bool(torch.isfinite(parameter.grad).all())
        ), parameter_name


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_loads_on_the_device_and_reproduces_its_card(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``map_location`` puts every tensor on the device; the outputs are the CPU's, and the
    held-out metrics recorded in the card come out again."""
    folder = CHECKPOINTS / name
    on_cpu = aimle_zoo.from_pretrained(folder)
    on_device = aimle_zoo.from_pretrained(folder, map_location=DEVICE)
    state = on_device.state_dict()
    assert all(_on_device(value) for value in state.values())
    for key, value in on_cpu.state_dict().items():
        assert torch.equal(state[key].cpu(), value), key
    inputs = on_cpu.example_inputs(8)
    with torch.no_grad():
        _assert_outputs_match(on_device(*move_to(inputs, DEVICE)), on_cpu(*inputs), atol=1e-3)

    recorded = read_recipe(folder)
    assert recorded is not None
    if DEVICE.type == "cpu":
        return  # on the CPU, tests/hub/test_bundled.py re-evaluates the card already
    if "mnist" in recorded["recipe"] and not MNIST.is_dir():
        pytest.skip(f"the held-out check of {name} needs MNIST in {MNIST}")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    card = read_card_metrics(folder)
    expected = {
        key[len(HELDOUT_PREFIX) :]: value
        for key, value in card.items()
        if key.startswith(HELDOUT_PREFIX)
    }
    measured = run_evaluation(
        on_device,
        recorded["recipe"],
        split="test",
        data_options=DataOptions(
            data_dir=str(MNIST) if "mnist" in recorded["recipe"] else None, progress=False
        ),
        device=str(DEVICE),
        limit=HELDOUT_SIZE,
    )
    for key, value in expected.items():
        if key.startswith("sampled_") and DEVICE.type != "cpu":
            continue  # seeded, but a GPU draws another random stream than the CPU
        assert measured[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


# --- training --------------------------------------------------------------------------------

SMOKE_RECIPES = ["l2x-xor", "l2x-beer-aroma", "nri-t10", "grid-12", "dvae-mnist", "l2x-mnist"]


@pytest.mark.parametrize("recipe", SMOKE_RECIPES)
def test_smoke_training_on_the_device(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "mnist" in recipe and not MNIST.is_dir():
        pytest.skip(f"{recipe} needs MNIST in {MNIST}")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data_dir = str(MNIST) if "mnist" in recipe else None
    if recipe == "l2x-beer-aroma":
        data_dir = str(write_beer(tmp_path / "beer"))
    options = DataOptions(data_dir=data_dir, smoke=True)
    result = run_training(
        recipe, tmp_path / "run", data_options=options, epochs=1, max_steps_per_epoch=3,
        device=str(DEVICE), progress=False,
    )  # fmt: skip
    assert all(_on_device(p) for p in result.model.parameters())
    log = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(value) for value in log["train"].values())
    test_metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert test_metrics and all(math.isfinite(value) for value in test_metrics.values())


def test_training_on_the_device_resumes_exactly_and_its_checkpoints_load_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs in one go equal one epoch, a stop and a resume on the device (its random
    state included); the checkpoints then load on the CPU, and the run continues there."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    options = DataOptions(smoke=True, progress=False)
    settings: dict[str, Any] = {"data_options": options, "max_steps_per_epoch": 4}
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training("l2x-xor", straight, epochs=2, device=str(DEVICE), **settings)
    run_training("l2x-xor", split, epochs=1, device=str(DEVICE), **settings)
    result = run_training("l2x-xor", split, epochs=2, resume=True, **settings)  # its device
    assert all(_on_device(p) for p in result.model.parameters())
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(split / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    loaded = aimle_zoo.from_pretrained(split / "best")
    assert all(value.device.type == "cpu" for value in loaded.state_dict().values())
    run_training("l2x-xor", split, epochs=3, device="cpu", resume=True, **settings)
    lines = (split / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == [0, 1, 2]


@pytest.mark.skipif(
    DEVICE.type != "cuda" or torch.cuda.device_count() < 2,
    reason="NCCL needs two GPUs (it refuses two ranks on one)",
)
def test_torchrun_trains_on_nccl_with_one_process_per_gpu(tmp_path: Path) -> None:
    """``torchrun`` with one process per visible GPU: NCCL, DDP, all-reduced AIMLE state."""
    processes = torch.cuda.device_count()
    worker = Path(__file__).with_name("_nccl_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), str(worker), str(tmp_path)]
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(processes)]
    assert {rank["backend"] for rank in ranks} == {"nccl"}
    assert {rank["world_size"] for rank in ranks} == {processes}
    for key in ("beta", "grad_norm", "weight_sum"):  # all-reduced state, averaged gradients
        assert len({rank[key] for rank in ranks}) == 1, key
    assert (tmp_path / "run" / "best" / "config.json").is_file()


# --- export ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", sorted(TINY))
def test_a_model_on_the_device_exports_and_its_torchscript_runs_there(
    name: str, tmp_path: Path
) -> None:
    """Export takes a model where it is (a CPU copy is exported; the model stays put); the
    TorchScript file loads onto the device and computes the CPU's outputs there."""
    model = tiny_model(name).eval()
    on_device = copy.deepcopy(model).to(DEVICE)
    to_onnx(on_device, tmp_path / "model.onnx")
    report = verify(on_device, tmp_path / "model.onnx")
    assert report.passed
    to_torchscript(on_device, tmp_path / "model.pt")
    assert all(_on_device(value) for value in on_device.state_dict().values())

    loaded = torch.jit.load(str(tmp_path / "model.pt"), map_location=DEVICE)
    inputs = model.example_inputs(5)
    with torch.no_grad():
        _assert_outputs_match(loaded(*move_to(inputs, DEVICE)), path_module(model)(*inputs))


def test_the_runner_takes_cuda_when_onnxruntime_offers_it(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular").eval()
    to_onnx(model, tmp_path / "model.onnx")
    runner = load_exported(tmp_path / "model.onnx")
    offered = onnxruntime.get_available_providers()
    cuda = "CUDAExecutionProvider" in offered
    assert runner.providers[0] == ("CUDAExecutionProvider" if cuda else "CPUExecutionProvider")
    inputs = model.example_inputs(4)
    outputs = runner.run([value.numpy() for value in inputs])
    with torch.no_grad():
        expected = path_module(model)(*inputs)
    for got, want in zip(outputs.values(), expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


def test_split_exports_and_explicit_inputs_on_the_device(tmp_path: Path) -> None:
    """A split export of a θ network on the device (its solver a module there too), example
    inputs on the device, and verify with inputs on the device."""
    params, theta = solver_registry["graph_shortest_path"].example(2, torch.Generator())
    solver = get_solver("graph_shortest_path", **params).to(DEVICE)  # buffers: the graph
    assert all(_on_device(buffer) for buffer in solver.buffers())
    network = torch.nn.Sequential(torch.nn.Linear(6, theta.shape[1])).eval().to(DEVICE)
    example = (torch.randn(4, 6, device=DEVICE),)
    to_onnx(network, tmp_path / "theta.onnx", split=True, solver=solver, example_inputs=example)
    assert _on_device(next(network.parameters()))
    produced = SplitPipeline(tmp_path / "theta.onnx").run([example[0].cpu().numpy()])
    with torch.no_grad():
        expected = solver(network(example[0]))
    torch.testing.assert_close(torch.from_numpy(produced["solution"]), expected.cpu())

    model = tiny_model("l2x_tabular").eval().to(DEVICE)
    to_onnx(model, tmp_path / "model.onnx", example_inputs=model.example_inputs(3))
    cases = [model.example_inputs(batch) for batch in (1, 7)]
    assert all(_on_device(value) for case in cases for value in case)
    assert verify(model, tmp_path / "model.onnx", inputs=cases).passed
