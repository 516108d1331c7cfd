"""The train / evaluate / compare commands end to end on smoke data (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aimle_zoo.cli import app
from aimle_zoo.compare import plot_curves
from aimle_zoo.data import CACHE_ENV


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_train_then_evaluate_with_a_figure(tmp_path: Path) -> None:
    run = tmp_path / "run"
    invoke("train", "grid-12", "--smoke", "--epochs", "1", "--out", str(run), "--no-progress")
    figure = tmp_path / "paths.png"
    output = invoke("evaluate", str(run / "best"), "--limit", "16", "--figure", str(figure))
    assert "exact_match" in output and "cost_ratio" in output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_writes_table_and_curves(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    output = invoke(
        "compare", "l2x-xor", "--estimators", "aimle-central,imle", "--smoke", "--epochs", "2",
        "--out", str(out),
    )  # fmt: skip
    assert "| aimle-central |" in output and "| imle |" in output
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved["results"]) == {"aimle-central", "imle"}
    assert all(len(r["curve"]) == 2 for r in saved["results"].values())
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_names_fail_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "dvae-mnst", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "Did you mean 'dvae-mnist'" in str(result.exception)
    result = CliRunner().invoke(app, ["compare", "l2x-xor", "--estimators", "aimle,magic"])
    assert result.exit_code != 0 and "magic" in str(result.exception)


@pytest.mark.parametrize(
    ("curves", "scale"),
    [((70.0, 80.0, 240.0), "log"), ((0.4, 0.7), "linear"), ((-2500.0, -40000.0), "log")],
)
def test_comparison_curves_use_a_log_axis_for_a_wide_spread(
    curves: tuple[float, ...], scale: str, tmp_path: Path
) -> None:
    results = {
        f"estimator-{index}": {"curve": [{"loss": value}, {"loss": float("nan")}]}
        for index, value in enumerate(curves)
    }
    figure = plot_curves(results, "loss", tmp_path / "curves.png")
    axis = figure.axes[0]
    assert axis.get_yscale() == scale
    negative = max(curves) < 0  # drawn as the magnitude
    assert axis.get_ylabel() == ("validation −loss" if negative else "validation loss")
    drawn = [line.get_ydata()[0] for line in axis.get_lines()]
    assert drawn == [-value if negative else value for value in curves]
    assert all(tick == int(tick) for tick in axis.get_xticks())  # whole epochs only
    assert [text.get_text() for text in axis.get_legend().get_texts()] == list(results)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_solver_list_shows_which_solvers_have_a_relaxation() -> None:
    output = invoke("solvers")
    rows = {line.split()[0]: line.split()[1:4] for line in output.splitlines()}
    assert rows["name"] == ["sense", "export", "relax"]
    assert rows["topk"] == ["max", "yes", "yes"]
    assert rows["mst_edges"] == ["max", "yes", "yes"]
    assert rows["dijkstra"] == ["min", "yes", "no"]
    assert rows["mst_scipy"] == ["max", "no", "no"]
