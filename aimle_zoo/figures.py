"""Figures of a model's predictions, for ``aimle-zoo evaluate --figure``.

- discrete VAE: test images above their reconstructions from the MAP codes;
- L2X on MNIST: images with the selected patches highlighted, and the predicted class;
- L2X on tabular data: how often each feature is selected vs how often it is truly relevant;
- NRI: predicted vs true spanning trees drawn at the last observed positions;
- grid shortest path: map images with the true path and the predicted path.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import networkx as nx
import numpy as np
import torch
from matplotlib.figure import Figure  # the object API needs no GUI backend
from torch import Tensor
from torch.utils.data import DataLoader

from ._io import atomic_file
from .models import ZooModel
from .recipes import DataOptions, get_recipe
from .solvers import edges_to_matrix


def save_figure(
    model: ZooModel,
    task: str,
    path: str | os.PathLike[str],
    *,
    data_options: DataOptions | None = None,
    split: str = "test",
    count: int = 8,
) -> Figure:
    """Draw ``count`` instances of ``task``'s ``split`` through ``model`` (in eval mode; its own
    mode is kept), save a PNG at ``path`` (atomically) and return the figure for further
    editing."""
    recipe = get_recipe(task)
    dataset = getattr(recipe.build_data(data_options or DataOptions(progress=False)), split)
    batch = next(iter(DataLoader(dataset, batch_size=count, shuffle=False)))
    drawers = {
        "discrete_vae": _vae,
        "l2x_mnist": _l2x_mnist,
        "l2x_tabular": _l2x_tabular,
        "nri_tree": _nri,
        "grid_shortest_path": _grid,
    }
    if model.model_name not in drawers:
        raise ValueError(
            f"no figure is defined for {model.model_name!r}; figures exist for "
            f"{', '.join(sorted(drawers))}"
        )
    if any(parameter.device.type != "cpu" for parameter in model.parameters()):
        model = copy.deepcopy(model).cpu()  # the drawers work on CPU tensors
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            figure = drawers[model.model_name](model, batch)
    finally:
        model.train(was_training)  # the caller's model keeps its mode
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    return figure


def _vae(model: Any, batch: Any) -> Figure:
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    images = images.reshape(images.shape[0], -1)
    recon = torch.sigmoid(model(images))
    count = images.shape[0]
    figure = Figure(figsize=(1.2 * count, 2.6))
    axes = figure.subplots(2, count)
    for i in range(count):
        for row, picture in enumerate((images[i], recon[i])):
            axes[row, i].imshow(picture.reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("input", loc="left", fontsize=9)
    axes[1, 0].set_title("reconstruction (MAP code)", loc="left", fontsize=9)
    return figure


def _l2x_mnist(model: Any, batch: Any) -> Figure:
    images, labels = batch[0], batch[1]
    mask = model.pixel_mask(model.latent_layer(model.patch_scores(images)))  # [B, 1, S, S]
    predicted = model(images).argmax(dim=1)
    count = images.shape[0]
    figure = Figure(figsize=(1.5 * count, 1.9))
    axes = figure.subplots(1, count)
    for i in range(count):
        axes[i].imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i].imshow(mask[i, 0].numpy(), cmap="autumn", alpha=0.35 * mask[i, 0].numpy())
        axes[i].set_title(f"y={int(labels[i])} ŷ={int(predicted[i])}", fontsize=8)
        axes[i].axis("off")
    return figure


def _l2x_tabular(model: Any, batch: Any) -> Figure:
    x, relevant = batch[0], batch[2].float()
    selected = model.select(x).float()
    positions = np.arange(x.shape[1])
    figure = Figure(figsize=(6, 2.8))
    axis = figure.subplots()
    axis.bar(positions - 0.2, relevant.mean(0).numpy(), width=0.4, label="truly relevant")
    axis.bar(positions + 0.2, selected.mean(0).numpy(), width=0.4, label="selected")
    axis.set_xticks(positions, [f"X{i + 1}" for i in positions])
    axis.set_ylabel("fraction of instances")
    axis.legend()
    return figure


def _nri(model: Any, batch: Any) -> Figure:
    trajectories, truth = batch[0], batch[1]
    predicted = edges_to_matrix(model(trajectories).float())  # [B, n, n]
    true_matrix = edges_to_matrix(truth.float())
    count = min(4, trajectories.shape[0])
    figure = Figure(figsize=(2.6 * count, 5.2))
    axes = figure.subplots(2, count)
    for i in range(count):
        last = trajectories[i, :, -1, :].numpy()  # [n, 2] last observed positions
        positions = {v: last[v] for v in range(last.shape[0])}
        for row, (matrix, title) in enumerate(((true_matrix, "true"), (predicted, "predicted"))):
            graph = nx.from_numpy_array(matrix[i].numpy())
            wrong = [e for e in graph.edges if true_matrix[i, e[0], e[1]] == 0]
            nx.draw(graph, positions, ax=axes[row, i], node_size=60, width=1.5)
            nx.draw_networkx_edges(
                graph, positions, edgelist=wrong, ax=axes[row, i], edge_color="r"
            )
            axes[row, i].set_title(f"{title} tree", fontsize=9)
    return figure


def _grid(model: Any, batch: Any) -> Figure:
    maps, gold = batch[0], batch[2]
    predicted = model(maps)
    count = min(4, maps.shape[0])
    figure = Figure(figsize=(3 * count, 3.2))
    axes = figure.subplots(1, count)
    for i in range(count):
        picture = _unit_range(maps[i]).permute(1, 2, 0).numpy()
        height, width = gold.shape[1:]
        axes[i].imshow(picture, extent=(0, width, height, 0))
        for cells, size, colour, label in (
            (gold[i].nonzero().numpy(), 40, "lime", "true"),
            (predicted[i].nonzero().numpy(), 12, "red", "predicted"),
        ):
            axes[i].scatter(cells[:, 1] + 0.5, cells[:, 0] + 0.5, s=size, c=colour, label=label)
        axes[i].axis("off")
    axes[0].legend(loc="lower left", fontsize=7)
    return figure


def _unit_range(image: Tensor) -> Tensor:
    low, high = image.amin(), image.amax()
    return (image - low) / (high - low).clamp_min(1e-8)
