"""The grid-12 task trained with a solution cache: most solver calls answered from a pool.

``aimle-zoo compare grid-12`` calls the shortest-path solver on every training step (the
estimator's perturbed paths and, for AIMLE, its target paths). Here the same model, data, seed,
estimator and schedule train through a :class:`aimle_zoo.CachedSolver` that calls the solver
with probability ``--solve-ratio`` only and otherwise answers with the cheapest pooled path
under the predicted costs. The pool starts with the training set's gold paths (the solution
caching of Mulamba et al., 2021) and collects every path the solver finds. Validation and test
run the exact solver, so the numbers sit beside the estimators' rows of the README's grid
tables; at ``--solve-ratio 1`` the run is the comparison's own (the cache draws from its own
generator), which checks the set-up.

Run (the README's table: 160 steps, AIMLE forward)::

    python examples/grid_solution_cache.py --out runs/grid-cache-0.1 --solve-ratio 0.1
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from aimle_zoo import CachedSolver
from aimle_zoo.estimators import expand_samples
from aimle_zoo.models import GridShortestPath, register_model
from aimle_zoo.models.grid_path import hamming_loss
from aimle_zoo.recipes import SMOKE_STEPS, DataOptions, get_recipe, train_config
from aimle_zoo.training import evaluate, seed_everything, train


@register_model("grid_shortest_path_cached")
class CachedGrid(GridShortestPath):
    """The grid model whose training-mode solver calls go through a solution cache that
    calls Dijkstra with probability ``solve_ratio`` (seeded by ``cache_seed``)."""

    solve_ratio = 0.1
    cache_seed = 0

    @functools.cached_property
    def cache(self) -> CachedSolver:
        """The cache around the model's own solver (outside the module tree: not saved)."""
        generator = torch.Generator().manual_seed(self.cache_seed)
        return CachedSolver(self.latent_layer.solver, self.solve_ratio, generator=generator)

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        self._warn_if_eval()
        maps, _, gold = self._unpack(batch, "training_loss")
        layer = self.latent_layer
        predicted = layer.estimator(self.cache, self.vertex_costs(maps), minimize=layer.minimize)
        samples = predicted.shape[0] // maps.shape[0]
        loss = hamming_loss(predicted, expand_samples(gold.to(predicted.dtype), samples)).mean()
        calls = self.cache.solver_calls + self.cache.pool_answers
        return loss, {
            "hamming": float(loss.detach()),
            "pool": float(self.cache.pool_size),
            "solved_share": self.cache.solver_calls / max(calls, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (refused if taken)")
    parser.add_argument("--solve-ratio", type=float, default=0.1, help="P(call the solver)")
    parser.add_argument("--estimator", default="aimle-forward", help="a compare variant")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few batches (a quick check)")
    args = parser.parse_args()
    recipe = get_recipe("grid-12")
    options = DataOptions(smoke=args.smoke, split_seed=args.seed)
    steps = min(args.max_steps, SMOKE_STEPS) if args.smoke else args.max_steps
    config = train_config(
        "grid-12",
        estimator=args.estimator,
        data_options=options,
        epochs=args.epochs,
        max_steps_per_epoch=steps,
        seed=args.seed,
    )
    CachedGrid.solve_ratio, CachedGrid.cache_seed = args.solve_ratio, args.seed
    seed_everything(config.seed)  # the initial weights depend on the seed alone, as in compare
    task = recipe.build_data(options)
    model = CachedGrid(
        **recipe.static_model_kwargs(args.smoke),
        **task.model_kwargs,
        estimator=recipe.estimator_config(args.estimator),
    )
    own_generator = torch.Generator()  # a loader's seed draw would shift the global stream
    for _, _, gold in DataLoader(task.train, batch_size=1000, generator=own_generator):
        model.cache.add(gold)
    seeded = model.cache.pool_size
    result = train(model, task.train, task.valid, args.out, config)
    best = CachedGrid.from_pretrained(result.best_dir)
    metrics = evaluate(
        best, task.test, batch_size=config.eval_batch_size, options=recipe.test_options
    )
    metrics["cache"] = {
        "solve_ratio": args.solve_ratio,
        "seeded_pool": seeded,
        "final_pool": model.cache.pool_size,
        "solver_calls": model.cache.solver_calls,
        "pool_answers": model.cache.pool_answers,
    }
    staged = args.out / "test_metrics.json.partial"  # replaced in one step: never half-written
    staged.write_text(json.dumps(metrics, indent=2))
    staged.replace(args.out / "test_metrics.json")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
