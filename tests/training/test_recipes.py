"""Smoke training of every model with every estimator, resume, and the recipe table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aimle_zoo import recipes as recipes_module
from aimle_zoo.data import (
    CACHE_ENV,
    PAD,
    DatasetError,
    l2x_synthetic_dataset,
    load_beer_advocate,
)
from aimle_zoo.data.warcraft import generate_warcraft
from aimle_zoo.models import ZooModel, create_model
from aimle_zoo.recipes import (
    DataOptions,
    UnknownRecipeError,
    get_recipe,
    list_recipes,
    read_recipe,
    run_evaluation,
    run_training,
    train_config,
)
from aimle_zoo.training import TrainConfig, seed_everything, train
from tests.conftest import SHARED_DATA
from tests.data.test_beer import write_beer

from ._helpers import PowerCut, change_aimle_step_size

MNIST = str(Path(SHARED_DATA) / "mnist")
ONE_PER_MODEL = ("l2x-xor", "l2x-mnist", "l2x-beer-aroma", "dvae-mnist", "nri-t10", "grid-12")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def _options(name: str, tmp_path: Path) -> DataOptions:
    if name == "l2x-beer-aroma":
        return DataOptions(data_dir=str(write_beer(tmp_path / "beer")), smoke=True, progress=False)
    data_dir = MNIST if "mnist" in name else None
    return DataOptions(data_dir=data_dir, smoke=True, progress=False)


def test_every_recipe_names_a_registered_model() -> None:
    from aimle_zoo.models import list_models

    assert set(ONE_PER_MODEL) <= set(list_recipes())
    assert {get_recipe(name).model for name in list_recipes()} == set(list_models())
    with pytest.raises(UnknownRecipeError, match="Did you mean 'dvae-mnist'"):
        get_recipe("dvae-mnst")
    with pytest.raises(ValueError, match="unknown estimator 'aimel'"):
        get_recipe("l2x-xor").estimator_config("aimel")


#: Every model with every estimator variant it has (shortest paths have no relaxation; only
#: they take the multiplicative perturbation).
SMOKE_RUNS = [
    (name, estimator) for name in ONE_PER_MODEL for estimator in get_recipe(name).variants()
]


@pytest.mark.parametrize(("name", "estimator"), SMOKE_RUNS)
def test_smoke_training(name: str, estimator: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_training(
        name,
        out,
        estimator=estimator,
        data_options=_options(name, tmp_path),
        epochs=1,
        max_steps_per_epoch=2,
        progress=False,
    )
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [0]
    assert all(torch.isfinite(torch.tensor(v)) for v in log[0]["train"].values())
    config = json.loads((result.best_dir / "config.json").read_text())
    expected = get_recipe(name).estimator_config(estimator) or {"name": "aimle"}
    assert config["estimator"]["name"] == expected["name"]
    if estimator in ("aimle-forward", "aimle-central"):
        assert config["estimator"]["symmetric"] == (estimator == "aimle-central")
    test_metrics = json.loads((out / "test_metrics.json").read_text())
    assert test_metrics and all(v == v for v in test_metrics.values())  # no NaN
    recorded = {"recipe": name, "estimator": estimator, "smoke": True, "split_seed": 0}
    assert read_recipe(result.best_dir) == recorded


def test_a_task_without_a_relaxation_names_the_estimators_it_has(tmp_path: Path) -> None:
    assert not get_recipe("grid-12").has_relaxation()
    assert get_recipe("nri-t10").has_relaxation() and get_recipe("l2x-xor").has_relaxation()
    with pytest.raises(ValueError, match=r"'grid-12' has no 'relaxed' baseline.*aimle, "):
        run_training("grid-12", tmp_path / "run", estimator="relaxed", epochs=1)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["dvae-mnist", "dvae-mnist-ref"])
def test_dvae_test_metrics_include_the_reference_sampled_loss_reproducibly(
    name: str, tmp_path: Path
) -> None:
    options = _options(name, tmp_path)
    model = get_recipe(name).build_model()
    torch.manual_seed(123)
    caller_stream = torch.rand(3)
    torch.manual_seed(123)
    first = run_evaluation(model, name, split="test", data_options=options)
    second = run_evaluation(model, name, split="test", data_options=options)
    assert torch.equal(torch.rand(3), caller_stream)  # the evaluation left the RNG alone
    assert first == second  # sampled codes, but from a seeded stream
    sampled, map_loss = first["sampled_reference_loss"], first["reference_loss"]
    assert math.isfinite(sampled) and sampled != map_loss
    valid = run_evaluation(model, name, split="valid", data_options=options)
    assert "sampled_reference_loss" not in valid  # only the test split pays for sampling


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Two epochs in one go equal one epoch, a stop, and a resume: weights, β, optimizer, RNG."""
    options = _options("l2x-xor", tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training("l2x-xor", straight, data_options=options, epochs=2, max_steps_per_epoch=4)
    run_training("l2x-xor", split, data_options=options, epochs=1, max_steps_per_epoch=4)
    first = load_file(str(split / "last" / "model.safetensors"))
    run_training(
        "l2x-xor", split, data_options=options, epochs=2, max_steps_per_epoch=4, resume=True
    )
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(split / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    beta = next(key for key in a if key.endswith("target.beta"))
    assert not torch.equal(first[beta], b[beta])  # the adaptive state kept moving
    lines = (split / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == [0, 1]


def _resume_after_a_recipe_change(tmp_path: Path, change: Any) -> tuple[Path, Path]:
    """Two equal one-epoch runs of l2x-xor; one resumed to two epochs as it is, the other
    after ``change()`` alters the recipe. Checks the two end with bit-equal weights; returns
    (kept, changed)."""
    settings: dict[str, Any] = {"data_options": _options("l2x-xor", tmp_path)}
    settings["max_steps_per_epoch"] = 4
    kept, changed = tmp_path / "kept", tmp_path / "changed"
    for out in (kept, changed):
        run_training("l2x-xor", out, epochs=1, **settings)
    run_training("l2x-xor", kept, epochs=2, resume=True, **settings)
    change()
    run_training("l2x-xor", changed, epochs=2, resume=True, **settings)
    a = load_file(str(kept / "last" / "model.safetensors"))
    b = load_file(str(changed / "last" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return kept, changed


def test_resume_keeps_the_runs_estimator_when_the_recipe_default_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run resumed after the recipe's estimator changed (here a 10× AIMLE step size)
    continues with the estimator it was started with, exactly as if nothing had changed."""

    def change() -> None:
        change_aimle_step_size(monkeypatch, 0.01)
        fresh = get_recipe("l2x-xor").build_model()
        assert fresh.latent_layer.estimator.config()["target"]["update_step"] == 0.01

    kept, changed = _resume_after_a_recipe_change(tmp_path, change)
    for folder in ("last", "best"):
        a = json.loads((kept / folder / "config.json").read_text())["estimator"]
        b = json.loads((changed / folder / "config.json").read_text())["estimator"]
        assert a == b and b["target"]["update_step"] == 0.001


def test_resume_keeps_the_runs_model_arguments_when_the_recipe_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model arguments too (here k, which changes no weight shape): a resumed run
    continues the model it was, not one built from the recipe's current arguments."""

    def change() -> None:
        monkeypatch.setitem(get_recipe("l2x-xor").model_kwargs, "k", 3)
        assert get_recipe("l2x-xor").build_model().k == 3

    _, changed = _resume_after_a_recipe_change(tmp_path, change)
    assert json.loads((changed / "last" / "config.json").read_text())["k"] == 2


def test_a_refused_run_is_refused_before_its_data_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh run into an occupied folder, or a resume with other settings, fails before the
    (possibly long) data build."""
    settings: dict[str, Any] = {"data_options": _options("l2x-xor", tmp_path)}
    settings["max_steps_per_epoch"] = 4
    out = tmp_path / "run"
    run_training("l2x-xor", out, epochs=1, **settings)

    def no_data(options: DataOptions) -> Any:
        raise AssertionError("the data was built")

    without_data = replace(get_recipe("l2x-xor"), build_data=no_data)
    monkeypatch.setitem(recipes_module.RECIPES, "l2x-xor", without_data)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        run_training("l2x-xor", out, epochs=1, **settings)
    with pytest.raises(ValueError, match=r"cannot resume .* lr=0.001 \(now 0.5\)"):
        run_training("l2x-xor", out, epochs=2, lr=0.5, resume=True, **settings)


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_resume_upgrades_an_older_runs_estimator_config_as_loading_does(tmp_path: Path) -> None:
    """A run saved by 0.1.0 lacks ``minimizer_noise``; it resumes with the value that
    reproduces 0.1.0 (``add``), not today's default (``negate``)."""
    settings: dict[str, Any] = {"data_options": _options("l2x-xor", tmp_path)}
    settings["max_steps_per_epoch"] = 2
    run_training("l2x-xor", tmp_path / "run", epochs=1, **settings)

    def as_written_by_0_1_0(config: dict[str, Any]) -> None:
        config["aimle_zoo_version"] = "0.1.0"
        del config["estimator"]["minimizer_noise"]

    _edit_json(tmp_path / "run" / "last" / "config.json", as_written_by_0_1_0)
    result = run_training("l2x-xor", tmp_path / "run", epochs=2, resume=True, **settings)
    assert result.model.latent_layer.estimator.config()["minimizer_noise"] == "add"


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("delete", FileNotFoundError, r"cannot resume the run in .*config\.json does not exist"),
        ("cut", ValueError, r"cannot resume the run in .*lacks \['samples'\]"),
    ],
)
def test_resume_refuses_a_run_whose_estimator_config_is_lost(
    damage: str, error: type[Exception], message: str, tmp_path: Path
) -> None:
    """Without its estimator config a run cannot continue as it was: no silent fallback to
    the recipe's current default, and nothing is touched."""
    settings: dict[str, Any] = {"data_options": _options("l2x-xor", tmp_path)}
    settings["max_steps_per_epoch"] = 2
    run_training("l2x-xor", tmp_path / "run", epochs=1, **settings)
    config = tmp_path / "run" / "last" / "config.json"
    if damage == "delete":
        config.unlink()
    else:
        _edit_json(config, lambda data: data["estimator"].pop("samples"))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(error, match=message):
        run_training("l2x-xor", tmp_path / "run", epochs=2, resume=True, **settings)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def test_resume_continues_on_the_runs_device_unless_told_otherwise(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"data_options": _options("l2x-xor", tmp_path)}
    settings["max_steps_per_epoch"] = 2
    run = tmp_path / "run"
    run_training("l2x-xor", run, epochs=1, **settings)
    state = run / "last" / "trainer_state.json"
    assert json.loads(state.read_text())["config"]["device"] == "cpu"
    _edit_json(state, lambda data: data["config"].update(device="cuda:7"))
    with pytest.raises(ValueError, match=r"on 'cuda:7', the device it trained on: .*--device cpu"):
        run_training("l2x-xor", run, epochs=2, resume=True, **settings)
    run_training("l2x-xor", run, epochs=2, resume=True, device="cpu", **settings)
    assert json.loads(state.read_text())["config"]["device"] == "cpu"


def test_resume_without_a_device_takes_the_runs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved as "cpu:0" (not the default "cpu"), the device comes back on resume, and loads."""
    settings: dict[str, Any] = {"data_options": _options("l2x-xor", tmp_path)}
    settings["max_steps_per_epoch"] = 2
    run = tmp_path / "run"
    run_training("l2x-xor", run, epochs=1, device="cpu:0", **settings)
    devices: list[str] = []
    original = recipes_module.train

    def spy(*args: Any, **kwargs: Any) -> Any:
        devices.append(args[4].device)  # train(model, train_set, valid_set, out, config, ...)
        return original(*args, **kwargs)

    monkeypatch.setattr(recipes_module, "train", spy)
    run_training("l2x-xor", run, epochs=2, resume=True, **settings)
    assert devices == ["cpu:0"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


@pytest.mark.parametrize("name", list_recipes())
def test_full_estimator_config_is_what_the_model_trains_with(name: str) -> None:
    """``compare`` reuses a run only if its saved estimator config equals this one, so the two
    must agree for every variant, at the full and at the smoke size."""
    recipe = get_recipe(name)
    for variant in recipe.variants():
        expected = recipe.full_estimator_config(variant)
        for smoke in (False, True):
            model = recipe.build_model(variant, smoke=smoke)
            assert model.latent_layer.estimator.config() == expected, (variant, smoke)


def test_grid_files_of_another_size_are_refused_before_training(tmp_path: Path) -> None:
    arrays = generate_warcraft(6, 4, tile_size=2, seed=0, split="train", progress=False)
    for split in ("train", "val", "test"):
        for key, value in arrays.items():
            np.save(tmp_path / f"{split}_{key}.npy", value)
    with pytest.raises(DatasetError, match=r"holds 4×4 grids, the recipe trains on 12×12"):
        get_recipe("grid-12").build_data(DataOptions(data_dir=str(tmp_path)))


def test_minimizer_noise_replaces_the_recipes_convention_where_it_applies() -> None:
    """The grid recipe perturbs its minimiser's costs as θ + ε; ``minimizer_noise`` switches
    the variants that perturb to θ − ε and is refused where it would change nothing."""
    recipe = get_recipe("grid-12")
    for variant in ("aimle", "aimle-forward", "aimle-central", "imle", "ste"):
        assert recipe.full_estimator_config(variant)["minimizer_noise"] == "add"
        config = recipe.full_estimator_config(variant, "negate")
        assert config == {**recipe.full_estimator_config(variant), "minimizer_noise": "negate"}
        model = recipe.build_model(variant, smoke=True, minimizer_noise="negate")
        assert model.latent_layer.estimator.config() == config
    for variant in ("perturbed", "perturbed-multiplicative", "blackbox"):
        with pytest.raises(ValueError, match=rf"'{variant}' estimator has no minimizer_noise"):
            recipe.estimator_config(variant, "negate")
    with pytest.raises(ValueError, match="must be one of negate, add, got 'minus'"):
        recipe.estimator_config("imle", "minus")
    with pytest.raises(ValueError, match="l2x-xor' maximises"):
        get_recipe("l2x-xor").estimator_config("imle", "add")


def test_a_resume_keeps_the_runs_minimizer_noise(tmp_path: Path) -> None:
    run, options = tmp_path / "run", _options("grid-12", tmp_path)
    run_training("grid-12", run, data_options=options, epochs=1, minimizer_noise="negate")
    trained = json.loads((run / "last" / "config.json").read_text())["estimator"]
    assert trained["minimizer_noise"] == "negate"
    with pytest.raises(ValueError, match="trains with minimizer_noise='negate', not 'add'"):
        run_training("grid-12", run, data_options=options, epochs=2, resume=True,
                     minimizer_noise="add")  # fmt: skip
    run_training("grid-12", run, data_options=options, epochs=2, resume=True)
    resumed = json.loads((run / "last" / "config.json").read_text())["estimator"]
    assert resumed == trained


def test_resume_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot resume: there is no run in .*none"):
        run_training(
            "l2x-xor", tmp_path / "none", data_options=_options("l2x-xor", tmp_path), resume=True
        )


def _torchrun(out: Path, *arguments: str) -> None:
    """The DDP worker under ``torchrun --nproc_per_node 2`` (gloo)."""
    worker = Path(__file__).with_name("_ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", str(worker), str(out), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_two_processes_share_beta_and_weights(tmp_path: Path) -> None:
    """DDP on gloo: gradients are averaged and the AIMLE statistics all-reduced, so both ranks
    end with the same weights and the same β (which moved from its initial value)."""
    _torchrun(tmp_path)
    ranks = [json.loads((tmp_path / f"run-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["beta"] == ranks[1]["beta"]
    assert ranks[0]["beta"] != get_recipe("l2x-xor").reference_estimator()["target"]["initial_beta"]
    assert ranks[0]["weight_sum"] == pytest.approx(ranks[1]["weight_sum"], rel=1e-6)
    assert ranks[0]["mean_rank"] == ranks[1]["mean_rank"] == 0.5  # epoch logs: mean of ranks
    assert (tmp_path / "run" / "best" / "config.json").exists()


def test_torchrun_resume_continues_exactly_and_keeps_its_process_count(tmp_path: Path) -> None:
    """Each rank draws its own noise; a resumed two-process run restores every rank's random
    state, so it ends where an uninterrupted one does. One process cannot continue it."""
    _torchrun(tmp_path, "straight", "2")
    _torchrun(tmp_path, "split", "1")
    _torchrun(tmp_path, "split", "2", "resume")
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "last" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match=r"processes=2 \(now 1\)"):
        run_training(
            "l2x-xor",
            tmp_path / "split",
            data_options=DataOptions(smoke=True, progress=False),
            epochs=3,
            resume=True,
        )


def test_resume_from_the_middle_of_an_epoch(tmp_path: Path) -> None:
    """A crash after step 6 of epoch 0 resumes from the step-4 checkpoint and ends exactly
    where an uninterrupted run ends (same shuffle, noise, optimizer and adaptive state)."""
    data = l2x_synthetic_dataset("xor", 96, seed=0)
    config = TrainConfig(epochs=2, batch_size=8, progress=False, checkpoint_every=4)

    def fresh() -> torch.nn.Module:
        seed_everything(0)
        return create_model("l2x_tabular", k=2, selector_hidden=(16,), predictor_hidden=(16,))

    train(fresh(), data, None, tmp_path / "straight", config)
    with pytest.raises(RuntimeError, match="power cut"):
        train(fresh(), PowerCut(data, 8 * 6 + 3), None, tmp_path / "crash", config)
    meta = json.loads((tmp_path / "crash" / "last" / "trainer_state.json").read_text())
    assert (meta["epoch"], meta["step"]) == (0, 4)
    train(fresh(), data, None, tmp_path / "crash", config, resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "crash" / "last" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_resumed_run_drops_its_stale_test_metrics(tmp_path: Path) -> None:
    """The resumed epochs may replace best/, so the old best's test metrics must not survive a
    resume that stops before the run writes new ones (publish and compare read that file);
    a resume that is refused leaves them."""
    data = l2x_synthetic_dataset("xor", 96, seed=0)
    valid = l2x_synthetic_dataset("xor", 32, seed=1)
    config = TrainConfig(epochs=1, batch_size=8, progress=False, checkpoint_every=4)

    def fresh() -> torch.nn.Module:
        seed_everything(0)
        return create_model("l2x_tabular", k=2, selector_hidden=(16,), predictor_hidden=(16,))

    out = tmp_path / "run"
    train(fresh(), data, valid, out, config)
    stale = out / "test_metrics.json"
    stale.write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ValueError, match="other settings"):
        train(fresh(), data, valid, out, replace(config, epochs=2, lr=0.5), resume=True)
    assert stale.exists()
    with pytest.raises(RuntimeError, match="power cut"):
        train(
            fresh(), PowerCut(data, 8 * 6 + 3), valid, out, replace(config, epochs=2), resume=True
        )
    assert not stale.exists()


@pytest.mark.parametrize("mode", ["min", "last"])
def test_the_best_checkpoint_follows_the_selection_mode(mode: str, tmp_path: Path) -> None:
    data = l2x_synthetic_dataset("xor", 64, seed=0)
    valid = l2x_synthetic_dataset("xor", 64, seed=1)
    seed_everything(2)  # a seed whose validation loss is lowest before the last epoch
    model = create_model("l2x_tabular", k=2, selector_hidden=(8,), predictor_hidden=(8,))
    config = TrainConfig(epochs=4, batch_size=16, lr=0.05, progress=False, select_mode=mode)  # type: ignore[arg-type]
    result = train(model, data, valid, tmp_path / mode, config)
    losses = [record["valid"]["loss"] for record in result.history]
    assert losses.index(min(losses)) != len(losses) - 1  # so the two modes disagree here
    expected = len(losses) - 1 if mode == "last" else losses.index(min(losses))
    assert result.best_epoch == expected
    assert result.best_metrics == result.history[expected]["valid"]


def test_a_finished_run_without_its_test_metrics_gets_them_and_trains_no_further(
    tmp_path: Path,
) -> None:
    """A stop between the last save and the test metrics: a resume with the run's own epoch
    count is allowed and only evaluates, and a comparison that finds the run does the same."""
    from aimle_zoo.compare import compare

    options = _options("l2x-xor", tmp_path)
    settings: dict[str, Any] = {"data_options": options, "epochs": 1, "max_steps_per_epoch": 2}
    out = tmp_path / "cmp"
    compare("l2x-xor", out, estimators=["aimle"], progress=False, **settings)
    run = out / "aimle"
    written = json.loads((run / "test_metrics.json").read_text())
    weights = (run / "last" / "model.safetensors").read_bytes()
    for again in (
        lambda: run_training("l2x-xor", run, resume=True, **settings),
        lambda: compare("l2x-xor", out, estimators=["aimle"], progress=False, **settings),
    ):
        (run / "test_metrics.json").unlink()
        again()
        assert json.loads((run / "test_metrics.json").read_text()) == written
        assert (run / "last" / "model.safetensors").read_bytes() == weights
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_the_mnist_pair_task_holds_out_a_tenth_of_its_training_pairs() -> None:
    task = get_recipe("l2x-mnist").build_data(DataOptions(data_dir=MNIST, progress=False))
    pairs = 6131 + 5851  # the 3s and 8s of the training split (the MNIST README)
    assert (len(task.train), len(task.valid), len(task.test)) == (pairs - 1198, 1198, 1010 + 974)
    train_indices = set(task.train.indices)  # type: ignore[attr-defined]
    valid_indices = set(task.valid.indices)  # type: ignore[attr-defined]
    assert not train_indices & valid_indices and train_indices | valid_indices == set(range(pairs))


def test_the_reference_vae_split_trains_on_all_60k_images() -> None:
    recipe = get_recipe("dvae-mnist-ref")
    task = recipe.build_data(DataOptions(data_dir=MNIST, progress=False))
    assert (len(task.train), len(task.valid), len(task.test)) == (60_000, 5_000, 10_000)
    assert set(task.valid.indices) <= set(range(60_000))  # type: ignore[attr-defined]
    assert recipe.train.select_mode == "last"
    held_out = get_recipe("dvae-mnist").build_data(DataOptions(data_dir=MNIST, progress=False))
    assert (len(held_out.train), len(held_out.valid)) == (55_000, 5_000)


def test_the_text_task_reports_subset_precision_on_the_annotated_reviews(tmp_path: Path) -> None:
    options = _options("l2x-beer-aroma", tmp_path)
    out = tmp_path / "run"
    result = run_training(
        "l2x-beer-aroma", out, data_options=options, epochs=1, max_steps_per_epoch=2
    )
    recorded = json.loads((out / "test_metrics.json").read_text())["subset_precision"]
    model = ZooModel.from_pretrained(result.best_dir)
    beer = load_beer_advocate(options.data_dir, 1)
    assert beer.annotations is not None
    correct = chosen = 0
    for ids, in_span in zip(*beer.annotations.tensors, strict=True):  # one review at a time
        with torch.no_grad():
            mask = model.select(ids[None])[0]
        picked = [slot for slot in range(len(ids)) if mask[slot] and ids[slot] != PAD]
        correct += sum(bool(in_span[slot]) for slot in picked)
        chosen += max(len(picked), model.k)
    assert recorded == pytest.approx(correct / chosen)
    model.train()  # evaluated in eval mode, and handed back in the mode it came in
    evaluated = run_evaluation(model, "l2x-beer-aroma", data_options=options, limit=1)
    assert evaluated["subset_precision"] == pytest.approx(recorded)
    assert model.training
    with pytest.raises(ValueError, match="limit must be at least 1"):
        run_evaluation(model, "l2x-beer-aroma", data_options=options, limit=0)
    model.eval()
    assert "subset_precision" not in run_evaluation(
        model, "l2x-beer-aroma", split="valid", data_options=options
    )


def test_every_rank_gets_back_its_own_running_sums_of_a_cut_epoch() -> None:
    """Mid-epoch, each rank's logs so far differ; the trainer state keeps them per rank and a
    resumed rank 1 continues from its own sums, not rank 0's (which changed its epoch log)."""
    from aimle_zoo.training import (
        _DistInfo,
        _Progress,
        _restore_progress,
        _rng_states,
        _trainer_state as trainer_state,
    )

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    device = torch.device("cpu")
    per_rank = [{"loss": 1.5, "accuracy": 3.0}, {"loss": 2.25, "accuracy": 2.0}]
    states = []
    for totals in per_rank:
        states.append(_rng_states(device, _Progress(epoch=0, step=2, totals=totals)))
    config = TrainConfig(epochs=1, progress=False)
    meta, tensors = trainer_state(_Progress(epoch=0, step=2), optimizer, config, states)
    meta = json.loads(json.dumps(meta))  # as written and read back
    for rank, totals in enumerate(per_rank):
        progress = _restore_progress(meta, tensors, optimizer, device, _DistInfo(rank, 2))
        assert progress.totals == totals


def test_a_damaged_optimizer_state_is_refused_before_anything_is_deleted(tmp_path: Path) -> None:
    """A missing or misshaped Adam tensor used to fail at the first step, after the resume had
    deleted the test metrics and rewritten the log; now the resume stops first, naming it."""
    from safetensors.torch import save_file

    data = l2x_synthetic_dataset("xor", 48, seed=0)
    config = TrainConfig(epochs=1, batch_size=8, progress=False)

    def fresh() -> torch.nn.Module:
        seed_everything(0)
        return create_model("l2x_tabular", k=2, selector_hidden=(8,), predictor_hidden=(8,))

    run = tmp_path / "run"
    train(fresh(), data, None, run, config)
    (run / "test_metrics.json").write_text("{}")
    log = (run / "metrics.jsonl").read_text()
    state_file = run / "last" / "trainer_state.safetensors"
    tensors = load_file(str(state_file))
    name = next(key for key in sorted(tensors) if key.endswith(".exp_avg"))
    count = 1 + max(int(key.split(".")[1]) for key in tensors if key.startswith("optimizer."))
    extra = {f"optimizer.{count}.{key}": tensors[f"optimizer.0.{key}"].clone()
             for key in ("step", "exp_avg", "exp_avg_sq")}  # fmt: skip
    for damaged in (
        {k: v for k, v in tensors.items() if k != name},
        {**tensors, name: tensors[name][:1]},
        {**tensors, **extra},  # a parameter the model does not have
    ):
        save_file(damaged, str(state_file))
        with pytest.raises(
            ValueError,
            match=r"cannot resume: the trainer state .* (lacks exp_avg|has shape|for parameter "
            rf"{count}, the model has {count}\))",
        ):
            train(fresh(), data, None, run, replace(config, epochs=2), resume=True)
        assert (run / "test_metrics.json").exists() and (run / "metrics.jsonl").read_text() == log


def test_the_beer_split_follows_the_run_seed_and_its_evaluation_reuses_it(tmp_path: Path) -> None:
    """The reference splits the held-out reviews into validation and test halves again for
    every run (random_state = the run's seed); recipe.json records the seed, and evaluating the
    checkpoint later tests it on the same half."""
    from aimle_zoo.recipes import evaluate_checkpoint

    options = _options("l2x-beer-aroma", tmp_path)
    halves = [load_beer_advocate(options.data_dir, 1, seed=seed).test.tensors[0] for seed in (0, 3)]
    assert not torch.equal(halves[0], halves[1])
    out = tmp_path / "seed3"
    run_training(
        "l2x-beer-aroma", out, data_options=options, epochs=1, max_steps_per_epoch=2, seed=3
    )
    recorded = read_recipe(out / "best")
    assert recorded is not None and recorded["split_seed"] == 3
    tested = json.loads((out / "test_metrics.json").read_text())
    evaluated = evaluate_checkpoint(out, data_options=options).metrics
    assert evaluated["loss"] == pytest.approx(tested["loss"], rel=1e-6)
    recorded["split_seed"] = 0  # the split of another run: other test reviews
    (out / "best" / "recipe.json").write_text(json.dumps(recorded))
    assert evaluate_checkpoint(out, data_options=options).metrics["loss"] != pytest.approx(
        tested["loss"], rel=1e-6
    )


#: The schedules the README and the reference's commands give each task: (epochs, batch size,
#: learning rate, learning-rate milestones, selection metric).
DOCUMENTED_SCHEDULES = {
    "l2x-xor": (10, 1000, 1e-3, (), "loss"),  # L2X's own: 1,000 steps of 1,000
    "l2x-orange-skin": (10, 1000, 1e-3, (), "loss"),
    "l2x-nonlinear-additive": (10, 1000, 1e-3, (), "loss"),
    "l2x-switch": (10, 1000, 1e-3, (), "loss"),
    "l2x-mnist": (10, 100, 1e-3, (), "loss"),
    "l2x-beer-aroma": (20, 40, 1e-3, (), "mse"),  # -e 20 -b 40
    "dvae-mnist": (100, 100, 1e-3, (), "loss"),  # -e 100 -b 100
    "dvae-mnist-ref": (100, 100, 1e-3, (), "loss"),
    "nri-t10": (128, 128, 5e-4, (), "elbo"),
    "nri-t20": (128, 128, 5e-4, (), "elbo"),
    "grid-12": (50, 70, 5e-4, (30, 40), "loss"),  # ×0.1 at epochs 30 and 40
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_SCHEDULES))
def test_recipe_schedules_are_the_documented_ones(name: str) -> None:
    assert list_recipes() == sorted(DOCUMENTED_SCHEDULES)
    schedule = get_recipe(name).train
    epochs, batch_size, lr, milestones, metric = DOCUMENTED_SCHEDULES[name]
    assert (schedule.epochs, schedule.batch_size, schedule.lr) == (epochs, batch_size, lr)
    assert tuple(schedule.lr_milestones) == milestones
    assert schedule.select_metric == metric
    # the synthetic L2X selectors need weight decay against drifting logits, no other task has it
    assert schedule.weight_decay == (1e-3 if get_recipe(name).model == "l2x_tabular" else 0)


@pytest.mark.parametrize("name", ["l2x-xor", "l2x-beer-aroma", "dvae-mnist", "nri-t10"])
def test_baseline_estimators_have_the_documented_settings(name: str) -> None:
    """I-MLE and blackbox at the untuned λ = 10 (λ = 1000 for the text task, as the reference's
    I-MLE command), keeping the task's noise and sample count; perturbed: Gaussian, σ = 1, at
    least 2 samples; relaxed: Gumbel noise at τ = 0.5; blackbox: no noise, one sample."""
    recipe = get_recipe(name)
    reference = recipe.reference_estimator()
    samples, noise = int(reference.get("samples", 1)), reference.get("noise")
    lam = 1000.0 if name == "l2x-beer-aroma" else 10.0
    imle = recipe.estimator_config("imle")
    assert imle is not None
    assert (imle["name"], imle["lambda_"], imle["noise"], imle["samples"]) == (
        "imle", lam, noise, samples,
    )  # fmt: skip
    assert recipe.estimator_config("blackbox") == {"name": "blackbox", "lambda_": lam}
    ste = recipe.estimator_config("ste")
    assert ste is not None and (ste["noise"], ste["samples"]) == (noise, samples)
    assert recipe.estimator_config("perturbed") == {
        "name": "perturbed", "noise": "gaussian", "sigma": 1.0, "samples": max(2, samples),
        "perturbation": "additive",
    }  # fmt: skip
    assert recipe.estimator_config("relaxed") == {
        "name": "relaxed", "noise": "gumbel", "temperature": 0.5, "samples": samples,
    }  # fmt: skip
    for variant, symmetric in (("aimle-forward", False), ("aimle-central", True)):
        assert recipe.estimator_config(variant) == {**reference, "symmetric": symmetric}


def test_a_smoke_run_takes_at_most_three_steps_per_epoch_unless_told() -> None:
    smoke = DataOptions(smoke=True)
    assert train_config("l2x-xor", data_options=smoke).max_steps_per_epoch == 3
    told = train_config("l2x-xor", data_options=smoke, max_steps_per_epoch=5)
    assert told.max_steps_per_epoch == 5
    assert train_config("l2x-xor").max_steps_per_epoch is None


def test_recipe_model_arguments_are_the_documented_ones() -> None:
    """Timesteps / prediction steps 10 / 9 and 20 / 10 (the reference's NRI settings), k = 4 of
    49 MNIST patches, k = 10 tokens, 12×12 grids, k = the relevant features of a benchmark, and
    the reference VAE's KL weight 1/√S with S = 10."""
    kwargs = {name: get_recipe(name).model_kwargs for name in list_recipes()}
    assert kwargs["nri-t10"] == {"timesteps": 10, "prediction_steps": 9}
    assert kwargs["nri-t20"] == {"timesteps": 20, "prediction_steps": 10}
    assert kwargs["l2x-mnist"] == {"k": 4} and kwargs["l2x-beer-aroma"] == {"k": 10}
    assert kwargs["grid-12"] == {"grid_size": 12} and kwargs["dvae-mnist"] == {}
    assert kwargs["dvae-mnist-ref"] == {"kl_weight": pytest.approx(10**-0.5)}
    relevant = {"xor": 2, "orange-skin": 4, "nonlinear-additive": 4, "switch": 5}
    for task, k in relevant.items():
        assert kwargs[f"l2x-{task}"] == {"input_dim": 10, "k": k}


def test_published_cards_re_check_the_first_256_test_instances() -> None:
    """The README promises metrics on the first 256 test instances, re-checked by CI."""
    from aimle_zoo.recipes import HELDOUT_PREFIX, HELDOUT_SIZE

    assert (HELDOUT_SIZE, HELDOUT_PREFIX) == (256, "heldout256_")


@pytest.mark.parametrize("name", ["grid-12", "l2x-mnist"])
def test_reading_a_recipe_estimator_leaves_the_global_random_stream_alone(name: str) -> None:
    """The first estimator_config call builds a probe model (random weights); a model built
    after seeding must get the same weights whether or not that happened first."""
    fresh = replace(get_recipe(name))  # its probe not built yet
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    fresh.estimator_config("aimle-forward")
    assert torch.equal(torch.rand(4), expected)


def test_the_multiplicative_perturbation_is_offered_for_costs_only() -> None:
    """Only a minimiser's recipe (positive costs) lists it; a maximiser's refuses it by name
    and lists what it has."""
    assert "perturbed-multiplicative" in get_recipe("grid-12").variants()
    config = get_recipe("grid-12").estimator_config("perturbed-multiplicative")
    assert config is not None and config["perturbation"] == "multiplicative"
    assert get_recipe("grid-12").estimator_config("perturbed")["perturbation"] == "additive"  # type: ignore[index]
    variants = get_recipe("l2x-xor").variants()
    assert "perturbed-multiplicative" not in variants and "relaxed" in variants
    with pytest.raises(ValueError, match="no 'perturbed-multiplicative' variant") as error:
        get_recipe("l2x-xor").estimator_config("perturbed-multiplicative")
    assert ", ".join(variants) in str(error.value)


def test_simple_is_offered_where_the_solver_has_an_exact_sampler() -> None:
    """SIMPLE needs an exact sampler: the L2X and VAE recipes (top-k) and NRI (spanning tree)
    offer it with their reference sample count, the grid (shortest path) refuses it by name."""
    for name, samples in (("l2x-xor", 1), ("dvae-mnist", 10), ("l2x-mnist", 1), ("nri-t10", 1)):
        recipe = get_recipe(name)
        assert "simple" in recipe.variants()
        reference_samples = recipe.reference_estimator().get("samples", 1)
        assert samples == reference_samples
        assert recipe.estimator_config("simple") == {
            "name": "simple", "temperature": 1.0, "samples": samples,
        }  # fmt: skip
    recipe = get_recipe("grid-12")
    assert "simple" not in recipe.variants()
    with pytest.raises(ValueError, match="no 'simple' variant"):
        recipe.estimator_config("simple")
