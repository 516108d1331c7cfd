"""``aimle-zoo solvers``, ``aimle-zoo check-solver`` and ``aimle-zoo check-gradient``."""

from __future__ import annotations

from typing import Annotated

import typer

from ..solvers import (
    get_solver_spec,
    has_exact_distribution,
    list_solvers,
    load_plugins,
    solver_method,
)
from ._options import parse_params

ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="Solver parameter as KEY=VALUE (repeatable), e.g. k=3."),
]


def list_command() -> None:
    """List the registered solvers (built-ins and plugins) with their metadata.

    ``relax``: whether the solver has a continuous relaxation (the ``relaxed`` estimator);
    ``exact``: whether it has an exact sampler and marginals (the ``simple`` estimator).
    """
    names = list_solvers()
    rows = [("name", "sense", "export", "relax", "exact", "input", "description")]
    for name in names:
        spec = get_solver_spec(name)
        exportable = "yes" if spec.exportable else "no"
        relaxable = "yes" if solver_method(spec.factory, "relax") is not None else "no"
        exact = has_exact_distribution(spec.factory)
        rows.append(
            (
                name,
                spec.sense,
                exportable,
                relaxable,
                "yes" if exact else "no",
                spec.input_shape,
                spec.description,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:6], widths, strict=True)]
        typer.echo("  ".join([*cells, row[6]]))
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


def check_gradient_command(
    name: str,
    param: ParamOpt = None,
    estimator: Annotated[
        str, typer.Option(help="Estimator name, e.g. aimle, imle, ste.")
    ] = "aimle",
    seeds: Annotated[int, typer.Option(min=2, help="Noisy copies of the instance.")] = 64,
    warmup: Annotated[int, typer.Option(min=0, help="Backward passes before measuring.")] = 100,
    seed: int = 0,
) -> None:
    """Cosine of an estimator's gradient to the exact one on the solver's example instance."""
    from ..estimators.fidelity import solver_gradient_fidelity

    report = solver_gradient_fidelity(
        name,
        parse_params(param) or None,
        estimator=estimator,
        seeds=seeds,
        warmup=warmup,
        seed=seed,
    )
    typer.echo(f"{name} with {estimator}: {report}")
