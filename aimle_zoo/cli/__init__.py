"""The ``aimle-zoo`` command line: thin commands that parse, validate and call the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from . import export as _export, hub as _hub, solvers as _solvers, train as _train
from ._options import guarded

app = typer.Typer(
    name="aimle-zoo",
    help="Differentiable combinatorial solvers (AIMLE), pretrained models and export.",
    no_args_is_help=True,
    add_completion=False,
)
COMMANDS: dict[str, Callable[..., Any]] = {
    "solvers": _solvers.list_command,
    "check-solver": _solvers.check_command,
    "check-gradient": _solvers.check_gradient_command,
    "recipes": _train.recipes_command,
    "train": _train.train_command,
    "evaluate": _train.evaluate_command,
    "push": _hub.push_command,
    "compare": _train.compare_command,
    "export": _export.export_command,
    "predict": _export.predict_command,
    "quickstart": _export.quickstart_command,
    "publish": _train.publish_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(guarded(_command))
