"""Helpers: tiny models with a moved adaptive state, a hand-built Hub cache, state comparison."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, snapshot_download

from aimle_zoo.models import ZooModel
from tests.models._helpers import make_batch, tiny_model

from ._fake_hub import FakeHub, Repository

COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"


def trained_tiny_model(name: str, seed: int = 0) -> ZooModel:
    """The tiny model ``name`` after one training step (weights and λ/β state moved), in eval."""
    torch.manual_seed(seed)
    model = tiny_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss, _ = model.training_loss(make_batch(name, model, 4, seed=seed))
    loss.backward()
    optimizer.step()
    return model.eval()


def add_to_hub_cache(
    cache: Path,
    repo_id: str,
    model: ZooModel,
    commit: str,
    refs: tuple[str, ...] = ("main",),
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Put ``model`` (and ``extra_files``, name -> text) into the Hub cache as commit
    ``commit`` of ``repo_id``, reachable by ``refs``, the way a real download leaves it:
    huggingface_hub's ``snapshot_download`` fetches it from a :class:`FakeHub` on localhost
    (blobs, snapshot links, refs, file lists).

    Returns the snapshot folder.
    """
    served = Path(tempfile.mkdtemp(prefix="served-"))
    try:
        model.save_pretrained(served / "checkpoint", repo_id=repo_id)
        for name, text in (extra_files or {}).items():
            (served / "checkpoint" / name).write_text(text)
        hub = FakeHub({repo_id: Repository(served / "checkpoint", commit, refs)})
        server = hub.start()
        offline = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = False
        try:
            snapshots = {
                snapshot_download(repo_id, revision=ref, cache_dir=cache, endpoint=hub.endpoint)
                for ref in refs
            }
        finally:
            constants.HF_HUB_OFFLINE = offline
            server.shutdown()
            server.server_close()
    finally:
        shutil.rmtree(served)
    (snapshot,) = snapshots
    return Path(snapshot)


def assert_same_model(loaded: ZooModel, expected: ZooModel) -> None:
    """Same class, every tensor (parameters and buffers) equal, same eval outputs."""
    assert type(loaded) is type(expected)
    assert not loaded.training
    expected_state, loaded_state = expected.state_dict(), loaded.state_dict()
    assert loaded_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(loaded_state[key], value), key
    inputs = expected.example_inputs(3)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), expected(*inputs))


def go_online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Let huggingface_hub reach the Hub at ``endpoint`` (the variables and the constants read
    from them at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
