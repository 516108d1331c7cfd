"""The grid-12 task trained on the perturbed Fenchel–Young loss instead of through an estimator.

``aimle-zoo compare grid-12`` trains the cost network through the shortest-path layer on the
Hamming loss to the gold path, with each gradient estimator in turn. The Fenchel–Young loss
(``aimle_zoo.FenchelYoungLoss``) learns from the gold paths directly: θ = the predicted vertex
costs, y = the gold path, L = ⟨θ, y⟩ − E[min_z ⟨θ + σZ, z⟩] ≥ 0. Everything else is the
comparison's: the recipe's data, model, seed, batch size, learning rate and schedule, the same
trainer (best epoch by validation Hamming loss) and the same test evaluation, so the row this
prints sits beside the estimators' rows of the README's grid tables.

Run (the README's two budgets; σ = 0.03, the best of six values by validation loss, is the
default, and ``--sigma 1`` gives the perturbed optimizer's scale)::

    python examples/grid_fenchel_young.py --out runs/grid-fy --epochs 4 --max-steps 40
    python examples/grid_fenchel_young.py --out runs/grid-fy-800 --epochs 20 --max-steps 40
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from aimle_zoo import FenchelYoungLoss
from aimle_zoo.models import GridShortestPath, register_model
from aimle_zoo.recipes import SMOKE_STEPS, DataOptions, get_recipe, train_config
from aimle_zoo.training import evaluate, seed_everything, train


@register_model("grid_shortest_path_fenchel_young")
class FenchelYoungGrid(GridShortestPath):
    """The grid model whose training loss is the Fenchel–Young loss of its solver, with
    Gaussian noise of scale ``noise_scale`` and ``perturbed_paths`` samples per map."""

    noise_scale = 0.03
    perturbed_paths = 10

    @functools.cached_property
    def fenchel_young(self) -> FenchelYoungLoss:
        return FenchelYoungLoss(
            self.latent_layer.solver, sigma=self.noise_scale, samples=self.perturbed_paths
        )

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        maps, _, gold = self._unpack(batch, "training_loss")
        loss = self.fenchel_young(self.vertex_costs(maps), gold.to(maps.dtype))
        return loss, {"fenchel_young": float(loss.detach())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (refused if taken)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=0.03, help="noise scale σ")
    parser.add_argument("--samples", type=int, default=10, help="perturbed paths per map")
    parser.add_argument("--smoke", action="store_true", help="a few batches (a quick check)")
    args = parser.parse_args()
    recipe = get_recipe("grid-12")
    options = DataOptions(smoke=args.smoke, split_seed=args.seed)
    steps = min(args.max_steps, SMOKE_STEPS) if args.smoke else args.max_steps
    config = train_config(
        "grid-12",
        data_options=options,
        epochs=args.epochs,
        max_steps_per_epoch=steps,
        seed=args.seed,
    )
    FenchelYoungGrid.noise_scale, FenchelYoungGrid.perturbed_paths = args.sigma, args.samples
    seed_everything(config.seed)  # the initial weights depend on the seed alone, as in compare
    task = recipe.build_data(options)
    model = FenchelYoungGrid(**recipe.static_model_kwargs(args.smoke), **task.model_kwargs)
    result = train(model, task.train, task.valid, args.out, config)
    best = FenchelYoungGrid.from_pretrained(result.best_dir)
    metrics = evaluate(
        best, task.test, batch_size=config.eval_batch_size, options=recipe.test_options
    )
    staged = args.out / "test_metrics.json.partial"  # replaced in one step: never half-written
    staged.write_text(json.dumps(metrics, indent=2))
    staged.replace(args.out / "test_metrics.json")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
