"""Test helpers: tiny configurations of every zoo model and synthetic batches for them."""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
from torch import Tensor

from aimle_zoo.models import ZooModel, create_model

#: Small enough that a training step of any model takes milliseconds.
TINY: dict[str, dict[str, Any]] = {
    "l2x_text": dict(vocab_size=50, embedding_dim=8, max_length=20, k=3, filters=8, hidden_dim=8),
    "l2x_tabular": dict(input_dim=10, k=4, selector_hidden=[16], predictor_hidden=[16]),
    "l2x_mnist": dict(channels=[4, 8], hidden_dim=16, k=4),
    "discrete_vae": dict(input_dim=16, hidden_dims=[12], groups=3, group_size=5, k=2),
    "nri_tree": dict(
        num_vertices=4,
        timesteps=4,
        encoder_hidden=8,
        decoder_hidden=8,
        prediction_steps=3,
    ),
    "grid_shortest_path": dict(grid_size=4, channels=[4, 4]),
}


def tiny_model(name: str, **overrides: Any) -> ZooModel:
    """The tiny configuration of model ``name`` (with ``overrides``)."""
    return create_model(name, **{**TINY[name], **overrides})


def random_tree_edges(num_vertices: int, generator: torch.Generator) -> Tensor:
    """A random spanning tree as the directed-edge vector ``[n(n-1)]`` (receiver-major)."""
    adjacency = torch.zeros(num_vertices, num_vertices, dtype=torch.int64)
    for vertex in range(1, num_vertices):
        parent = int(torch.randint(0, vertex, (1,), generator=generator))
        adjacency[vertex, parent] = adjacency[parent, vertex] = 1
    off_diagonal = ~torch.eye(num_vertices, dtype=torch.bool)
    return adjacency[off_diagonal]


def grid_path_oracle(costs: Tensor) -> Tensor:
    """Min-cost top-left → bottom-right path mask on the 8-connected grid (networkx).

    The path cost counts every visited vertex, endpoints included.
    """
    height, width = costs.shape
    graph = nx.DiGraph()
    for row in range(height):
        for col in range(width):
            for d_row in (-1, 0, 1):
                for d_col in (-1, 0, 1):
                    r, c = row + d_row, col + d_col
                    if (d_row, d_col) != (0, 0) and 0 <= r < height and 0 <= c < width:
                        graph.add_edge((row, col), (r, c), weight=float(costs[r, c]))
    path = nx.dijkstra_path(graph, (0, 0), (height - 1, width - 1))
    mask = torch.zeros(height, width)
    for row, col in path:
        mask[row, col] = 1
    return mask


def make_batch(name: str, model: ZooModel, batch_size: int, seed: int = 0) -> tuple[Tensor, ...]:
    """A valid synthetic training/evaluation batch for ``model`` (registered as ``name``)."""
    generator = torch.Generator().manual_seed(seed)
    config = TINY[name]
    if name == "l2x_text":
        ids = torch.randint(
            0, config["vocab_size"], (batch_size, config["max_length"]), generator=generator
        )
        return ids, 0.6 + 0.3 * torch.rand(batch_size, generator=generator)
    if name == "l2x_tabular":
        x = torch.randn(batch_size, 10, generator=generator)
        relevant = torch.zeros(batch_size, 10, dtype=torch.bool)
        relevant[:, :2] = True
        labels = (x[:, 0] * x[:, 1] > 0).long()
        return x, labels, relevant
    if name == "l2x_mnist":
        images = torch.rand(batch_size, 1, 28, 28, generator=generator)
        labels = images[:, 0, :14].mean(dim=(1, 2)) > images[:, 0, 14:].mean(dim=(1, 2))
        return images, labels.long()
    if name == "discrete_vae":
        return (torch.rand(batch_size, config["input_dim"], generator=generator),)
    if name == "nri_tree":
        n, t = config["num_vertices"], config["timesteps"]
        trajectories = torch.rand(batch_size, n, t, 2, generator=generator) * 2 - 1
        edges = torch.stack([random_tree_edges(n, generator) for _ in range(batch_size)])
        return trajectories, edges
    if name == "grid_shortest_path":
        size, tile = config["grid_size"], 8
        palette = torch.tensor([0.5, 1.0, 4.0, 8.0])
        kinds = torch.randint(0, len(palette), (batch_size, size, size), generator=generator)
        costs = palette[kinds]  # [B, H, W]
        colours = torch.rand(len(palette), 3, generator=generator)
        maps = colours[kinds].permute(0, 3, 1, 2)  # [B, 3, H, W]
        maps = maps.repeat_interleave(tile, dim=2).repeat_interleave(tile, dim=3)
        paths = torch.stack([grid_path_oracle(c) for c in costs])
        return maps, costs, paths  # the order of the Warcraft dataset
    raise KeyError(name)
