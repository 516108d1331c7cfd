"""``aimle-zoo train``, ``aimle-zoo evaluate`` and ``aimle-zoo recipes``."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..recipes import (
    DEFAULT_ESTIMATORS,
    ESTIMATOR_VARIANTS,
    DataOptions,
    evaluate_checkpoint,
    get_recipe,
    list_recipes,
    run_training,
)
from ..training import TrainingStopped, is_main_process

DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Data folder (MNIST IDX files, BeerAdvocate files, reference .npy files)."),
]
CacheDirOpt = Annotated[Path | None, typer.Option(help="Cache for generated datasets.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
MinimizerNoiseOpt = Annotated[
    str | None,
    typer.Option(
        help="How AIMLE, I-MLE and STE perturb a minimiser's costs: add (θ + ε) or negate "
        "(θ − ε) (default: the recipe's)."
    ),
]
RunDeviceOpt = Annotated[
    str | None,
    typer.Option(help="cpu, cuda, cuda:N or auto (default: cpu; a resumed run: its own)."),
]


def _data_options(
    data_dir: Path | None,
    cache_dir: Path | None = None,
    smoke: bool = False,
    progress: bool = False,
) -> DataOptions:
    return DataOptions(
        data_dir=str(data_dir) if data_dir else None,
        cache_dir=str(cache_dir) if cache_dir else None,
        smoke=smoke,
        progress=progress,
    )


def recipes_command() -> None:
    """List the trainable models/tasks and their reference schedules."""
    for name in list_recipes():
        recipe = get_recipe(name)
        schedule = f"{recipe.train.epochs} epochs, batch {recipe.train.batch_size}"
        typer.echo(f"{name:24s} {recipe.model:20s} {schedule:24s} {recipe.description}")


def train_command(
    name: Annotated[str, typer.Argument(help="Task to train, e.g. dvae-mnist (see `recipes`).")],
    estimator: Annotated[
        str | None,
        typer.Option(
            help=f"Estimator variant: {', '.join(ESTIMATOR_VARIANTS)} (default aimle; with "
            "--resume, the run's)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/NAME-ESTIMATOR).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the recipe's; with --resume, the run's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default: the recipe's, or the run's).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam learning rate (default: the recipe's, or the run's).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0, or the run's).")] = None,
    device: RunDeviceOpt = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last/.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the run already in --out and start over.")
    ] = False,
    smoke: Annotated[
        bool, typer.Option(help="Tiny data and at most 3 steps per epoch: a quick try (and CI).")
    ] = False,
    max_steps: Annotated[int | None, typer.Option(help="Cap the steps of every epoch.")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Also save last/ every N steps (long runs).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    minimizer_noise: MinimizerNoiseOpt = None,
) -> None:
    """Train a model; logs metrics.jsonl and keeps best/ and last/ checkpoints in --out."""
    run_dir = out or Path("runs") / f"{name}-{estimator or 'aimle'}"
    try:
        result = run_training(
            name,
            run_dir,
            estimator=estimator,
            data_options=_data_options(data_dir, cache_dir, smoke, progress),
            resume=resume,
            overwrite=overwrite,
            minimizer_noise=minimizer_noise,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            max_steps_per_epoch=max_steps,
            checkpoint_every=checkpoint_every,
            progress=progress,
        )
    except TrainingStopped as stop:
        last = run_dir / "last"
        how = "replace --overwrite by --resume" if overwrite else "add --resume"
        _exit_stopped(
            stop,
            f"{last} holds the last complete save; {how} in the same command to continue"
            if last.is_dir()
            else "nothing was saved yet",
        )
    if is_main_process():  # under torchrun, rank 0 speaks for all
        typer.echo(f"best epoch {result.best_epoch}: {json.dumps(result.best_metrics)}")
        typer.echo(f"checkpoint: {result.best_dir}")


def evaluate_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint folder, short name or Hub id.")],
    task: Annotated[
        str | None, typer.Option(help="Task whose data to use (default: from recipe.json).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate the first N instances only.")
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "cpu",
    figure: Annotated[Path | None, typer.Option(help="Save a figure of predictions here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Print a checkpoint's metrics on a split, and optionally save a figure.

    CHECKPOINT may also be a run folder (its best/) or the best/ of a run stopped early.
    """
    result = evaluate_checkpoint(
        checkpoint,
        task=task,
        split=split,
        limit=limit,
        data_options=_data_options(data_dir, cache_dir, progress=progress),
        device=device,
        figure=figure,
    )
    smoke = " (the smoke data it was trained on)" if result.smoke else ""
    typer.echo(f"{result.task}, {split} split{smoke}, {result.folder}")
    for key, value in result.metrics.items():
        typer.echo(f"{key:24s} {value:.6g}")
    if result.figure is not None:
        typer.echo(f"figure: {result.figure}")


def _exit_stopped(stop: TrainingStopped, what_now: str) -> NoReturn:
    """Say what a stop left and exit as the signal's default action would (128 + n)."""
    typer.echo(f"stopped by {signal.Signals(stop.signum).name}: {what_now}", err=True)
    raise typer.Exit(code=128 + stop.signum) from None


def compare_command(
    name: Annotated[str, typer.Argument(help="Task to train, e.g. l2x-xor (see `recipes`).")],
    estimators: Annotated[
        str, typer.Option(help="Comma-separated estimator variants to compare.")
    ] = ",".join(DEFAULT_ESTIMATORS),
    out: Annotated[Path | None, typer.Option(help="Folder (default runs/compare/NAME).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the recipe's).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap the steps of every epoch.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (the same for every estimator).")] = 0,
    device: RunDeviceOpt = None,
    data_dir: DataDirOpt = None,
    smoke: Annotated[
        bool, typer.Option(help="Tiny data and at most 3 steps per epoch: a quick try (and CI).")
    ] = False,
    minimizer_noise: MinimizerNoiseOpt = None,
) -> None:
    """Train a task with several estimators at the same budget; write a table and curves."""
    from ..compare import compare, comparison_table

    folder = out or Path("runs") / "compare" / name
    try:
        results = compare(
            name,
            folder,
            estimators=[e.strip() for e in estimators.split(",") if e.strip()],
            data_options=_data_options(data_dir, smoke=smoke),
            minimizer_noise=minimizer_noise,
            epochs=epochs,
            max_steps_per_epoch=max_steps,
            seed=seed,
            device=device,
            progress=False,
        )
    except TrainingStopped as stop:
        _exit_stopped(
            stop,
            f"the runs in {folder} keep their last complete saves; the same command continues "
            "them (finished runs are reused)",
        )
    typer.echo(comparison_table(results))
    typer.echo(f"curves: {folder / 'curves.png'}")


def publish_command(
    run: Annotated[Path, typer.Argument(help="A finished run folder (with best/).")],
    name: Annotated[str, typer.Argument(help="Published name: checkpoints/NAME.")],
    command: Annotated[str, typer.Option(help="The command that trained the run.")],
    data_dir: DataDirOpt = None,
    root: Annotated[Path | None, typer.Option(help="Checkpoints folder.")] = None,
) -> None:
    """Copy a run's best checkpoint into checkpoints/NAME with a model card and metrics."""
    from ..recipes import publication_folder, publish_run

    destination = publication_folder(name, root)
    options = _data_options(data_dir)
    metrics = publish_run(run, destination, command=command, data_options=options)
    typer.echo(f"published {destination}: {json.dumps(metrics)}")
