"""One estimator call (forward and backward) on the latent shapes of the zoo's models.

Run: ``cd benchmarks && python bench_estimators.py`` (``--quick`` for fewer repeats). One CPU
thread. Each row is a latent layer's θ at a model's training shape, and each column one
estimator: ``layer(θ)`` followed by ``backward`` of a fixed random linear loss, in ms, and its
ratio to central AIMLE timed in the same run (the estimators are timed in turn, rounds
interleaved). Shapes:

* the discrete VAE: 100 images × 20 groups of 20, k = 10, S = 10 samples (2,000 rows; the
  estimator returns 20,000);
* L2X on BeerAdvocate: 40 reviews of 350 tokens, k = 10, one sample;
* L2X MNIST: 100 images of 49 patches, k = 4, one sample;
* NRI: 128 spanning trees of 10 vertices (``mst_edges``, 90 directed-edge scores), one sample.

SIMPLE calls no solver: its cost is the exact sampler and the marginals (top-k: the
elementary-symmetric-polynomial tables; trees: about n²/2 Kron reductions for a draw).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import torch
from _timing import interleaved_times, print_table

from aimle_zoo.estimators import DifferentiableSolver, build_estimator

CASES: dict[str, tuple[str, dict[str, Any], tuple[int, ...], int]] = {
    # label: (solver, solver parameters, θ shape, samples)
    "VAE 2,000 × 20, k = 10, S = 10": ("topk", {"k": 10}, (2000, 20), 10),
    "L2X beer 40 × 350, k = 10": ("topk", {"k": 10}, (40, 350), 1),
    "L2X MNIST 100 × 49, k = 4": ("topk", {"k": 4}, (100, 49), 1),
    "NRI 128 trees of 10 vertices": ("mst_edges", {}, (128, 90), 1),
}
ESTIMATORS = {  # column: config without samples
    "AIMLE central": {"name": "aimle", "symmetric": True},
    "I-MLE": {"name": "imle", "lambda_": 10.0},
    "STE": {"name": "ste", "noise": "gumbel"},
    "relaxed": {"name": "relaxed"},
    "SIMPLE": {"name": "simple"},
}


def step(layer: DifferentiableSolver, theta: torch.Tensor, weights: torch.Tensor) -> None:
    """One forward and backward through ``layer`` with a linear loss ⟨w, z⟩."""
    theta.grad = None
    (layer(theta) * weights).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of two repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds, repeats = (1, 2) if args.quick else (3, 3)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for label, (solver, params, shape, samples) in CASES.items():
        theta = torch.randn(shape, generator=generator).requires_grad_(True)
        weights = torch.randn(shape[0] * samples, *shape[1:], generator=generator)
        layers = [
            DifferentiableSolver(solver, build_estimator({**config, "samples": samples}), **params)
            for config in ESTIMATORS.values()
        ]
        steps = [functools.partial(step, layer, theta, weights) for layer in layers]
        seconds = interleaved_times(steps, rounds=rounds, repeats=repeats)
        baseline = seconds[0]
        cells = [f"{1e3 * s:.2f} ({s / baseline:.2f}×)" for s in seconds]
        rows.append([label, *cells])
    print_table(["θ shape", *(f"{name} ms (÷ AIMLE)" for name in ESTIMATORS)], rows)


if __name__ == "__main__":
    main()
