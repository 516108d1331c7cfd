"""The ``aimle-zoo`` command line: thin commands that parse, validate and call the library."""

from __future__ import annotations

import typer

from . import export as _export, hub as _hub, solvers as _solvers, train as _train

app = typer.Typer(
    name="aimle-zoo",
    help="Differentiable combinatorial solvers (AIMLE), pretrained models and export.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("solvers")(_solvers.list_command)
app.command("check-solver")(_solvers.check_command)
app.command("recipes")(_train.recipes_command)
app.command("train")(_train.train_command)
app.command("evaluate")(_train.evaluate_command)
app.command("push")(_hub.push_command)
app.command("compare")(_train.compare_command)
app.command("export")(_export.export_command)
app.command("predict")(_export.predict_command)
app.command("quickstart")(_export.quickstart_command)
app.command("publish")(_train.publish_command)
