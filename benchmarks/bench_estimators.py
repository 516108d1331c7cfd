"""One estimator call (forward and backward) on the top-k shapes of the zoo's models.

Run: ``cd benchmarks && python bench_estimators.py`` (``--quick`` for fewer repeats). One CPU
thread. Each row is a top-k layer's θ at a model's training shape, and each column one
estimator: ``layer(θ)`` followed by ``backward`` of a fixed random linear loss, in ms, and its
ratio to central AIMLE timed in the same run (the estimators are timed in turn, rounds
interleaved). Shapes:

* the discrete VAE: 100 images × 20 groups of 20, k = 10, S = 10 samples (2,000 rows; the
  estimator returns 20,000);
* L2X on BeerAdvocate: 40 reviews of 350 tokens, k = 10, one sample;
* L2X MNIST: 100 images of 49 patches, k = 4, one sample.

SIMPLE has no solver call: its cost is the exact sampler and the marginals' tables, n
sequential steps over ``[rows, k + 1]``, so it grows with n where perturb-and-MAP does not.
"""

from __future__ import annotations

import argparse
import functools

import torch
from _timing import interleaved_times, print_table

from aimle_zoo.estimators import DifferentiableSolver, build_estimator

SHAPES = {  # label: (rows, n, k, samples)
    "VAE 2,000 × 20, k = 10, S = 10": (2000, 20, 10, 10),
    "L2X beer 40 × 350, k = 10": (40, 350, 10, 1),
    "L2X MNIST 100 × 49, k = 4": (100, 49, 4, 1),
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
    for label, (batch, n, k, samples) in SHAPES.items():
        theta = torch.randn(batch, n, generator=generator).requires_grad_(True)
        weights = torch.randn(batch * samples, n, generator=generator)
        layers = [
            DifferentiableSolver("topk", build_estimator({**config, "samples": samples}), k=k)
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
