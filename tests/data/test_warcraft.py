"""Warcraft-style grids: gold paths against networkx, generation, caching, the .npy loader."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from aimle_zoo.data import (
    DatasetError,
    generate_warcraft,
    grid_shortest_paths,
    load_warcraft,
    load_warcraft_npy,
)
from aimle_zoo.data.warcraft import TERRAINS, prepare_warcraft

KEYS = ("maps", "vertex_weights", "shortest_paths")


def networkx_optimal_cost(costs: np.ndarray) -> float:
    """Cheapest top-left to bottom-right path over 8 neighbours, both end cells counted."""
    height, width = costs.shape
    graph = nx.DiGraph()
    for r in range(height):
        for c in range(width):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if (dr, dc) != (0, 0) and 0 <= rr < height and 0 <= cc < width:
                        graph.add_edge((r, c), (rr, cc), weight=float(costs[rr, cc]))
    return nx.dijkstra_path_length(graph, (0, 0), (height - 1, width - 1)) + float(costs[0, 0])


def is_connected_path(mask: np.ndarray) -> bool:
    """The marked cells are 8-connected and contain both corners."""
    cells = {tuple(cell) for cell in np.argwhere(mask == 1)}
    graph = nx.Graph()
    graph.add_nodes_from(cells)
    for r, c in cells:
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (r + dr, c + dc) in cells and (dr, dc) != (0, 0):
                    graph.add_edge((r, c), (r + dr, c + dc))
    corners = {(0, 0), (mask.shape[0] - 1, mask.shape[1] - 1)}
    return corners <= cells and nx.is_connected(graph)


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (2, 2)])
def test_gold_paths_are_optimal_under_networkx(shape: tuple[int, int]) -> None:
    costs = np.random.default_rng(sum(shape)).uniform(0.1, 10.0, size=(8, *shape))
    costs[0] = 1.0  # many ties
    paths, path_costs = grid_shortest_paths(costs)
    assert paths.shape == costs.shape and paths.dtype == np.uint8
    for mask, cost_grid, cost in zip(paths, costs, path_costs, strict=True):
        optimum = networkx_optimal_cost(cost_grid)
        assert cost == pytest.approx(optimum)
        assert (cost_grid * mask).sum() == pytest.approx(optimum)  # no extra cells
        assert is_connected_path(mask)


def test_shortest_path_input_errors() -> None:
    with pytest.raises(DatasetError, match=r"\[B, H, W\]"):
        grid_shortest_paths(np.ones((3, 3)))
    with pytest.raises(DatasetError, match="finite and > 0"):
        grid_shortest_paths(np.zeros((1, 3, 3)))
    with pytest.raises(DatasetError, match="finite and > 0"):
        grid_shortest_paths(np.full((1, 3, 3), np.inf))


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return generate_warcraft(12, 6, tile_size=4, seed=1, progress=False)


def test_generated_maps_show_the_hidden_costs(small: dict[str, np.ndarray]) -> None:
    maps, weights, paths = (small[key] for key in KEYS)
    assert maps.shape == (12, 24, 24, 3) and maps.dtype == np.uint8
    assert weights.shape == (12, 6, 6) and weights.dtype == np.float32
    costs = {cost: np.array(colour) for _, cost, colour in TERRAINS}
    assert set(np.unique(weights)) <= {np.float32(cost) for cost in costs}
    tiles = maps.reshape(12, 6, 4, 6, 4, 3).mean(axis=(2, 4))  # [N, G, G, 3] tile colour
    for cost, colour in costs.items():
        chosen = weights == np.float32(cost)
        if chosen.any():  # texture noise averages out to the terrain colour
            assert np.abs(tiles[chosen].mean(axis=0) - colour).max() < 6
    for mask, grid in zip(paths, weights, strict=True):
        assert (grid * mask).sum() == pytest.approx(networkx_optimal_cost(grid), rel=1e-6)


def test_generation_is_deterministic_and_prefix_stable(small: dict[str, np.ndarray]) -> None:
    again = generate_warcraft(12, 6, tile_size=4, seed=1, progress=False)
    prefix = generate_warcraft(5, 6, tile_size=4, seed=1, progress=False)
    other = generate_warcraft(12, 6, tile_size=4, seed=1, split="test", progress=False)
    for key in KEYS:
        np.testing.assert_array_equal(again[key], small[key])
        np.testing.assert_array_equal(prefix[key], small[key][:5])
    assert not np.array_equal(other["maps"], small["maps"])


def test_bad_generation_parameters() -> None:
    with pytest.raises(DatasetError, match="grid_size"):
        generate_warcraft(2, 1, progress=False)
    with pytest.raises(DatasetError, match="speckle"):
        generate_warcraft(2, 4, speckle=1.5, progress=False)
    with pytest.raises(DatasetError, match="split must be one of"):
        generate_warcraft(2, 4, split="valid", progress=False)


def test_cache_hit_and_dataset_normalisation(_isolated_cache: Path) -> None:
    kwargs = {"grid_size": 5, "tile_size": 3, "sizes": (7, 3, 2), "seed": 4, "progress": False}
    data = load_warcraft(**kwargs)
    files = sorted((_isolated_cache / "warcraft").iterdir())
    assert [f.name.split("_")[0] for f in files] == ["test", "train", "val"]
    assert all("_5x5_t3_" in f.name and "_seed4_" in f.name for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = load_warcraft(**kwargs)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert torch.equal(again.val.maps, data.val.maps)
    assert torch.equal(again.test.shortest_paths, data.test.shortest_paths)
    image, weights, path = data.train[0]
    assert image.shape == (3, 15, 15) and weights.shape == (5, 5) and path.shape == (5, 5)
    stacked = torch.stack([data.train[i][0] for i in range(len(data.train))])
    torch.testing.assert_close(stacked.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        stacked.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0
    )
    fresh = generate_warcraft(2, 5, tile_size=3, seed=4, split="test", progress=False)
    assert torch.equal(data.test.maps, torch.from_numpy(fresh["maps"]))


def test_corrupt_cache_raises(_isolated_cache: Path) -> None:
    kwargs = {"grid_size": 4, "tile_size": 2, "sizes": (2, 2, 2), "progress": False}
    load_warcraft(**kwargs)
    victim = next((_isolated_cache / "warcraft").glob("val_*.npz"))
    victim.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=rf"{victim.name} is corrupt.*delete"):
        load_warcraft(**kwargs)


def save_original(root: Path, arrays: dict[str, np.ndarray]) -> None:
    for split, rows in (("train", slice(0, 6)), ("val", slice(6, 9)), ("test", slice(9, 12))):
        for key in KEYS:
            np.save(root / f"{split}_{key}.npy", arrays[key][rows])


def test_original_npy_loader(tmp_path: Path, small: dict[str, np.ndarray]) -> None:
    save_original(tmp_path, small)
    data = load_warcraft_npy(tmp_path)
    assert len(data.train) == 6 and len(data.val) == 3 and len(data.test) == 3
    assert torch.equal(data.val.maps, torch.from_numpy(small["maps"][6:9]))
    torch.testing.assert_close(
        data.test.vertex_weights, torch.from_numpy(small["vertex_weights"][9:])
    )
    train_pixels = small["maps"][:6].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(data.mean, train_pixels.mean(axis=0))
    np.testing.assert_allclose(data.std, train_pixels.std(axis=0))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("maps", lambda a: a.astype(np.float32), "uint8"),
        ("maps", lambda a: a[..., :2], r"\[N, H_px, W_px, 3\]"),
        ("vertex_weights", lambda a: a[:2], "must both be"),
        ("vertex_weights", lambda a: -a, ">= 0"),
        ("vertex_weights", lambda a: a * np.nan, "finite"),
        ("shortest_paths", lambda a: a * 2, "0/1"),
        ("shortest_paths", lambda a: np.zeros_like(a), "top-left and bottom-right"),
    ],
)
def test_original_npy_loader_rejects_bad_files(
    tmp_path: Path, small: dict[str, np.ndarray], key: str, value: object, message: str
) -> None:
    save_original(tmp_path, small)
    np.save(tmp_path / f"val_{key}.npy", value(small[key][6:9]))
    with pytest.raises(DatasetError, match=message):
        load_warcraft_npy(tmp_path)


def test_original_npy_loader_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train_maps.npy not found"):
        load_warcraft_npy(tmp_path)
    for split in ("train", "val", "test"):
        for key in KEYS:
            (tmp_path / f"{split}_{key}.npy").write_bytes(b"not numpy")
    with pytest.raises(DatasetError, match=r"not a readable \.npy"):
        load_warcraft_npy(tmp_path)


def test_progress_bar_can_be_shown(capsys: pytest.CaptureFixture[str]) -> None:
    generate_warcraft(3, 2, tile_size=1, progress=True)
    assert "warcraft maps (train)" in capsys.readouterr().err
    generate_warcraft(3, 2, tile_size=1, progress=False)
    assert capsys.readouterr().err == ""


def test_a_constant_channel_is_centred_and_not_divided_by_zero(
    small: dict[str, np.ndarray],
) -> None:
    """Train maps with a constant blue channel: its std is taken as 1, so it normalises to 0
    (not NaN); the other channels keep their exact statistics."""
    maps = small["maps"].copy()
    maps[..., 2] = 77
    raw = {split: {**small, "maps": maps} for split in ("train", "val", "test")}
    data = prepare_warcraft(raw)
    pixels = maps.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(data.mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(data.std[:2], pixels[:, :2].std(axis=0), rtol=1e-9)
    assert data.std[2] == 1.0
    image, _, _ = data.train[0]
    assert torch.equal(image[2], torch.zeros_like(image[2]))
