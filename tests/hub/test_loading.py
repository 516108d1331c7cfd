"""Loading through every route: local folder, generic loader, bundled names, offline Hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import aimle_zoo
from aimle_zoo.hub import (
    CHECKPOINT_FILES,
    FORMAT_VERSION,
    CheckpointNotFoundError,
    resolve_checkpoint,
)
from aimle_zoo.models import ZooModel, list_models
from tests.models._helpers import tiny_model

from ._fake_hub import FakeHub, Repository
from ._helpers import (
    COMMIT_A,
    COMMIT_B,
    add_to_hub_cache,
    assert_same_model,
    go_online,
    trained_tiny_model,
)

MODELS = list_models()


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_through_a_folder_for_every_model(name: str, tmp_path: Path) -> None:
    model = trained_tiny_model(name)
    fresh = tiny_model(name)
    assert not torch.equal(model.latent_layer.estimator.beta, fresh.latent_layer.estimator.beta)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name
    assert config["format_version"] == FORMAT_VERSION
    assert config["aimle_zoo_version"] == aimle_zoo.__version__
    assert config["estimator"] == model.latent_layer.estimator.config()
    assert_same_model(type(model).from_pretrained(folder), model)
    assert_same_model(aimle_zoo.from_pretrained(folder), model)
    assert_same_model(aimle_zoo.from_pretrained(str(folder)), model)
    assert_same_model(ZooModel.from_pretrained(folder), model)


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_through_an_offline_hub_cache_for_every_model(
    name: str, hub_cache: Path
) -> None:
    model = trained_tiny_model(name)
    short_name = f"tiny-{name.replace('_', '-')}"
    add_to_hub_cache(hub_cache, f"aimle-zoo/{short_name}", model, COMMIT_B)
    assert_same_model(aimle_zoo.from_pretrained(f"aimle-zoo/{short_name}"), model)
    assert_same_model(aimle_zoo.from_pretrained(short_name), model)
    assert_same_model(type(model).from_pretrained(f"aimle-zoo/{short_name}"), model)


def test_revision_pins_one_of_two_cached_snapshots(hub_cache: Path) -> None:
    first = trained_tiny_model("l2x_tabular", seed=1)
    second = trained_tiny_model("l2x_tabular", seed=2)
    repo_id = "aimle-zoo/l2x-pinned"
    snapshot_a = add_to_hub_cache(hub_cache, repo_id, first, COMMIT_A, refs=("v1",))
    snapshot_b = add_to_hub_cache(hub_cache, repo_id, second, COMMIT_B, refs=("main",))

    assert resolve_checkpoint(repo_id) == snapshot_b
    assert resolve_checkpoint(repo_id, revision=COMMIT_A) == snapshot_a
    assert resolve_checkpoint(repo_id, revision="v1") == snapshot_a
    assert_same_model(aimle_zoo.from_pretrained(repo_id), second)
    assert_same_model(aimle_zoo.from_pretrained(repo_id, revision=COMMIT_A), first)
    assert_same_model(aimle_zoo.from_pretrained(repo_id, revision=COMMIT_B), second)
    assert_same_model(aimle_zoo.from_pretrained(repo_id, revision="v1"), first)


def test_cache_dir_argument_and_local_files_only(tmp_path: Path) -> None:
    elsewhere = tmp_path / "another-cache"
    model = trained_tiny_model("discrete_vae")
    add_to_hub_cache(elsewhere, "someone/dvae", model, COMMIT_A)
    loaded = aimle_zoo.from_pretrained("someone/dvae", cache_dir=elsewhere, local_files_only=True)
    assert_same_model(loaded, model)


def test_the_hub_cache_comes_before_a_bundled_checkpoint_without_a_revision(
    hub_cache: Path, bundled_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = trained_tiny_model("discrete_vae", seed=1)
    cached = trained_tiny_model("discrete_vae", seed=2)
    bundled.save_pretrained(bundled_root / "dvae-tiny")
    assert aimle_zoo.hub.list_bundled_checkpoints() == ["dvae-tiny"]
    assert resolve_checkpoint("dvae-tiny") == bundled_root / "dvae-tiny"  # nothing cached
    with pytest.raises(CheckpointNotFoundError, match="'someone/dvae-tiny'"):
        resolve_checkpoint("someone/dvae-tiny")  # bundled names are aimle-zoo's only
    assert_same_model(aimle_zoo.from_pretrained("aimle-zoo/dvae-tiny"), bundled)

    snapshot = add_to_hub_cache(hub_cache, "aimle-zoo/dvae-tiny", cached, COMMIT_B)
    assert resolve_checkpoint("dvae-tiny") == snapshot
    assert_same_model(aimle_zoo.from_pretrained("dvae-tiny"), cached)
    assert_same_model(aimle_zoo.from_pretrained("aimle-zoo/dvae-tiny"), cached)
    assert_same_model(aimle_zoo.from_pretrained("dvae-tiny", revision="main"), cached)
    assert_same_model(aimle_zoo.from_pretrained("aimle-zoo/dvae-tiny", revision=COMMIT_B), cached)

    (snapshot / "model.safetensors").unlink()  # an incomplete snapshot is not used
    assert resolve_checkpoint("dvae-tiny") == bundled_root / "dvae-tiny"
    card_only = hub_cache / "models--aimle-zoo--dvae-tiny"  # as a lone card download leaves it
    shutil.rmtree(card_only)
    (card_only / "snapshots" / COMMIT_A).mkdir(parents=True)
    (card_only / "snapshots" / COMMIT_A / "README.md").write_text("---\n---\n")
    (card_only / "refs").mkdir()
    (card_only / "refs" / "main").write_text(COMMIT_A)
    assert resolve_checkpoint("dvae-tiny") == bundled_root / "dvae-tiny"

    local = trained_tiny_model("discrete_vae", seed=3)
    workdir = tmp_path / "work"
    local.save_pretrained(workdir / "dvae-tiny")
    monkeypatch.chdir(workdir)
    assert_same_model(aimle_zoo.from_pretrained("dvae-tiny"), local)  # a local folder first


def test_real_environment_variables_in_a_fresh_process(
    hub_cache: Path, bundled_root: Path, tmp_path: Path
) -> None:
    model = trained_tiny_model("l2x_tabular")
    snapshot = add_to_hub_cache(hub_cache, "aimle-zoo/l2x-env", model, COMMIT_B)
    with torch.no_grad():
        expected = model(*model.example_inputs(3))
    script = (
        "import aimle_zoo, torch\n"
        "model = aimle_zoo.from_pretrained('aimle-zoo/l2x-env')\n"
        "print(aimle_zoo.hub.resolve_checkpoint('l2x-env'))\n"
        "with torch.no_grad():\n"
        "    torch.save(model(*model.example_inputs(3)), 'out.pt')\n"
        "try:\n"
        "    aimle_zoo.from_pretrained('aimle-zoo/not-cached')\n"
        "except aimle_zoo.hub.CheckpointNotFoundError as err:\n"
        "    print(err)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "AIMLE_ZOO_CHECKPOINTS": str(bundled_root),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    resolved, error = done.stdout.splitlines()[:2]
    assert Path(resolved) == snapshot
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    assert "not-cached" in error and "HF_HUB_OFFLINE=1" in error


def test_a_download_fills_the_hub_cache_for_later_offline_use(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online: a tag resolves to its commit, only the checkpoint files are fetched, and the
    model equals the served one. Offline afterwards: the same tag and the commit still load."""
    model = trained_tiny_model("l2x_tabular")
    folder = tmp_path / "served"
    model.save_pretrained(folder, repo_id="aimle-zoo/served")
    (folder / "trainer_state.pt").write_bytes(b"optimizer state, not part of a checkpoint")
    hub = FakeHub({"aimle-zoo/served": Repository(folder, COMMIT_B, refs=("main", "v1"))})
    server = hub.start()
    go_online(monkeypatch, hub.endpoint)
    try:
        assert_same_model(aimle_zoo.from_pretrained("aimle-zoo/served", revision="v1"), model)
    finally:
        server.shutdown()
        server.server_close()
    fetched = {path.rsplit("/", 1)[1] for method, path in hub.requests if "/resolve/" in path}
    assert fetched == set(CHECKPOINT_FILES)
    repository = hub_cache / "models--aimle-zoo--served"
    assert (repository / "refs" / "v1").read_text() == COMMIT_B
    snapshot = repository / "snapshots" / COMMIT_B
    assert sorted(entry.name for entry in snapshot.iterdir()) == sorted(CHECKPOINT_FILES)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_same_model(aimle_zoo.from_pretrained("aimle-zoo/served", revision="v1"), model)
    assert_same_model(aimle_zoo.from_pretrained("served", revision=COMMIT_B), model)


REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("with_recipe", [True, False])
def test_evaluate_finds_the_task_of_a_checkpoint_from_the_hub_cache(
    with_recipe: bool, hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached copy of a published checkpoint is evaluated like the bundled folder: from its
    recipe.json (downloaded with it) or, for a copy without one, from its published name."""
    from aimle_zoo.data import CACHE_ENV
    from aimle_zoo.recipes import evaluate_checkpoint

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "data-cache"))
    bundled = REPOSITORY_ROOT / "checkpoints" / "l2x-xor"
    recipe = {"recipe.json": (bundled / "recipe.json").read_text()} if with_recipe else {}
    snapshot = add_to_hub_cache(
        hub_cache, "aimle-zoo/l2x-xor", ZooModel.from_pretrained(bundled), COMMIT_B,
        extra_files=recipe,
    )  # fmt: skip
    assert (snapshot / "recipe.json").is_file() == with_recipe
    expected = evaluate_checkpoint(bundled, limit=64).metrics
    for name in ("l2x-xor", "aimle-zoo/l2x-xor"):
        evaluated = evaluate_checkpoint(name, limit=64)
        assert evaluated.folder == snapshot and evaluated.task == "l2x-xor"
        assert evaluated.metrics == expected
