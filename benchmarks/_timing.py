"""Timing helpers shared by the benchmark scripts (1 thread; minimum over repeats)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)


def best_time(fn: Callable[[], object], *, repeats: int = 5, min_seconds: float = 0.2) -> float:
    """Seconds per call: the minimum over ``repeats`` rounds of the mean over a timed loop.

    The minimum is the most stable statistic on a shared, noisy machine.
    """
    fn()  # warm-up (allocations, lazy initialisation)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds / repeats or calls >= 1 << 16:
            break
        calls *= 2
    rounds = [elapsed / calls]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return min(rounds)


def interleaved_times(
    steps: Sequence[Callable[[], object]], rounds: int, repeats: int
) -> list[float]:
    """Seconds per call of each step: the minimum over ``rounds`` rotations through the steps
    (so that a burst of load on the shared machine does not hit a single variant)."""
    times = [math.inf] * len(steps)
    for _ in range(rounds):
        for index, step in enumerate(steps):
            times[index] = min(times[index], best_time(step, repeats=repeats))
    return times


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (pastes straight into the README)."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
