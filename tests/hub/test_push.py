"""Pushing: the dry run, the checks before any upload, the calls made, a closed endpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
from huggingface_hub import constants

from aimle_zoo import hub
from aimle_zoo.hub import (
    CHECKPOINT_FILES,
    CheckpointConfigError,
    CheckpointCorruptError,
    CheckpointNotFoundError,
    HubPushError,
    UploadFile,
    format_size,
    push_to_hub,
    read_card_metrics,
)

from ._helpers import go_online, trained_tiny_model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "l2x-tabular"
    trained_tiny_model("l2x_tabular").save_pretrained(folder, metrics={"accuracy": 0.9})
    (folder / "trainer_state.pt").write_bytes(b"not for publication")
    return folder


class _NoServer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry run must not create a Hub client")


def test_dry_run_lists_the_checkpoint_files_and_sizes(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "HfApi", _NoServer)
    plan = push_to_hub(folder, "aimle-zoo/l2x-tabular", dry_run=True)
    assert plan == [UploadFile(name, (folder / name).stat().st_size) for name in CHECKPOINT_FILES]
    assert {entry.path for entry in plan} == {"config.json", "model.safetensors", "README.md"}


def test_dry_run_of_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "HfApi", _NoServer)
    model = trained_tiny_model("discrete_vae")
    plan = push_to_hub(model, "aimle-zoo/dvae", dry_run=True)
    assert isinstance(plan, list)
    assert [entry.path for entry in plan] == list(CHECKPOINT_FILES)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert dict(plan)["model.safetensors"] > state_bytes  # the tensors plus a header


def test_a_broken_folder_is_never_uploaded(folder: Path) -> None:
    (folder / "README.md").unlink()
    with pytest.raises(CheckpointNotFoundError, match="needs its model card"):
        push_to_hub(folder, "aimle-zoo/l2x-tabular", dry_run=True)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointCorruptError):
        push_to_hub(folder, "aimle-zoo/l2x-tabular", dry_run=True)


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ("", "has no complete YAML header"),
        ("# A model\n\nNo metadata.\n", "has no complete YAML header"),
        ("---\ntags: [\n---\n", "YAML header that does not parse"),
        (
            "---\nmodel-index:\n- name: a\n  results:\n  - task: {type: other}\n"
            "    dataset: {name: d, type: d}\n    metrics:\n    - {type: acc, value: N/A}\n---\n",
            "records metric 'acc' as 'N/A', not a number",
        ),
        ("---\nlibrary_name: aimle_zoo\n# no closing line\n", "has no complete YAML header"),
    ],
    ids=["empty", "no-header", "broken-yaml", "non-numeric-metric", "unclosed-header"],
)
def test_a_broken_model_card_is_never_uploaded(folder: Path, card: str, message: str) -> None:
    (folder / "README.md").write_text(card)
    with pytest.raises(CheckpointConfigError, match=message):
        push_to_hub(folder, "aimle-zoo/l2x-tabular", dry_run=True)
    with pytest.raises(CheckpointConfigError, match=message):
        read_card_metrics(folder)


@pytest.mark.parametrize("repo_id", ["l2x-tabular", "a/b/c", "aimle-zoo/bad name"])
def test_invalid_repository_ids(folder: Path, repo_id: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(repo_id))):
        push_to_hub(folder, repo_id, dry_run=True)


def test_offline_mode_refuses_to_push(folder: Path) -> None:
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE=1"):
        push_to_hub(folder, "aimle-zoo/l2x-tabular", token="hf_test")


class _RecordingApi:
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))
        self.endpoint = "http://hub.test"

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> str:
        uploaded = Path(kwargs["folder_path"])  # read now: a staging copy is gone afterwards
        contents = {name: (uploaded / name).read_bytes() for name in kwargs["allow_patterns"]}
        self.calls.append(("upload_folder", {**kwargs, "contents": contents}))
        return "http://hub.test/commit/1"


def test_the_upload_goes_through_create_repo_and_upload_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HfApi", _RecordingApi)
    _RecordingApi.calls = []
    result = push_to_hub(
        folder, "someone/l2x", revision="dev", private=True, token="hf_test", commit_message="m"
    )
    assert result == "http://hub.test/commit/1"
    names = [name for name, _ in _RecordingApi.calls]
    assert names == ["init", "create_repo", "create_branch", "upload_folder"]
    calls = dict(_RecordingApi.calls)
    assert calls["init"]["token"] == "hf_test"
    assert calls["create_repo"] == {"repo_id": "someone/l2x", "private": True, "exist_ok": True}
    assert calls["create_branch"] == {"repo_id": "someone/l2x", "branch": "dev", "exist_ok": True}
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "someone/l2x" and upload["revision"] == "dev"
    assert upload["commit_message"] == "m"
    assert upload["allow_patterns"] == list(CHECKPOINT_FILES)  # not the trainer state
    contents = upload["contents"]
    for name in ("config.json", "model.safetensors"):
        assert contents[name] == (folder / name).read_bytes()
    card = contents["README.md"].decode()  # the card names the repository it is pushed to
    assert "# someone/l2x" in card and 'from_pretrained("someone/l2x")' in card
    assert "aimle-zoo/l2x-tabular" not in card
    assert "aimle-zoo/l2x-tabular" in (folder / "README.md").read_text()  # left as it was

    _RecordingApi.calls = []
    push_to_hub(folder, "aimle-zoo/l2x-tabular")
    names = [name for name, _ in _RecordingApi.calls]
    assert names == ["init", "create_repo", "upload_folder"]  # main needs no branch
    upload = dict(_RecordingApi.calls)["upload_folder"]
    assert "l2x_tabular" in upload["commit_message"]
    assert Path(upload["folder_path"]) == folder  # the card already names it: no copy
    _RecordingApi.calls = []
    push_to_hub(folder, "aimle-zoo/l2x-tabular", revision="main")
    assert [name for name, _ in _RecordingApi.calls] == ["init", "create_repo", "upload_folder"]


def test_a_card_without_metrics_is_rewritten_for_the_repository_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without metrics the card has no model index; its title and usage name the repo."""
    folder = tmp_path / "plain"
    trained_tiny_model("l2x_tabular").save_pretrained(folder)
    assert "# aimle-zoo/plain" in (folder / "README.md").read_text()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HfApi", _RecordingApi)
    _RecordingApi.calls = []
    push_to_hub(folder, "someone/published")
    card = dict(_RecordingApi.calls)["upload_folder"]["contents"]["README.md"].decode()
    assert "# someone/published" in card and 'from_pretrained("someone/published")' in card
    assert "aimle-zoo/plain" not in card


def test_a_closed_endpoint_fails_with_a_clear_error(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_online(monkeypatch, "http://127.0.0.1:9")  # the discard port: connections are refused
    with pytest.raises(
        HubPushError, match=r"aimle-zoo/l2x-tabular at http://127\.0\.0\.1:9"
    ) as caught:
        push_to_hub(folder, "aimle-zoo/l2x-tabular", token="hf_test")
    assert "dry_run=True" in str(caught.value)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),  # not "1000.0 kB"
        (999_999, "1.0 MB"),
        (1_000_000, "1.0 MB"),
        (1_536_000, "1.5 MB"),
        (2 * 10**15, "2000.0 TB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
