"""Batched tensor solvers vs the reference style (one scipy / networkx call per instance).

Run: ``python benchmarks/bench_solvers.py`` (add ``--quick`` for a shorter run). Everything runs
on one CPU thread; every ratio compares two timings taken in the same run. Per-example loops over
large batches are timed on a slice of the batch and scaled linearly (marked ``*``): they are
loops, so their cost is linear in the batch by construction.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from collections.abc import Callable

import torch
from _timing import interleaved_times, print_table
from torch import Tensor

from aimle_zoo import AIMLE, AdaptiveTarget, DifferentiableSolver, get_solver
from aimle_zoo.solvers import sorting_weights
from aimle_zoo.solvers.reference.assignment import linear_assignment_scipy
from aimle_zoo.solvers.reference.ranking import ranks_scipy
from aimle_zoo.solvers.reference.shortest_path import (
    grid_shortest_path_networkx,
    grid_shortest_path_scipy,
)
from aimle_zoo.solvers.reference.spanning_tree import spanning_tree_networkx, spanning_tree_scipy

Loop = Callable[[Tensor], Tensor]


def _grid_costs(batch: int, size: int) -> Tensor:
    return torch.rand(batch, size, size) * 9 + 0.5


def _tree_weights(batch: int, n: int) -> Tensor:
    w = torch.rand(batch, n, n)
    return (w + w.transpose(1, 2)) / 2


def _loop_call(loop: Loop, theta: Tensor, cap: int) -> tuple[Callable[[], object], float, str]:
    """A call of ``loop`` on the batch, or on its first ``cap`` instances when larger, with the
    factor that scales its time to the whole batch and the mark of an extrapolated time."""
    batch = theta.shape[0]
    if batch <= cap:
        return lambda: loop(theta), 1.0, ""
    part = theta[:cap]
    return lambda: loop(part), batch / cap, "*"


def _check_agreement(name: str, size: str, *solutions: Tensor) -> None:
    """The compared implementations must give the same solutions (no fast wrong answer)."""
    first = solutions[0]
    if not all(torch.equal(first, other.to(first)) for other in solutions[1:]):
        raise AssertionError(f"{name} {size}: the compared implementations disagree; not timed")


def solver_rows(quick: bool) -> list[list[object]]:
    """One row per (solver, size, batch): ours, the scipy loop and the networkx loop."""
    grid, tree = get_solver("dijkstra"), get_solver("mst")
    cases: list[tuple[str, str, Callable[[Tensor], Tensor], Callable[[int], Tensor], Loop, Loop]]
    cases = [
        ("dijkstra (grid)", f"{s}x{s}", grid, lambda b, s=s: _grid_costs(b, s),
         grid_shortest_path_scipy, grid_shortest_path_networkx)
        for s in (12, 30)
    ] + [
        ("mst", f"n={n}", tree, lambda b, n=n: _tree_weights(b, n),
         spanning_tree_scipy, spanning_tree_networkx)
        for n in (10, 50)
    ]  # fmt: skip
    rows: list[list[object]] = []
    rounds, repeats = (1, 2) if quick else (3, 3)
    for name, size, ours, make, scipy_loop, nx_loop in cases:
        for batch in (1, 64, 256, 1024):
            theta = make(batch)
            scipy_call, scipy_scale, mark_s = _loop_call(scipy_loop, theta, 64)
            nx_cap = 8 if size == "30x30" else 16
            nx_call, nx_scale, mark_n = _loop_call(nx_loop, theta, nx_cap)
            _check_agreement(name, size, ours(theta[:8]), scipy_loop(theta[:8]), nx_loop(theta[:8]))
            calls = [lambda o=ours, t=theta: o(t), scipy_call, nx_call]
            t_ours, t_scipy, t_nx = interleaved_times(calls, rounds, repeats)
            t_scipy, t_nx = t_scipy * scipy_scale, t_nx * nx_scale
            rows.append(
                [
                    name, size, batch, t_ours * 1e3,
                    t_scipy * 1e3, f"{t_scipy / t_ours:.1f}x{mark_s}",
                    t_nx * 1e3, f"{t_nx / t_ours:.1f}x{mark_n}",
                ]
            )  # fmt: skip
    return rows


def assignment_rows(quick: bool) -> list[list[object]]:
    """The batched Hungarian method vs one ``scipy.optimize.linear_sum_assignment`` per instance
    (square standard normal weights: a unique optimum, so both must give the same matrices)."""
    solver = get_solver("linear_assignment")
    rows: list[list[object]] = []
    rounds, repeats = (1, 2) if quick else (3, 3)
    for n in (5, 10, 30):
        for batch in (1, 64, 256, 1024):
            theta = torch.randn(batch, n, n)
            scipy_call, scale, mark = _loop_call(linear_assignment_scipy, theta, 256)
            part = theta[:64]
            _check_agreement("assignment", f"n={n}", solver(part), linear_assignment_scipy(part))
            t_ours, t_scipy = interleaved_times(
                [lambda t=theta: solver(t), scipy_call], rounds, repeats
            )
            t_scipy *= scale
            rows.append(
                [f"n={n}", batch, t_ours * 1e3, t_scipy * 1e3, f"{t_scipy / t_ours:.2f}x{mark}"]
            )
    return rows


def topk_rows(quick: bool) -> list[list[object]]:
    """Our exact-k top-k (indicator, deterministic ties) vs a raw ``torch.topk`` call.

    n = 20, k = 10 at 20,000 rows is the discrete VAE's solver batch, where ours takes the
    sorting-network path.
    """
    rows: list[list[object]] = []
    cases = [((100, 10), (1, 64, 1024)), ((784, 50), (1, 64, 1024)), ((20, 10), (1024, 20_000))]
    for (n, k), batches in cases:
        solver = get_solver("topk", k=k)
        for batch in batches:
            # Each call gets other values, as in training: torch.topk's partial sort branches
            # on the data, and repeating one input would let the branch predictor learn it.
            inputs = itertools.cycle([torch.randn(batch, n) for _ in range(8)])
            # sorted=False: the indicator needs the set, not its order (ours does not sort)
            calls = [
                lambda i=inputs, k=k: torch.topk(next(i), k, sorted=False),
                lambda i=inputs, s=solver: s(next(i)),
            ]
            probe = torch.randn(batch, n)
            expected = torch.zeros_like(probe).scatter_(1, torch.topk(probe, k).indices, 1.0)
            if not torch.equal(solver(probe), expected):  # Gaussian values never tie
                raise AssertionError(f"top-k n={n}, k={k}: ours disagrees with torch.topk")
            t_raw, t_ours = interleaved_times(calls, 3 if quick else 7, 1)
            rows.append([f"n={n}, k={k}", batch, t_raw * 1e6, t_ours * 1e6, t_ours / t_raw])
    return rows


def _step_times(
    name: str, params: dict[str, int], shape: tuple[int, ...], symmetric: bool, quick: bool
) -> tuple[float, float]:
    """(plain forward+backward, AIMLE step) seconds for a linear map to θ and a linear read-out.

    The plain step skips the solver (the read-out consumes θ directly), so the ratio isolates
    the solver and the estimator.
    """
    batch, numel = 256, int(torch.tensor(shape).prod())
    encoder, readout = torch.nn.Linear(64, numel), torch.nn.Linear(numel, 1)
    x = torch.randn(batch, 64)
    target = AdaptiveTarget(initial_beta=1.0)
    layer = DifferentiableSolver(name, AIMLE(target=target, symmetric=symmetric), **params)

    def plain() -> None:
        readout(encoder(x)).sum().backward()

    def aimle_step() -> None:
        theta = encoder(x).reshape(batch, *shape)
        if name == "mst":
            theta = (theta + theta.transpose(1, 2)) / 2
        readout(layer(theta).reshape(batch, -1)).sum().backward()

    t_plain, t_step = interleaved_times([plain, aimle_step], 3 if quick else 5, 1)
    return t_plain, t_step


def step_rows(quick: bool) -> list[list[object]]:
    """Cost of a training step through an AIMLE layer vs the same network's forward+backward."""
    rows: list[list[object]] = []
    cases = [
        ("topk k=10 of 100", "topk", {"k": 10}, (100,)),
        ("dijkstra 12x12", "dijkstra", {}, (12, 12)),
        ("mst n=10", "mst", {}, (10, 10)),
    ]
    for label, name, params, shape in cases:
        for mode, symmetric in (("forward", False), ("central", True)):
            t_plain, t_step = _step_times(name, params, shape, symmetric, quick)
            rows.append([label, mode, 256, t_plain * 1e3, t_step * 1e3, t_step / t_plain])
    return rows


_MEMORY_PROBE = """
import sys, torch
torch.set_num_threads(1)
from aimle_zoo import get_solver

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))

solver, batch = get_solver("dijkstra"), int(sys.argv[1])
theta = torch.rand(batch, 30, 30) * 9 + 0.5
solver(torch.rand(2, 30, 30) * 9 + 0.5)  # warm-up: allocator, lazy initialisation
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident size (VmHWM) to the current one
before = status("VmRSS")
solver(theta)
print(status("VmHWM") - before)
"""


def memory_rows() -> list[list[object]]:
    """Peak resident memory added by one grid-solver call, each batch in a fresh process
    (Linux: the peak is reset to the current resident size just before the call).

    Linear scaling shows as a constant slope: KiB per added instance between batch sizes.
    """
    rows: list[list[object]] = []
    previous: tuple[int, int] | None = None
    for batch in (512, 2048, 8192):
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        growth_kib = int(done.stdout.strip())
        slope = "-" if previous is None else (growth_kib - previous[1]) / (batch - previous[0])
        rows.append(["dijkstra 30x30", batch, growth_kib / 1024, growth_kib / batch, slope])
        previous = (batch, growth_kib)
    return rows


def ranking_rows(quick: bool) -> list[list[object]]:
    """The ranking solver vs scipy's ``rankdata`` on the rows and, for small n, vs ranking
    through the assignment of ``sorting_weights`` (the permutation matrix; its row argmax + 1
    is the rank)."""
    solver, assignment = get_solver("ranking"), get_solver("linear_assignment")

    def by_assignment(theta: Tensor) -> Tensor:
        return assignment(sorting_weights(theta)).argmax(-1).to(theta.dtype) + 1

    rows: list[list[object]] = []
    rounds, repeats = (1, 2) if quick else (3, 3)
    for n, batches in ((10, (1, 64, 1024)), (100, (1, 64, 1024)), (1000, (1, 64))):
        for batch in batches:
            theta = torch.randn(batch, n)
            calls = [lambda t=theta: solver(t), lambda t=theta: ranks_scipy(t)]
            probes = [solver(theta[:8]), ranks_scipy(theta[:8])]
            if n <= 10:  # the Hungarian method is O(n³) a row
                calls.append(lambda t=theta: by_assignment(t))
                probes.append(by_assignment(theta[:8]))
            _check_agreement("ranking", f"n={n}", *probes)
            times = interleaved_times(calls, rounds, repeats)
            row: list[object] = [f"n={n}", batch, times[0] * 1e3, times[1] * 1e3]
            row.append(f"{times[1] / times[0]:.1f}x")
            if len(times) == 3:
                row += [times[2] * 1e3, f"{times[2] / times[0]:.1f}x"]
            else:
                row += ["—", "—"]
            rows.append(row)
    return rows


TABLES = ("solvers", "assignment", "ranking", "topk", "steps", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--tables",
        default=",".join(TABLES),
        help=f"comma-separated tables to run, of {','.join(TABLES)} (default: all)",
    )
    args = parser.parse_args()
    chosen = args.tables.split(",")
    unknown = sorted(set(chosen) - set(TABLES))
    if unknown:
        parser.error(f"unknown tables {unknown}; choose from {list(TABLES)}")
    torch.manual_seed(0)

    if "solvers" in chosen:
        print("\n## Solvers: ours (batched tensor program) vs per-example loops (ms per batch)\n")
        print_table(
            [
                "solver",
                "size",
                "batch",
                "ours",
                "scipy loop",
                "speed-up",
                "networkx loop",
                "speed-up",
            ],
            solver_rows(args.quick),
        )
    if "assignment" in chosen:
        print("\n## Assignment: ours (batched Hungarian) vs the scipy loop (ms per batch)\n")
        print_table(
            ["size", "batch", "ours", "scipy loop", "speed-up"], assignment_rows(args.quick)
        )
    if "ranking" in chosen:
        print("\n## Ranking: ours vs scipy's rankdata and the assignment route (ms per batch)\n")
        print_table(
            ["problem", "batch", "ours", "scipy rankdata", "speed-up", "assignment", "speed-up"],
            ranking_rows(args.quick),
        )
    if "topk" in chosen:
        print("\n## Top-k indicator vs raw torch.topk (µs per call)\n")
        print_table(["problem", "batch", "torch.topk", "ours", "ratio"], topk_rows(args.quick))
    if "steps" in chosen:
        print("\n## AIMLE training step vs plain forward+backward (ms per step)\n")
        print_table(
            ["layer", "AIMLE", "batch", "plain fwd+bwd", "AIMLE step", "ratio"],
            step_rows(args.quick),
        )
    if "memory" in chosen:
        print("\n## Peak memory of one grid-solver call (fresh process per batch)\n")
        print_table(
            [
                "solver",
                "batch",
                "peak RSS growth MiB",
                "KiB per instance",
                "KiB per added instance",
            ],
            memory_rows(),
        )
    print("\n* per-example loop timed on a slice of the batch and scaled linearly")


if __name__ == "__main__":
    main()
