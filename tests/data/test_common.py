"""Cache root, atomic writes and checked cache files."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import pytest

from aimle_zoo.data import CACHE_ENV, DatasetError, cache_root
from aimle_zoo.data._common import (
    atomic_write,
    cached_npz,
    check_positive_int,
    load_npz_checked,
    save_npz_atomic,
)


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit"
    assert cache_root(explicit) == explicit
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "aimle_zoo"
    monkeypatch.setenv(CACHE_ENV, "~/datasets")  # as a shell profile may write it
    assert cache_root() == tmp_path / "home" / "datasets"


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"

    def write_half_then_fail(handle: IO[bytes]) -> None:
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, write_half_then_fail)
    assert list(target.parent.iterdir()) == []


def test_atomic_write_failure_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, lambda handle: handle.write(b"old"))

    def fail(handle: IO[bytes]) -> None:
        handle.write(b"new but incomplete")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_npz_round_trip_and_parameter_check(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    arrays = {"x": np.arange(6.0).reshape(2, 3), "y": np.array([1, 0], dtype=np.uint8)}
    save_npz_atomic(path, arrays, {"seed": 1, "n": 2})
    loaded = load_npz_checked(path, {"n": 2, "seed": 1}, ("x", "y"))
    np.testing.assert_array_equal(loaded["x"], arrays["x"])
    assert loaded["y"].dtype == np.uint8
    with pytest.raises(DatasetError, match=r"other parameters.*seed.*delete"):
        load_npz_checked(path, {"n": 2, "seed": 2}, ("x", "y"))
    with pytest.raises(DatasetError, match=r"lacks the arrays \['z'\]"):
        load_npz_checked(path, {"n": 2, "seed": 1}, ("x", "z"))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", b"\x93NUMPY garbage"])
def test_corrupt_cache_is_reported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"{path.name} is corrupt.*delete"):
        load_npz_checked(path, {}, ("x",))


def test_npy_in_place_of_npz_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    with path.open("wb") as handle:
        np.save(handle, np.arange(3))
    with pytest.raises(DatasetError, match=r"plain.npz is not an .npz archive; delete"):
        load_npz_checked(path, {}, ("x",))


def test_truncated_cache_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    save_npz_atomic(path, {"x": np.arange(1000.0)}, {})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="corrupt"):
        load_npz_checked(path, {}, ("x",))


def test_cached_npz_builds_once(tmp_path: Path) -> None:
    calls = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"x": np.random.default_rng(len(calls)).random(4)}

    path = tmp_path / "c.npz"
    first = cached_npz(path, {"k": 1}, {"x": (4,)}, build)
    second = cached_npz(path, {"k": np.int64(1)}, {"x": (4,)}, build)  # NumPy scalars as params
    assert len(calls) == 1
    np.testing.assert_array_equal(first["x"], second["x"])


def test_a_cached_array_of_another_shape_than_its_parameters_imply_is_refused(
    tmp_path: Path,
) -> None:
    """A stale or edited file with the right parameters but 7 rows for 20 would load."""
    path = tmp_path / "c.npz"
    save_npz_atomic(path, {"x": np.zeros((7, 3))}, {"rows": 20})
    with pytest.raises(
        DatasetError, match=r"shapes \{'x': \(7, 3\)\}, .* \{'x': \(20, 3\)\}; delete"
    ):
        cached_npz(path, {"rows": 20}, {"x": (20, 3)}, lambda: {"x": np.zeros((20, 3))})
    with pytest.raises(RuntimeError, match="builder returned shapes"):
        cached_npz(tmp_path / "new.npz", {}, {"x": (20, 3)}, lambda: {"x": np.zeros((7, 3))})
    assert not (tmp_path / "new.npz").exists()


def test_a_positive_integer_is_an_integer_not_a_flag_or_a_float() -> None:
    assert check_positive_int("size", np.int64(3)) == 3
    assert check_positive_int("size", 2, 2) == 2
    for bad in (True, 0, 1.0, "3"):
        with pytest.raises(DatasetError, match=r"size must be an integer >= 1"):
            check_positive_int("size", bad)
    with pytest.raises(DatasetError, match=r"items must be an integer >= 2, got 1"):
        check_positive_int("items", 1, 2)
