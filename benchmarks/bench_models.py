"""Training steps of the zoo models: ours vs the networks alone vs a reference-style run.

Run: ``cd benchmarks && python bench_models.py`` (add ``--quick`` for a shorter run). One CPU
thread. A training step is ``zero_grad`` + ``training_loss`` + ``backward`` + an Adam step on a
synthetic batch of the training recipe's size (the L2X tabular model also at B=100, where the
estimator's fixed cost per step shows), timed three ways in the same run:

* **ours**: the model as shipped (default estimator recipe).
* **networks**: the same networks with the latent layer replaced by a straight-through
  stand-in, z = z* + σ(θ) − sg(σ(θ)) with z* one fixed solution of the right shape (same
  values, shape and sparsity as a real sample; the gradient reaches θ through a sigmoid).
  ``ours / networks`` is what the solver, the noise and the estimator add.
* **reference style**: the same networks and estimator with the reference implementation's
  solvers and noise: top-k as one batched ``torch.topk`` and a scatter (as the reference's L2X
  and VAE code call it), spanning trees and shortest paths once per instance in SciPy
  (``aimle_zoo.solvers.reference``), and Sum-of-Gamma noise drawn term by term (one Gamma draw
  and one addition per term).

A second table splits one step of ours into the networks, the noise draw, the solver calls
(forward plus backward batch) and the rest (estimator and glue). For top-k models it adds a
lower bound on what any AIMLE step adds to the networks (``bound ms``: the k-th largest value
alone, by the faster of ``torch.topk`` and our sorting network, on the same solver batches, plus
one Gumbel draw per noise entry) and the best ratio to the networks that bound allows
(``bound ratio``).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _timing import best_time, interleaved_times, print_table
from torch import Tensor, nn

from aimle_zoo.estimators import AIMLE, DifferentiableSolver, Gumbel, SumOfGamma, expand_samples
from aimle_zoo.estimators.noise import Noise
from aimle_zoo.models import ZooModel, create_model
from aimle_zoo.solvers import get_solver, solver_sense, solver_spec
from aimle_zoo.solvers.reference.shortest_path import grid_shortest_path_scipy
from aimle_zoo.solvers.reference.spanning_tree import spanning_tree_scipy
from aimle_zoo.solvers.spanning_tree import edges_to_matrix, matrix_to_edges
from aimle_zoo.solvers.topk import _kth_largest_by_network

Batch = tuple[Tensor, ...]


@dataclass
class Case:
    """One benchmarked model: its label, registry name and a synthetic batch maker."""

    label: str
    model: str
    batch: Callable[[torch.Generator], Batch]


def _grid_batch(generator: torch.Generator) -> Batch:
    costs = torch.rand(70, 12, 12, generator=generator) * 9 + 0.5
    maps = torch.rand(70, 3, 96, 96, generator=generator)
    return maps, costs, get_solver("dijkstra")(costs)


CASES = [
    Case(
        "DVAE (B=100, S=10, central AIMLE)",
        "discrete_vae",
        lambda g: (torch.rand(100, 784, generator=g),),
    ),
    Case(
        "NRI tree (B=128, T=10)",
        "nri_tree",
        lambda g: (torch.rand(128, 10, 10, 2, generator=g) * 2 - 1,),
    ),
    Case("grid 12x12 (B=70)", "grid_shortest_path", _grid_batch),
    Case(
        "L2X text (B=40, L=350)",
        "l2x_text",
        lambda g: (torch.randint(0, 20000, (40, 350), generator=g), torch.rand(40, generator=g)),
    ),
    Case(
        "L2X MNIST (B=100)",
        "l2x_mnist",
        lambda g: (
            torch.rand(100, 1, 28, 28, generator=g),
            torch.randint(0, 2, (100,), generator=g),
        ),
    ),
    Case(
        "L2X tabular (B=1000)",
        "l2x_tabular",
        lambda g: (torch.randn(1000, 10, generator=g), torch.randint(0, 2, (1000,), generator=g)),
    ),
    Case(
        "L2X tabular (B=100)",
        "l2x_tabular",
        lambda g: (torch.randn(100, 10, generator=g), torch.randint(0, 2, (100,), generator=g)),
    ),
]


# ----------------------------------------------------------------------------- stand-ins


class StraightThroughStandIn(nn.Module):
    """z = z* + σ(θ̃) − sg(σ(θ̃)), θ̃ the sample-tiled θ ``[B·N, *S]``, z* fixed ``[B·N, *S]``."""

    def __init__(self, fixed: Tensor, samples: int) -> None:
        super().__init__()
        self.fixed = fixed
        self.samples = samples

    def forward(self, theta: Tensor) -> Tensor:
        soft = torch.sigmoid(expand_samples(theta, self.samples))
        return self.fixed + (soft - soft.detach())


class TermByTermSumOfGamma(Noise):
    """SoG(k, s) drawn as the reference does: one Gamma(1/k, rate i/k) draw per term."""

    name = "sog_term_by_term"

    def __init__(self, k: float, iterations: int) -> None:
        self.k = k
        self.iterations = iterations

    def _draw(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> Tensor:
        total = torch.zeros(shape, device=device, dtype=dtype)
        for i in range(1, self.iterations + 1):
            gamma = torch.distributions.Gamma(
                torch.tensor(1.0 / self.k, dtype=dtype), torch.tensor(i / self.k, dtype=dtype)
            )
            total = total + gamma.sample(shape)
        return (total - math.log(self.iterations)) / self.k

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "iterations": self.iterations}


class ReferenceSolver:
    """A reference-style solver: ``solve`` on the whole batch, or (``per_instance``) looped over
    the batch in Python, one NumPy/SciPy solve per instance."""

    def __init__(
        self, solve: Callable[[Tensor], Tensor], sense: str, per_instance: bool = True
    ) -> None:
        self.solve = solve
        self.sense = sense
        self.per_instance = per_instance

    def __call__(self, theta: Tensor) -> Tensor:
        if not self.per_instance:
            return self.solve(theta)
        return torch.cat([self.solve(theta[i : i + 1]) for i in range(theta.shape[0])])


def _torch_topk_mask(theta: Tensor, k: int) -> Tensor:
    """The k-hot mask of ``torch.topk`` (the reference's batched top-k)."""
    indices = torch.topk(theta, k, dim=-1, sorted=False).indices
    return torch.zeros_like(theta).scatter_(-1, indices, 1.0)


def reference_solver(solver: Any) -> ReferenceSolver:
    """The reference implementation's counterpart of a model's registered solver."""
    params = dict(getattr(solver, "params", {}))
    spec = solver_spec(solver)
    name = spec.name if spec is not None else type(solver).__name__
    if name == "topk":
        k = int(params["k"])
        return ReferenceSolver(lambda t: _torch_topk_mask(t, k), "max", per_instance=False)
    if name == "mst_edges":

        def tree(theta: Tensor) -> Tensor:
            scores = edges_to_matrix(theta)  # [B, n, n]
            weights = (scores + scores.transpose(1, 2)) / 2
            return matrix_to_edges(spanning_tree_scipy(weights))

        # the scipy loops solve one instance at a time inside, on a graph layout built once
        # per call (one call per row would rebuild it for every instance)
        return ReferenceSolver(tree, "max", per_instance=False)
    if name == "dijkstra":
        return ReferenceSolver(grid_shortest_path_scipy, solver_sense(solver), per_instance=False)
    raise KeyError(f"no reference solver for {name!r}")


# ----------------------------------------------------------------------------- timing


def training_step(model: ZooModel, batch: Batch) -> Callable[[], None]:
    """One Adam training step of ``model`` on ``batch`` (a closure for the timer)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.training_loss(batch)
        loss.backward()
        optimizer.step()

    return step


def latent_io(model: ZooModel, batch: Batch) -> tuple[Tensor, Tensor]:
    """θ ``[B, *S]`` and the sampled latent ``[B·N, *S]`` of one training forward pass."""
    captured: list[Tensor] = []
    hook = model.latent_layer.register_forward_hook(
        lambda _module, inputs, output: captured.extend([inputs[0].detach(), output.detach()])
    )
    try:
        model.training_loss(batch)
    finally:
        hook.remove()
    return captured[0], captured[1]


def variants(model: ZooModel, batch: Batch) -> tuple[ZooModel, ZooModel]:
    """The networks-only copy and the reference-style copy of ``model``."""
    theta, latent = latent_io(model, batch)
    networks = copy.deepcopy(model)
    networks.latent_layer = StraightThroughStandIn(latent, latent.shape[0] // theta.shape[0])
    reference = copy.deepcopy(model)
    layer = reference.latent_layer
    estimator = layer.estimator
    if isinstance(estimator.noise, SumOfGamma):
        estimator.noise = TermByTermSumOfGamma(estimator.noise.k, estimator.noise.iterations)
    reference.latent_layer = DifferentiableSolver(reference_solver(layer.solver), estimator)
    return networks, reference


def solver_batches(estimator: AIMLE, theta: Tensor) -> list[Tensor]:
    """The solver inputs of one AIMLE step: ``[B·N, *S]`` forward, then the backward batch,
    each θ plus a fresh noise draw (noise-free rows would repeat each instance N times, which
    favours data-dependent solvers such as ``torch.topk``)."""
    tiled = expand_samples(theta, estimator.samples)

    def perturbed() -> Tensor:
        if estimator.noise is None:
            return tiled
        return tiled + estimator.input_temperature * estimator.noise.sample(tiled.shape)

    forward = perturbed()
    backward = forward if estimator.reuses_forward_sample else torch.cat([perturbed(), perturbed()])
    return [forward, backward]


def breakdown(model: ZooModel, theta: Tensor, repeats: int) -> tuple[float, float]:
    """Seconds of one noise draw and of the solver calls of one step of ``model`` at θ."""
    layer = model.latent_layer
    estimator = layer.estimator
    assert isinstance(estimator, AIMLE)
    tiled = expand_samples(theta, estimator.samples)
    noise = estimator.noise
    noise_time = 0.0
    if noise is not None:
        noise_time = best_time(lambda: noise.sample(tiled.shape), repeats=repeats)
    inputs = solver_batches(estimator, theta)
    with torch.no_grad():
        solver_time = best_time(lambda: [layer.solver(x) for x in inputs], repeats=repeats)
    return noise_time, solver_time


def lower_bound(model: ZooModel, theta: Tensor, repeats: int) -> float | None:
    """Seconds of the least a top-k AIMLE step must add to the networks, or ``None``.

    That is the k-th largest value alone (no tie rule, no output mask), by the faster of
    ``torch.topk`` and the sorting network, on the same solver batches, plus the cheapest
    noise, one Gumbel draw per entry (our sampler), on the tiled θ. Only for models whose
    latent solver is ``topk``.
    """
    layer = model.latent_layer
    spec = solver_spec(layer.solver)
    if spec is None or spec.name != "topk":
        return None
    estimator = layer.estimator
    assert isinstance(estimator, AIMLE)
    k = int(layer.solver.params["k"])
    inputs = solver_batches(estimator, theta)
    shape = expand_samples(theta, estimator.samples).shape
    topk_time = min(
        best_time(
            lambda: [torch.topk(x, k, dim=-1, sorted=False) for x in inputs], repeats=repeats
        ),
        best_time(lambda: [_kth_largest_by_network(x, k) for x in inputs], repeats=repeats),
    )
    gumbel = Gumbel()
    gumbel_time = best_time(lambda: gumbel.sample(shape), repeats=repeats)
    return topk_time + gumbel_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = parser.parse_args()
    rounds, repeats = (1, 2) if args.quick else (3, 3)
    speed_rows: list[list[object]] = []
    split_rows: list[list[object]] = []
    for case in CASES:
        torch.manual_seed(0)
        model = create_model(case.model).train()
        batch = case.batch(torch.Generator().manual_seed(0))
        networks, reference = variants(model, batch)
        steps = [training_step(variant, batch) for variant in (model, networks, reference)]
        # Steps of a few ms are cheap to repeat and the most exposed to bursts of load: they
        # get five times the rotations, so that each minimum rests on more samples.
        case_rounds = rounds * 5 if best_time(steps[1], repeats=1) < 0.02 else rounds
        ours_time, networks_time, reference_time = interleaved_times(steps, case_rounds, repeats)
        speed_rows.append(
            [
                case.label,
                1.0 / ours_time,
                ours_time * 1e3,
                networks_time * 1e3,
                f"{ours_time / networks_time:.2f}",
                reference_time * 1e3,
                f"{reference_time / ours_time:.1f}x",
            ]
        )
        theta, _ = latent_io(model, batch)  # [B, *S], the latent layer's input
        noise_time, solver_time = breakdown(model, theta, rounds * repeats)
        rest = ours_time - networks_time - noise_time - solver_time
        bound = lower_bound(model, theta, rounds * repeats)
        split_rows.append(
            [
                case.label,
                ours_time * 1e3,
                networks_time * 1e3,
                noise_time * 1e3,
                solver_time * 1e3,
                rest * 1e3,
                "-" if bound is None else bound * 1e3,
                "-" if bound is None else f"{(networks_time + bound) / networks_time:.2f}",
            ]
        )
    header = ["model", "steps/s", "ours ms", "networks ms", "ours / networks"]
    print_table([*header, "reference-style ms", "reference / ours"], speed_rows)
    print()
    print_table(
        [
            "model",
            "step ms",
            "networks ms",
            "noise ms",
            "solver ms",
            "estimator + rest ms",
            "bound ms",
            "bound ratio",
        ],
        split_rows,
    )


if __name__ == "__main__":
    main()
