"""Atomic writes: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give a normal file's mode
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable on POSIX file systems (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` as a whole.

    At every instant ``path`` is either the old complete folder or the new one: on Linux the two
    are swapped in one ``renameat2(RENAME_EXCHANGE)`` call; elsewhere the old folder is moved
    aside, the new one moved in, and the old one moved back if that fails. The staging folder
    has an ordinary folder's mode (0o777 less the umask) from the start. On failure the staging
    folder is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
        yield staging
        if target.exists() and _exchange(staging, target):
            remove_tree(staging)  # now the old folder
        else:
            _replace_with_rollback(staging, target)
    except BaseException:
        remove_tree(staging)
        raise
    _fsync_directory(target.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns ``False`` where the call is unavailable (other systems, old kernels or libc, file
    systems without support); raises ``OSError`` for other failures.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    status = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if status == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False  # unsupported here, or blocked by a sandbox: the fallback decides
    raise OSError(error, os.strerror(error), os.fspath(second))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` with its argument types (Linux), or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    path_arguments = (ctypes.c_int, ctypes.c_char_p)
    renameat2.argtypes = [*path_arguments, *path_arguments, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2


def _replace_with_rollback(staging: Path, target: Path) -> None:
    """Move ``target`` aside, ``staging`` in its place, then delete the old folder; if moving
    ``staging`` in fails, the old folder goes back."""
    retired = None
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        remove_tree(retired)
        os.replace(target, retired)
    try:
        os.replace(staging, target)
    except BaseException:
        if retired is not None:
            os.replace(retired, target)
        raise
    if retired is not None:
        remove_tree(retired)


def remove_tree(path: Path) -> None:
    """Delete a folder tree, making read-only sub-folders writable on the way; warn (not raise)
    about what cannot be deleted."""

    def make_writable_and_retry(function: Any, failed: str, _info: Any) -> None:
        try:
            if function not in (os.unlink, os.remove, os.rmdir):
                raise PermissionError(f"{function.__name__} failed")  # cannot list or open it
            parent = os.path.dirname(failed)
            os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | stat.S_IRWXU)
            function(failed)
        except Exception as err:
            warnings.warn(f"could not delete {failed}: {err}", RuntimeWarning, stacklevel=4)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)
