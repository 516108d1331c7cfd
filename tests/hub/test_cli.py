"""``aimle-zoo push`` through Typer's test runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aimle_zoo.cli import app, hub as hub_cli
from aimle_zoo.hub import format_size

from ._helpers import trained_tiny_model

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dvae-mnist"
    trained_tiny_model("discrete_vae").save_pretrained(folder)
    return folder


def test_push_dry_run_lists_files_and_sizes(folder: Path) -> None:
    result = runner.invoke(app, ["push", str(folder), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would upload to aimle-zoo/dvae-mnist (main, public)" in result.output
    sizes = {
        name: (folder / name).stat().st_size
        for name in ("config.json", "model.safetensors", "README.md")
    }
    lines = result.output.splitlines()
    for name, size in sizes.items():
        assert any(line.split() == [name, *format_size(size).split()] for line in lines), name
    assert f"3 files, {format_size(sum(sizes.values()))} in total" in result.output
    listed = [line for line in lines if line.startswith("  ")]  # paths padded, sizes aligned
    assert len(listed) == 3
    assert {len(line) for line in listed} == {2 + len("model.safetensors") + 2 + 9}
    assert "recipe.json" not in result.output
    private = runner.invoke(app, ["push", str(folder), "someone/x", "--dry-run", "--private",
                                  "--revision", "dev"])  # fmt: skip
    assert "would upload to someone/x (dev, private)" in private.output


def test_push_uploads_the_recipe_record_when_the_folder_has_one(folder: Path) -> None:
    """``recipe.json`` says which task the checkpoint was trained on (``evaluate`` reads it),
    so it travels with a published checkpoint; a trainer state does not."""
    (folder / "recipe.json").write_text('{"recipe": "dvae-mnist", "smoke": false}')
    (folder / "trainer_state.json").write_text("{}")
    result = runner.invoke(app, ["push", str(folder), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert any(line.split()[:1] == ["recipe.json"] for line in result.output.splitlines())
    assert "trainer_state.json" not in result.output
    assert "4 files" in result.output


def test_push_passes_every_option_to_the_library(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: dict[str, Any] = {}

    class Commit:
        commit_url = "https://hub.test/someone/dvae/commit/abc"

    def fake_push(model_or_folder: Path, repo_id: str, **kwargs: Any) -> Commit:
        received.update(model_or_folder=model_or_folder, repo_id=repo_id, **kwargs)
        return Commit()

    monkeypatch.setattr(hub_cli, "push_to_hub", fake_push)
    args = ["push", str(folder), "someone/dvae", "--revision", "v2", "--private"]
    result = runner.invoke(app, [*args, "--token", "hf_x", "-m", "first release"])
    assert result.exit_code == 0, result.output
    assert received == {
        "model_or_folder": folder,
        "repo_id": "someone/dvae",
        "revision": "v2",
        "private": True,
        "token": "hf_x",
        "commit_message": "first release",
        "dry_run": False,
    }
    assert "pushed" in result.output and Commit.commit_url in result.output


def test_push_reports_a_broken_checkpoint(folder: Path) -> None:
    (folder / "config.json").write_text("{")
    result = runner.invoke(app, ["push", str(folder), "--dry-run"])
    assert result.exit_code == 1
    assert "error:" in result.output and "config.json is not valid JSON" in result.output


def test_push_rejects_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["push", str(tmp_path / "nowhere"), "--dry-run"])
    assert result.exit_code == 2
    assert "Invalid value for 'folder'" in result.output


def test_a_runs_best_folder_is_pushed_under_the_runs_name(tmp_path: Path) -> None:
    best = tmp_path / "dvae-long" / "best"
    trained_tiny_model("discrete_vae").save_pretrained(best)
    result = runner.invoke(app, ["push", str(best), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would upload to aimle-zoo/dvae-long" in result.output
