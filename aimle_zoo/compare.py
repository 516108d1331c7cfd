"""Estimator comparison: train one task with several estimators at the same budget.

``compare(task, out_dir, estimators=...)`` trains every variant into ``out_dir/<estimator>/``
with identical data, seed and schedule, then writes ``out_dir/comparison.json`` (the budget,
the equivalent ``aimle-zoo compare`` command, the version and every result), a Markdown
table (``comparison.md``: the best validation metrics and the test metrics of each best
checkpoint) and the learning curves (``curves.png``: the selection metric on the validation
split after every epoch). A run already in ``out_dir`` with the same settings is reused; one
stopped part-way, or asked for more epochs, resumes from its ``last/`` checkpoint (exactly, so
the result equals an uninterrupted run); one made with other settings is an error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from . import __version__
from ._io import atomic_file
from .models._base import CheckpointError, read_checkpoint_config, saved_estimator_config
from .recipes import (
    DEFAULT_ESTIMATORS,
    ESTIMATOR_VARIANTS,
    DataOptions,
    get_recipe,
    run_training,
    train_config,
)
from .training import (
    METRICS_LOG,
    RESUME_FIELDS,
    TEST_METRICS,
    TRAINER_STATE,
    TrainConfig,
    changed_settings,
    read_trainer_state,
)


def compare(
    task: str,
    out_dir: str | os.PathLike[str],
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    data_options: DataOptions | None = None,
    minimizer_noise: str | None = None,
    **overrides: Any,
) -> dict[str, dict[str, Any]]:
    """Train ``task`` with each estimator (same data, seed and ``overrides``; a minimiser's
    costs perturbed by ``minimizer_noise`` when given, else by the recipe's convention);
    tabulate."""
    recipe = get_recipe(task)
    if not estimators:
        raise ValueError(f"no estimators to compare; choose from {', '.join(ESTIMATOR_VARIANTS)}")
    unknown = [name for name in estimators if name not in ESTIMATOR_VARIANTS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; choose from {ESTIMATOR_VARIANTS}")
    repeated = sorted({name for name in estimators if list(estimators).count(name) > 1})
    if repeated:
        raise ValueError(f"estimators {repeated} are listed more than once; list each once")
    out = Path(out_dir)
    wanted: dict[str, TrainConfig] = {}
    done: dict[str, int | None] = {}
    for name in estimators:  # every variant and every run already there is checked first
        wanted[name] = train_config(task, estimator=name, data_options=data_options, **overrides)
        done[name] = _epochs_done(
            out / name,
            wanted[name],
            recipe.full_estimator_config(name, minimizer_noise),
            recipe.static_model_kwargs(bool(wanted[name].extra.get("smoke"))),
        )
    results: dict[str, dict[str, Any]] = {}
    for name in estimators:
        run_dir, epochs, epochs_done = out / name, wanted[name].epochs, done[name]
        if epochs_done is None or epochs_done < epochs or not (run_dir / TEST_METRICS).exists():
            run_training(
                task,
                run_dir,
                estimator=name,
                data_options=data_options,
                resume=epochs_done is not None,
                overwrite=epochs_done is None,
                minimizer_noise=minimizer_noise,
                **{**overrides, "epochs": epochs},  # not the resumed run's own count
            )
        else:
            tqdm.write(f"{name}: reusing the finished run in {run_dir} ({epochs} epochs)")
        history = [json.loads(line) for line in (run_dir / METRICS_LOG).read_text().splitlines()]
        results[name] = {
            "test": json.loads((run_dir / TEST_METRICS).read_text()),
            "curve": [record.get("valid", {}) for record in history],
            "seconds": sum(record["seconds"] for record in history),
        }
    metric = recipe.train.select_metric
    first = wanted[estimators[0]]  # the settings every variant shares
    record = {
        "task": task,
        "select_metric": metric,
        "command": _command(task, estimators, first, data_options, minimizer_noise),
        "settings": {
            **{key: getattr(first, key) for key in _RECORDED_SETTINGS},
            "minimizer_noise": minimizer_noise,
            "smoke": bool(first.extra.get("smoke")),
        },
        "aimle_zoo_version": __version__,
        "results": results,
    }
    with atomic_file(out / "comparison.json", "w") as handle:
        json.dump(record, handle, indent=2)
    with atomic_file(out / "comparison.md", "w") as handle:
        handle.write(comparison_table(results))
    plot_curves(results, metric, out / "curves.png", title=f"{task}: validation {metric}")
    return results


#: TrainConfig fields written to ``comparison.json`` (the budget every variant had).
_RECORDED_SETTINGS = ("epochs", "max_steps_per_epoch", "batch_size", "lr", "seed", "device")


def _command(
    task: str,
    estimators: Sequence[str],
    config: TrainConfig,
    data_options: DataOptions | None,
    minimizer_noise: str | None,
) -> str:
    """The ``aimle-zoo compare`` command that trains the same comparison."""
    parts = ["aimle-zoo", "compare", task, "--estimators", ",".join(estimators)]
    parts += ["--epochs", str(config.epochs)]
    if config.max_steps_per_epoch is not None:
        parts += ["--max-steps", str(config.max_steps_per_epoch)]
    parts += ["--seed", str(config.seed)]
    if minimizer_noise is not None:
        parts += ["--minimizer-noise", minimizer_noise]
    if data_options is not None and data_options.data_dir is not None:
        parts += ["--data-dir", data_options.data_dir]
    if data_options is not None and data_options.smoke:
        parts.append("--smoke")
    return " ".join(parts)


def _epochs_done(
    run_dir: Path,
    wanted: TrainConfig,
    estimator: Mapping[str, Any],
    model_kwargs: Mapping[str, Any],
) -> int | None:
    """Epochs of the run in ``run_dir`` made with ``wanted``'s settings, the ``estimator``
    configuration and the recipe's ``model_kwargs`` (``None``: no run yet).

    A run with other settings (those a resume must keep, and the recipe, estimator and smoke
    flag in ``extra``), another estimator configuration or model arguments (the recipe's
    defaults changed since), or more epochs than ``wanted``, raises: reusing it would put a
    different budget, method or model in the comparison.
    """
    state = run_dir / "last" / TRAINER_STATE
    if not state.exists():
        return None
    advice = "compare into another --out, or delete that folder to train it again"
    meta = read_trainer_state(state, f"cannot reuse the run in {run_dir}", advice)
    saved, asked = meta["config"], asdict(wanted)
    fewer = ("epochs",) if saved["epochs"] > asked["epochs"] else ()
    settings = changed_settings(saved, asked, (*fewer, *RESUME_FIELDS, "extra"))
    if not settings:
        try:
            saved_estimator = saved_estimator_config(run_dir / "last")
            saved_model = read_checkpoint_config(run_dir / "last")
        except CheckpointError as err:
            raise ValueError(
                f"{run_dir} holds a run whose estimator configuration cannot be read ({err}); "
                "compare into another --out, or delete that folder to train it again"
            ) from err
        recorded = {key: saved_model.get(key, _ABSENT) for key in model_kwargs}
        now = json.loads(json.dumps(dict(model_kwargs)))  # tuples as the saved lists
        settings = ", ".join(
            [
                *(
                    f"estimator {key}={old} (now {new})"
                    for key, old, new in _differences(saved_estimator, estimator)
                ),
                *(
                    f"model {key}={old} (now {new})"
                    for key, old, new in _differences(recorded, now)
                ),
            ]
        )
    if settings:
        raise ValueError(
            f"{run_dir} holds a run trained with {settings}; compare into another --out, or "
            "delete that folder to train it again"
        )
    return int(meta["epoch"])


def _differences(
    saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, str, str]]:
    """``(dotted key, saved value, value now)``, as text, wherever two nested configs differ
    (``<absent>`` for a key one side lacks)."""
    found = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append((f"{prefix}{key}", _shown(old), _shown(new)))
    return found


_ABSENT = object()


def _shown(value: object) -> str:
    return "<absent>" if value is _ABSENT else repr(value)


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per estimator, the test metrics as columns."""
    keys = sorted({key for r in results.values() for key in r["test"] if key != "count"})
    lines = ["| estimator | " + " | ".join(keys) + " | train s |"]
    lines.append("|" + "---|" * (len(keys) + 2))
    for name, result in results.items():
        cells = [f"{result['test'].get(key, float('nan')):.4g}" for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_curves(
    results: dict[str, dict[str, Any]], metric: str, path: Path, *, title: str = ""
) -> Figure:
    """Validation ``metric`` per epoch, one line per estimator (PNG, written atomically).

    The y axis is logarithmic when the values span more than a factor of 3 (a failed estimator
    then does not flatten the others' curves); a metric negative throughout, such as an ELBO,
    is drawn as its magnitude −metric.
    """
    curves = {
        name: [epoch.get(metric, float("nan")) for epoch in result["curve"]]
        for name, result in results.items()
    }
    finite = [value for values in curves.values() for value in values if math.isfinite(value)]
    sign, label = 1.0, metric
    if finite and max(finite) < 0:  # e.g. an ELBO: plot its magnitude, −metric
        sign, label = -1.0, f"−{metric}"
        finite = [-value for value in finite]
    figure = Figure(figsize=(6, 3.6))
    axis = figure.subplots()
    for name, values in curves.items():
        shown = [sign * value for value in values]
        axis.plot(range(1, len(shown) + 1), shown, marker="o", markersize=3, label=name)
    if finite and min(finite) > 0 and max(finite) > 3 * min(finite):
        axis.set_yscale("log")
    epochs = max((len(result["curve"]) for result in results.values()), default=0)
    if epochs <= 12:
        axis.set_xticks(range(1, epochs + 1))
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"validation {label}")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    return figure
