"""Shared helpers of the datasets: the error type, the cache root and atomic cache files.

Cache files are ``.npz`` archives written atomically: the bytes go to a temporary file in the
destination directory, which is flushed, fsync-ed and then renamed over the final name with
``os.replace``. A reader therefore sees either no file or a complete one. Every cache file also
stores the JSON of the parameters that generated it under the key ``__params__``; a file whose
stored parameters differ from the requested ones is reported, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._io import atomic_file

#: Environment variable naming the cache root (default ``~/.cache/aimle_zoo``).
CACHE_ENV = "AIMLE_ZOO_CACHE"

_PARAMS_KEY = "__params__"


class DatasetError(ValueError):
    """A dataset file or cache is missing, corrupt or inconsistent, or a parameter is invalid."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$AIMLE_ZOO_CACHE``, else
    ``~/.cache/aimle_zoo``. It is not created here."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "aimle_zoo"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically: ``write`` fills a temporary file that then replaces ``path``.

    On any failure inside ``write`` the temporary file is removed and ``path`` is untouched
    (:func:`aimle_zoo._io.atomic_file`).
    """
    with atomic_file(path, "wb") as handle:
        write(handle)


def _plain(value: object) -> object:
    """JSON form of a NumPy scalar parameter (``np.int64(0)`` is the parameter ``0``)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"parameter {value!r} of type {type(value).__name__} is not JSON-able")


def params_digest(params: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able generation parameters (used in cache file names)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_npz_atomic(
    path: Path, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]
) -> None:
    """Save ``arrays`` and the generating ``params`` to ``path`` (an ``.npz``) atomically."""
    payload: dict[str, Any] = dict(arrays)
    payload[_PARAMS_KEY] = np.array(json.dumps(params, sort_keys=True, default=_plain))
    atomic_write(path, lambda handle: np.savez(handle, **payload))


def load_npz_checked(
    path: Path, params: Mapping[str, Any], keys: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Load a cache file written by :func:`save_npz_atomic` and check it.

    Raises:
        DatasetError: the file cannot be read, lacks one of ``keys``, or was generated with
            parameters other than ``params``. The message names the file and says to delete it.
    """
    remedy = f"delete {path} to regenerate it"
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"cache file {path} is not an .npz archive; {remedy}")
        with archive:
            names = set(archive.files)
            missing = [key for key in (_PARAMS_KEY, *keys) if key not in names]
            if missing:
                raise DatasetError(f"cache file {path} lacks the arrays {missing}; {remedy}")
            stored = json.loads(str(archive[_PARAMS_KEY]))
            arrays = {key: archive[key] for key in keys}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DatasetError(
            f"cache file {path} is corrupt or unreadable ({type(err).__name__}: {err}); {remedy}"
        ) from err
    expected = json.loads(json.dumps(params, sort_keys=True, default=_plain))
    if not isinstance(stored, dict):
        raise DatasetError(f"cache file {path} holds malformed parameters; {remedy}")
    if stored != expected:
        changed = sorted(
            key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key)
        )
        raise DatasetError(
            f"cache file {path} was generated with other parameters (differing: {changed}; "
            f"stored {stored}, requested {expected}); {remedy}"
        )
    return arrays


def cached_npz(
    path: Path,
    params: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    build: Callable[[], Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Return the arrays cached at ``path``, building and saving them atomically on a miss.

    ``shapes`` gives every array's name and the shape ``params`` imply; a cached array of
    another shape (a stale or edited file) is a :class:`DatasetError` naming the file.
    """
    keys = tuple(shapes)
    if path.exists():
        arrays = load_npz_checked(path, params, keys)
        wrong = {key: arrays[key].shape for key in keys if arrays[key].shape != shapes[key]}
        if wrong:
            raise DatasetError(
                f"cache file {path} holds arrays of shapes {wrong}, its parameters imply "
                f"{ {key: shapes[key] for key in wrong} }; delete {path} to regenerate it"
            )
        return arrays
    arrays = {key: np.asarray(value) for key, value in build().items()}
    if sorted(arrays) != sorted(keys):
        raise RuntimeError(f"cache builder returned {sorted(arrays)}, expected {sorted(keys)}")
    built = {key: arrays[key].shape for key in keys}
    if built != dict(shapes):
        raise RuntimeError(f"cache builder returned shapes {built}, expected {dict(shapes)}")
    save_npz_atomic(path, arrays, params)
    return arrays


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise :class:`DatasetError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DatasetError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise :class:`DatasetError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
