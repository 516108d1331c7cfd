"""MNIST from its four IDX files, and the two-digit MNIST task of L2X (Chen et al., 2018).

The loader reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally gzipped, with a
``.gz`` suffix) from a directory, parses the IDX headers, checks shapes and the canonical MD5
of the decompressed bytes, and can download missing files from public mirrors.

IDX layout: 2 zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions d,
then d big-endian ``uint32`` sizes, then the values in C order.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ._common import DatasetError, atomic_write, cache_root, check_choice, check_positive_int

Split = Literal["train", "test"]

#: Public mirrors holding the gzipped IDX files under their canonical names, tried in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)

#: Canonical MD5 of each decompressed IDX file.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type code -> numpy dtype (big-endian)
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"
_IMAGES_MAGIC = bytes.fromhex("00000803")  # uint8 [N, 28, 28]
_LABELS_MAGIC = bytes.fromhex("00000801")  # uint8 [N]
_DOWNLOAD_TIMEOUT_S = 30.0


# ----------------------------------------------------------------------------- IDX files


def read_idx(
    path: str | os.PathLike[str],
    *,
    expected_md5: str | None = None,
    expected_magic: bytes | None = None,
) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of the shape its header declares.

    Gzip is recognised by its magic bytes, whatever the file name. If ``expected_md5`` is
    given, the MD5 of the decompressed bytes must equal it; if ``expected_magic`` is (e.g.
    ``bytes.fromhex("00000801")`` for a uint8 vector), the file's first four bytes must.

    Raises:
        DatasetError: the file is missing, not gzip-decodable, has a bad or unexpected magic
            number or type code, is truncated or has trailing bytes, or fails the checksum.
    """
    path = Path(path)
    raw = _read_decompressed(path)
    if expected_magic is not None and raw[:4] != expected_magic:
        raise DatasetError(
            f"{path}: IDX magic number {raw[:4].hex() or '(none)'}, expected "
            f"{expected_magic.hex()} ({_describe_magic(expected_magic)}); the file holds "
            "something else (another file of the data set under this name?)"
        )
    values = parse_idx(raw, source=str(path))
    if expected_md5 is not None:
        digest = hashlib.md5(raw).hexdigest()
        if digest != expected_md5:
            raise DatasetError(
                f"{path}: MD5 of the decompressed content is {digest}, expected {expected_md5}; "
                "the file is not the canonical one (damaged or a different data set). "
                "Delete it and download it again."
            )
    return values


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; ``source`` names it in error messages."""
    if len(raw) < 4:
        raise DatasetError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetError(
            f"{source}: bad IDX magic number {raw[:4].hex()} (expected 0000XXNN with type code "
            f"XX in {[f'{code:02x}' for code in _IDX_DTYPES]} and NN >= 1 dimensions); "
            "this is not an IDX file"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetError(f"{source}: truncated IDX header ({len(raw)} < {header_size} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    found = len(raw) - header_size
    if found < expected:
        raise DatasetError(
            f"{source}: truncated IDX file: the header declares shape {shape} ({expected} data "
            f"bytes) but only {found} follow; delete the file and download it again"
        )
    if found > expected:
        raise DatasetError(
            f"{source}: {found - expected} unexpected trailing bytes after the {expected} data "
            f"bytes of shape {shape}; the file is damaged"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _describe_magic(magic: bytes) -> str:
    """``00000803`` -> ``"uint8, 3 dimensions"``."""
    dtype = np.dtype(_IDX_DTYPES.get(magic[2], "u1")).newbyteorder("=")
    return f"{dtype.name}, {magic[3]} dimension{'s' if magic[3] != 1 else ''}"


def write_idx(path: str | os.PathLike[str], values: np.ndarray, *, compress: bool = False) -> None:
    """Write ``values`` as an IDX file (gzipped if ``compress``), atomically."""
    array = np.asarray(values)
    codes = {np.dtype(dtype).newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes or array.ndim == 0 or array.ndim > 255:
        raise DatasetError(
            f"cannot write dtype {array.dtype} with {array.ndim} dimensions as IDX; use one of "
            f"uint8, int8, int16, int32, float32, float64 with 1 to 255 dimensions"
        )
    header = bytes([0, 0, codes[native], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[codes[native]]).tobytes()
    data = gzip.compress(payload, mtime=0) if compress else payload
    atomic_write(Path(path), lambda handle: handle.write(data))


def _read_decompressed(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise DatasetError(f"{path} does not exist") from err
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({err})") from err
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"{path}: corrupt or truncated gzip data ({err}); delete it and download it again"
        ) from err


# ----------------------------------------------------------------------------- MNIST


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    split: Split = "train",
    download: bool = False,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    verify_checksums: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load one MNIST split from the IDX files in ``root``.

    Args:
        root: directory holding the four IDX files (plain or ``.gz``); default
            ``<cache root>/mnist`` (see :func:`aimle_zoo.data.cache_root`).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        download: fetch missing files from ``mirrors`` into ``root`` (atomically, verified).
        mirrors: base URLs tried in order for each missing file.
        verify_checksums: compare each file's decompressed MD5 with the canonical value.
            Turn off only for deliberately modified copies (e.g. a subset in IDX format).

    Returns:
        ``images`` uint8 ``[N, 28, 28]`` and ``labels`` int64 ``[N]`` with values in 0..9.

    Raises:
        DatasetError: a file is missing (and ``download`` is off or every mirror failed),
            malformed, fails its checksum, or the two files of the split disagree.
    """
    check_choice("split", split, ("train", "test"))
    directory = Path(root) if root is not None else cache_root() / "mnist"
    image_name, label_name = _SPLIT_FILES[split]
    image_path = _locate(directory, image_name, download, mirrors)
    label_path = _locate(directory, label_name, download, mirrors)
    images = read_idx(
        image_path,
        expected_md5=MNIST_MD5[image_name] if verify_checksums else None,
        expected_magic=_IMAGES_MAGIC,
    )
    labels = read_idx(
        label_path,
        expected_md5=MNIST_MD5[label_name] if verify_checksums else None,
        expected_magic=_LABELS_MAGIC,
    )
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{image_path}: expected uint8 images of shape [N, 28, 28], got {images.dtype} "
            f"{images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(
            f"{label_path}: expected uint8 labels of shape [N], got {labels.dtype} {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds "
            f"{labels.shape[0]} labels; the two files do not belong together"
        )
    if labels.size and int(labels.max()) > 9:
        raise DatasetError(f"{label_path}: label {int(labels.max())} is outside 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def download_mnist_file(
    name: str, directory: str | os.PathLike[str], mirrors: Sequence[str] = MNIST_MIRRORS
) -> Path:
    """Download ``<name>.gz`` into ``directory`` from the first mirror that serves a valid copy.

    The file is written to a temporary name, its decompressed MD5 is checked against
    :data:`MNIST_MD5` and only then is it renamed into place, so a failure leaves nothing behind.

    Raises:
        DatasetError: ``name`` is not an MNIST file, or no mirror served a valid copy.
    """
    check_choice("name", name, tuple(MNIST_MD5))
    if not mirrors:
        raise DatasetError("no download mirrors given; pass at least one base URL")
    target = Path(directory) / f"{name}.gz"
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        try:
            atomic_write(target, functools.partial(_fetch_verified, url, name))
        except (OSError, urllib.error.URLError, DatasetError, ValueError) as err:
            failures.append(f"{url}: {err}")
            continue
        return target
    raise DatasetError(
        f"could not download {name}.gz from any mirror:\n  "
        + "\n  ".join(failures)
        + f"\nDownload the file by hand and place it in {Path(directory)}."
    )


def _fetch_verified(url: str, name: str, handle: IO[bytes]) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "aimle-zoo"})
    chunks = []
    with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        while chunk := response.read(1 << 20):
            chunks.append(chunk)
    data = b"".join(chunks)
    try:
        raw = gzip.decompress(data) if data.startswith(_GZIP_MAGIC) else data
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"the server sent corrupt gzip data ({err})") from err
    digest = hashlib.md5(raw).hexdigest()
    if digest != MNIST_MD5[name]:
        raise DatasetError(f"downloaded content has MD5 {digest}, expected {MNIST_MD5[name]}")
    handle.write(data)


def _locate(directory: Path, name: str, download: bool, mirrors: Sequence[str]) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if download:
        return download_mnist_file(name, directory, mirrors)
    raise DatasetError(
        f"MNIST file {name} (or {name}.gz) not found in {directory}; copy the four IDX files "
        "there and point the loader at them (data_dir=..., or --data-dir on the command line), "
        "or allow a download (download=True)"
    )


class MNIST(Dataset[tuple[Tensor, Tensor]]):
    """MNIST as a ``Dataset`` of ``(image float32 [1, 28, 28] in [0, 1], label int64 [])``.

    Intensities are ``pixel / 255`` and are not binarised. ``images`` (uint8 ``[N, 28, 28]``)
    and ``labels`` (int64 ``[N]``) hold the whole split. Arguments as in :func:`load_mnist`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: Split = "train",
        download: bool = False,
        *,
        mirrors: Sequence[str] = MNIST_MIRRORS,
        verify_checksums: bool = True,
    ) -> None:
        self.split = split
        self.images, self.labels = load_mnist(
            root, split, download, mirrors=mirrors, verify_checksums=verify_checksums
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].to(torch.float32).div_(255.0).unsqueeze(0)  # [1, 28, 28]
        return image, self.labels[index]


# ----------------------------------------------------------------------------- L2X on MNIST


def mnist_pair_dataset(
    root: str | os.PathLike[str] | None = None,
    digits: tuple[int, int] = (3, 8),
    split: Split = "train",
    *,
    download: bool = False,
    verify_checksums: bool = True,
) -> TensorDataset:
    """The binary MNIST task of L2X: the images of two digits, labelled by which one they show.

    Returns a ``TensorDataset`` of ``(images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N])``
    where the label is 0 for ``digits[0]`` and 1 for ``digits[1]``; the images keep their order
    in the split.
    """
    if (
        len(digits) != 2
        or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 9 for d in digits)
        or digits[0] == digits[1]
    ):
        raise DatasetError(f"digits must be two different integers in 0..9, got {digits!r}")
    images, labels = load_mnist(root, split, download, verify_checksums=verify_checksums)
    keep = (labels == digits[0]) | (labels == digits[1])  # [N_all]
    pair_images = images[keep].to(torch.float32).div_(255.0).unsqueeze(1)  # [N, 1, 28, 28]
    pair_labels = (labels[keep] == digits[1]).to(torch.int64)  # [N]
    return TensorDataset(pair_images, pair_labels)


def patch_mask_to_pixel_mask(
    patch_mask: Tensor, image_size: tuple[int, int] = (28, 28), patch_size: int = 4
) -> Tensor:
    """Expand a mask over square patches to a pixel mask.

    Patch ``p`` covers rows ``(p // (W/s)) * s ...`` and columns ``(p % (W/s)) * s ...``
    (row-major patch order), with ``s = patch_size``.

    Args:
        patch_mask: ``[B, (H/s) * (W/s)]``, any dtype (e.g. 49 patches for 28x28 with s = 4).
        image_size: ``(H, W)``, both divisible by ``patch_size``.

    Returns:
        ``[B, H, W]`` with each pixel carrying its patch's value (same dtype as the input).
    """
    rows, cols = _patch_grid(image_size, patch_size)
    if patch_mask.dim() != 2 or patch_mask.shape[1] != rows * cols:
        raise DatasetError(
            f"patch_mask must have shape [B, {rows * cols}] for {image_size} images and "
            f"{patch_size}x{patch_size} patches, got {tuple(patch_mask.shape)}"
        )
    grid = patch_mask.reshape(-1, rows, cols)  # [B, H/s, W/s]
    return grid.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)


def pixel_mask_to_patch_mask(
    pixel_mask: Tensor,
    patch_size: int = 4,
    reduce: Literal["all", "any", "mean"] = "all",
) -> Tensor:
    """Reduce a pixel mask ``[B, H, W]`` to a patch mask ``[B, (H/s) * (W/s)]`` (row-major).

    ``reduce="all"`` marks a patch whose pixels are all non-zero, ``"any"`` one with at least
    one non-zero pixel (both give bool), ``"mean"`` gives the float32 fraction of non-zero
    pixels. Inverse of :func:`patch_mask_to_pixel_mask` on patch-constant masks.
    """
    check_choice("reduce", reduce, ("all", "any", "mean"))
    if pixel_mask.dim() != 3:
        raise DatasetError(f"pixel_mask must have shape [B, H, W], got {tuple(pixel_mask.shape)}")
    height, width = int(pixel_mask.shape[1]), int(pixel_mask.shape[2])
    rows, cols = _patch_grid((height, width), patch_size)
    blocks = pixel_mask.reshape(-1, rows, patch_size, cols, patch_size) != 0
    blocks = blocks.permute(0, 1, 3, 2, 4).reshape(-1, rows * cols, patch_size * patch_size)
    if reduce == "all":
        return blocks.all(dim=-1)
    if reduce == "any":
        return blocks.any(dim=-1)
    return blocks.to(torch.float32).mean(dim=-1)


def _patch_grid(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    check_positive_int("patch_size", patch_size)
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise DatasetError(
            f"image size {image_size} is not divisible by patch_size {patch_size}; pick a patch "
            "size that divides both sides"
        )
    return height // patch_size, width // patch_size
