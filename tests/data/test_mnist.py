"""MNIST IDX reading, checksums, downloads, the L2X digit-pair task and patch masks."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aimle_zoo.data import (
    MNIST,
    MNIST_MD5,
    DatasetError,
    download_mnist_file,
    load_mnist,
    mnist_pair_dataset,
    patch_mask_to_pixel_mask,
    pixel_mask_to_patch_mask,
    read_idx,
    write_idx,
)

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
README_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def idx_bytes(values: np.ndarray) -> bytes:
    """An IDX file built by hand from the format definition (independent of ``write_idx``)."""
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in values.shape
    )
    return header + values.astype(np.uint8).tobytes()


def small_split(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


def write_small_mnist(root: Path, compress: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", 12), ("t10k", 5)):
        images, labels = small_split(rng, count)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    for name, values in arrays.items():
        raw = idx_bytes(values)
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)
    return arrays


# ----------------------------------------------------------------------------- real files


def test_embedded_checksums_match_the_shared_md5sums() -> None:
    listed = dict(
        reversed(line.split()) for line in (MNIST_DIR / "MD5SUMS.raw").read_text().splitlines()
    )
    assert listed == MNIST_MD5


@pytest.mark.parametrize("split", ["train", "test"])
def test_class_counts_equal_the_readme(split: str) -> None:
    images, labels = load_mnist(MNIST_DIR, split)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert images.shape == (sum(README_COUNTS[split]), 28, 28)
    assert torch.bincount(labels, minlength=10).tolist() == README_COUNTS[split]


def test_mnist_dataset_items_are_unbinarised_floats() -> None:
    dataset = MNIST(MNIST_DIR, "test")
    assert len(dataset) == 10_000
    image, label = dataset[7]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    torch.testing.assert_close(image[0], dataset.images[7].double().div(255).float())
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert ((image > 0) & (image < 1)).any()  # grey levels survive
    assert label.dtype == torch.int64 and int(label) == int(dataset.labels[7])


def test_digit_pair_dataset_matches_filtering_by_hand() -> None:
    images, labels = load_mnist(MNIST_DIR, "test")
    pair = mnist_pair_dataset(MNIST_DIR, digits=(8, 3), split="test")
    x, y = pair.tensors
    keep = np.flatnonzero(np.isin(labels.numpy(), (3, 8)))
    assert x.shape == (keep.size, 1, 28, 28)
    np.testing.assert_array_equal(y.numpy(), (labels.numpy()[keep] == 3).astype(np.int64))
    np.testing.assert_allclose(x[:, 0].numpy(), images.numpy()[keep] / 255.0, rtol=1e-6)
    assert int(y.sum()) == README_COUNTS["test"][3]


@pytest.mark.parametrize("digits", [(3, 3), (3, 10), (1,), (True, 2)])
def test_digit_pair_rejects_bad_digits(digits: tuple[int, ...]) -> None:
    with pytest.raises(DatasetError, match="two different integers"):
        mnist_pair_dataset(MNIST_DIR, digits=digits, split="test")


# ----------------------------------------------------------------------------- IDX parsing


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_reads_handmade_files(tmp_path: Path, compress: bool) -> None:
    values = np.random.default_rng(1).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    raw = idx_bytes(values)
    path = tmp_path / "values.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(read_idx(path, expected_md5=hashlib.md5(raw).hexdigest()), values)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_write_idx_round_trip(tmp_path: Path, dtype: str) -> None:
    values = (np.arange(24) - 7).reshape(2, 3, 4).astype(dtype)
    if dtype == "uint8":
        values = np.abs(values).astype(dtype)
    write_idx(tmp_path / "v", values, compress=True)
    loaded = read_idx(tmp_path / "v")
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded, values)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x08", "too short"),
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "bad IDX magic"),
        (b"\x00\x01\x08\x01" + (3).to_bytes(4, "big") + b"abc", "bad IDX magic"),
        (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "bad IDX magic"),
        (b"\x00\x00\x08\x00", "bad IDX magic"),
        (b"\x00\x00\x08\x02" + (3).to_bytes(4, "big"), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated IDX file"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "trailing bytes"),
        # 65536^4 bytes: a 64-bit product wraps to 0 and would pass the size check
        (b"\x00\x00\x08\x04" + (65536).to_bytes(4, "big") * 4, r"\(18446744073709551616 data"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_reports_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_idx(tmp_path / "absent")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_read_idx_checks_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "v"
    path.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"MD5 .* expected 0123"):
        read_idx(path, expected_md5="0123456789abcdef0123456789abcdef")


# ----------------------------------------------------------------------------- small MNIST dirs


@pytest.mark.parametrize("compress", [False, True])
def test_load_small_mnist_without_checksums(tmp_path: Path, compress: bool) -> None:
    arrays = write_small_mnist(tmp_path, compress)
    images, labels = load_mnist(tmp_path, "test", verify_checksums=False)
    np.testing.assert_array_equal(images.numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_rejects_non_canonical_files(tmp_path: Path) -> None:
    write_small_mnist(tmp_path)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: MD5"):
        load_mnist(tmp_path, "train")


def test_load_mnist_names_a_file_of_the_wrong_kind(tmp_path: Path) -> None:
    """The images file under the labels' name: its magic number says so, before any size."""
    write_small_mnist(tmp_path, compress=False)
    images = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(images)
    with pytest.raises(
        DatasetError, match=r"labels-idx1-ubyte: IDX magic number 00000803, expected 00000801 "
        r"\(uint8, 1 dimension\)"
    ):  # fmt: skip
        load_mnist(tmp_path, "test", verify_checksums=False)


def test_load_mnist_rejects_mismatched_files(tmp_path: Path) -> None:
    write_small_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"5 images but .* 4 labels"):
        load_mnist(tmp_path, "test", verify_checksums=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(5, 10, dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"label 10 is outside 0..9"):
        load_mnist(tmp_path, "test", verify_checksums=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 28, 27), np.uint8)))
    with pytest.raises(DatasetError, match=r"\[N, 28, 28\]"):
        load_mnist(tmp_path, "test", verify_checksums=False)


def test_missing_files_and_bad_split(tmp_path: Path) -> None:
    missing = r"t10k-images-idx3-ubyte .* not found .*--data-dir.*download=True"
    with pytest.raises(DatasetError, match=missing):
        load_mnist(tmp_path, "test")
    with pytest.raises(DatasetError, match="split must be one of"):
        load_mnist(tmp_path, "validation")


def test_default_root_is_the_cache(_isolated_cache: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_mnist(split="test")
    assert str(_isolated_cache / "mnist") in str(info.value)


def test_download_failure_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    refusing = ["http://127.0.0.1:9/", "http://127.0.0.1:9/mirror2"]
    with pytest.raises(DatasetError) as info:
        load_mnist(tmp_path, "test", download=True, mirrors=refusing)
    message = str(info.value)
    assert "http://127.0.0.1:9/t10k-images-idx3-ubyte.gz" in message
    assert "http://127.0.0.1:9/mirror2/t10k-images-idx3-ubyte.gz" in message
    assert "by hand" in message
    assert os.listdir(tmp_path) == []


def test_download_rejects_unknown_names_and_empty_mirrors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="name must be one of"):
        download_mnist_file("emnist-images", tmp_path)
    with pytest.raises(DatasetError, match="no download mirrors"):
        download_mnist_file("t10k-labels-idx1-ubyte", tmp_path, mirrors=[])


def test_download_from_a_local_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(good)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    target = tmp_path / "target"
    path = download_mnist_file(
        "t10k-labels-idx1-ubyte", target, mirrors=[corrupt.as_uri(), mirror.as_uri()]
    )
    assert path.read_bytes() == good
    assert sorted(os.listdir(target)) == ["t10k-labels-idx1-ubyte.gz"]


# ----------------------------------------------------------------------------- patch masks


def test_patch_mask_to_pixel_mask_matches_loops() -> None:
    patch_mask = (torch.rand(3, 49) < 0.3).float()
    pixels = patch_mask_to_pixel_mask(patch_mask)
    assert pixels.shape == (3, 28, 28)
    expected = torch.zeros(3, 28, 28)
    for b in range(3):
        for p in range(49):
            row, col = divmod(p, 7)
            expected[b, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = patch_mask[b, p]
    torch.testing.assert_close(pixels, expected)
    assert pixel_mask_to_patch_mask(pixels).float().equal(patch_mask)


def test_pixel_mask_to_patch_mask_reductions() -> None:
    pixels = torch.zeros(1, 6, 4)
    pixels[0, 0, 0] = 1  # one pixel of patch 0
    pixels[0, 2:4, 0:2] = 1  # all of patch 2 (rows 2-3, cols 0-1)
    assert pixel_mask_to_patch_mask(pixels, 2, "any").tolist() == [[1, 0, 1, 0, 0, 0]]
    assert pixel_mask_to_patch_mask(pixels, 2, "all").tolist() == [[0, 0, 1, 0, 0, 0]]
    torch.testing.assert_close(
        pixel_mask_to_patch_mask(pixels, 2, "mean"), torch.tensor([[0.25, 0, 1, 0, 0, 0]])
    )
    round_trip = patch_mask_to_pixel_mask(torch.tensor([[0.0, 0, 1, 0, 0, 0]]), (6, 4), 2)
    assert round_trip.sum() == 4 and round_trip[0, 2:4, 0:2].eq(1).all()


def test_patch_masks_reject_bad_shapes() -> None:
    with pytest.raises(DatasetError, match=r"\[B, 49\]"):
        patch_mask_to_pixel_mask(torch.zeros(2, 48))
    with pytest.raises(DatasetError, match="not divisible"):
        patch_mask_to_pixel_mask(torch.zeros(2, 49), patch_size=5)
    with pytest.raises(DatasetError, match=r"\[B, H, W\]"):
        pixel_mask_to_patch_mask(torch.zeros(28, 28))
    with pytest.raises(DatasetError, match="reduce must be one of"):
        pixel_mask_to_patch_mask(torch.zeros(1, 28, 28), reduce="max")
