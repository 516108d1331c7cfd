"""Reusable option types and parsers shared by the commands."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer
import typer.exceptions

#: Set to show the full traceback of a failing command.
DEBUG_ENV = "AIMLE_ZOO_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])

#: Exits and usage errors that typer reports itself (typer ships its own copy of click's
#: exception classes, so click's alone do not catch them).
_CLI_EXCEPTIONS: tuple[type[BaseException], ...] = (
    click.exceptions.ClickException,
    click.exceptions.Exit,
    click.exceptions.Abort,
    typer.Exit,
    typer.Abort,
    typer.exceptions.TyperException,
)


def guarded(command: F) -> F:
    """Report an exception from ``command`` as one ``error: ...`` line and exit status 1.

    The library's errors say what was wrong and what to do, so the traceback adds nothing for
    a user; ``AIMLE_ZOO_DEBUG=1`` shows it. Usage errors, ``typer.Exit`` and Ctrl-C pass through.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _CLI_EXCEPTIONS:
            raise
        except BrokenPipeError:  # the reader went away (`aimle-zoo solvers | head`): not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
            raise typer.Exit(code=0) from None
        except Exception as err:
            if os.environ.get(DEBUG_ENV):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from err

    return run  # type: ignore[return-value]


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["k=3", "ties=exact"]`` -> ``{"k": 3, "ties": "exact"}``; values are JSON if valid."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params
