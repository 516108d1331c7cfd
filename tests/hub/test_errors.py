"""Every way a checkpoint can be bad raises a clear error naming the file and what to do."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import aimle_zoo
from aimle_zoo.hub import (
    FORMAT_VERSION,
    CheckpointConfigError,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointVersionError,
    resolve_checkpoint,
)
from aimle_zoo.models import DiscreteVAE, L2XTabular, ZooModel, list_models
from tests.models._helpers import tiny_model

from ._fake_hub import FakeHub, Repository
from ._helpers import COMMIT_A, assert_same_model, go_online

NAME = "l2x_tabular"


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ZooModel]:
    model = tiny_model(NAME).eval()
    folder = tmp_path / "l2x-tabular"
    model.save_pretrained(folder)
    return folder, model


def _edit_config(folder: Path, **changes: Any) -> Path:
    """Rewrite config.json with ``changes`` (a value of None deletes the key)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return path


def test_a_folder_without_config_json(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match=re.escape(str(folder / "config.json"))):
        aimle_zoo.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        L2XTabular.from_pretrained(folder)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"])
def test_config_json_that_is_not_json(saved: tuple[Path, ZooModel], text: str) -> None:
    folder, _ = saved
    (folder / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointConfigError, match=r"config\.json is not valid JSON"):
        aimle_zoo.from_pretrained(folder)


def test_config_json_that_is_not_an_object(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointConfigError, match=r"must hold a JSON object.*list"):
        aimle_zoo.from_pretrained(folder)


@pytest.mark.parametrize("key", ["architecture", "format_version", "aimle_zoo_version"])
def test_missing_metadata_keys(saved: tuple[Path, ZooModel], key: str) -> None:
    folder, _ = saved
    path = _edit_config(folder, **{key: None})
    with pytest.raises(
        CheckpointConfigError, match=rf"{re.escape(str(path))} lacks the keys \['{key}'\]"
    ):
        aimle_zoo.from_pretrained(folder)


def test_a_missing_model_argument_can_be_supplied_as_a_keyword(
    saved: tuple[Path, ZooModel],
) -> None:
    folder, model = saved
    _edit_config(folder, k=None)
    with pytest.raises(CheckpointConfigError, match=r"missing keys \['k'\]"):
        aimle_zoo.from_pretrained(folder)
    assert_same_model(
        aimle_zoo.from_pretrained(folder, k=model.latent_layer.solver.params["k"]), model
    )


def test_an_unexpected_config_key(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    _edit_config(folder, dropout=0.5)
    with pytest.raises(CheckpointConfigError, match=r"unexpected keys \['dropout'\]"):
        L2XTabular.from_pretrained(folder)


def test_config_values_the_constructor_rejects(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    _edit_config(folder, k=99)
    with pytest.raises(CheckpointConfigError, match="does not build a L2XTabular"):
        aimle_zoo.from_pretrained(folder)


def test_an_unknown_keyword_lists_the_accepted_ones(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    with pytest.raises(TypeError, match=r"unknown keywords \['colour'\].*input_dim.*map_location"):
        aimle_zoo.from_pretrained(folder, colour="red")


def test_an_unknown_architecture_lists_the_known_ones(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    _edit_config(folder, architecture="transformer_xl")
    with pytest.raises(CheckpointConfigError, match="unknown architecture") as caught:
        aimle_zoo.from_pretrained(folder)
    assert all(name in str(caught.value) for name in list_models())


def test_a_config_for_another_architecture(saved: tuple[Path, ZooModel]) -> None:
    folder, model = saved
    with pytest.raises(
        CheckpointConfigError, match=r"holds a L2XTabular checkpoint.*not a DiscreteVAE"
    ):
        DiscreteVAE.from_pretrained(folder)
    assert_same_model(ZooModel.from_pretrained(folder), model)  # the base dispatches

    class Subclass(L2XTabular):  # a user's own subclass builds itself, not the saved class
        pass

    loaded = Subclass.from_pretrained(folder)
    assert type(loaded) is Subclass
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_newer_format_version(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    _edit_config(folder, format_version=FORMAT_VERSION + 1, aimle_zoo_version="9.0.0")
    with pytest.raises(
        CheckpointVersionError, match=rf"format {FORMAT_VERSION + 1}.*9\.0\.0.*upgrade"
    ):
        aimle_zoo.from_pretrained(folder)


def test_unknown_keys_from_a_newer_aimle_zoo_ask_for_an_upgrade(
    saved: tuple[Path, ZooModel],
) -> None:
    folder, _ = saved
    _edit_config(folder, dropout=0.5, aimle_zoo_version="99.0.0")
    with pytest.raises(CheckpointConfigError, match=r"written by aimle-zoo 99\.0\.0.*upgrade"):
        aimle_zoo.from_pretrained(folder)


@pytest.mark.parametrize("version", [None, "", 1])
def test_an_invalid_aimle_zoo_version(saved: tuple[Path, ZooModel], version: object) -> None:
    folder, _ = saved
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "aimle_zoo_version": version}))
    with pytest.raises(CheckpointConfigError, match="aimle_zoo_version must be the version"):
        aimle_zoo.from_pretrained(folder)


def _edit_estimator(folder: Path, edit: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["estimator"] = edit(config["estimator"])
    path.write_text(json.dumps(config))


def _without_decay(estimator: dict[str, Any]) -> dict[str, Any]:
    target = {key: value for key, value in estimator["target"].items() if key != "decay"}
    return {**estimator, "target": target}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda estimator: None, "estimator must be the estimator's full config dict"),
        (lambda estimator: {**estimator, "name": "nope"}, "does not build an estimator.*nope"),
        (_without_decay, r"lacks \['target\.decay'\]"),
        (
            lambda estimator: {k: v for k, v in estimator.items() if k != "samples"},
            r"lacks \['samples'\]",
        ),
    ],
    ids=["null", "unknown-name", "nested-key", "top-level-key"],
)
def test_an_incomplete_or_unknown_estimator_config(
    saved: tuple[Path, ZooModel], edit: Any, message: str
) -> None:
    folder, model = saved
    _edit_estimator(folder, edit)
    with pytest.raises(CheckpointConfigError, match=message):
        aimle_zoo.from_pretrained(folder)
    loaded = aimle_zoo.from_pretrained(folder, estimator=model.latent_layer.estimator.config())
    assert_same_model(loaded, model)  # an explicit estimator replaces the saved one


@pytest.mark.parametrize("version", [0, -1, "1", True, 1.0])
def test_an_invalid_format_version(saved: tuple[Path, ZooModel], version: object) -> None:
    folder, _ = saved
    _edit_config(folder, format_version=version)
    with pytest.raises(CheckpointConfigError, match="format_version must be a positive integer"):
        aimle_zoo.from_pretrained(folder)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "corrupt",
    [
        _truncate,
        lambda path: path.write_bytes(b"not a safetensors file at all"),
        lambda path: path.write_bytes(b""),
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_a_corrupt_weights_file(saved: tuple[Path, ZooModel], corrupt: Any) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    corrupt(weights)
    with pytest.raises(
        CheckpointCorruptError, match=f"{re.escape(str(weights))} is not a readable"
    ):
        aimle_zoo.from_pretrained(folder)


def test_a_missing_weights_file(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"model\.safetensors does not exist"):
        aimle_zoo.from_pretrained(folder)


def test_missing_unexpected_and_misshaped_tensors(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    state = load_file(weights)
    first = sorted(state)[0]
    save_file({key: value for key, value in state.items() if key != first}, weights)
    with pytest.raises(CheckpointMismatchError, match=f"missing tensors.*{re.escape(first)}"):
        aimle_zoo.from_pretrained(folder)
    save_file({**state, "extra.weight": torch.zeros(1)}, weights)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors.*extra\.weight"):
        aimle_zoo.from_pretrained(folder)
    save_file({**state, first: torch.zeros(*state[first].shape, 2)}, weights)
    with pytest.raises(CheckpointMismatchError, match="does not fit"):
        aimle_zoo.from_pretrained(folder)


def test_tensors_of_another_dtype_are_named(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    state = load_file(weights)
    first = next(key for key, value in sorted(state.items()) if value.is_floating_point())
    save_file({**state, first: state[first].round().long()}, weights)
    with pytest.raises(
        CheckpointMismatchError, match=rf"another dtype.*{re.escape(first)} \(torch\.int64 in the"
    ) as err:
        aimle_zoo.from_pretrained(folder)
    assert "does not fit the model built from its config" not in str(err.value)  # said once


def test_a_float64_model_loads_as_float64(tmp_path: Path) -> None:
    model = tiny_model(NAME).double().eval()
    model.save_pretrained(tmp_path / "double")
    loaded = aimle_zoo.from_pretrained(tmp_path / "double")
    assert {value.dtype for value in loaded.state_dict().values() if value.is_floating_point()} == {
        torch.float64
    }
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_loads_in_half_precision_with_its_state_in_float32(
    tmp_path: Path, low: torch.dtype
) -> None:
    """The weights in ``low``, the adaptive estimator state (β, c̄, Δ) in float32, as the
    model had them."""
    model = tiny_model(NAME).to(low).eval()
    model.save_pretrained(tmp_path / "half")
    loaded = aimle_zoo.from_pretrained(tmp_path / "half")
    state = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    dtypes = {value.dtype for value in state.values() if value.is_floating_point()}
    assert dtypes == {low, torch.float32}


def test_map_location_takes_devices_and_refuses_missing_ones(
    saved: tuple[Path, ZooModel],
) -> None:
    folder, model = saved
    for device in (torch.device("cpu"), "cpu:0", "cpu"):
        assert_same_model(aimle_zoo.from_pretrained(folder, map_location=device), model)
    with pytest.raises(ValueError, match="map_location='gpu': unknown device 'gpu'"):
        aimle_zoo.from_pretrained(folder, map_location="gpu")
    with pytest.raises(ValueError, match="map_location='meta' would load no weights"):
        aimle_zoo.from_pretrained(folder, map_location="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"map_location='cuda'.* 0 CUDA device\(s\)"):
            aimle_zoo.from_pretrained(folder, map_location="cuda")
    else:
        loaded = aimle_zoo.from_pretrained(folder, map_location="cuda")
        assert {value.device.type for value in loaded.state_dict().values()} == {"cuda"}


def test_an_unknown_hub_id_offline_says_what_to_do() -> None:
    with pytest.raises(CheckpointNotFoundError) as caught:
        aimle_zoo.from_pretrained("aimle-zoo/no-such-model")
    message = str(caught.value)
    assert "'aimle-zoo/no-such-model'" in message
    assert "HF_HUB_OFFLINE=1" in message and "HF_HUB_OFFLINE=0" in message
    assert "bundled" in message and "folder written by save_pretrained" in message
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFoundError, match=r"no-such-model.*not in the Hub cache"):
        aimle_zoo.from_pretrained("no-such-model", revision="main")


def test_paths_and_names_that_are_not_checkpoints(tmp_path: Path) -> None:
    for missing in (tmp_path / "nowhere", str(tmp_path / "nowhere"), "./nowhere", "a/b/c",
                    "runs\\x"):  # fmt: skip
        with pytest.raises(CheckpointNotFoundError, match="no checkpoint folder"):
            resolve_checkpoint(missing)
    with pytest.raises(CheckpointNotFoundError, match="nor a valid checkpoint name or Hub id"):
        resolve_checkpoint("bad name!")


def test_a_revision_for_a_local_folder(saved: tuple[Path, ZooModel]) -> None:
    folder, _ = saved
    with pytest.raises(ValueError, match="revision='v1' applies to Hub ids"):
        aimle_zoo.from_pretrained(folder, revision="v1")


def test_every_checkpoint_error_is_one_exception_family() -> None:
    for error in (
        CheckpointNotFoundError,
        CheckpointConfigError,
        CheckpointVersionError,
        CheckpointCorruptError,
        CheckpointMismatchError,
    ):
        assert issubclass(error, CheckpointError)


@pytest.fixture
def online_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """huggingface_hub online, talking to a local Hub that serves no repository yet."""
    hub = FakeHub()
    server = hub.start()
    go_online(monkeypatch, hub.endpoint)
    yield hub
    server.shutdown()
    server.server_close()


def test_a_repository_the_hub_does_not_have(online_hub: FakeHub) -> None:
    with pytest.raises(CheckpointNotFoundError) as caught:
        aimle_zoo.from_pretrained("aimle-zoo/no-such-model")
    message = str(caught.value)
    assert f"there is no Hub repository 'aimle-zoo/no-such-model' at {online_hub.endpoint}" in (
        message
    )
    assert "pass a token" in message and "Bundled checkpoints:" in message


def test_a_revision_the_hub_does_not_have(
    online_hub: FakeHub, saved: tuple[Path, ZooModel]
) -> None:
    online_hub.repositories["aimle-zoo/dvae-mnist"] = Repository(saved[0], COMMIT_A)
    with pytest.raises(
        CheckpointNotFoundError, match="'aimle-zoo/dvae-mnist' has no revision 'v9'"
    ):
        aimle_zoo.from_pretrained("dvae-mnist", revision="v9")


def test_an_unreachable_hub_with_an_empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    go_online(monkeypatch, "http://127.0.0.1:9")  # the discard port: connections are refused
    with pytest.raises(CheckpointNotFoundError, match="the Hub could not be reached"):
        aimle_zoo.from_pretrained("aimle-zoo/no-such-model")
    with pytest.raises(CheckpointNotFoundError, match="local_files_only=True forbids downloads"):
        aimle_zoo.from_pretrained("aimle-zoo/no-such-model", local_files_only=True)


def test_a_checkpoint_from_before_an_estimator_key_loads_as_that_version_behaved(
    tmp_path: Path,
) -> None:
    """Checkpoints of aimle-zoo 0.1 lack ``minimizer_noise``; they perturbed minimisers as
    θ + ε, so they load with ``"add"``. A current checkpoint without the key is refused."""
    model = tiny_model("grid_shortest_path").eval()
    model.save_pretrained(tmp_path / "grid")
    path = tmp_path / "grid" / "config.json"
    config = json.loads(path.read_text())
    config["estimator"] = {
        key: value for key, value in config["estimator"].items() if key != "minimizer_noise"
    }
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointConfigError, match=r"lacks \['minimizer_noise'\]"):
        aimle_zoo.from_pretrained(tmp_path / "grid")
    path.write_text(json.dumps({**config, "aimle_zoo_version": "0.1.0"}))
    loaded = aimle_zoo.from_pretrained(tmp_path / "grid")
    assert loaded.latent_layer.estimator.minimizer_noise == "add"
    assert_same_model(loaded, model)


def test_a_perturbed_estimator_saved_before_multiplicative_noise_loads_as_additive(
    tmp_path: Path,
) -> None:
    """``perturbation`` came in 0.3.0: an older checkpoint with a perturbed optimizer loads
    with the additive perturbation, the only one it knew; a current one without it is
    refused."""
    model = tiny_model("l2x_tabular", estimator={"name": "perturbed", "samples": 2}).eval()
    model.save_pretrained(tmp_path / "l2x")
    path = tmp_path / "l2x" / "config.json"
    config = json.loads(path.read_text())
    del config["estimator"]["perturbation"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointConfigError, match=r"lacks \['perturbation'\]"):
        aimle_zoo.from_pretrained(tmp_path / "l2x")
    path.write_text(json.dumps({**config, "aimle_zoo_version": "0.2.0"}))
    loaded = aimle_zoo.from_pretrained(tmp_path / "l2x")
    assert loaded.latent_layer.estimator.perturbation == "additive"
    assert_same_model(loaded, model)


def test_non_finite_weights_are_refused_by_name(saved: tuple[Path, ZooModel]) -> None:
    """A checkpoint of a diverged run (NaN or inf weights) does not load as a model that
    silently outputs NaN: the error names the tensors."""
    folder, _ = saved
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    floating = sorted(name for name, value in tensors.items() if value.is_floating_point())
    nan_name, inf_name = floating[0], floating[-1]
    tensors[nan_name].view(-1)[0] = float("nan")
    tensors[inf_name].view(-1)[-1] = float("-inf")
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointCorruptError, match="NaN or infinite values") as caught:
        aimle_zoo.from_pretrained(folder)
    assert nan_name in str(caught.value) and inf_name in str(caught.value)


def test_a_mistyped_relative_run_folder_is_named_as_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runs/typo`` has the form of a Hub id; when neither exists and ``runs/`` is a folder
    here, the message is about the folder, listing what it holds."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "l2x-xor").mkdir(parents=True)
    with pytest.raises(
        CheckpointNotFoundError, match=r"no checkpoint folder at runs/l2x-xr"
    ) as err:
        resolve_checkpoint("runs/l2x-xr")
    assert "runs/ holds l2x-xor" in str(err.value)
    with pytest.raises(CheckpointNotFoundError) as err:  # no such folder here: a Hub id
        resolve_checkpoint("someone/l2x-xr")
    assert "no checkpoint folder" not in str(err.value)
