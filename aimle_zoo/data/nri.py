"""The NRI "graph layout" data: spanning trees whose vertices move by force-directed layout.

Generation (as the SST/AIMLE graph-layout script), per graph:

1. A random spanning tree on n vertices: Kruskal *maximum* spanning tree on i.i.d. Gumbel(0, 1)
   weights of the n(n-1)/2 pairs ``(r, c), r < c`` in row-major order. (This is a zero-logit
   perturbed-MAP prior, not uniform over trees.) The reference script draws n(n-1) Gumbels and
   pairs them with the n(n-1)/2 pairs, so only the first half is used; drawing just the used
   half gives the same distribution, which is what this module does.
2. Initial positions ``x_0 ~ N(0, I)`` in 2-D, ``[n, 2]``.
3. ``T`` recorded frames: frame 1 is the result of one
   ``networkx.spring_layout(G, pos=x, iterations=1, threshold=1e-10, center=(0, 0))`` call on
   ``x_0`` ("1skip"), each later frame one more such call on the previous frame ("1r"); no
   observation noise ("novar"). Each call is one Fruchterman-Reingold step followed by
   re-centring at 0 and rescaling to max-abs coordinate 1.

By default step 3 runs as a vectorised numpy replica of networkx's dense Fruchterman-Reingold
step over a whole block of graphs (over ten times faster than calling networkx per graph).
Before using it, generation checks it against the installed networkx on the first graph; if
they disagree (a networkx release changed the step), it warns and calls networkx per graph.
Cached data are keyed by the networkx version, since the layouts depend on it.

Randomness: each split has its own stream, ``SeedSequence([seed, split_id, block])`` with
split ids train 0, valid 1, test 2, one stream per block of 1024 graphs (Gumbels first, then
initial positions). Graph ``i`` therefore depends only on ``(seed, split, i)``: a smaller split
is a prefix of a larger one, and changing one split's size leaves the others unchanged. The
reference instead runs one global stream through the three splits (torch for the trees, numpy
for the positions), so its files cannot be reproduced number for number.

Arrays: raw features ``[N, T, 2, n]`` float64 and edges ``[N, n, n]`` float32 (symmetric 0/1,
zero diagonal), exactly the layout of the reference's ``.npy`` files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ._common import (
    DatasetError,
    cache_root,
    cached_npz,
    check_choice,
    check_positive_int,
    params_digest,
)

GraphSplit = Literal["train", "valid", "test"]

SPLITS: tuple[GraphSplit, ...] = ("train", "valid", "test")
_SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}
_BLOCK = 1024
_DIMS = 2
_THRESHOLD = 1e-10
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- generation


def directed_edges(num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Receiver and sender of every directed edge in the NRI encoder's order.

    Edge ``e = i * (n - 1) + j'`` has receiver ``i`` and sender ``j``, where ``j'`` is ``j`` with
    the diagonal removed (receiver-major). Returns two int64 arrays ``[n (n - 1)]``.
    """
    n = check_positive_int("num_vertices", num_vertices, 2)
    receivers, senders = np.nonzero(~np.eye(n, dtype=bool))
    return receivers.astype(np.int64), senders.astype(np.int64)


def random_spanning_trees(gumbels: np.ndarray, num_vertices: int) -> np.ndarray:
    """Kruskal maximum spanning trees of complete graphs, batched.

    Args:
        gumbels: ``[B, n (n - 1) / 2]`` weights of the pairs ``np.triu_indices(n, 1)``
            (row-major ``(r, c), r < c``). Equal weights are taken in pair order.
        num_vertices: n.

    Returns:
        Symmetric 0/1 adjacency matrices ``[B, n, n]`` (float32) with n - 1 edges each.
    """
    n = check_positive_int("num_vertices", num_vertices, 2)
    first, second = np.triu_indices(n, 1)  # [P], P = n (n - 1) / 2
    if gumbels.ndim != 2 or gumbels.shape[1] != first.size:
        raise DatasetError(f"gumbels must have shape [B, {first.size}], got {gumbels.shape}")
    batch = gumbels.shape[0]
    rows = np.arange(batch)
    order = np.argsort(-gumbels, axis=1, kind="stable")  # [B, P], heaviest pair first
    component = np.tile(np.arange(n), (batch, 1))  # [B, n] union-find labels
    adjacency = np.zeros((batch, n, n), dtype=np.float32)
    for rank in range(first.size):
        u, v = first[order[:, rank]], second[order[:, rank]]  # [B]
        label_u, label_v = component[rows, u], component[rows, v]  # [B]
        joins = label_u != label_v  # [B] the pair links two components
        adjacency[rows[joins], u[joins], v[joins]] = 1.0
        adjacency[rows[joins], v[joins], u[joins]] = 1.0
        merge = joins[:, None] & (component == label_v[:, None])  # [B, n]
        component = np.where(merge, label_u[:, None], component)
    return adjacency


def spring_layout_step(positions: np.ndarray, adjacency: np.ndarray) -> np.ndarray:
    """One ``networkx.spring_layout(iterations=1, center=0, scale=1)`` call, batched.

    With ``k = sqrt(1/n)``, ``t = 0.1 * max(extent_x, extent_y)``, ``d_ij = max(|x_i - x_j|,
    0.01)``: ``f_i = sum_j (x_i - x_j) (k^2 / d_ij^2 - A_ij d_ij / k)``,
    ``x_i += t f_i / max(|f_i|, 0.01)``; then ``x -= mean(x)``, ``x /= max|x|``.

    Args:
        positions: ``[B, n, 2]`` float64.
        adjacency: ``[B, n, n]`` 0/1 weights.

    Returns:
        The new positions ``[B, n, 2]``.
    """
    n = positions.shape[1]
    k = np.sqrt(1.0 / n)
    extent = np.max(positions, axis=1) - np.min(positions, axis=1)  # [B, 2]
    temperature = np.maximum(extent[:, 0], extent[:, 1]) * 0.1  # [B]
    delta = positions[:, :, np.newaxis, :] - positions[:, np.newaxis, :, :]  # [B, n, n, 2]
    distance = np.linalg.norm(delta, axis=-1)  # [B, n, n]
    np.clip(distance, 0.01, None, out=distance)
    force = k * k / distance**2 - adjacency * distance / k  # [B, n, n]
    displacement = np.einsum("bijk,bij->bik", delta, force)  # [B, n, 2]
    length = np.clip(np.linalg.norm(displacement, axis=-1), 0.01, None)  # [B, n]
    moved = positions + np.einsum("bij,bi->bij", displacement, temperature[:, None] / length)
    moved -= moved.mean(axis=1, keepdims=True)
    limit = np.abs(moved).max(axis=(1, 2))  # [B]
    scale = np.divide(1.0, limit, out=np.ones_like(limit), where=limit > 0)
    return moved * scale[:, None, None]


def networkx_layout_frames(
    adjacency: np.ndarray, initial: np.ndarray, num_timesteps: int
) -> np.ndarray:
    """The frames of one graph by calling ``networkx.spring_layout`` itself.

    Args:
        adjacency: ``[n, n]`` 0/1 symmetric.
        initial: ``[n, 2]`` initial positions.
        num_timesteps: T.

    Returns:
        ``[T, n, 2]``: frame t is ``t + 1`` spring-layout calls after ``initial``.
    """
    n = adjacency.shape[0]
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(*np.nonzero(np.triu(adjacency)), strict=True))
    state = np.random.RandomState(0)  # consumed by networkx, unused: every node has a position
    layout = {i: initial[i] for i in range(n)}
    frames = np.empty((num_timesteps, n, _DIMS))
    for step in range(num_timesteps):
        layout = nx.spring_layout(
            graph,
            pos=layout,
            iterations=1,
            threshold=_THRESHOLD,
            center=np.zeros(_DIMS),
            seed=state,
        )
        frames[step] = [layout[i] for i in range(n)]
    return frames


def generate_graph_layout(
    num_graphs: int,
    num_timesteps: int = 10,
    *,
    num_vertices: int = 10,
    seed: int = 42,
    split: GraphSplit = "train",
    progress: bool = True,
    use_networkx: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_graphs`` graph-layout trajectories (see the module docstring).

    Args:
        num_graphs: N.
        num_timesteps: T recorded frames (the reference uses 10 or 20).
        num_vertices: n.
        seed: base seed; ``split`` selects the derived stream.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        progress: show a tqdm bar.
        use_networkx: call ``networkx.spring_layout`` per graph instead of the vectorised step.

    Returns:
        ``features`` float64 ``[N, T, 2, n]`` and ``edges`` float32 ``[N, n, n]``.
    """
    count = check_positive_int("num_graphs", num_graphs)
    steps = check_positive_int("num_timesteps", num_timesteps)
    n = check_positive_int("num_vertices", num_vertices, 2)
    check_choice("split", split, SPLITS)
    features = np.empty((count, steps, _DIMS, n))
    edges = np.empty((count, n, n), dtype=np.float32)
    vectorised = not use_networkx
    with tqdm(total=count, desc=f"graph layout ({split})", disable=not progress) as bar:
        for block, start in enumerate(range(0, count, _BLOCK)):
            stop = min(start + _BLOCK, count)
            rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], block]))
            gumbels = rng.gumbel(size=(_BLOCK, n * (n - 1) // 2))[: stop - start]
            initial = rng.standard_normal((_BLOCK, n, _DIMS))[: stop - start]
            adjacency = random_spanning_trees(gumbels, n)
            if vectorised and block == 0:
                vectorised = _vectorised_step_matches_networkx(adjacency[0], initial[0], steps)
            if vectorised:
                frames = _vectorised_frames(adjacency, initial, steps)  # [B, T, n, 2]
            else:
                frames = np.stack(
                    [
                        networkx_layout_frames(a, x, steps)
                        for a, x in zip(adjacency, initial, strict=True)
                    ]
                )
            features[start:stop] = frames.transpose(0, 1, 3, 2)
            edges[start:stop] = adjacency
            bar.update(stop - start)
    return features, edges


def _vectorised_frames(adjacency: np.ndarray, initial: np.ndarray, steps: int) -> np.ndarray:
    positions = initial.astype(np.float64)  # [B, n, 2]
    weights = adjacency.astype(np.float64)
    frames = np.empty((positions.shape[0], steps, *positions.shape[1:]))  # [B, T, n, 2]
    for step in range(steps):
        positions = spring_layout_step(positions, weights)
        frames[:, step] = positions
    return frames


def _vectorised_step_matches_networkx(
    adjacency: np.ndarray, initial: np.ndarray, steps: int
) -> bool:
    expected = networkx_layout_frames(adjacency, initial, steps)
    found = _vectorised_frames(adjacency[None], initial[None], steps)[0]
    if np.allclose(found, expected, rtol=0.0, atol=1e-9):
        return True
    warnings.warn(
        f"the vectorised spring-layout step does not match networkx {nx.__version__} (max "
        f"difference {np.abs(found - expected).max():.3g}); calling networkx per graph instead",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class GraphLayoutData:
    """The three splits after the NRI loader transformations.

    Each split is a ``TensorDataset`` of ``(features float32 [N, n, T, 2], edges int64
    [N, n (n - 1)])``: features min-max normalised with the train split's global minimum and
    maximum, ``x' = 2 (x - min) / (max - min) - 1`` (train values land in [-1, 1]); edges in the
    order of :func:`directed_edges`.
    """

    train: TensorDataset
    valid: TensorDataset
    test: TensorDataset
    feature_min: float
    feature_max: float

    def split(self, name: GraphSplit) -> TensorDataset:
        """The dataset of split ``name``."""
        check_choice("split", name, SPLITS)
        dataset: TensorDataset = getattr(self, name)
        return dataset


def prepare_graph_layout(raw: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> GraphLayoutData:
    """Apply the NRI loader transformations to raw ``{split: (features, edges)}`` arrays.

    Args:
        raw: for each of ``"train"``, ``"valid"``, ``"test"``: features ``[N, T, 2, n]`` and
            edges ``[N, n, n]`` (symmetric 0/1, zero diagonal), as generated or as in the
            reference files. T may differ between splits.

    Raises:
        DatasetError: a split is missing or its arrays have the wrong shape or values.
    """
    missing = [name for name in SPLITS if name not in raw]
    if missing:
        raise DatasetError(f"missing splits {missing}; need {list(SPLITS)}")
    for name in SPLITS:
        _check_raw(name, *raw[name])
    sizes = {raw[name][0].shape[3] for name in SPLITS}
    if len(sizes) != 1:
        raise DatasetError(f"the splits have different numbers of vertices {sorted(sizes)}")
    low, high = float(raw["train"][0].min()), float(raw["train"][0].max())
    if not high > low:
        raise DatasetError(f"train features are constant ({low}); cannot min-max normalise")
    receivers, senders = directed_edges(sizes.pop())
    datasets = {}
    for name in SPLITS:
        features, edges = raw[name]
        scaled = (np.asarray(features, dtype=np.float64) - low) * 2.0 / (high - low) - 1.0
        nodes_first = np.ascontiguousarray(scaled.transpose(0, 3, 1, 2), dtype=np.float32)
        flat = np.asarray(edges)[:, receivers, senders].astype(np.int64)  # [N, n (n - 1)]
        datasets[name] = TensorDataset(torch.from_numpy(nodes_first), torch.from_numpy(flat))
    return GraphLayoutData(
        train=datasets["train"],
        valid=datasets["valid"],
        test=datasets["test"],
        feature_min=low,
        feature_max=high,
    )


def _check_raw(name: str, features: np.ndarray, edges: np.ndarray) -> None:
    if features.ndim != 4 or features.shape[2] != _DIMS or features.shape[0] == 0:
        raise DatasetError(
            f"{name} features must have shape [N, T, 2, n] with N >= 1, got {features.shape}"
        )
    count, n = features.shape[0], features.shape[3]
    if edges.shape != (count, n, n):
        raise DatasetError(
            f"{name} edges must have shape {(count, n, n)} to match features {features.shape}, "
            f"got {edges.shape}"
        )
    if not np.isfinite(features).all():
        raise DatasetError(f"{name} features contain NaN or inf")
    if not np.isin(edges, (0, 1)).all():
        raise DatasetError(f"{name} edges must be 0/1, found values {np.unique(edges)[:8]}")
    if (edges != edges.transpose(0, 2, 1)).any() or edges[:, np.arange(n), np.arange(n)].any():
        raise DatasetError(f"{name} edges must be symmetric with a zero diagonal")


def graph_layout_file_stem(num_timesteps: int, num_vertices: int = 10) -> str:
    """The reference's file-name stem, e.g. ``novar_1skip_10t_1r_graph10``."""
    return f"novar_1skip_{num_timesteps}t_1r_graph{num_vertices}"


def load_graph_layout(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    num_timesteps: int = 10,
    num_vertices: int = 10,
    sizes: tuple[int, int, int] = (50_000, 10_000, 10_000),
    seed: int = 42,
    progress: bool = True,
    use_networkx: bool = False,
) -> GraphLayoutData:
    """Generate (or load from the cache) the three splits and apply the loader transformations.

    Each split is cached as ``<cache>/nri_graph_layout/{split}_<stem>_N{size}_seed{seed}_
    nx{networkx version}_<hash>.npz`` (see :func:`aimle_zoo.data.cache_root`), written
    atomically. Arguments as in :func:`generate_graph_layout`; ``sizes`` are the
    train/valid/test sizes.

    Raises:
        DatasetError: a cache file is corrupt or was generated with other parameters.
    """
    if len(sizes) != 3:
        raise DatasetError(f"sizes must be (train, valid, test), got {sizes!r}")
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {
        name: load_graph_layout_split(
            name,
            size,
            cache_dir,
            num_timesteps=num_timesteps,
            num_vertices=num_vertices,
            seed=seed,
            progress=progress,
            use_networkx=use_networkx,
        )
        for name, size in zip(SPLITS, sizes, strict=True)
    }
    return prepare_graph_layout(raw)


def load_graph_layout_split(
    split: GraphSplit,
    num_graphs: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    num_timesteps: int = 10,
    num_vertices: int = 10,
    seed: int = 42,
    progress: bool = True,
    use_networkx: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(features [N, T, 2, n] float64, edges [N, n, n] float32)`` of one split, cached."""
    check_choice("split", split, SPLITS)
    count = check_positive_int("num_graphs", num_graphs)
    params = {
        "dataset": "nri_graph_layout",
        "format": _FORMAT_VERSION,
        "split": split,
        "num_graphs": count,
        "num_timesteps": num_timesteps,
        "num_vertices": num_vertices,
        "seed": seed,
        "networkx": nx.__version__,
    }
    name = (
        f"{split}_{graph_layout_file_stem(num_timesteps, num_vertices)}_N{count}_seed{seed}_"
        f"nx{nx.__version__}_{params_digest(params)}.npz"
    )
    path = cache_root(cache_dir) / "nri_graph_layout" / name

    def build() -> dict[str, np.ndarray]:
        features, edges = generate_graph_layout(
            count,
            num_timesteps,
            num_vertices=num_vertices,
            seed=seed,
            split=split,
            progress=progress,
            use_networkx=use_networkx,
        )
        return {"features": features, "edges": edges}

    shapes = {
        "features": (count, num_timesteps, _DIMS, num_vertices),
        "edges": (count, num_vertices, num_vertices),
    }
    arrays = cached_npz(path, params, shapes, build)
    return arrays["features"], arrays["edges"]


def load_graph_layout_npy(
    directory: str | os.PathLike[str], *, num_timesteps: int = 10, num_vertices: int = 10
) -> GraphLayoutData:
    """Load the reference's ``.npy`` files and apply the loader transformations.

    Reads ``data_{split}_<stem>.npy`` ``[N, T, 2, n]`` and ``edges_{split}_<stem>.npy``
    ``[N, n, n]`` for split in train/valid/test, with ``<stem> =``
    :func:`graph_layout_file_stem` (e.g. ``data_train_novar_1skip_10t_1r_graph10.npy``).

    Raises:
        DatasetError: a file is missing, unreadable or has the wrong shape or values.
    """
    root = Path(directory)
    stem = graph_layout_file_stem(num_timesteps, num_vertices)
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        features = _load_npy(root / f"data_{split}_{stem}.npy")
        edges = _load_npy(root / f"edges_{split}_{stem}.npy")
        if features.ndim == 4 and features.shape[3] != num_vertices:
            raise DatasetError(
                f"{root / f'data_{split}_{stem}.npy'} has {features.shape[3]} vertices, "
                f"expected {num_vertices}"
            )
        raw[split] = (features, edges)
    return prepare_graph_layout(raw)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(
            f"{path} not found; the reference files come from the SST/AIMLE data archive "
            "(sst-data.tar.gz), or generate the data with load_graph_layout()"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"{path} is not a readable .npy file ({err})") from err
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise DatasetError(f"{path} does not hold a numeric array")
    return array
