"""Unknown names (solvers, estimators, noises, targets, models, recipes): one error family and
one way to suggest the name that was meant."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnknownNameError(KeyError):
    """No registry knows the requested name; the message lists close matches and known names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, known: Iterable[str], count: int = 3) -> str:
    """``" Did you mean 'a' or 'b'?"`` for the known names close to ``name`` (``""`` if none)."""
    close = difflib.get_close_matches(name, list(known), n=count, cutoff=0.5)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
