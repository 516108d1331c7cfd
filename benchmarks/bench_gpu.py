"""Training steps and inference of the zoo models on a GPU against the CPU, in one run.

Run on a machine with a CUDA GPU: ``cd benchmarks && python bench_gpu.py`` (``--device cpu``
runs every column on the CPU, to check the script; ``--quick`` repeats less). The CPU runs on
one thread, as in the other benchmarks; float32 throughout (no TF32, as the tests).

* Training: one Adam step of the model as shipped on ``bench_models``' batches (the training
  recipes' sizes), on the CPU and on the device, and the speed-up ``CPU / device``.
* Inference: the eval-mode MAP path the exports hold (``aimle_zoo.export``), at batch 1 and 64:
  eager on the CPU, eager on the device, and the TorchScript file loaded onto the device
  (``torch.jit.load(path, map_location=device)``), with the speed-ups over CPU eager.
* Solvers: each batched solver on the CPU and on the device at training-size batches, beside
  its per-example scipy loop (the CPU alternative, which copies θ to the host).

Device times are the best of several rounds of a loop closed by ``torch.cuda.synchronize()``,
so they include the launch overhead a caller pays.
"""

from __future__ import annotations

import argparse
import copy
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import best_time, print_table
from bench_models import CASES, training_step

from aimle_zoo.export import to_torchscript
from aimle_zoo.export._paths import path_module
from aimle_zoo.models import ZooModel, create_model
from aimle_zoo.solvers import get_solver
from aimle_zoo.solvers.reference.assignment import linear_assignment_scipy
from aimle_zoo.solvers.reference.ranking import ranks_scipy
from aimle_zoo.solvers.reference.shortest_path import grid_shortest_path_scipy
from aimle_zoo.solvers.reference.spanning_tree import spanning_tree_scipy
from aimle_zoo.training import move_to

#: The exported model of each architecture, timed for inference.
INFERENCE_MODELS = ["l2x_tabular", "l2x_text", "l2x_mnist", "discrete_vae", "nri_tree"]
INFERENCE_MODELS += ["grid_shortest_path"]


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a wait for the device's queue (a no-op on the CPU)."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def training_rows(device: torch.device, repeats: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for case in CASES:
        torch.manual_seed(0)
        model = create_model(case.model).train()
        batch = case.batch(torch.Generator().manual_seed(0))
        cpu_time = best_time(training_step(model, batch), repeats=repeats)
        on_device = copy.deepcopy(model).to(device)
        step = training_step(on_device, move_to(batch, device))
        device_time = best_time(synchronized(step, device), repeats=repeats)
        speed_up = f"{cpu_time / device_time:.1f}x"
        rows.append([case.label, cpu_time * 1e3, device_time * 1e3, speed_up])
    return rows


def inference_rows(device: torch.device, repeats: int, folder: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    for name in INFERENCE_MODELS:
        torch.manual_seed(0)
        model: ZooModel = create_model(name).eval()
        to_torchscript(model, folder / f"{name}.pt")
        scripted = torch.jit.load(str(folder / f"{name}.pt"), map_location=device)
        eager_cpu = path_module(model)
        eager_device = path_module(copy.deepcopy(model)).to(device)
        for batch in (1, 64):
            inputs = model.example_inputs(batch)
            on_device = move_to(inputs, device)
            with torch.inference_mode():  # as bench_export.py
                cpu_time = best_time(functools.partial(eager_cpu, *inputs), repeats=repeats)
                device_time = best_time(
                    synchronized(functools.partial(eager_device, *on_device), device),
                    repeats=repeats,
                )
                script_time = best_time(
                    synchronized(functools.partial(scripted, *on_device), device),
                    repeats=repeats,
                )
            rows.append(
                [
                    name,
                    batch,
                    cpu_time * 1e3,
                    device_time * 1e3,
                    script_time * 1e3,
                    f"{cpu_time / device_time:.1f}x",
                    f"{cpu_time / script_time:.1f}x",
                ]
            )
    return rows


def _symmetric(batch: int, n: int) -> torch.Tensor:
    weights = torch.rand(batch, n, n)
    return (weights + weights.transpose(1, 2)) / 2


#: (label, registered solver, θ of a batch, its scipy loop or call)
SOLVER_CASES: list[tuple[str, str, Callable[[int], torch.Tensor], Callable[..., object]]] = [
    ("dijkstra 12x12", "dijkstra", lambda b: torch.rand(b, 12, 12) * 9 + 0.5,
     grid_shortest_path_scipy),
    ("mst n=10", "mst", lambda b: _symmetric(b, 10), spanning_tree_scipy),
    ("assignment 10x10", "linear_assignment", lambda b: torch.randn(b, 10, 10),
     linear_assignment_scipy),
    ("assignment 30x30", "linear_assignment", lambda b: torch.randn(b, 30, 30),
     linear_assignment_scipy),
    ("ranking n=1000", "ranking", lambda b: torch.randn(b, 1000), ranks_scipy),
]  # fmt: skip


def solver_rows(device: torch.device, repeats: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, name, make, scipy_loop in SOLVER_CASES:
        solver = get_solver(name)
        on_device = copy.deepcopy(solver).to(device)
        for batch in (256, 4096):
            theta = make(batch)
            theta_device = theta.to(device)
            cpu_time = best_time(functools.partial(solver, theta), repeats=repeats)
            device_time = best_time(
                synchronized(functools.partial(on_device, theta_device), device), repeats=repeats
            )
            scipy_time = best_time(functools.partial(scipy_loop, theta), repeats=1)
            rows.append(
                [
                    label,
                    batch,
                    cpu_time * 1e3,
                    device_time * 1e3,
                    scipy_time * 1e3,
                    f"{cpu_time / device_time:.1f}x",
                    f"{scipy_time / device_time:.1f}x",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to compare with the CPU")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 2 if args.quick else 5
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    print(f"torch {torch.__version__}; device: {where}; CPU: one thread\n")
    print_table(
        ["training step", "CPU ms", "device ms", "CPU / device"],
        training_rows(device, repeats),
    )
    print()
    with tempfile.TemporaryDirectory() as folder:
        rows = inference_rows(device, repeats, Path(folder))
    header = ["model", "batch", "CPU eager ms", "device eager ms", "device TorchScript ms"]
    print_table([*header, "eager speed-up", "TorchScript speed-up"], rows)
    print()
    header = ["solver", "batch", "CPU ms", "device ms", "scipy loop ms", "CPU / device"]
    print_table([*header, "scipy / device"], solver_rows(device, repeats))


if __name__ == "__main__":
    main()
