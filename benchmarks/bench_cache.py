"""Solution caching: the cost of a training call answered by the solver or by the pool.

Run: ``cd benchmarks && python bench_cache.py`` (``--quick`` for fewer repeats). The workload is
one solver call of the grid-12 recipe: a batch of 70 maps of 12×12 vertex costs. Three solvers
find the same paths: an LP per map solved by HiGHS (``scipy.optimize.linprog``, the kind of
external solver caching is for, as PyEPO's LP and MILP models), the per-example scipy Dijkstra
loop (``dijkstra_scipy``) and the batched tensor Dijkstra (``dijkstra``). Each is timed alone
and wrapped in a :class:`~aimle_zoo.solvers.CachedSolver` holding a pool of P distinct paths:
at solve ratio 1 (every call solves, and pays for the pool's bookkeeping) and 0 (every call is
a look-up, ⟨θ, z⟩ against the whole pool). A call at ratio r costs r·(ratio 1) + (1 − r)·(ratio
0) on average, which gives the columns for 0.3 and 0.1 (timing the random mix directly would
only add the noise of the draws). The maps' own paths are in the pool, so it does not grow
while timed. One thread; the variants of a solver alternate, so every speed-up compares
timings taken in the same run.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from _timing import interleaved_times, print_table
from scipy.optimize import linprog
from scipy.sparse import csr_matrix
from torch import Tensor

from aimle_zoo import CachedSolver, get_solver

BATCH, SIZE = 70, 12
POOL_SIZES = (1_000, 10_000, 50_000)
RATIOS = (0.3, 0.1)


class LinearProgramPath:
    """Vertex-cost shortest path top-left → bottom-right on the 8-connected grid as an LP per
    map (unit flow on the directed edges, each edge costing its head vertex; integral because
    the incidence matrix is totally unimodular), solved by HiGHS."""

    sense = "min"

    def __init__(self, size: int) -> None:
        moves = [step for step in itertools.product((-1, 0, 1), repeat=2) if step != (0, 0)]
        edges = [
            (i * size + j, (i + di) * size + j + dj)
            for i, j in itertools.product(range(size), repeat=2)
            for di, dj in moves
            if 0 <= i + di < size and 0 <= j + dj < size
        ]
        self.tails, self.heads = np.array(edges).T
        count, vertices = len(edges), size * size
        self.incidence = csr_matrix(
            (
                np.r_[np.ones(count), -np.ones(count)],
                (np.r_[self.tails, self.heads], np.r_[np.arange(count), np.arange(count)]),
            ),
            shape=(vertices, count),
        )
        self.supply = np.zeros(vertices)
        self.supply[0], self.supply[-1] = 1.0, -1.0

    def __call__(self, theta: Tensor) -> Tensor:
        z = np.zeros((theta.shape[0], theta[0].numel()))
        for row, costs in enumerate(theta.reshape(theta.shape[0], -1).double().numpy()):
            flow = linprog(
                costs[self.heads], A_eq=self.incidence, b_eq=self.supply, bounds=(0, 1)
            ).x
            z[row, 0] = 1.0
            z[row, self.heads[flow > 0.5]] = 1.0
        return torch.from_numpy(z).to(theta.dtype).reshape(theta.shape)


def distinct_paths(count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 12, 12]`` distinct shortest paths of random maps (batched Dijkstra)."""
    solver = get_solver("dijkstra")
    found: dict[bytes, torch.Tensor] = {}
    while len(found) < count:
        maps = torch.rand(4096, SIZE, SIZE, generator=generator) ** 3  # skewed: varied paths
        for path in solver(maps).to(torch.bool):
            found.setdefault(path.numpy().tobytes(), path)
    return torch.stack(list(found.values())[:count]).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = parser.parse_args()
    rounds, repeats = (1, 2) if args.quick else (2, 3)
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(BATCH, SIZE, SIZE, generator=generator)
    paths = distinct_paths(max(POOL_SIZES), generator)
    solvers = {
        "LP (HiGHS) per map": LinearProgramPath(SIZE),
        "dijkstra_scipy": get_solver("dijkstra_scipy"),
        "dijkstra": get_solver("dijkstra"),
    }
    reference = solvers["dijkstra"](maps)
    rows = []
    for name, solver in solvers.items():
        if not torch.equal(solver(maps), reference):
            raise AssertionError(f"{name} does not find the batched Dijkstra's paths")
        caches = []
        for pool_size in POOL_SIZES:
            for ratio in (1.0, 0.0):
                cache = CachedSolver(solver, ratio)
                cache.add(reference)  # the batch's own paths: the pool stays at pool_size
                cache.add(paths[: pool_size - cache.pool_size])
                caches.append(cache)
        steps = [lambda solver=solver: solver(maps)] + [lambda c=c: c(maps) for c in caches]
        alone, *times = interleaved_times(steps, rounds, repeats)
        for index in range(len(POOL_SIZES)):
            solving, looking_up = times[2 * index : 2 * index + 2]
            mixed = [ratio * solving + (1 - ratio) * looking_up for ratio in RATIOS]
            rows.append(
                [
                    name,
                    alone * 1e3,
                    f"{caches[2 * index].pool_size:,}",
                    solving * 1e3,
                    looking_up * 1e3,
                    *(seconds * 1e3 for seconds in mixed),
                    f"{alone / mixed[-1]:.2f}x",
                ]
            )
    print(f"One call on {BATCH} maps of {SIZE}×{SIZE} (ms; 1 thread)\n")
    header = [
        "solver",
        "alone",
        "pool",
        "cached, ratio 1",
        "look-up, ratio 0",
        *(f"ratio {ratio}" for ratio in RATIOS),
        f"speed-up at {RATIOS[-1]}",
    ]
    print_table(header, rows)


if __name__ == "__main__":
    main()
