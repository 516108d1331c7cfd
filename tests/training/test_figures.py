"""``aimle-zoo evaluate --figure``: every model's figure shows what the model predicts.

Each test draws a bundled checkpoint on a few test instances, then reads the drawn artists back
and checks them against the model's own outputs, recomputed here, and against properties that
any correct picture has (k patches highlighted, trees with n − 1 edges, paths from corner to
corner).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.collections
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import aimle_zoo
from aimle_zoo.data import CACHE_ENV
from aimle_zoo.figures import save_figure
from aimle_zoo.hub import CHECKPOINTS_ENV
from aimle_zoo.recipes import DataOptions, get_recipe, read_recipe
from tests.conftest import SHARED_DATA

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
COUNT = 4


def draw(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[[Any], None] | None = None,
    split: str = "test",
) -> tuple[Any, tuple[torch.Tensor, ...], Any]:
    """The figure of bundled checkpoint ``name`` (after ``prepare(model)``) on ``split``, the
    batch it drew and the model."""
    monkeypatch.delenv(CHECKPOINTS_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    recorded = read_recipe(CHECKPOINTS / name)
    assert recorded is not None, f"{name}: no recipe.json"
    task = recorded["recipe"]
    options = DataOptions(
        data_dir=str(Path(SHARED_DATA) / "mnist") if "mnist" in task else None,
        cache_dir=str(tmp_path / "cache"),
        smoke=True,
        progress=False,
    )
    model = aimle_zoo.from_pretrained(name)
    if prepare is not None:
        prepare(model)
    path = tmp_path / f"{name}.png"
    figure = save_figure(model, task, path, data_options=options, split=split, count=COUNT)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*")), "a partial file was left behind"
    drawn = getattr(get_recipe(task).build_data(options), split)
    batch = next(iter(DataLoader(drawn, batch_size=COUNT, shuffle=False)))
    return figure, tuple(batch) if isinstance(batch, (list, tuple)) else (batch,), model


def test_vae_figure_shows_inputs_over_their_map_reconstructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure, batch, model = draw("dvae-mnist", tmp_path, monkeypatch)
    images = batch[0].reshape(COUNT, 28, 28)
    with torch.no_grad():
        reconstructions = torch.sigmoid(model(batch[0].reshape(COUNT, -1))).reshape(COUNT, 28, 28)
    axes = np.asarray(figure.axes).reshape(2, COUNT)
    for i in range(COUNT):
        shown_input = axes[0, i].get_images()[0].get_array()
        shown_output = axes[1, i].get_images()[0].get_array()
        np.testing.assert_allclose(shown_input, images[i].numpy())
        np.testing.assert_allclose(shown_output, reconstructions[i].numpy(), atol=1e-6)


def test_l2x_mnist_figure_highlights_k_patches_and_titles_the_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flip_the_classifier(model: Any) -> None:
        """Negated logits: every prediction of this 2-class model changes, so a title showing
        the label instead of the prediction cannot pass."""
        with torch.no_grad():
            for parameter in model.classifier[-1].parameters():
                parameter.neg_()

    figure, batch, model = draw("l2x-mnist", tmp_path, monkeypatch, flip_the_classifier)
    images, labels = batch[0], batch[1]
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    assert bool((predicted != labels).any())
    patch_area = model.patch_size**2
    for i, axis in enumerate(figure.axes):
        assert axis.get_title() == f"y={int(labels[i])} ŷ={int(predicted[i])}"
        overlay = np.asarray(axis.get_images()[1].get_array())
        assert int((overlay > 0).sum()) == model.k * patch_area  # exactly k whole patches
        blocks = overlay.reshape(
            model.patches_per_side, model.patch_size, model.patches_per_side, model.patch_size
        )
        assert np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3)))  # patch-aligned


def test_l2x_tabular_figure_plots_selection_and_relevance_frequencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nonlinear additive: the selection differs from the relevant features on some instances
    figure, batch, model = draw("l2x-nonlinear-additive", tmp_path, monkeypatch)
    features, relevant = batch[0], batch[2].float()
    with torch.no_grad():
        selected = model.select(features).float()
    assert not torch.equal(selected.mean(0), relevant.mean(0))
    bars = figure.axes[0].patches
    width = features.shape[1]
    relevant_heights = np.array([bar.get_height() for bar in bars[:width]])
    selected_heights = np.array([bar.get_height() for bar in bars[width:]])
    np.testing.assert_allclose(relevant_heights, relevant.mean(0).numpy())
    np.testing.assert_allclose(selected_heights, selected.mean(0).numpy())
    assert selected_heights.sum() == pytest.approx(model.k)  # k features per instance


def _drawn_edges(axis: object) -> list[set[frozenset[tuple[float, float]]]]:
    """The edges of every LineCollection on ``axis`` as sets of endpoint pairs."""
    found = []
    for collection in axis.collections:  # type: ignore[attr-defined]
        if isinstance(collection, matplotlib.collections.LineCollection):
            found.append(
                {
                    frozenset(map(tuple, segment.round(6).tolist()))
                    for segment in collection.get_segments()
                }
            )
    return found


def test_nri_figure_draws_both_trees_and_marks_wrong_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure, batch, model = draw("nri-t10", tmp_path, monkeypatch)
    trajectories, truth = batch[0], batch[1]
    with torch.no_grad():
        predicted = model(trajectories)
    n = trajectories.shape[1]
    axes = np.asarray(figure.axes).reshape(2, -1)
    for i in range(axes.shape[1]):
        last = trajectories[i, :, -1, :].double().numpy().round(6)

        def undirected(edges: torch.Tensor, row: int = i, positions: np.ndarray = last) -> set:
            matrix = aimle_zoo.solvers.edges_to_matrix(edges[row : row + 1].float())[0]
            pairs = matrix.triu().nonzero().tolist()
            return {frozenset((tuple(positions[a]), tuple(positions[b]))) for a, b in pairs}

        true_edges, predicted_edges = undirected(truth), undirected(predicted)
        assert len(true_edges) == len(predicted_edges) == n - 1
        for axis, edges in ((axes[0, i], true_edges), (axes[1, i], predicted_edges)):
            tree, *wrong = _drawn_edges(axis)
            assert tree == edges
            assert (wrong[0] if wrong else set()) == edges - true_edges  # red: not in the truth


def test_grid_figure_marks_the_true_and_the_predicted_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure, batch, model = draw("grid-12", tmp_path, monkeypatch)
    maps, gold = batch[0], batch[2]
    with torch.no_grad():
        predicted = model(maps)
    size = gold.shape[-1]
    for i, axis in enumerate(figure.axes):
        true_points, predicted_points = (
            {tuple(point) for point in (collection.get_offsets() - 0.5).astype(int).tolist()}
            for collection in axis.collections
        )
        assert true_points == {(c, r) for r, c in gold[i].nonzero().tolist()}
        assert predicted_points == {(c, r) for r, c in predicted[i].nonzero().tolist()}
        assert {(0, 0), (size - 1, size - 1)} <= predicted_points  # corner to corner
        picture = axis.get_images()[0].get_array()  # the map, scaled to [0, 1] for imshow
        low, high = maps[i].amin(), maps[i].amax()
        expected = ((maps[i] - low) / (high - low)).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(picture, expected, atol=1e-6)


def test_a_figure_draws_the_asked_split_through_the_map_latent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model in training mode (noisy latent) is drawn in eval mode, on the split asked, and
    keeps its mode."""
    figure, batch, model = draw("dvae-mnist", tmp_path, monkeypatch, lambda m: m.train(), "valid")
    assert model.training  # drawn in eval mode, handed back in the mode it came in
    model.eval()
    with torch.no_grad():
        reconstructions = torch.sigmoid(model(batch[0].reshape(COUNT, -1))).reshape(COUNT, 28, 28)
    axes = np.asarray(figure.axes).reshape(2, COUNT)
    for i in range(COUNT):
        np.testing.assert_allclose(
            axes[0, i].get_images()[0].get_array(), batch[0].reshape(COUNT, 28, 28)[i].numpy()
        )
        np.testing.assert_allclose(
            axes[1, i].get_images()[0].get_array(), reconstructions[i].numpy(), atol=1e-6
        )
