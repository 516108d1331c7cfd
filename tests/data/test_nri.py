"""NRI graph-layout data: trees, networkx layouts, seeds, caching, loader transformations."""

from __future__ import annotations

import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from aimle_zoo.data import (
    DatasetError,
    directed_edges,
    generate_graph_layout,
    load_graph_layout,
    load_graph_layout_npy,
    nri as nri_module,
    prepare_graph_layout,
)
from aimle_zoo.data.nri import load_graph_layout_split, random_spanning_trees, spring_layout_step

N_VERTICES = 10


def spring_step_networkx(adjacency: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """One ``networkx.spring_layout`` call as in the reference script: ``[n, 2] -> [n, 2]``."""
    graph = nx.from_numpy_array(adjacency)
    layout = nx.spring_layout(
        graph,
        pos={i: positions[i] for i in range(len(positions))},
        iterations=1,
        threshold=1e-10,
        center=np.zeros(2),
        seed=np.random.RandomState(123),
    )
    return np.array([layout[i] for i in range(len(positions))])


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return generate_graph_layout(40, 6, seed=3, progress=False)


def test_shapes_and_dtypes(small: tuple[np.ndarray, np.ndarray]) -> None:
    features, edges = small
    assert features.shape == (40, 6, 2, N_VERTICES) and features.dtype == np.float64
    assert edges.shape == (40, N_VERTICES, N_VERTICES) and edges.dtype == np.float32


def test_edges_are_spanning_trees(small: tuple[np.ndarray, np.ndarray]) -> None:
    _, edges = small
    for adjacency in edges:
        assert np.array_equal(adjacency, adjacency.T) and not np.diag(adjacency).any()
        graph = nx.from_numpy_array(adjacency)
        assert graph.number_of_nodes() == N_VERTICES and nx.is_tree(graph)


def test_kruskal_gives_the_maximum_spanning_tree_of_networkx() -> None:
    n = 7
    gumbels = np.random.default_rng(5).gumbel(size=(25, n * (n - 1) // 2))
    trees = random_spanning_trees(gumbels, n)
    rows, cols = np.triu_indices(n, 1)
    for weights, tree in zip(gumbels, trees, strict=True):
        graph = nx.Graph()
        graph.add_weighted_edges_from(zip(rows, cols, weights, strict=True))
        expected = nx.to_numpy_array(nx.maximum_spanning_tree(graph), nodelist=range(n))
        np.testing.assert_array_equal(tree, expected != 0)


def test_every_frame_is_one_networkx_spring_layout_call_on_the_previous(
    small: tuple[np.ndarray, np.ndarray],
) -> None:
    features, edges = small
    for graph in range(0, 40, 7):
        frames = features[graph].transpose(0, 2, 1)  # [T, n, 2]
        for step in range(1, frames.shape[0]):
            expected = spring_step_networkx(edges[graph], frames[step - 1])
            np.testing.assert_allclose(frames[step], expected, rtol=0, atol=1e-12)


def test_vectorised_step_equals_networkx_including_clipped_distances() -> None:
    rng = np.random.default_rng(8)
    trees = random_spanning_trees(rng.gumbel(size=(16, 45)), N_VERTICES)
    positions = rng.normal(size=(16, N_VERTICES, 2))
    positions[:8, 1] = positions[:8, 0] + 1e-3  # node pairs closer than the 0.01 floor
    positions[:8, 2] = positions[:8, 3]  # coincident nodes
    angles = 2 * np.pi * np.arange(N_VERTICES - 1) / (N_VERTICES - 1)
    trees[-1] = 0
    trees[-1, 0, 1:] = trees[-1, 1:, 0] = 1  # a star whose centre feels no net force
    positions[-1, 0] = 0.0
    positions[-1, 1:] = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    found = spring_layout_step(positions, trees.astype(np.float64))
    for graph in range(16):
        expected = spring_step_networkx(trees[graph], positions[graph])
        np.testing.assert_allclose(found[graph], expected, rtol=0, atol=1e-12)


def test_networkx_engine_gives_the_same_data() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the vectorised path must be used, not the fallback
        fast = generate_graph_layout(6, 5, seed=11, split="valid", progress=False)
    slow = generate_graph_layout(6, 5, seed=11, split="valid", progress=False, use_networkx=True)
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_allclose(fast[0], slow[0], rtol=0, atol=1e-12)
    # the first frame is one layout step from N(0, I) positions: centred, max-abs 1
    first = fast[0][:, 0]  # [N, 2, n]
    np.testing.assert_allclose(first.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(first).max(axis=(1, 2)), 1.0)


def test_falls_back_to_networkx_when_the_replica_disagrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = generate_graph_layout(3, 4, seed=2, progress=False, use_networkx=True)
    original = nri_module.spring_layout_step
    monkeypatch.setattr(
        nri_module, "spring_layout_step", lambda pos, adj: original(pos, adj) * 1.001
    )
    with pytest.warns(RuntimeWarning, match="calling networkx per graph"):
        found = generate_graph_layout(3, 4, seed=2, progress=False)
    np.testing.assert_array_equal(found[0], expected[0])


def test_determinism_prefixes_and_split_streams() -> None:
    a = generate_graph_layout(30, 3, seed=7, progress=False)
    b = generate_graph_layout(30, 3, seed=7, progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    prefix = generate_graph_layout(12, 3, seed=7, progress=False)
    np.testing.assert_array_equal(prefix[0], a[0][:12])
    other_seed = generate_graph_layout(30, 3, seed=8, progress=False)
    other_split = generate_graph_layout(30, 3, seed=7, split="test", progress=False)
    assert not np.allclose(other_seed[0], a[0]) and not np.allclose(other_split[0], a[0])


def test_directed_edge_order_is_receiver_major() -> None:
    receivers, senders = directed_edges(4)
    expected = [(i, j) for i in range(4) for j in range(4) if j != i]
    assert list(zip(receivers.tolist(), senders.tolist(), strict=True)) == expected
    for e, (i, j) in enumerate(expected):
        assert e == i * 3 + (j if j < i else j - 1)


def test_prepare_normalises_with_train_range_and_flattens_edges(
    small: tuple[np.ndarray, np.ndarray],
) -> None:
    features, edges = small
    raw = {
        "train": (features[:20], edges[:20]),
        "valid": (features[20:30] * 1.5, edges[20:30]),
        "test": (features[30:], edges[30:]),
    }
    data = prepare_graph_layout(raw)
    low, high = features[:20].min(), features[:20].max()
    assert (data.feature_min, data.feature_max) == (low, high)
    train_x, train_e = data.train.tensors
    assert train_x.shape == (20, N_VERTICES, 6, 2) and train_x.dtype == torch.float32
    assert float(train_x.min()) == -1.0 and float(train_x.max()) == 1.0
    valid_x, _ = data.split("valid").tensors
    b, node, step, dim = 4, 3, 5, 1
    raw_value = raw["valid"][0][b, step, dim, node]
    assert valid_x[b, node, step, dim].item() == pytest.approx(
        (raw_value - low) / (high - low) * 2 - 1, abs=1e-6
    )
    assert train_e.shape == (20, N_VERTICES * (N_VERTICES - 1)) and train_e.dtype == torch.int64
    for e in (0, 8, 9, 45, 89):
        i, j_prime = divmod(e, N_VERTICES - 1)
        j = j_prime if j_prime < i else j_prime + 1
        assert train_e[:, e].tolist() == edges[:20, i, j].astype(int).tolist()
    assert train_e.sum(dim=1).eq(2 * (N_VERTICES - 1)).all()


def test_prepare_rejects_bad_arrays(small: tuple[np.ndarray, np.ndarray]) -> None:
    features, edges = small
    good = {name: (features[:5], edges[:5]) for name in ("train", "valid", "test")}
    with pytest.raises(DatasetError, match=r"missing splits \['test'\]"):
        prepare_graph_layout({k: v for k, v in good.items() if k != "test"})
    cases = {
        "shape": (features[:5, :, :1], edges[:5]),
        "edge shape": (features[:5], edges[:4]),
        "values": (features[:5], edges[:5] * 2),
        "asymmetric": (features[:5], np.triu(edges[:5])),
        "nan": (np.where(features[:5] > 0.9, np.nan, features[:5]), edges[:5]),
    }
    messages = {
        "shape": r"\[N, T, 2, n\]",
        "edge shape": "edges must have shape",
        "values": "0/1",
        "asymmetric": "symmetric",
        "nan": "NaN",
    }
    for case, arrays in cases.items():
        with pytest.raises(DatasetError, match=messages[case]):
            prepare_graph_layout({**good, "valid": arrays})
    with pytest.raises(DatasetError, match="constant"):
        prepare_graph_layout({**good, "train": (np.zeros_like(features[:5]), edges[:5])})


def test_cache_hit_returns_identical_arrays(_isolated_cache: Path) -> None:
    first = load_graph_layout_split("valid", 9, num_timesteps=3, seed=1, progress=False)
    files = list((_isolated_cache / "nri_graph_layout").iterdir())
    assert len(files) == 1
    name = files[0].name
    assert name.startswith("valid_novar_1skip_3t_1r_graph10_N9_seed1_")
    assert f"nx{nx.__version__}" in name and name.endswith(".npz")
    stamp = files[0].stat().st_mtime_ns
    second = load_graph_layout_split("valid", 9, num_timesteps=3, seed=1, progress=False)
    assert files[0].stat().st_mtime_ns == stamp
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = generate_graph_layout(9, 3, seed=1, split="valid", progress=False)
    np.testing.assert_array_equal(first[0], fresh[0])


def test_corrupt_and_mismatched_caches_raise(_isolated_cache: Path) -> None:
    load_graph_layout_split("test", 4, num_timesteps=2, seed=0, progress=False)
    load_graph_layout_split("test", 4, num_timesteps=2, seed=5, progress=False)
    seed0, seed5 = sorted(
        (_isolated_cache / "nri_graph_layout").iterdir(), key=lambda p: "seed5" in p.name
    )
    seed5.replace(seed0)  # a file generated with seed 5 under the seed-0 name
    with pytest.raises(DatasetError, match=r"other parameters \(differing: \['seed'\]"):
        load_graph_layout_split("test", 4, num_timesteps=2, seed=0, progress=False)
    seed0.write_bytes(seed0.read_bytes()[:100])
    with pytest.raises(DatasetError, match=rf"{seed0.name} is corrupt.*delete"):
        load_graph_layout_split("test", 4, num_timesteps=2, seed=0, progress=False)


def test_load_graph_layout_end_to_end(_isolated_cache: Path) -> None:
    data = load_graph_layout(num_timesteps=4, sizes=(12, 5, 6), seed=9, progress=False)
    assert [len(data.train), len(data.valid), len(data.test)] == [12, 5, 6]
    assert len(list((_isolated_cache / "nri_graph_layout").iterdir())) == 3
    with pytest.raises(DatasetError, match="sizes must be"):
        load_graph_layout(sizes=(1, 2), progress=False)


def test_bad_parameters() -> None:
    with pytest.raises(DatasetError, match="num_graphs"):
        generate_graph_layout(0, progress=False)
    with pytest.raises(DatasetError, match="split must be one of"):
        generate_graph_layout(2, split="val", progress=False)


def test_reference_npy_loader(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    features, edges = small
    slices = {"train": slice(0, 20), "valid": slice(20, 30), "test": slice(30, 40)}
    for split, rows in slices.items():
        np.save(tmp_path / f"data_{split}_novar_1skip_6t_1r_graph10.npy", features[rows])
        np.save(tmp_path / f"edges_{split}_novar_1skip_6t_1r_graph10.npy", edges[rows])
    loaded = load_graph_layout_npy(tmp_path, num_timesteps=6)
    expected = prepare_graph_layout({k: (features[r], edges[r]) for k, r in slices.items()})
    for split in slices:
        for a, b in zip(loaded.split(split).tensors, expected.split(split).tensors, strict=True):
            assert torch.equal(a, b)
    with pytest.raises(DatasetError, match=r"data_train_novar_1skip_10t_1r_graph10.npy not found"):
        load_graph_layout_npy(tmp_path)
    (tmp_path / "edges_test_novar_1skip_6t_1r_graph10.npy").write_bytes(b"\x93NUMPY\x01\x00junk")
    with pytest.raises(DatasetError, match=r"not a readable .npy"):
        load_graph_layout_npy(tmp_path, num_timesteps=6)
    np.save(tmp_path / "edges_test_novar_1skip_6t_1r_graph10.npy", edges[:3])
    with pytest.raises(DatasetError, match="edges must have shape"):
        load_graph_layout_npy(tmp_path, num_timesteps=6)
    np.save(tmp_path / "edges_test_novar_1skip_6t_1r_graph10.npy", np.array(["a", "b"]))
    with pytest.raises(DatasetError, match="does not hold a numeric array"):
        load_graph_layout_npy(tmp_path, num_timesteps=6)
    np.save(tmp_path / "edges_test_novar_1skip_6t_1r_graph10.npy", edges[slices["test"]])
    np.save(tmp_path / "data_valid_novar_1skip_6t_1r_graph10.npy", features[20:30, :, :, :8])
    with pytest.raises(DatasetError, match="has 8 vertices, expected 10"):
        load_graph_layout_npy(tmp_path, num_timesteps=6)


def test_progress_bar_can_be_shown(capsys: pytest.CaptureFixture[str]) -> None:
    generate_graph_layout(3, 2, split="test", progress=True)
    assert "graph layout (test)" in capsys.readouterr().err
