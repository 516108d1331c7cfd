"""The scripts in ``examples/`` run end to end (smoke data, in a fresh process each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
