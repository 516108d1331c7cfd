"""Warcraft-style shortest-path data: terrain images, hidden vertex costs and optimal paths.

Generated data (a stand-in for the Warcraft II maps of Vlastelica et al., 2020): a square
grid of ``G x G`` tiles, each of one of five terrain types with a hidden cost. The image draws
every tile as a ``t x t`` block of its terrain's colour plus per-pixel Gaussian texture noise,
so a model must infer the costs from appearance. Targets follow the Warcraft convention: the
vertex-cost grid and the mask of a minimum-cost path from the top-left to the bottom-right
tile over the 8-neighbourhood, the cost of a path being the sum of the costs of all its tiles,
both ends included.

Terrain layout per map: ``num_regions`` random sites with random types, every tile taking the
type of its nearest site (a Voronoi partition), then each tile independently replaced by a
random type with probability ``speckle``.

Randomness: one stream per block of 1024 maps, ``SeedSequence([seed, split_id, block])``
(split ids train 0, val 1, test 2), drawing sites, site types, speckle, then texture noise; a
smaller split is a prefix of a larger one. The gold paths come from
``scipy.sparse.csgraph.dijkstra`` on a block-diagonal graph of the whole block (edge
``u -> v`` weighs ``cost[v]``); among equally cheap paths it returns one deterministically.

Arrays use the layout of the original ``.npy`` files: maps uint8 ``[N, G t, G t, 3]``
(channels last), vertex weights float32 ``[N, G, G]``, shortest paths uint8 ``[N, G, G]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ._common import (
    DatasetError,
    cache_root,
    cached_npz,
    check_choice,
    check_positive_int,
    params_digest,
)

WarcraftSplit = Literal["train", "val", "test"]

SPLITS: tuple[WarcraftSplit, ...] = ("train", "val", "test")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

#: Terrain types: name, hidden vertex cost, base RGB colour.
TERRAINS: tuple[tuple[str, float, tuple[int, int, int]], ...] = (
    ("road", 0.8, (196, 170, 120)),
    ("grass", 1.2, (110, 170, 70)),
    ("forest", 5.3, (40, 95, 45)),
    ("swamp", 7.7, (95, 90, 60)),
    ("mountain", 9.2, (130, 130, 140)),
)

_BLOCK = 1024
_FORMAT_VERSION = 1
_KEYS = ("maps", "vertex_weights", "shortest_paths")


# ----------------------------------------------------------------------------- shortest paths


def _grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed 8-neighbourhood edges ``(source, target)`` of a grid, vertex ``r * width + c``."""
    rows, cols = np.divmod(np.arange(height * width), width)
    sources, targets = [], []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            sources.append(np.flatnonzero(inside))
            targets.append(r[inside] * width + c[inside])
    return np.concatenate(sources), np.concatenate(targets)


def grid_shortest_paths(costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost top-left to bottom-right paths on vertex-weighted 8-neighbour grids.

    The cost of a path is the sum of ``costs`` over all its cells, both endpoints included.

    Args:
        costs: ``[B, H, W]`` positive finite vertex costs.

    Returns:
        ``paths`` uint8 ``[B, H, W]`` (1 on the cells of the path) and ``path_costs`` float64
        ``[B]``.

    Raises:
        DatasetError: ``costs`` has the wrong rank or non-positive / non-finite entries.
    """
    weights = np.asarray(costs, dtype=np.float64)
    if weights.ndim != 3 or weights.shape[0] == 0:
        raise DatasetError(f"costs must have shape [B, H, W] with B >= 1, got {weights.shape}")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise DatasetError("costs must be finite and > 0 (clamp or shift them first)")
    batch, height, width = weights.shape
    cells = height * width
    sources, targets = _grid_edges(height, width)  # [E]
    offsets = (np.arange(batch) * cells)[:, None]  # [B, 1]
    data = weights.reshape(batch, cells)[:, targets]  # [B, E] edge u -> v weighs cost[v]
    graph = csr_matrix(
        (data.ravel(), ((sources + offsets).ravel(), (targets + offsets).ravel())),
        shape=(batch * cells, batch * cells),
    )
    starts = offsets[:, 0]  # [B]
    distances, predecessors, _ = dijkstra(
        graph, directed=True, indices=starts, min_only=True, return_predecessors=True
    )
    ends = starts + cells - 1  # [B]
    paths = np.zeros(batch * cells, dtype=np.uint8)
    current = ends.copy()
    paths[current] = 1
    for _ in range(cells):
        walking = current != starts
        if not walking.any():
            break
        current = np.where(walking, predecessors[current], current)
        paths[current] = 1
    path_costs = distances[ends] + weights[:, 0, 0]
    return paths.reshape(batch, height, width), path_costs


# ----------------------------------------------------------------------------- generation


def generate_warcraft(
    num_maps: int,
    grid_size: int = 12,
    *,
    tile_size: int = 8,
    num_regions: int = 12,
    speckle: float = 0.1,
    texture_std: float = 24.0,
    seed: int = 0,
    split: WarcraftSplit = "train",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Generate ``num_maps`` maps (see the module docstring).

    Args:
        num_maps: N.
        grid_size: G, tiles per side (the Warcraft data use 12, 18, 24, 30).
        tile_size: t, pixels per tile side.
        num_regions: Voronoi sites per map.
        speckle: probability that a tile gets an independent random terrain.
        texture_std: standard deviation of the per-pixel noise, in 0..255 intensity units.
        seed: base seed; ``split`` selects the derived stream.
        split: ``"train"``, ``"val"`` or ``"test"``.
        progress: show a tqdm bar.

    Returns:
        ``{"maps": uint8 [N, G t, G t, 3], "vertex_weights": float32 [N, G, G],
        "shortest_paths": uint8 [N, G, G]}``.
    """
    count = check_positive_int("num_maps", num_maps)
    size = check_positive_int("grid_size", grid_size, 2)
    tile = check_positive_int("tile_size", tile_size)
    regions = check_positive_int("num_regions", num_regions)
    check_choice("split", split, SPLITS)
    if not 0.0 <= speckle <= 1.0 or not texture_std >= 0.0:
        raise DatasetError(
            f"speckle must lie in [0, 1] and texture_std be >= 0, got {speckle}, {texture_std}"
        )
    costs = np.array([cost for _, cost, _ in TERRAINS], dtype=np.float32)  # [K]
    colours = np.array([colour for _, _, colour in TERRAINS], dtype=np.float32)  # [K, 3]
    pixels = size * tile
    maps = np.empty((count, pixels, pixels, 3), dtype=np.uint8)
    weights = np.empty((count, size, size), dtype=np.float32)
    paths = np.empty((count, size, size), dtype=np.uint8)
    cell_rows, cell_cols = np.divmod(np.arange(size * size), size)
    cell_xy = np.stack([cell_rows, cell_cols], axis=-1).astype(np.float64)  # [G G, 2]
    with tqdm(total=count, desc=f"warcraft maps ({split})", disable=not progress) as bar:
        for block, start in enumerate(range(0, count, _BLOCK)):
            stop = min(start + _BLOCK, count)
            rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], block]))
            sites = rng.random((_BLOCK, regions, 2))[: stop - start] * size  # [B, R, 2]
            site_types = rng.integers(len(TERRAINS), size=(_BLOCK, regions))[: stop - start]
            flip = rng.random((_BLOCK, size * size))[: stop - start] < speckle  # [B, G G]
            flip_types = rng.integers(len(TERRAINS), size=(_BLOCK, size * size))[: stop - start]
            gaps = np.linalg.norm(cell_xy[None, :, None, :] - sites[:, None], axis=-1)
            nearest = gaps.argmin(axis=-1)  # [B, G G]
            types = np.take_along_axis(site_types, nearest, axis=1)
            types = np.where(flip, flip_types, types).reshape(-1, size, size)  # [B, G, G]
            image = rng.standard_normal((stop - start, pixels, pixels, 3), dtype=np.float32)
            image *= texture_std
            image += colours[types.repeat(tile, axis=1).repeat(tile, axis=2)]  # [B, G t, G t, 3]
            np.rint(image, out=image)
            maps[start:stop] = np.clip(image, 0, 255, out=image)
            weights[start:stop] = costs[types]
            paths[start:stop] = grid_shortest_paths(costs[types])[0]
            bar.update(stop - start)
    return {"maps": maps, "vertex_weights": weights, "shortest_paths": paths}


# ----------------------------------------------------------------------------- datasets


class WarcraftDataset(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Items ``(image float32 [3, G t, G t], vertex_weights float32 [G, G], path float32 [G, G])``.

    The image is ``(maps / 255 - mean) / std`` per channel, with ``mean`` and ``std`` ``[3]``
    from the training split. The raw arrays stay available as ``maps`` (uint8
    ``[N, G t, G t, 3]``), ``vertex_weights`` and ``shortest_paths``.
    """

    def __init__(
        self,
        maps: np.ndarray,
        vertex_weights: np.ndarray,
        shortest_paths: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
    ) -> None:
        self.maps = torch.from_numpy(np.ascontiguousarray(maps))
        self.vertex_weights = torch.from_numpy(np.asarray(vertex_weights, dtype=np.float32))
        self.shortest_paths = torch.from_numpy(np.asarray(shortest_paths, dtype=np.float32))
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = self.maps[index].permute(2, 0, 1).to(torch.float32) / 255.0  # [3, H, W]
        return (
            (image - self.mean) / self.std,
            self.vertex_weights[index],
            self.shortest_paths[index],
        )


@dataclass(frozen=True)
class WarcraftData:
    """The three splits and the per-channel normalisation (in [0, 1] units) of the train maps."""

    train: WarcraftDataset
    val: WarcraftDataset
    test: WarcraftDataset
    mean: np.ndarray
    std: np.ndarray


def prepare_warcraft(raw: Mapping[str, Mapping[str, np.ndarray]]) -> WarcraftData:
    """Validate raw ``{split: {maps, vertex_weights, shortest_paths}}`` arrays and wrap them.

    Raises:
        DatasetError: a split or array is missing, or shapes, dtypes or values are wrong.
    """
    for split in SPLITS:
        if split not in raw:
            raise DatasetError(f"missing split {split!r}; need {list(SPLITS)}")
        _check_split(split, raw[split])
    mean, std = _channel_statistics(raw["train"]["maps"])
    datasets = {
        split: WarcraftDataset(
            raw[split]["maps"],
            raw[split]["vertex_weights"],
            raw[split]["shortest_paths"],
            mean,
            std,
        )
        for split in SPLITS
    }
    return WarcraftData(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], mean=mean, std=std
    )


def _channel_statistics(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std ``[3]`` of uint8 maps ``[N, H, W, 3]`` in [0, 1] units,
    from 256-bin histograms (a constant channel gets std 1)."""
    counts = np.zeros((3, 256), dtype=np.int64)
    for row in range(0, maps.shape[0], _BLOCK):
        for channel in range(3):
            counts[channel] += np.bincount(
                maps[row : row + _BLOCK, ..., channel].ravel(), minlength=256
            )
    levels = np.arange(256) / 255.0
    total = counts.sum(axis=1)  # [3]
    mean = counts @ levels / total
    variance = counts @ levels**2 / total - mean**2
    std = np.sqrt(np.maximum(variance, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _check_split(split: str, arrays: Mapping[str, np.ndarray]) -> None:
    missing = [key for key in _KEYS if key not in arrays]
    if missing:
        raise DatasetError(f"split {split!r} lacks {missing}")
    maps, weights, paths = (np.asarray(arrays[key]) for key in _KEYS)
    if maps.dtype != np.uint8 or maps.ndim != 4 or maps.shape[3] != 3 or maps.shape[0] == 0:
        raise DatasetError(
            f"{split} maps must be uint8 [N, H_px, W_px, 3] with N >= 1, got {maps.dtype} "
            f"{maps.shape}"
        )
    if weights.ndim != 3 or weights.shape[0] != maps.shape[0] or paths.shape != weights.shape:
        raise DatasetError(
            f"{split}: vertex_weights {weights.shape} and shortest_paths {paths.shape} must both "
            f"be [N, H, W] with N = {maps.shape[0]} as the maps"
        )
    if not np.issubdtype(weights.dtype, np.number) or not np.isfinite(weights).all():
        raise DatasetError(f"{split} vertex_weights must be finite numbers")
    if (weights < 0).any():
        raise DatasetError(f"{split} vertex_weights must be >= 0")
    if not np.isin(paths, (0, 1)).all():
        raise DatasetError(f"{split} shortest_paths must be 0/1 masks")
    if not (paths[:, 0, 0] == 1).all() or not (paths[:, -1, -1] == 1).all():
        raise DatasetError(
            f"{split} shortest_paths must contain the top-left and bottom-right cells "
            "(Warcraft convention)"
        )


def load_warcraft(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    grid_size: int = 12,
    tile_size: int = 8,
    sizes: tuple[int, int, int] = (10_000, 1_000, 1_000),
    seed: int = 0,
    num_regions: int = 12,
    speckle: float = 0.1,
    texture_std: float = 24.0,
    progress: bool = True,
) -> WarcraftData:
    """Generate (or load from the cache) the three splits; arguments as in
    :func:`generate_warcraft`, ``sizes`` being the train/val/test sizes.

    Each split is cached atomically as ``<cache>/warcraft/{split}_{G}x{G}_t{t}_N{size}_
    seed{seed}_<hash>.npz`` (see :func:`aimle_zoo.data.cache_root`).

    Raises:
        DatasetError: a cache file is corrupt or was generated with other parameters.
    """
    if len(sizes) != 3:
        raise DatasetError(f"sizes must be (train, val, test), got {sizes!r}")
    raw: dict[str, Mapping[str, np.ndarray]] = {}
    for split, count in zip(SPLITS, sizes, strict=True):
        params = {
            "dataset": "warcraft",
            "format": _FORMAT_VERSION,
            "split": split,
            "num_maps": count,
            "grid_size": grid_size,
            "tile_size": tile_size,
            "num_regions": num_regions,
            "speckle": speckle,
            "texture_std": texture_std,
            "seed": seed,
            "terrains": [list(terrain) for terrain in TERRAINS],
        }
        name = (
            f"{split}_{grid_size}x{grid_size}_t{tile_size}_N{count}_seed{seed}_"
            f"{params_digest(params)}.npz"
        )

        def build(split: WarcraftSplit = split, count: int = count) -> dict[str, np.ndarray]:
            return generate_warcraft(
                count,
                grid_size,
                tile_size=tile_size,
                num_regions=num_regions,
                speckle=speckle,
                texture_std=texture_std,
                seed=seed,
                split=split,
                progress=progress,
            )

        pixels, grid = grid_size * tile_size, (count, grid_size, grid_size)
        shapes = dict(zip(_KEYS, [(count, pixels, pixels, 3), grid, grid], strict=True))
        path = cache_root(cache_dir) / "warcraft" / name
        raw[split] = cached_npz(path, params, shapes, build)
    return prepare_warcraft(raw)


def load_warcraft_npy(directory: str | os.PathLike[str]) -> WarcraftData:
    """Load the original Warcraft files ``{split}_maps.npy``, ``{split}_vertex_weights.npy`` and
    ``{split}_shortest_paths.npy`` (split in train/val/test) from ``directory`` (e.g. the
    ``12x12`` folder of the Warcraft archive).

    Raises:
        DatasetError: a file is missing or unreadable, or shapes, dtypes or values are wrong.
    """
    root = Path(directory)
    raw: dict[str, Mapping[str, np.ndarray]] = {}
    for split in SPLITS:
        arrays: dict[str, np.ndarray] = {}
        for key in _KEYS:
            path = root / f"{split}_{key}.npy"
            if not path.is_file():
                raise DatasetError(
                    f"{path} not found; expected the Warcraft shortest-path files "
                    "{train,val,test}_{maps,vertex_weights,shortest_paths}.npy in this folder"
                )
            try:
                arrays[key] = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise DatasetError(f"{path} is not a readable .npy file ({err})") from err
        raw[split] = arrays
    return prepare_warcraft(raw)
