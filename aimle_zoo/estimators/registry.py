"""Estimators by name: ``build_estimator("aimle", samples=10)`` or from a saved ``config()``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .._names import UnknownNameError, did_you_mean
from ._aimle import AIMLE
from ._base import Estimator
from ._blackbox import Blackbox
from ._imle import IMLE
from ._perturbed import PerturbedOptimizer
from ._relaxed import Relaxed
from ._simple import SIMPLE
from ._ste import STE

__all__ = ["UnknownEstimatorError", "build_estimator", "list_estimators"]

_ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (AIMLE, IMLE, STE, PerturbedOptimizer, Blackbox, Relaxed, SIMPLE)
}


class UnknownEstimatorError(UnknownNameError):
    """No estimator is known under the requested name."""


def list_estimators() -> list[str]:
    """Names accepted by :func:`build_estimator`."""
    return list(_ESTIMATORS)


def build_estimator(name_or_config: str | Mapping[str, Any], **overrides: Any) -> Estimator:
    """Build an estimator from its name or from a ``config()`` dict, with keyword overrides.

    ``build_estimator(estimator.config())`` rebuilds an equivalent estimator (adaptive state such
    as β lives in ``state_dict``, not in the config).

    Raises:
        UnknownEstimatorError: unknown name; the message lists close matches and known names.
        TypeError: the arguments do not match the estimator's signature.
    """
    if isinstance(name_or_config, Mapping):
        params = {**name_or_config, **overrides}
        if "name" not in params:
            raise ValueError(
                f"an estimator config needs a 'name' key (one of {list_estimators()}), "
                f"got keys {sorted(name_or_config)}"
            )
        name = params.pop("name")
    elif isinstance(name_or_config, str):
        name, params = name_or_config, dict(overrides)
    else:
        raise TypeError(
            "build_estimator expects an estimator name or a config dict, "
            f"got {type(name_or_config).__name__}"
        )
    cls = _ESTIMATORS.get(str(name).lower())
    if cls is None:
        hint = did_you_mean(str(name).lower(), _ESTIMATORS)
        raise UnknownEstimatorError(
            f"unknown estimator {name!r}.{hint} Known estimators: {', '.join(_ESTIMATORS)}."
        )
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as err:
        raise TypeError(
            f"estimator {cls.name!r} does not accept parameters {sorted(params)}: {err}. "
            f"Its signature is {cls.__name__}{inspect.signature(cls)}"
        ) from err
    return cls(**params)
