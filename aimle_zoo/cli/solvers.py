"""``aimle-zoo solvers`` and ``aimle-zoo check-solver``."""

from __future__ import annotations

from typing import Annotated

import typer

from ..solvers import get_solver_spec, list_solvers, load_plugins
from ._options import parse_params

ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="Solver parameter as KEY=VALUE (repeatable), e.g. k=3."),
]


def list_command() -> None:
    """List the registered solvers (built-ins and plugins) with their metadata.

    ``relax``: whether the solver has a continuous relaxation (the ``relaxed`` estimator).
    """
    names = list_solvers()
    rows = [("name", "sense", "export", "relax", "input", "description")]
    for name in names:
        spec = get_solver_spec(name)
        exportable = "yes" if spec.exportable else "no"
        relaxable = "yes" if callable(getattr(spec.factory, "relax", None)) else "no"
        rows.append((name, spec.sense, exportable, relaxable, spec.input_shape, spec.description))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        typer.echo("  ".join([*cells, row[5]]))
    for name, error in load_plugins().items():
        typer.secho(f"plugin {name!r} failed to load: {error}", fg=typer.colors.RED, err=True)


def check_command(name: str, param: ParamOpt = None, batch_size: int = 8, seed: int = 0) -> None:
    """Run the conformance kit on a registered solver and print the report."""
    from ..solvers.testing import check_solver

    report = check_solver(
        name, params=parse_params(param) or None, batch_size=batch_size, seed=seed
    )
    typer.echo(str(report))
    if not report.ok:
        raise typer.Exit(code=1)
