"""Training recipes: which model, data, estimator and schedule make each published task.

A recipe names a task (``"dvae-mnist"``, ``"nri-t10"``, ...), the zoo model that solves it, how
to build its train/valid/test splits, the reference hyper-parameters (those of the AIMLE
authors' experiment scripts) and the estimator variants compared in the README.
:func:`run_training` and :func:`run_evaluation` are what ``aimle-zoo train`` and
``aimle-zoo evaluate`` call.

Estimator variants (``--estimator``): ``aimle`` (the recipe's reference AIMLE setting),
``aimle-forward`` / ``aimle-central`` (the same with forward / central differences), ``imle``
(fixed λ, the same noise and samples), ``ste``, ``perturbed``, ``blackbox`` and ``relaxed`` (the
classic relaxation baseline: Gumbel noise through the solver's continuous relaxation, i.e.
Xie and Ermon's continuous top-k for L2X and the VAE and the stochastic-softmax-trick
spanning tree for NRI; shortest paths have none) and ``simple`` (exact samples with the exact
marginals' gradient: k-subsets for L2X and the VAE, spanning trees for NRI; not the grid).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE
from torch.utils.data import Dataset, Subset

from . import data
from ._devices import resolve_device
from ._io import atomic_directory, atomic_file
from ._names import UnknownNameError, did_you_mean
from .estimators import MINIMIZER_NOISE, DifferentiableSolver, build_estimator
from .estimators._base import resolve_minimize
from .models import ZooModel, create_model
from .models._base import (
    CHECKPOINT_METADATA_KEYS,
    HUB_ORGANIZATION,
    RECIPE_FILE,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointVersionError,
    default_repo_id,
    read_checkpoint_config,
    saved_estimator_config,
)
from .solvers import has_exact_distribution, solver_method
from .training import (
    TEST_METRICS,
    TRAINER_STATE,
    TrainConfig,
    TrainResult,
    check_run_folder,
    evaluate,
    is_main_process,
    read_trainer_state,
    seed_everything,
    train,
)

#: MNIST on the Hugging Face Hub (the cards' ``datasets``; the loader reads the IDX files).
MNIST_HUB_ID = "ylecun/mnist"

#: The estimators ``compare`` trains when none are named.
DEFAULT_ESTIMATORS = ("aimle-forward", "aimle-central", "imle", "ste")
#: Steps per epoch of a smoke run (``DataOptions.smoke``) unless ``max_steps_per_epoch`` is given.
SMOKE_STEPS = 3
ESTIMATOR_VARIANTS = (
    "aimle",
    "aimle-forward",
    "aimle-central",
    "imle",
    "ste",
    "perturbed",
    "perturbed-multiplicative",
    "blackbox",
    "relaxed",
    "simple",
)
#: Estimators (registry names) with a ``minimizer_noise`` option: θ + ε or θ − ε.
NOISE_CONVENTION_ESTIMATORS = ("aimle", "imle", "ste")


@dataclass
class TaskData:
    """The splits of a task, plus what the model must learn from the data before training."""

    train: Dataset[Any]
    valid: Dataset[Any]
    test: Dataset[Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. the vocabulary size
    setup: Callable[[ZooModel], None] | None = None  # e.g. load pretrained word vectors
    # metrics of an eval-mode model on data outside the splits, reported with the test ones
    # (e.g. subset precision on the annotated BeerAdvocate reviews)
    test_extras: Callable[[ZooModel], dict[str, float]] | None = None


class UnknownRecipeError(UnknownNameError):
    """No recipe has the requested name."""


@dataclass(frozen=True)
class DataOptions:
    """Where data come from and how much of it: ``smoke`` shrinks every split to a few batches."""

    data_dir: str | None = None  # MNIST IDX folder, BeerAdvocate folder, reference .npy folder
    cache_dir: str | None = None
    smoke: bool = False
    progress: bool = True
    #: seed of a split drawn at random: the BeerAdvocate held-out file's validation and test
    #: halves, which the reference draws again for every run (random_state = the run's seed);
    #: ``run_training`` sets it to the run's seed and ``recipe.json`` records it
    split_seed: int = 0


@dataclass(frozen=True)
class Recipe:
    """A published task: model, data, reference schedule and estimator variants."""

    name: str
    model: str
    description: str
    build_data: Callable[[DataOptions], TaskData]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    imle_lambda: float = 10.0
    smoke_model_kwargs: dict[str, Any] = field(default_factory=dict)
    aimle: dict[str, Any] | None = None  # the task's AIMLE config when not the model default
    test_options: dict[str, Any] = field(default_factory=dict)  # evaluate_batch kwargs, test
    relaxation_temperature: float = 0.5  # τ of the "relaxed" variant
    hub_dataset: str | None = None  # the data's Hugging Face Hub dataset id, if it has one

    def static_model_kwargs(self, smoke: bool = False) -> dict[str, Any]:
        """The model arguments the recipe fixes (those its data sets are added at build)."""
        return {**self.model_kwargs, **(self.smoke_model_kwargs if smoke else {})}

    def estimator_config(
        self, variant: str, minimizer_noise: str | None = None
    ) -> dict[str, Any] | None:
        """The estimator config of ``variant`` for this recipe (``None``: the model's default).

        ``minimizer_noise`` (``"add"`` or ``"negate"``) replaces the recipe's convention for
        perturbing a minimiser's costs (the variants that perturb: AIMLE, I-MLE, STE).
        """
        if variant not in ESTIMATOR_VARIANTS:
            raise ValueError(
                f"unknown estimator {variant!r}.{did_you_mean(variant, ESTIMATOR_VARIANTS)} "
                f"Choose one of {', '.join(ESTIMATOR_VARIANTS)}."
            )
        if minimizer_noise is None:
            return self._variant_config(variant)
        if minimizer_noise not in MINIMIZER_NOISE:
            raise ValueError(
                f"minimizer_noise must be one of {', '.join(MINIMIZER_NOISE)}, got "
                f"{minimizer_noise!r}"
            )
        if not self.minimises():
            raise ValueError(
                f"recipe {self.name!r} maximises ({self.model}'s solver is a maximiser), so "
                "minimizer_noise would change nothing; leave it out"
            )
        config = self._variant_config(variant) or self.reference_estimator()
        if config["name"] not in NOISE_CONVENTION_ESTIMATORS:
            raise ValueError(
                f"the {variant!r} estimator has no minimizer_noise option (only "
                f"{', '.join(NOISE_CONVENTION_ESTIMATORS)} take it); leave it out for {variant!r}"
            )
        return {**config, "minimizer_noise": minimizer_noise}

    def _variant_config(self, variant: str) -> dict[str, Any] | None:
        """:meth:`estimator_config` with the recipe's own noise convention."""
        if variant == "aimle":
            return copy.deepcopy(self.aimle)
        reference = self.reference_estimator()
        noise, samples = reference.get("noise"), int(reference.get("samples", 1))
        if variant in ("aimle-forward", "aimle-central"):
            return {**reference, "symmetric": variant == "aimle-central"}
        minimizer_noise = reference.get("minimizer_noise", "negate")
        if variant == "imle":
            return {
                "name": "imle",
                "lambda_": self.imle_lambda,
                "noise": noise,
                "samples": samples,
                "input_temperature": reference.get("input_temperature", 1.0),
                "target_temperature": reference.get("target_temperature", 1.0),
                "minimizer_noise": minimizer_noise,
            }
        if variant == "ste":
            return {
                "name": "ste",
                "noise": noise,
                "samples": samples,
                "minimizer_noise": minimizer_noise,
            }
        if variant == "relaxed":
            if not self.has_relaxation():
                raise ValueError(
                    f"recipe {self.name!r} has no 'relaxed' baseline: its solver has no "
                    f"continuous relaxation. Choose one of {', '.join(self.variants())}."
                )
            return {
                "name": "relaxed",
                "noise": "gumbel",
                "temperature": self.relaxation_temperature,
                "samples": samples,
            }
        if variant == "simple":
            if not self.has_exact_distribution():
                raise ValueError(
                    f"recipe {self.name!r} has no 'simple' variant: its solver has no exact "
                    f"sampler and marginals. Choose one of {', '.join(self.variants())}."
                )
            return {"name": "simple", "temperature": 1.0, "samples": samples}
        if variant == "perturbed-multiplicative" and not self.minimises():
            raise ValueError(
                f"recipe {self.name!r} has no 'perturbed-multiplicative' variant: that "
                "perturbation keeps each entry's sign and is meant for a minimiser's positive "
                f"costs (a shortest path), while {self.model}'s solver maximises scores of "
                f"either sign. Choose one of {', '.join(self.variants())}."
            )
        if variant in ("perturbed", "perturbed-multiplicative"):
            return {
                "name": "perturbed",
                "noise": "gaussian",
                "sigma": 1.0,
                "samples": max(2, samples),
                "perturbation": variant.removeprefix("perturbed").lstrip("-") or "additive",
            }
        return {"name": "blackbox", "lambda_": self.imle_lambda}

    def full_estimator_config(
        self, variant: str, minimizer_noise: str | None = None
    ) -> dict[str, Any]:
        """The complete config (as ``Estimator.config()`` gives it) that ``variant`` trains
        with now: the recipe's, filled in with the estimator's defaults."""
        config = self.estimator_config(variant, minimizer_noise)
        if config is None:
            return copy.deepcopy(self._probe_layer.estimator.config())
        return build_estimator(config).config()

    def reference_estimator(self) -> dict[str, Any]:
        """The task's AIMLE config: ``aimle`` if set, else the model's default."""
        if self.aimle is not None:
            return copy.deepcopy(self.aimle)
        estimator = self._probe_layer.estimator
        return copy.deepcopy(estimator.config())

    def variants(self) -> tuple[str, ...]:
        """The estimator variants this recipe trains with: ``relaxed`` needs a solver with a
        continuous relaxation, ``simple`` one with an exact sampler and marginals (top-k, trees),
        ``perturbed-multiplicative`` a minimiser (positive costs)."""
        unavailable = {
            "relaxed": not self.has_relaxation(),
            "simple": not self.has_exact_distribution(),
            "perturbed-multiplicative": not self.minimises(),
        }
        return tuple(name for name in ESTIMATOR_VARIANTS if not unavailable.get(name, False))

    def minimises(self) -> bool:
        """Whether the model's solver is a minimiser (its θ are costs)."""
        layer = self._probe_layer
        return resolve_minimize(layer.solver, layer.minimize)

    def has_relaxation(self) -> bool:
        """Whether the model's solver has a continuous relaxation (the "relaxed" variant)."""
        return solver_method(self._probe_layer.solver, "relax") is not None

    def has_exact_distribution(self) -> bool:
        """Whether the model's solver can be sampled exactly, with exact marginals (the
        "simple" variant)."""
        return has_exact_distribution(self._probe_layer.solver)

    @functools.cached_property
    def _probe_layer(self) -> DifferentiableSolver:
        """The latent layer of a small instance of the recipe's model (default estimator),
        built once per recipe, on its own random stream: building it never moves the global
        one, so a model built after ``seed_everything`` gets the same weights whether or not
        the probe existed."""
        with torch.random.fork_rng(devices=[]):
            probe = create_model(self.model, **self.model_kwargs, **self.smoke_model_kwargs)
        return cast(DifferentiableSolver, probe.latent_layer)

    def build_model(
        self,
        variant: str = "aimle",
        *,
        smoke: bool = False,
        task: TaskData | None = None,
        estimator_config: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
        minimizer_noise: str | None = None,
    ) -> ZooModel:
        """A fresh model with the estimator ``variant`` (sized and set up for ``task``;
        ``minimizer_noise`` as in :meth:`estimator_config`); ``estimator_config``, a full
        config, replaces the variant's, and ``model_config`` the model arguments (both a
        resumed run's own)."""
        kwargs = self.static_model_kwargs(smoke)
        if task is not None:
            kwargs.update(task.model_kwargs)
        if model_config is not None:
            kwargs = dict(model_config)
        config = (
            dict(estimator_config)
            if estimator_config is not None
            else self.estimator_config(variant, minimizer_noise)
        )
        model = create_model(self.model, **kwargs, estimator=config)
        if task is not None and task.setup is not None:
            task.setup(model)
        return model


# ----------------------------------------------------------------------------- data builders


def _split_off(
    dataset: Dataset[Any], valid_size: int, seed: int
) -> tuple[Subset[Any], Subset[Any]]:
    """A fixed random ``valid_size`` hold-out of ``dataset`` (train, valid)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    return Subset(dataset, order[valid_size:].tolist()), Subset(
        dataset, order[:valid_size].tolist()
    )


def _head(dataset: Dataset[Any], size: int) -> Dataset[Any]:
    return Subset(dataset, range(min(size, len(dataset))))  # type: ignore[arg-type]


def _mnist_root(options: DataOptions) -> str | None:
    return options.data_dir or os.environ.get("AIMLE_ZOO_MNIST")


def _mnist_images(hold_out: bool) -> Callable[[DataOptions], TaskData]:
    """MNIST for the discrete VAE, 10k test images.

    ``hold_out``: train on 55k and validate on the other 5k training images. Otherwise train
    on all 60k, as the reference does; ``valid`` is then a fixed 5k sample *of the training
    images* that only monitors the run (such a recipe reports its last epoch).
    """

    def build(options: DataOptions) -> TaskData:
        root = _mnist_root(options)
        download = root is None
        train_full = data.MNIST(root, "train", download=download)
        test = data.MNIST(root, "test", download=download)
        held_in, valid = _split_off(train_full, 5000, seed=0)
        train_set: Dataset[Any] = held_in if hold_out else train_full
        if options.smoke:
            return TaskData(_head(train_set, 200), _head(valid, 100), _head(test, 100))
        return TaskData(train_set, valid, test)

    return build


def _mnist_pairs(options: DataOptions) -> TaskData:
    """MNIST 3 vs 8 for L2X: 10% of the train pairs held out for validation."""
    root = _mnist_root(options)
    download = root is None
    train_full = data.mnist_pair_dataset(root, (3, 8), "train", download=download)
    test = data.mnist_pair_dataset(root, (3, 8), "test", download=download)
    train_set, valid = _split_off(train_full, len(train_full) // 10, seed=0)
    if options.smoke:
        return TaskData(_head(train_set, 200), _head(valid, 100), _head(test, 100))
    return TaskData(train_set, valid, test)


def _synthetic(name: data.l2x_synthetic.SyntheticName) -> Callable[[DataOptions], TaskData]:
    def build(options: DataOptions) -> TaskData:
        sizes = (512, 256, 256) if options.smoke else (100_000, 10_000, 10_000)
        train_set, valid, test = (
            data.l2x_synthetic_dataset(name, size, seed=seed) for seed, size in enumerate(sizes)
        )
        return TaskData(train_set, valid, test)

    return build


def _graph_layout(timesteps: int) -> Callable[[DataOptions], TaskData]:
    def build(options: DataOptions) -> TaskData:
        sizes = (256, 64, 64) if options.smoke else (50_000, 10_000, 10_000)
        if options.data_dir is not None:
            layout = data.load_graph_layout_npy(options.data_dir, num_timesteps=timesteps)
        else:
            layout = data.load_graph_layout(
                options.cache_dir,
                num_timesteps=timesteps,
                sizes=sizes,
                progress=options.progress,
            )
        return TaskData(layout.train, layout.valid, layout.test)

    return build


def _warcraft(grid_size: int) -> Callable[[DataOptions], TaskData]:
    def build(options: DataOptions) -> TaskData:
        if options.data_dir is not None:
            grids = data.load_warcraft_npy(options.data_dir)
            found = tuple(grids.train.vertex_weights.shape[1:])
            if found != (grid_size, grid_size):
                raise data.DatasetError(
                    f"{options.data_dir} holds {found[0]}×{found[1]} grids, the recipe trains on "
                    f"{grid_size}×{grid_size}: point --data-dir at the {grid_size}x{grid_size} "
                    "folder of the Warcraft archive"
                )
        else:
            sizes = (256, 64, 64) if options.smoke else (10_000, 1_000, 1_000)
            grids = data.load_warcraft(
                options.cache_dir, grid_size=grid_size, sizes=sizes, progress=options.progress
            )
        return TaskData(grids.train, grids.val, grids.test)

    return build


def _beer(aspect: int) -> Callable[[DataOptions], TaskData]:
    def build(options: DataOptions) -> TaskData:
        if options.data_dir is None:
            raise FileNotFoundError(
                "the BeerAdvocate files cannot be downloaded automatically; pass --data-dir "
                "pointing at the folder with reviews.aspect*.{train,heldout}.txt, "
                "review+wiki.filtered.200.txt and annotations.json"
            )
        beer = data.load_beer_advocate(options.data_dir, aspect, seed=options.split_seed)
        embeddings, annotations = beer.embeddings, beer.annotations

        def setup(model: ZooModel) -> None:
            if embeddings is not None:
                model.set_embeddings(embeddings)  # type: ignore[operator]

        def subset_precision(model: ZooModel) -> dict[str, float]:
            """The selected tokens inside the annotated spans of the aspect."""
            assert annotations is not None
            ids, in_span = annotations.tensors  # [M, L] each
            device = next(model.parameters()).device
            selected = torch.cat(
                [
                    model.select(chunk.to(device)).cpu()  # type: ignore[operator]
                    for chunk in ids.split(256)
                ]
            )  # [M, L] MAP masks
            k = int(model.k)  # type: ignore[arg-type]
            return {"subset_precision": data.subset_precision(selected, ids, in_span, k)}

        return TaskData(
            beer.train,
            beer.valid,
            beer.test,
            model_kwargs={
                "vocab_size": len(beer.vocabulary),
                "max_length": int(beer.train.tensors[0].shape[1]),
                **({"embedding_dim": int(embeddings.shape[1])} if embeddings is not None else {}),
            },
            setup=setup,
            test_extras=subset_precision if annotations is not None else None,
        )

    return build


# ----------------------------------------------------------------------------- the recipes


def _l2x_tabular_aimle(k: int) -> dict[str, Any]:
    """Central AIMLE for the 10-feature benchmarks: Gumbel noise, β₀ = 1, η = 1e-3, c = 2k.

    The text recipe's c = 1 (half the samples with one swap) starves a 10-feature selector:
    with c = 1 the selection settles on a single dominant feature (median rank 7.0 on the
    nonlinear additive benchmark after 4 epochs), with c = k it ranks the relevant ones first
    (median rank 4.0, precision 0.57; I-MLE with λ = 10: 4.0, 0.50). Over 10 epochs at batch
    100, c = 2k (every relevant feature may swap) recovers more than c = k: test median rank /
    precision 3.19 / 0.88 against 3.40 / 0.85 on orange skin and 3.80 / 0.82 against 4.51 / 0.70
    on switch, the same on XOR and nonlinear additive (both optimal), accuracy within 0.003.
    """
    return {
        "name": "aimle",
        "target": {"name": "adaptive", "initial_beta": 1.0, "target_norm": 2.0 * k,
                   "update_step": 1e-3},
        "noise": {"name": "gumbel"},
        "samples": 1,
        "symmetric": True,
    }  # fmt: skip


#: Adam weight decay of the synthetic L2X recipes. Without it the selector's logits grow once
#: the predictor saturates: λ = β‖θ‖/‖dy‖ climbs from ~1e3 to 1e5–1e8 within 10 epochs, the
#: Adam-normalised AIMLE steps follow noise in dy, and the selection drifts away from the
#: relevant features (orange skin: precision 0.98 after epoch 1, 0.69 after epoch 10). With
#: 1e-3 the 10-epoch test median ranks go from 4.01 / 3.54 / 4.50 to 3.40 / 2.50 / 4.51 and
#: the precisions from 0.69 / 0.62 / 0.61 to 0.85 / 0.75 / 0.70 (orange skin, nonlinear
#: additive, switch), at the same accuracy.
_L2X_SYNTHETIC_WEIGHT_DECAY = 1e-3

#: Batch size of the synthetic L2X recipes: L2X's own (Chen et al.'s script trains 1,000 steps of
#: 1,000 examples). 10 epochs of 100,000 examples are then 1,000 steps. The adaptive target
#: c = 2k is never reached on 10 features (the running count stays near 0.5–2.2), so β grows
#: by η per step throughout and λ with it, and long runs drift: at batch 1,000 an orange-skin run
#: kept precision 1.00 for 9 epochs and fell to 0.73 by epoch 30. Across seeds 0–4 the selector
#: lands in one of two modes (orange skin: 2.50 / 1.00 in two runs, about 4.1 / 0.66 in three).
#: Validation loss tells them apart: on orange skin and switch the two lowest losses are the two
#: good runs, and on nonlinear additive the lowest is the second best of five.
_L2X_SYNTHETIC_BATCH_SIZE = 1000

RECIPES: dict[str, Recipe] = {}


def _add(recipe: Recipe) -> None:
    RECIPES[recipe.name] = recipe


for _name, _k in data.l2x_synthetic.NUM_RELEVANT.items():  # k = the relevant features
    _add(
        Recipe(
            name=f"l2x-{_name.replace('_', '-')}",
            model="l2x_tabular",
            description=f"L2X on the {_name.replace('_', ' ')} synthetic benchmark (k = {_k})",
            build_data=_synthetic(_name),  # type: ignore[arg-type]
            model_kwargs={"input_dim": 10, "k": _k},
            train=TrainConfig(
                epochs=10,
                batch_size=_L2X_SYNTHETIC_BATCH_SIZE,
                lr=1e-3,
                weight_decay=_L2X_SYNTHETIC_WEIGHT_DECAY,
                select_metric="loss",
            ),
            imle_lambda=10.0,
            aimle=_l2x_tabular_aimle(_k),
        )
    )
_add(
    Recipe(
        name="l2x-mnist",
        model="l2x_mnist",
        description="L2X on MNIST 3 vs 8: pick 4 of the 49 4x4 patches",
        build_data=_mnist_pairs,
        hub_dataset=MNIST_HUB_ID,
        model_kwargs={"k": 4},
        train=TrainConfig(epochs=10, batch_size=100, lr=1e-3, select_metric="loss"),
    )
)
_add(
    Recipe(
        name="l2x-beer-aroma",
        model="l2x_text",
        description="L2X on BeerAdvocate aroma (aspect 1), k = 10 (needs --data-dir)",
        build_data=_beer(1),
        model_kwargs={"k": 10},
        train=TrainConfig(epochs=20, batch_size=40, lr=1e-3, adam_eps=1e-7, select_metric="mse"),
        imle_lambda=1000.0,
    )
)
_add(
    Recipe(
        name="dvae-mnist",
        model="discrete_vae",
        description="Discrete VAE on MNIST, 20 groups of 10-of-20 codes, central AIMLE, S = 10",
        build_data=_mnist_images(hold_out=True),
        hub_dataset=MNIST_HUB_ID,
        train=TrainConfig(epochs=100, batch_size=100, lr=1e-3, select_metric="loss"),
        imle_lambda=10.0,
        test_options={"reference_test_loss": True},
    )
)
_add(
    Recipe(
        name="dvae-mnist-ref",
        model="discrete_vae",
        description=(
            "dvae-mnist as the reference runs it: KL weight 1/√S (its √S-inflated estimator "
            "gradient), all 60k training images, last epoch reported"
        ),
        build_data=_mnist_images(hold_out=False),
        hub_dataset=MNIST_HUB_ID,
        model_kwargs={"kl_weight": 1 / math.sqrt(10)},
        train=TrainConfig(
            epochs=100, batch_size=100, lr=1e-3, select_metric="loss", select_mode="last"
        ),
        imle_lambda=10.0,
        test_options={"reference_test_loss": True},
    )
)
# Learning rates: 5e-4 for both T, the reference's T = 10 central and T = 20 settings. Its
# T = 10 forward setting, 1e-4, needs its whole 128 epochs: on this data it had reached edge
# accuracy 0.765 after 6 epochs, where 5e-4 reaches 0.80 after one.
for _t, _lr, _steps in ((10, 5e-4, 9), (20, 5e-4, 10)):
    _add(
        Recipe(
            name=f"nri-t{_t}",
            model="nri_tree",
            description=f"NRI with a spanning-tree latent on the graph-layout data, T = {_t}",
            build_data=_graph_layout(_t),
            model_kwargs={"timesteps": _t, "prediction_steps": _steps},
            train=TrainConfig(
                epochs=128, batch_size=128, eval_batch_size=500, lr=_lr, select_metric="elbo",
                select_mode="max",
            ),
            smoke_model_kwargs={"encoder_hidden": 32, "decoder_hidden": 32},
        )
    )  # fmt: skip
_add(
    Recipe(
        name="grid-12",
        model="grid_shortest_path",
        description="Warcraft-style 12x12 shortest paths: CNN costs through dijkstra",
        build_data=_warcraft(12),
        model_kwargs={"grid_size": 12},
        train=TrainConfig(
            epochs=50, batch_size=70, lr=5e-4, lr_milestones=(30, 40), select_metric="loss"
        ),
        imle_lambda=10.0,
        smoke_model_kwargs={"channels": (8, 8)},
    )
)


def list_recipes() -> list[str]:
    """Names of the training recipes (the published tasks)."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; the error lists close matches and every recipe."""
    if name in RECIPES:
        return RECIPES[name]
    raise UnknownRecipeError(
        f"unknown model/task {name!r}.{did_you_mean(name, RECIPES)} Known: "
        f"{', '.join(list_recipes())}."
    )


# ----------------------------------------------------------------------------- entry points


def train_config(
    name: str,
    *,
    estimator: str = "aimle",
    data_options: DataOptions | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The :class:`TrainConfig` :func:`run_training` uses: the recipe's schedule with the
    non-``None`` ``overrides``, at most 3 steps per epoch on smoke data, and the recipe,
    estimator and smoke flag in ``extra``."""
    options = data_options or DataOptions()
    config = replace(
        get_recipe(name).train, **{k: v for k, v in overrides.items() if v is not None}
    )
    if options.smoke and config.max_steps_per_epoch is None:
        config = replace(config, max_steps_per_epoch=SMOKE_STEPS)
    extra = {**config.extra, "recipe": name, "estimator": estimator, "smoke": options.smoke}
    return replace(config, extra=extra)


def run_training(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    estimator: str | None = None,
    data_options: DataOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    minimizer_noise: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train recipe ``name`` into ``out_dir`` (``overrides`` replace ``TrainConfig`` fields).

    With ``data_options.smoke`` the splits shrink and every epoch stops after a few steps.
    The best checkpoint is then evaluated on the test split (``out_dir/test_metrics.json``),
    and ``best/recipe.json`` records how it was made. ``resume`` and ``overwrite`` are those
    of :func:`~aimle_zoo.training.train` (a folder holding a run is refused without either).
    ``estimator`` defaults to ``"aimle"``; on ``resume`` the estimator (its full saved
    configuration), batch size, learning rate, seed, steps per epoch, epochs and device not given
    (``None``) are the saved run's. ``minimizer_noise`` replaces the recipe's noise convention
    for a minimiser (see :meth:`Recipe.estimator_config`).
    """
    recipe = get_recipe(name)
    options = data_options or DataOptions()
    if resume:
        estimator, overrides = _saved_settings(Path(out_dir), estimator, overrides)
    estimator = estimator or "aimle"
    recipe.estimator_config(estimator, minimizer_noise)  # an unknown or unsupported one fails
    config = train_config(name, estimator=estimator, data_options=options, **overrides)
    options = replace(options, split_seed=config.seed)
    check_run_folder(out_dir, config, resume=resume, overwrite=overwrite)  # before the data
    seed_everything(config.seed)  # the initial weights depend on the seed alone
    saved = _saved_model(Path(out_dir)) if resume else None  # read before the data is built
    if saved is not None and minimizer_noise is not None:
        trained_with = saved[1].get("minimizer_noise")
        if trained_with != minimizer_noise:
            raise ValueError(
                f"the run in {out_dir} trains with minimizer_noise={trained_with!r}, not "
                f"{minimizer_noise!r}; resume it without the option, or start a new run"
            )
    task = recipe.build_data(options)
    model = recipe.build_model(
        estimator,
        smoke=options.smoke,
        task=task,
        model_config=None if saved is None else saved[0],
        estimator_config=None if saved is None else saved[1],
        minimizer_noise=minimizer_noise,
    )
    result = train(
        model, task.train, task.valid, out_dir, config, resume=resume, overwrite=overwrite
    )
    if is_main_process() and result.best_dir.exists():
        device = resolve_device(config.device)
        best = type(model).from_pretrained(result.best_dir).to(device)
        test_metrics = evaluate(
            best,
            task.test,
            batch_size=config.eval_batch_size,
            device=device,
            options=recipe.test_options,
        )
        test_metrics.update(_test_extras(best, task))
        with atomic_file(Path(out_dir) / TEST_METRICS, "w") as handle:
            json.dump(test_metrics, handle, indent=2)
        _write_recipe(result.best_dir, name, estimator, options)
    return result


#: Settings ``run_training(resume=True)`` takes from the saved run when not given.
RESUMED_SETTINGS = (
    "epochs", "batch_size", "lr", "seed", "max_steps_per_epoch", "checkpoint_every", "device",
)  # fmt: skip


def _saved_settings(
    out: Path, estimator: str | None, overrides: dict[str, Any]
) -> tuple[str | None, dict[str, Any]]:
    """The estimator and ``overrides`` with the run in ``out``'s values for those not given."""
    state = out / "last" / TRAINER_STATE
    try:
        saved = json.loads(state.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return estimator, overrides  # no readable state: train() says what is wrong
    filled = dict(overrides)
    for key in RESUMED_SETTINGS:
        if filled.get(key) is None and key in saved:
            filled[key] = saved[key]
    if overrides.get("device") is None and "device" in saved:
        try:
            resolve_device(saved["device"])
        except ValueError as err:
            raise ValueError(
                f"cannot resume the run in {out} on {saved['device']!r}, the device it trained "
                f"on: {err}. Name another device (--device cpu) to continue it there; its "
                "noise then follows that device's random stream"
            ) from err
    return estimator or saved.get("extra", {}).get("estimator"), filled


def _saved_model(out: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The model arguments and estimator config the run in ``out`` trains with
    (``last/config.json``; the estimator config upgraded as
    :meth:`~aimle_zoo.models.ZooModel.from_pretrained` upgrades it).

    A resumed run keeps them even when the recipe's defaults have changed since (a new
    sampler, a new step size, another KL weight), so that it continues the run it was.
    ``None`` when ``out`` holds no ``last/`` (:func:`~aimle_zoo.training.train` then says
    there is nothing to resume).

    Raises:
        CheckpointError: ``last/config.json`` is missing, unreadable, incomplete or newer.
    """
    last = out / "last"
    if not last.is_dir():
        return None
    advice = "restore last/ from a copy, or start over with --overwrite"
    try:
        estimator = saved_estimator_config(last, advice=advice)
        config = read_checkpoint_config(last)
    except CheckpointVersionError as err:  # its own advice (upgrade aimle-zoo) holds
        raise CheckpointVersionError(f"cannot resume the run in {out}: {err}") from err
    except CheckpointNotFoundError as err:
        raise CheckpointNotFoundError(f"cannot resume the run in {out}: {err}; {advice}") from err
    except CheckpointError as err:
        raise type(err)(f"cannot resume the run in {out}: {err}") from err
    skipped = {*CHECKPOINT_METADATA_KEYS, "estimator"}
    return {key: value for key, value in config.items() if key not in skipped}, estimator


def run_evaluation(
    model: ZooModel,
    name: str,
    *,
    split: str = "test",
    data_options: DataOptions | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    limit: int | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on a split of recipe ``name`` (eval mode, MAP latent; on the test
    split also the recipe's ``test_options`` metrics and the task's extras, such as subset
    precision on annotated reviews, which ``limit`` does not cut). ``device``: move the model
    there first (default: leave it where it is)."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 instance, got {limit}")
    recipe = get_recipe(name)
    if device is not None:
        model.to(str(resolve_device(device)))
    task = recipe.build_data(data_options or DataOptions())
    dataset = getattr(task, split)
    if limit is not None:
        dataset = _head(dataset, limit)
    metrics = evaluate(
        model,
        dataset,
        batch_size=batch_size or recipe.train.eval_batch_size,
        options=recipe.test_options if split == "test" else None,
        progress=(data_options or DataOptions()).progress,
        description=f"{name} {split} ({len(dataset)} instances)",
    )
    if split == "test":
        metrics.update(_test_extras(model, task))
    return metrics


def _test_extras(model: ZooModel, task: TaskData) -> dict[str, float]:
    if task.test_extras is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return task.test_extras(model)
    finally:
        model.train(was_training)


def read_recipe(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``recipe.json`` written next to a trained checkpoint, if any."""
    path = Path(folder) / RECIPE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); restore it or delete it and pass the task "
            "explicitly (--task)"
        ) from err
    if not isinstance(record, dict) or not isinstance(record.get("recipe"), str):
        raise ValueError(
            f"{path} must be a JSON object naming the recipe, e.g. "
            '{"recipe": "dvae-mnist", "estimator": "aimle", "smoke": false}; restore it or '
            "delete it and pass the task explicitly (--task)"
        )
    return record


@dataclass(frozen=True)
class CheckpointEvaluation:
    """What :func:`evaluate_checkpoint` measured: the task, the checkpoint folder, the metrics
    and the figure written (if any)."""

    task: str
    folder: Path
    metrics: dict[str, float]
    figure: Path | None = None
    smoke: bool = False  # measured on the smoke run's small data, as it was trained


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    task: str | None = None,
    split: str = "test",
    limit: int | None = None,
    data_options: DataOptions | None = None,
    device: str = "cpu",
    figure: str | os.PathLike[str] | None = None,
) -> CheckpointEvaluation:
    """Metrics of a checkpoint on a split of its task, and optionally a figure.

    ``checkpoint`` is a bundled name, a Hub id, a checkpoint folder (``best/``, ``last/``) or
    a run folder (its ``best/`` is used). The task and the smoke flag come from the
    checkpoint's ``recipe.json`` or, for a run stopped before its end, from its trainer state;
    ``task`` overrides them and must fit the checkpoint's architecture.

    Raises:
        ValueError: no recorded task and no ``task``, a task for another architecture, a bad
            split or limit.
        CheckpointError: the checkpoint cannot be found or loaded.
    """
    from .figures import save_figure
    from .hub import resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    if not (folder / CONFIG_NAME).exists() and (folder / "best" / CONFIG_NAME).exists():
        folder = folder / "best"  # a run folder
    try:
        recorded = _recorded_recipe(folder) or {}
    except ValueError:
        if task is None:
            raise
        recorded = {}  # a broken recipe.json does not matter when the task is given
    task_name = task or recorded.get("recipe") or _published_task(checkpoint)
    if task_name is None:
        raise ValueError(
            f"{checkpoint} records no task (no recipe.json or trainer state); pass the task "
            "(--task), e.g. one of: " + ", ".join(list_recipes())
        )
    recipe = get_recipe(task_name)
    model = ZooModel.from_pretrained(folder)
    if model.model_name != recipe.model:
        raise ValueError(
            f"task {task_name!r} is for {recipe.model} models, but {checkpoint} holds a "
            f"{model.model_name}; choose a task of that model (see `aimle-zoo recipes`)"
        )
    options = data_options or DataOptions(progress=False)
    if recorded.get("recipe") == task_name:
        split_seed = recorded.get("split_seed", 0)  # recorded since it varies with the run
        options = replace(options, smoke=bool(recorded.get("smoke", False)), split_seed=split_seed)
    metrics = run_evaluation(
        model, task_name, split=split, data_options=options, device=device, limit=limit
    )
    written = None
    if figure is not None:
        save_figure(model, task_name, figure, data_options=options, split=split)
        written = Path(figure)
    return CheckpointEvaluation(task_name, folder, metrics, written, options.smoke)


def _published_task(checkpoint: str | os.PathLike[str]) -> str | None:
    """The task of a published checkpoint named by its short name or ``aimle-zoo/`` Hub id
    (published names are recipe names), for a copy without ``recipe.json`` (one downloaded
    before the file was published with it)."""
    if isinstance(checkpoint, os.PathLike) or Path(checkpoint).exists():
        return None
    name = checkpoint.removeprefix(f"{HUB_ORGANIZATION}/")
    return name if name in RECIPES else None


def _recorded_recipe(folder: Path) -> dict[str, Any] | None:
    """How the checkpoint in ``folder`` was trained: its ``recipe.json``, else the trainer
    state of its run (``folder/`` itself for ``last/``, the sibling ``last/`` for ``best/``)."""
    recorded = read_recipe(folder)
    if recorded is not None:
        return recorded
    for state in (folder / TRAINER_STATE, folder.parent / "last" / TRAINER_STATE):
        if state.exists():
            try:
                return _record_of_config(json.loads(state.read_text())["config"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def publication_folder(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``root/name`` (default root: the bundled checkpoints folder) for a published name.

    Raises:
        ValueError: ``name`` is not a valid Hub repository name (``aimle-zoo/<name>``), e.g.
            it holds a space or a path separator.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .hub import checkpoints_root

    try:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise HFValidationError("a name, not a path")
        validate_repo_id(f"{HUB_ORGANIZATION}/{name}")
    except HFValidationError as err:
        raise ValueError(
            f"{name!r} cannot be a published name: it becomes the Hub id "
            f"{HUB_ORGANIZATION}/{name} and the folder checkpoints/{name} ({err}); use letters, "
            "digits, '-', '_' and '.'"
        ) from err
    return Path(root if root is not None else checkpoints_root()) / name


def _recipe_of_unfinished_run(run: Path) -> dict[str, Any]:
    """The recipe record of a run stopped before its end, from ``last/``'s trainer state."""
    state = run / "last" / TRAINER_STATE
    if not (run / "best" / CONFIG_NAME).exists() or not state.exists():
        raise FileNotFoundError(
            f"{run} has no best/ checkpoint or last/{TRAINER_STATE}; train it with "
            "`aimle-zoo train` first"
        )
    advice = "publish a run whose best/ has its recipe.json, or retrain it"
    config = read_trainer_state(state, f"cannot tell how {run} was trained", advice)["config"]
    recorded = _record_of_config(config)
    if recorded["recipe"] is None:
        raise ValueError(f"cannot tell how {run} was trained: {state} names no recipe; {advice}")
    return recorded


def _record_of_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``recipe.json`` record a trainer state's config implies (the split seed is the run's
    seed, as ``run_training`` sets it); ``None`` for what it does not hold."""
    extra = config.get("extra", {})
    recorded = {key: extra.get(key) for key in ("recipe", "estimator", "smoke")}
    return {**recorded, "split_seed": int(config.get("seed", 0))}


def card_dataset(recipe: Recipe, smoke: bool) -> str:
    """What a published card says the checkpoint was trained and tested on."""
    if smoke:
        return (
            f"{recipe.description}; SMOKE RUN: a few batches of tiny splits, for tests only, "
            "not a trained model"
        )
    return recipe.description


def _write_recipe(folder: Path, name: str, estimator: str, options: DataOptions) -> None:
    if not folder.exists():
        return
    record = {
        "recipe": name,
        "estimator": estimator,
        "smoke": options.smoke,
        "split_seed": options.split_seed,
    }
    with atomic_file(folder / RECIPE_FILE, "w") as handle:
        json.dump(record, handle, indent=2)


HELDOUT_SIZE = 256
HELDOUT_PREFIX = f"heldout{HELDOUT_SIZE}_"


def publish_run(
    run_dir: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    command: str,
    data_options: DataOptions | None = None,
) -> dict[str, float]:
    """Copy a finished run's best checkpoint to ``destination`` as a published folder.

    The card records the test metrics of the run (``test_metrics.json``, or a fresh evaluation
    of the best checkpoint when the run was stopped before its end), the metrics on the
    first :data:`HELDOUT_SIZE` test instances (prefixed ``heldout256_``, so CI can re-evaluate
    the bundled checkpoint exactly), the dataset and the ``command`` that trained it. A smoke
    run is evaluated on the smoke data it was trained and tested on, so that every metric of
    the card comes from the same test split. The copy is atomic: ``destination`` is either the
    old folder or the complete new one.
    """
    from .hub import write_model_card

    run = Path(run_dir)
    recorded = read_recipe(run / "best") or _recipe_of_unfinished_run(run)
    recipe = get_recipe(recorded["recipe"])
    data_options = replace(
        data_options or DataOptions(),
        smoke=bool(recorded["smoke"]),
        split_seed=int(recorded.get("split_seed", 0)),
    )
    model = ZooModel.from_pretrained(run / "best")
    heldout = run_evaluation(
        model, recipe.name, split="test", data_options=data_options, limit=HELDOUT_SIZE
    )
    test_file = run / TEST_METRICS
    if test_file.exists():
        metrics = json.loads(test_file.read_text())
    else:  # a run stopped before its schedule ended: evaluate its best checkpoint now
        metrics = run_evaluation(model, recipe.name, split="test", data_options=data_options)
    metrics.update({HELDOUT_PREFIX + key: value for key, value in heldout.items()})
    metrics = {key: float(value) for key, value in metrics.items() if not key.endswith("count")}
    with atomic_directory(destination) as staging:
        for name in (CONFIG_NAME, SAFETENSORS_SINGLE_FILE):
            shutil.copyfile(run / "best" / name, staging / name)
        with atomic_file(staging / RECIPE_FILE, "w") as handle:
            json.dump(recorded, handle, indent=2)
        write_model_card(
            staging,
            metrics=metrics,
            command=command,
            dataset=card_dataset(recipe, smoke=bool(recorded["smoke"])),
            dataset_id=recipe.hub_dataset,
            repo_id=default_repo_id(destination),
        )
    return metrics
