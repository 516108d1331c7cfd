"""The scripts in ``examples/`` run end to end (smoke data, in a fresh process each)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from aimle_zoo.data.mnist import load_mnist
from aimle_zoo.solvers import LinearAssignment, Ranking, sorting_weights

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_grid_fenchel_young_example_trains_and_evaluates(tmp_path: Path) -> None:
    """Two smoke epochs on the Fenchel–Young loss: the trainer logs the (non-negative) loss and
    keeps a best checkpoint of the registered subclass, and the test metrics are the grid
    model's (their ranges only: two smoke epochs promise no accuracy)."""
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLES / "grid_fenchel_young.py"), "--smoke"]
    result = subprocess.run(
        [*command, "--epochs", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["count"] > 0 and metrics["cost_ratio"] >= 1.0
    assert 0.0 <= metrics["exact_match"] <= metrics["below_0.0001_percent"] <= 1.0
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architecture"] == "grid_shortest_path_fenchel_young"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == [0, 1]
    assert all(record["train"]["fenchel_young"] >= 0 for record in history)


def test_grid_solution_cache_example_answers_from_the_pool_and_evaluates(tmp_path: Path) -> None:
    """Two smoke epochs at solve ratio 0.2: the pool starts with the training gold paths and
    grows with the solver's answers, the calls split between the two, the checkpoint is the
    registered subclass's, and the test metrics are the grid model's."""
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLES / "grid_solution_cache.py"), "--smoke"]
    result = subprocess.run(
        [*command, "--epochs", "2", "--solve-ratio", "0.2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["count"] > 0 and metrics["cost_ratio"] >= 1.0
    cache = metrics["cache"]
    assert cache["solve_ratio"] == 0.2 and cache["seeded_pool"] > 0
    assert cache["seeded_pool"] <= cache["final_pool"]
    assert cache["solver_calls"] + cache["pool_answers"] > 0
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architecture"] == "grid_shortest_path_cached"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= record["train"]["solved_share"] <= 1.0 for record in history)


def test_mnist_sort_layouts_read_the_same_places_from_either_solution() -> None:
    """The ranking layout's θ, target and places agree with the assignment layout's: solving
    either layer on the true values puts every item at its place in the sorting permutation."""
    example = _load_example("mnist_sort")
    images, labels = load_mnist(MNIST_DIR, "test")
    data = example.Sequences(images[:500], labels[:500], n=6, digits=3)
    _, values, permutation = data.sample(40, torch.Generator().manual_seed(1))
    keys = values.double() + 0.01 * permutation.argmax(2)  # distinct: ties by position
    for layer, solver in (("assignment", LinearAssignment()), ("ranking", Ranking())):
        layout = example.Layout(layer)
        z = solver(layout.theta(keys))
        assert torch.equal(z, layout.target(permutation).double())
        assert torch.equal(layout.places(z), permutation.argmax(2))
    with pytest.raises(ValueError, match="unknown layer"):
        example.Layout("sinkhorn")


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mnist_sort_sequences_and_their_sorting_permutations() -> None:
    """Each number reads its digits from its tiles (left first), the target puts every item at
    its rank, and the assignment layer on the true values reproduces that target exactly."""
    example = _load_example("mnist_sort")
    images, labels = load_mnist(MNIST_DIR, "test")
    data = example.Sequences(images[:500], labels[:500], n=6, digits=3)
    tiles, values, target = data.sample(40, torch.Generator().manual_seed(0))
    assert tiles.shape == (40, 6, 1, 28, 84) and target.shape == (40, 6, 6)
    for b, i in [(0, 0), (7, 3), (39, 5)]:
        digits = [int(d) for d in f"{int(values[b, i]):03d}"]
        for k, digit in enumerate(digits):
            tile = (tiles[b, i, 0, :, 28 * k : 28 * (k + 1)] * 255).round().to(torch.uint8)
            matches = (images[:500] == tile).flatten(1).all(dim=1)  # the tile is an image ...
            assert matches.any() and bool((labels[:500][matches] == digit).all())  # ... of it
    placed = torch.zeros_like(values).scatter_(1, target.argmax(dim=2), values)  # [B, n]
    assert bool((placed[:, 1:] >= placed[:, :-1]).all())  # ascending
    assert torch.equal(target.sum(dim=1), torch.ones(40, 6))  # a permutation
    exact = LinearAssignment()(sorting_weights(values.double() + 0.01 * target.argmax(2)))
    assert torch.equal(exact, target.double())


@pytest.mark.parametrize("layer", ["assignment", "ranking"])
def test_mnist_sort_example_trains_every_estimator(tmp_path: Path, layer: str) -> None:
    """A smoke run of every estimator through either layer writes one result each, with shares
    in [0, 1]."""
    out = tmp_path / "sort.json"
    command = [sys.executable, str(EXAMPLES / "mnist_sort.py"), "--smoke", "--layer", layer]
    result = subprocess.run(
        [*command, "--data-dir", str(MNIST_DIR), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [row["estimator"] for row in results] == list(_load_example("mnist_sort").ESTIMATORS)
    for row in results:
        assert 0.0 <= row["sorted_exactly"] <= row["right_place"] <= 1.0
    assert "| aimle-forward |" in result.stdout
