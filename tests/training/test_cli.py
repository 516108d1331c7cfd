"""The train / evaluate / compare commands end to end on smoke data (CliRunner)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

import aimle_zoo
from aimle_zoo.cli import app
from aimle_zoo.compare import plot_curves
from aimle_zoo.data import CACHE_ENV
from aimle_zoo.recipes import (
    HELDOUT_PREFIX,
    HELDOUT_SIZE,
    DataOptions,
    get_recipe,
    list_recipes,
    read_recipe,
    run_evaluation,
)
from aimle_zoo.solvers import register_solver
from aimle_zoo.solvers.testing import isolated_registry

from ._helpers import change_aimle_step_size


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def fails(*args: str) -> str:
    """Run a command that must fail with one ``error: ...`` line (exit 1, no traceback)."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    return result.output


def test_train_then_evaluate_with_a_figure(tmp_path: Path) -> None:
    from aimle_zoo.recipes import evaluate_checkpoint

    run = tmp_path / "run"
    output = invoke(
        "train", "grid-12", "--smoke", "--epochs", "1", "--out", str(run), "--no-progress"
    )
    assert output.splitlines()[-2].startswith("best epoch 0: {")
    assert output.splitlines()[-1] == f"checkpoint: {run / 'best'}"
    figure = tmp_path / "paths.png"
    output = invoke("evaluate", str(run / "best"), "--limit", "16", "--figure", str(figure))
    assert "exact_match" in output and "cost_ratio" in output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"\nfigure: {figure}\n" in output
    metrics = evaluate_checkpoint(run / "best", limit=16).metrics  # one line each, 6 digits
    for key, value in metrics.items():
        assert f"\n{key:24s} {value:.6g}\n" in output


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
    for estimator, result in saved["results"].items():  # the whole training time of each run
        log = [json.loads(line) for line in (out / estimator / "metrics.jsonl").open()]
        assert result["seconds"] == pytest.approx(sum(record["seconds"] for record in log))
        assert result["curve"] == [record["valid"] for record in log]  # validation, per epoch
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert saved["aimle_zoo_version"] == aimle_zoo.__version__
    assert saved["settings"]["epochs"] == 2 and saved["settings"]["smoke"] is True
    assert saved["settings"]["batch_size"] == get_recipe("l2x-xor").train.batch_size
    # the recorded command is the same comparison: run again, it reuses both runs
    (out / "comparison.json").unlink()
    command = saved["command"].split()
    assert command[:3] == ["aimle-zoo", "compare", "l2x-xor"]
    invoke(*command[1:], "--out", str(out))
    again = json.loads((out / "comparison.json").read_text())
    assert again["results"] == saved["results"]


def test_compare_with_the_other_noise_convention(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ("compare", "grid-12", "--smoke", "--epochs", "1", "--out", str(out))
    message = fails(*args, "--estimators", "imle,blackbox", "--minimizer-noise", "negate")
    assert "'blackbox' estimator has no minimizer_noise" in message
    assert not out.exists()  # refused before any training
    invoke(*args, "--estimators", "imle", "--minimizer-noise", "negate")
    config = json.loads((out / "imle" / "last" / "config.json").read_text())
    assert config["estimator"]["minimizer_noise"] == "negate"
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["settings"]["minimizer_noise"] == "negate"
    assert "--minimizer-noise negate" in saved["command"]
    # the run is not reused for the recipe's own convention
    assert "minimizer_noise='negate' (now 'add')" in fails(*args, "--estimators", "imle")


def test_unknown_names_fail_clearly(tmp_path: Path) -> None:
    assert "Did you mean 'dvae-mnist'" in fails("train", "dvae-mnst", "--out", str(tmp_path))
    assert "magic" in fails("compare", "l2x-xor", "--estimators", "aimle,magic")


@pytest.mark.parametrize(
    ("curves", "scale"),
    [
        ((70.0, 80.0, 240.0), "log"),
        ((0.4, 0.7), "linear"),
        ((1.0, 2.5), "linear"),  # log only beyond a factor of 3
        ((-2500.0, -40000.0), "log"),
    ],
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


def test_the_solver_list_shows_which_solvers_have_a_relaxation_or_an_exact_sampler() -> None:
    output = invoke("solvers")
    rows = {line.split()[0]: line.split()[1:5] for line in output.splitlines()}
    assert rows["name"] == ["sense", "export", "relax", "exact"]
    assert rows["topk"] == ["max", "yes", "yes", "yes"]
    assert rows["mst_edges"] == ["max", "yes", "yes", "yes"]
    assert rows["dijkstra"] == ["min", "yes", "no", "no"]
    assert rows["mst_scipy"] == ["max", "no", "no", "no"]
    lines = output.splitlines()  # the columns line up under their headers
    for header in ("sense", "export", "relax", "exact", "input", "description"):
        column = lines[0].index(header)
        assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines)


# ----------------------------------------------------------------------------- publish


def _train_smoke_run(run: Path) -> None:
    invoke("train", "l2x-xor", "--smoke", "--epochs", "1", "--out", str(run), "--no-progress")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return aimle_zoo.from_pretrained(str(folder)).state_dict()


def test_publish_copies_the_best_checkpoint_with_its_metrics_and_command(tmp_path: Path) -> None:
    run, root = tmp_path / "run", tmp_path / "checkpoints"
    _train_smoke_run(run)
    command = "aimle-zoo train l2x-xor --smoke --epochs 1"
    invoke("publish", str(run), "xor-test", "--command", command, "--root", str(root))
    published = root / "xor-test"
    assert sorted(p.name for p in published.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "recipe.json",
    ]  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["xor-test"]  # no staging folder left
    best, copy = _weights(run / "best"), _weights(published)
    assert best.keys() == copy.keys() and all(torch.equal(best[k], copy[k]) for k in best)
    assert read_recipe(published) == read_recipe(run / "best")
    assert command in (published / "README.md").read_text()
    assert "SMOKE RUN: a few batches of tiny splits" in (published / "README.md").read_text()
    card = aimle_zoo.read_card_metrics(str(published))
    test_metrics = json.loads((run / "test_metrics.json").read_text())
    for key, value in test_metrics.items():
        if not key.endswith("count"):
            assert card[key] == pytest.approx(value, rel=1e-6), key
    heldout = run_evaluation(
        aimle_zoo.from_pretrained(str(published)),
        "l2x-xor",
        data_options=DataOptions(smoke=True, progress=False),
        limit=HELDOUT_SIZE,
    )
    recorded = {
        k[len(HELDOUT_PREFIX) :]: v for k, v in card.items() if k.startswith(HELDOUT_PREFIX)
    }
    assert recorded.keys() == {k for k in heldout if not k.endswith("count")}
    for key, value in recorded.items():
        assert value == pytest.approx(heldout[key], rel=1e-6), key


def test_publish_evaluates_a_run_stopped_before_its_end(tmp_path: Path) -> None:
    run, root = tmp_path / "run", tmp_path / "checkpoints"
    _train_smoke_run(run)
    finished = json.loads((run / "test_metrics.json").read_text())
    (run / "test_metrics.json").unlink()  # as if stopped before the schedule's end
    (run / "best" / "recipe.json").unlink()
    invoke("publish", str(run), "stopped", "--command", "c", "--root", str(root))
    card = aimle_zoo.read_card_metrics(str(root / "stopped"))
    assert read_recipe(root / "stopped") == {
        "recipe": "l2x-xor",
        "estimator": "aimle",
        "smoke": True,
        "split_seed": 0,
    }
    for key, value in finished.items():  # the same best checkpoint, evaluated afresh
        if not key.endswith("count"):
            assert card[key] == pytest.approx(value, rel=1e-6), key


def test_a_failed_publish_keeps_the_published_folder(tmp_path: Path) -> None:
    run, root = tmp_path / "run", tmp_path / "checkpoints"
    _train_smoke_run(run)
    invoke("publish", str(run), "kept", "--command", "c", "--root", str(root))
    before = {p.name: p.read_bytes() for p in (root / "kept").iterdir()}
    empty = tmp_path / "empty-run"
    empty.mkdir()
    output = fails("publish", str(empty), "kept", "--command", "c", "--root", str(root))
    assert "has no best/ checkpoint" in output
    assert {p.name: p.read_bytes() for p in (root / "kept").iterdir()} == before


# ----------------------------------------------------------------------------- small commands


def test_recipes_lists_every_task_with_its_model() -> None:
    rows = {line.split()[0]: line.split()[1] for line in invoke("recipes").splitlines()}
    assert rows == {name: get_recipe(name).model for name in list_recipes()}
    output = invoke("recipes")
    assert "grid-12 " in output and " 50 epochs, batch 70 " in output.split("grid-12 ")[1]
    for line in output.splitlines():  # the reference schedule, then the description
        recipe = get_recipe(line.split()[0])
        schedule = f"{recipe.train.epochs} epochs, batch {recipe.train.batch_size}"
        assert line.endswith(f" {schedule:24s} {recipe.description}")


def test_check_solver_reports_a_conforming_solver() -> None:
    output = invoke("check-solver", "topk", "--param", "k=3", "--batch-size", "4")
    assert output.startswith("conformance of solver 'topk':")
    assert "FAILED" not in output and output.count("passed") >= 3


def test_check_solver_exits_non_zero_on_a_broken_solver() -> None:
    def example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
        return {}, torch.randn(batch_size, 5, generator=generator)

    with isolated_registry():
        # claims to maximise <θ, z> over one-hot z, but returns the minimiser
        @register_solver("cli_argmin_in_disguise", input_shape="[B, n]", example=example)
        def broken(theta: Tensor) -> Tensor:
            return torch.nn.functional.one_hot(theta.argmin(-1), theta.shape[-1]).to(theta)

        result = CliRunner().invoke(app, ["check-solver", "cli_argmin_in_disguise"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output


def test_solver_parameters_must_be_key_value_pairs() -> None:
    result = CliRunner().invoke(app, ["check-solver", "topk", "--param", "k3"])
    assert result.exit_code != 0
    assert "expected KEY=VALUE, got 'k3'" in result.output


def test_train_refuses_to_replace_a_run_unless_told(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train_smoke_run(run)
    log = (run / "metrics.jsonl").read_text()
    args = ["train", "l2x-xor", "--smoke", "--epochs", "1", "--out", str(run), "--no-progress"]
    output = fails(*args)
    assert "--resume" in output and "--overwrite" in output
    assert (run / "metrics.jsonl").read_text() == log
    invoke(*args, "--seed", "1", "--overwrite")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "metrics.jsonl").read_text() != log


def test_compare_reuses_extends_or_refuses_the_runs_already_there(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    options = ["--smoke", "--out", str(out), "--estimators", "imle"]
    invoke("compare", "l2x-xor", "--epochs", "1", *options)
    weights = (out / "imle" / "best" / "model.safetensors").read_bytes()
    reused = invoke("compare", "l2x-xor", "--epochs", "1", *options)  # the same settings
    assert f"imle: reusing the finished run in {out / 'imle'} (1 epochs)" in reused
    assert (out / "imle" / "best" / "model.safetensors").read_bytes() == weights
    invoke("compare", "l2x-xor", "--epochs", "2", *options)  # more epochs: resumed
    epochs = [json.loads(line)["epoch"] for line in (out / "imle" / "metrics.jsonl").open()]
    assert epochs == [0, 1]
    saved = json.loads((out / "comparison.json").read_text())
    assert len(saved["results"]["imle"]["curve"]) == 2
    straight = tmp_path / "straight"
    invoke("compare", "l2x-xor", "--epochs", "2", "--smoke", "--out", str(straight),
           "--estimators", "imle")  # fmt: skip
    assert (
        saved["results"]["imle"]["test"]
        == json.loads((straight / "comparison.json").read_text())["results"]["imle"]["test"]
    )  # resuming changed nothing
    for other in (["--epochs", "1"], ["--epochs", "2", "--seed", "1"]):
        assert "holds a run trained with" in fails("compare", "l2x-xor", *other, *options)
    assert [json.loads(line)["epoch"] for line in (out / "imle" / "metrics.jsonl").open()] == [0, 1]


def test_compare_refuses_a_run_made_with_an_older_estimator_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variant's saved configuration is what the recipe gives now, so a second compare
    reuses them all; once the recipe's default changes, the old run is refused by name."""
    variants = ",".join(name for name in get_recipe("l2x-xor").variants() if name != "aimle")
    options = ["--smoke", "--epochs", "1", "--out", str(tmp_path / "cmp")]
    invoke("compare", "l2x-xor", "--estimators", variants, *options)
    logs = {path: path.read_text() for path in (tmp_path / "cmp").glob("*/metrics.jsonl")}
    invoke("compare", "l2x-xor", "--estimators", variants, *options)
    assert {path: path.read_text() for path in logs} == logs  # all reused, none retrained

    change_aimle_step_size(monkeypatch, 0.01)
    output = fails("compare", "l2x-xor", "--estimators", "aimle-central", *options)
    assert "estimator target.update_step=0.001 (now 0.01)" in output
    # every run is checked before any trains: imle, asked for a second epoch, is left alone
    longer = ["--smoke", "--epochs", "2", "--out", str(tmp_path / "cmp")]
    assert "holds a run trained with" in fails(
        "compare", "l2x-xor", "--estimators", "imle,aimle-central", *longer
    )
    invoke("compare", "l2x-xor", "--estimators", "imle,ste", *options)  # unchanged: reused
    assert {path: path.read_text() for path in logs} == logs
    monkeypatch.setitem(get_recipe("l2x-xor").model_kwargs, "k", 3)  # a model default too
    output = fails("compare", "l2x-xor", "--estimators", "imle", *options)
    assert "model k=2 (now 3)" in output
    monkeypatch.setitem(get_recipe("l2x-xor").model_kwargs, "k", 2)
    (tmp_path / "cmp" / "ste" / "last" / "config.json").unlink()
    output = fails("compare", "l2x-xor", "--estimators", "ste", *options)
    assert "estimator configuration cannot be read" in output and "another --out" in output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--lr", "nan"], "lr must be a finite number > 0"),
        (["--max-steps", "-2"], "max_steps_per_epoch must be at least 1"),
        (["--checkpoint-every", "-1"], "checkpoint_every must be at least 1"),
        (["--device", "cuda:99"], "CUDA device"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--estimator", "magic"], "magic"),
    ],
)
def test_bad_training_options_fail_before_a_run_folder_exists(
    options: list[str], message: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert message in fails("train", "l2x-xor", "--smoke", "--out", str(run), *options)
    assert not run.exists()


def test_resume_takes_the_settings_of_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    invoke("train", "l2x-xor", "--smoke", "--epochs", "1", "--batch-size", "64", "--max-steps",
           "4", "--estimator", "imle", "--checkpoint-every", "2", "--out", str(run),
           "--no-progress")  # fmt: skip
    invoke("train", "l2x-xor", "--smoke", "--epochs", "2", "--resume", "--out", str(run),
           "--no-progress")  # fmt: skip
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["config"]["batch_size"]) == (2, 64)
    assert state["config"]["max_steps_per_epoch"] == 4
    assert state["config"]["checkpoint_every"] == 2  # mid-epoch saves go on
    assert state["config"]["extra"]["estimator"] == "imle"
    output = fails("train", "l2x-xor", "--epochs", "3", "--resume", "--out", str(run))
    assert "smoke=True (now False)" in output


def test_evaluate_takes_run_folders_and_runs_stopped_early(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train_smoke_run(run)
    output = invoke("evaluate", str(run))
    assert f"l2x-xor, test split (the smoke data it was trained on), {run / 'best'}" in output
    assert "count                    256" in output  # the smoke test split, as trained
    (run / "best" / "recipe.json").write_text("{")
    assert "recipe.json is not valid JSON" in fails("evaluate", str(run))
    (run / "best" / "recipe.json").unlink()  # as left by a run stopped before its end
    assert "l2x-xor, test split" in invoke("evaluate", str(run / "best"))
    assert "l2x-xor, test split" in invoke("evaluate", str(run / "last"))
    assert "is for grid_shortest_path models" in fails("evaluate", str(run), "--task", "grid-12")
    (run / "last" / "trainer_state.json").unlink()
    assert "records no task" in fails("evaluate", str(run))


@pytest.mark.parametrize("name", ["../escaped", "a/b", "my model", ".."])
def test_publish_refuses_names_that_are_not_hub_names(name: str, tmp_path: Path) -> None:
    run, root = tmp_path / "run", tmp_path / "checkpoints" / "sub"
    _train_smoke_run(run)
    assert "cannot be a published name" in fails(
        "publish", str(run), name, "--command", "c", "--root", str(root)
    )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "escaped").exists()


def test_compare_trains_to_the_asked_epochs_when_resuming(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    invoke("compare", "l2x-switch", "--epochs", "1", "--smoke", "--estimators", "ste",
           "--out", str(out))  # fmt: skip
    invoke("compare", "l2x-switch", "--smoke", "--estimators", "ste", "--out", str(out))
    epochs = [json.loads(line)["epoch"] for line in (out / "ste" / "metrics.jsonl").open()]
    assert epochs == list(range(get_recipe("l2x-switch").train.epochs))


def test_usage_errors_keep_their_exit_status(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check-solver", "topk", "--param", "bad"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
    assert "error: " not in result.output


def test_compare_checks_every_estimator_before_training_any(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    output = fails("compare", "grid-12", "--estimators", "ste,relaxed", "--smoke", "--out",
                   str(out))  # fmt: skip
    assert "has no 'relaxed' baseline" in output
    assert not out.exists()
    assert "no estimators to compare" in fails("compare", "l2x-xor", "--estimators", " , ")
    twice = fails(
        "compare", "l2x-xor", "--estimators", "ste,imle,ste", "--smoke", "--out", str(out)
    )
    assert "['ste'] are listed more than once" in twice and not out.exists()


def test_train_refuses_a_file_as_its_folder_and_a_seed_out_of_range(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    output = fails("train", "l2x-xor", "--smoke", "--out", str(afile))
    assert "is a file, not a run folder" in output and afile.read_text() == "keep me"
    output = fails(
        "train", "l2x-xor", "--smoke", "--seed", str(2**70), "--out", str(tmp_path / "r")
    )
    assert "seed must be in [0, 2^63" in output and not (tmp_path / "r").exists()


def test_an_unreadable_trainer_state_is_named_by_compare_and_publish(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    (out / "imle" / "last").mkdir(parents=True)
    state = out / "imle" / "last" / "trainer_state.json"
    state.write_text('{"config": ')
    output = fails("compare", "l2x-xor", "--estimators", "imle", "--smoke", "--out", str(out))
    assert f"cannot reuse the run in {out / 'imle'}: {state} is not a trainer state" in output
    assert state.read_text() == '{"config": '  # left as it was
    run = tmp_path / "run"
    _train_smoke_run(run)
    (run / "test_metrics.json").unlink()
    (run / "best" / "recipe.json").unlink()
    (run / "last" / "trainer_state.json").write_text("[]")
    output = fails("publish", str(run), "x", "--command", "c", "--root", str(tmp_path / "pub"))
    assert f"cannot tell how {run} was trained" in output
    assert not (tmp_path / "pub" / "x").exists()


def test_check_gradient_reports_the_cosine_on_the_solvers_example() -> None:
    output = invoke("check-gradient", "topk", "-p", "k=4", "--seeds", "8", "--warmup", "5")
    assert "topk with aimle: cosine to the exact gradient" in output
    assert f"({math.comb(10, 4)} solutions)" in output  # every 4-subset of the 10 scores
    assert "too many solutions" in fails("check-gradient", "grid_shortest_path", "--seeds", "4")
    for bad in (["--seeds", "1"], ["--warmup", "-1"]):  # a cosine needs two noisy copies
        result = CliRunner().invoke(app, ["check-gradient", "topk", *bad])
        assert result.exit_code == 2 and bad[0] in result.output


def _sigterm_after_two_epochs(arguments: list[str], log: Path, tmp_path: Path) -> str:
    """Run ``aimle-zoo ARGUMENTS`` in a process, send SIGTERM once ``log`` holds two epochs;
    check it exits as SIGTERM's default action would (128 + 15); return its stderr."""
    launch = "import sys; from aimle_zoo.cli import app; sys.argv[0] = 'aimle-zoo'; app()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", CACHE_ENV: str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-c", launch, *arguments],
        env=env,
        cwd=Path(__file__).parents[2],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not log.exists() or len(log.read_text().splitlines()) < 2
    ):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    return stderr


def test_sigterm_stops_the_train_command_with_status_143_and_says_how_to_resume(
    tmp_path: Path,
) -> None:
    """A scheduler's SIGTERM ends ``aimle-zoo train`` with a line naming the complete save to
    resume from, not a traceback."""
    out = tmp_path / "run"
    arguments = ["train", "l2x-xor", "--smoke", "--epochs", "100000", "--checkpoint-every", "1"]
    arguments += ["--no-progress", "--out", str(out)]
    stderr = _sigterm_after_two_epochs(arguments, out / "metrics.jsonl", tmp_path)
    assert f"stopped by SIGTERM: {out / 'last'} holds the last complete save" in stderr
    assert "add --resume in the same command" in stderr


def test_sigterm_stops_the_compare_command_with_status_143_and_says_how_to_continue(
    tmp_path: Path,
) -> None:
    out = tmp_path / "cmp"
    arguments = ["compare", "l2x-xor", "--smoke", "--epochs", "100000", "--estimators", "imle"]
    arguments += ["--out", str(out)]
    stderr = _sigterm_after_two_epochs(arguments, out / "imle" / "metrics.jsonl", tmp_path)
    assert f"stopped by SIGTERM: the runs in {out} keep their last complete saves" in stderr


def test_key_value_parameters_are_json_where_they_parse_and_text_otherwise() -> None:
    import typer

    from aimle_zoo.cli._options import parse_params

    parsed = parse_params(["k=3", "ties=exact", "weights=[1, 2.5]", "label= two words "])
    assert parsed == {"k": 3, "ties": "exact", "weights": [1, 2.5], "label": " two words "}
    assert parse_params(None) == {}
    for bad in ("=3", "k"):
        with pytest.raises(typer.BadParameter, match="expected KEY=VALUE"):
            parse_params([bad])


def test_a_failing_command_prints_one_error_line_unless_debugging(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyError's message is shown as written (not in the quotes its str() adds), with exit
    status 1; AIMLE_ZOO_DEBUG=1 lets the exception through with its traceback."""
    import typer

    from aimle_zoo.cli._options import DEBUG_ENV, guarded

    @guarded
    def failing() -> None:
        raise KeyError("no solver named 'x'; see `aimle-zoo solvers`")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(typer.Exit) as stop:
        failing()
    assert stop.value.exit_code == 1
    assert capsys.readouterr().err == "error: no solver named 'x'; see `aimle-zoo solvers`\n"
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(KeyError, match="no solver named"):
        failing()


def test_comparison_table_shows_each_test_metric_and_the_training_time() -> None:
    """Columns: the test metrics in name order (not the instance count), 4 significant digits,
    NaN where a run lacks one; the last column is the whole training time in seconds."""
    from aimle_zoo.compare import comparison_table

    results = {
        "imle": {"test": {"loss": 0.123456, "count": 256, "accuracy": 0.5}, "seconds": 12.6},
        "ste": {"test": {"loss": 2.0, "count": 256}, "seconds": 3.2},
    }
    assert comparison_table(results) == (
        "| estimator | accuracy | loss | train s |\n"
        "|---|---|---|---|\n"
        "| imle | 0.5 | 0.1235 | 13 |\n"
        "| ste | nan | 2 | 3 |\n"
    )


def test_commands_default_to_folders_named_after_the_task_and_estimator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train writes runs/TASK-ESTIMATOR (aimle when not named), compare runs/compare/TASK; the
    estimator list may hold spaces, and the recorded command keeps --max-steps."""
    monkeypatch.chdir(tmp_path)
    options = ("--smoke", "--epochs", "1", "--no-progress")
    invoke("train", "l2x-xor", *options)
    invoke("train", "l2x-xor", "--estimator", "ste", *options)
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == [
        "l2x-xor-aimle",
        "l2x-xor-ste",
    ]
    assert read_recipe(tmp_path / "runs" / "l2x-xor-ste" / "best")["estimator"] == "ste"
    invoke("compare", "l2x-xor", "--estimators", " imle , ste ", "--smoke", "--max-steps", "2",
           "--epochs", "1", "--data-dir", "unused")  # fmt: skip
    folder = tmp_path / "runs" / "compare" / "l2x-xor"
    saved = json.loads((folder / "comparison.json").read_text())
    assert list(saved["results"]) == ["imle", "ste"]
    assert saved["command"].endswith(
        "--estimators imle,ste --epochs 1 --max-steps 2 --seed 0 --data-dir unused --smoke"
    )
    state = json.loads((folder / "ste" / "last" / "trainer_state.json").read_text())
    assert state["config"]["max_steps_per_epoch"] == 2


def test_an_evaluation_limit_below_one_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--limit", "0"])
    assert result.exit_code == 2 and "--limit" in result.output
    assert "error: " not in result.output


def test_a_reader_that_goes_away_ends_a_command_quietly_with_status_0() -> None:
    """`aimle-zoo ... | head`: a closed pipe is not an error, and no traceback or 'Exception
    ignored' note follows at exit."""
    script = (
        "import typer\n"
        "from aimle_zoo.cli._options import guarded\n"
        "def lines() -> None:\n"
        "    for _ in range(10**6):\n"
        "        typer.echo('x' * 100)\n"
        "typer.run(guarded(lines))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == b"x" * 100 + b"\n"
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


def test_compare_plots_the_tasks_selection_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aimle_zoo import recipes

    recipe = get_recipe("l2x-xor")
    schedule = dataclasses.replace(recipe.train, select_metric="accuracy", select_mode="max")
    monkeypatch.setitem(recipes.RECIPES, "l2x-xor", dataclasses.replace(recipe, train=schedule))
    out = tmp_path / "cmp"
    invoke("compare", "l2x-xor", "--estimators", "ste", "--smoke", "--epochs", "1", "--out",
           str(out))  # fmt: skip
    assert json.loads((out / "comparison.json").read_text())["select_metric"] == "accuracy"


def test_evaluate_on_another_task_uses_that_tasks_full_data_and_names_bad_splits(
    tmp_path: Path,
) -> None:
    """The smoke flag and split seed recorded with a checkpoint describe its own task's data;
    evaluated on another task of the same model (--task), the full test split is used."""
    run = tmp_path / "run"
    _train_smoke_run(run)
    args = ("evaluate", str(run), "--task", "l2x-orange-skin", "--limit", "300", "--no-progress")
    output = invoke(*args)
    assert f"l2x-orange-skin, test split, {run / 'best'}\n" in output
    assert "count                    300" in output  # more than the smoke split's 256
    message = fails("evaluate", str(run), "--split", "validation")
    assert "unknown split 'validation'; choose train, valid or test" in message


@pytest.mark.parametrize(
    ("saved", "options", "advice"),
    [
        (False, [], "nothing was saved yet"),
        (True, [], "add --resume in the same command to continue"),
        (True, ["--overwrite"], "replace --overwrite by --resume in the same command to continue"),
    ],
)
def test_a_stopped_train_command_says_what_it_left(
    saved: bool, options: list[str], advice: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aimle_zoo.cli import train as train_cli
    from aimle_zoo.training import TrainingStopped

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise TrainingStopped(signal.SIGINT, "stopped")

    monkeypatch.setattr(train_cli, "run_training", stopped)
    run = tmp_path / "run"
    if saved:
        (run / "last").mkdir(parents=True)
    result = CliRunner().invoke(app, ["train", "l2x-xor", "--out", str(run), *options])
    assert result.exit_code == 128 + signal.SIGINT  # 130, as Ctrl-C's default action
    what = f"{run / 'last'} holds the last complete save; " if saved else ""
    assert result.output == f"stopped by SIGINT: {what}{advice}\n"


def test_compare_refuses_a_run_trained_with_another_estimator_setting(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ("compare", "l2x-xor", "--estimators", "imle", "--smoke", "--epochs", "1", "--out",
            str(out))  # fmt: skip
    invoke(*args)
    config_file = out / "imle" / "last" / "config.json"
    config = json.loads(config_file.read_text())
    config["estimator"]["lambda_"] = 5.0
    config_file.write_text(json.dumps(config))
    assert "trained with estimator lambda_=5.0 (now 10.0)" in fails(*args)


def test_compare_without_estimators_trains_the_four_main_ones(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    output = invoke("compare", "l2x-xor", "--smoke", "--epochs", "1", "--max-steps", "1",
                    "--out", str(out))  # fmt: skip
    saved = json.loads((out / "comparison.json").read_text())
    assert list(saved["results"]) == ["aimle-forward", "aimle-central", "imle", "ste"]
    rows = [line.split("|")[1].strip() for line in output.splitlines() if line.startswith("| ")]
    assert rows == ["estimator", *saved["results"]]
