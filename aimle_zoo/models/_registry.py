"""The model registry: zoo model classes register under a name; ``create_model`` builds them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .._names import UnknownNameError, did_you_mean
from ._base import ZooModel

M = TypeVar("M", bound=type[ZooModel])

_models: dict[str, type[ZooModel]] = {}  # name -> class (written only by register_model)

#: Read-only view of the registry: name -> model class.
model_registry: Mapping[str, type[ZooModel]] = MappingProxyType(_models)


class UnknownModelError(UnknownNameError):
    """No model is registered under the requested name."""


def register_model(name: str) -> Callable[[M], M]:
    """Register a :class:`ZooModel` subclass under ``name`` (class decorator).

    Raises:
        ValueError: ``name`` is empty or already taken.
        TypeError: the decorated object is not a ``ZooModel`` subclass.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(cls: M) -> M:
        if name in _models:
            raise ValueError(
                f"a model is already registered under the name {name!r} "
                f"({_models[name].__module__}.{_models[name].__qualname__}); choose another name"
            )
        if not (inspect.isclass(cls) and issubclass(cls, ZooModel)):
            raise TypeError(f"register_model({name!r}) needs a ZooModel subclass, got {cls!r}")
        _models[name] = cls
        cls.model_name = name
        return cls

    return decorator


def get_model_class(name: str) -> type[ZooModel]:
    """The class registered under ``name``.

    Raises:
        UnknownModelError: no such model; the message lists close matches and known names.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name in _models:
        return _models[name]
    known = sorted(_models)
    raise UnknownModelError(
        f"unknown model {name!r}.{did_you_mean(name, known)} Known models: {', '.join(known)}."
    )


def create_model(name: str, **kwargs: Any) -> ZooModel:
    """Build the model registered under ``name`` with keyword arguments ``kwargs``.

    Raises:
        UnknownModelError: no such model.
        TypeError: ``kwargs`` do not match the model's constructor.
    """
    cls = get_model_class(name)
    signature = inspect.signature(cls.__init__)
    try:
        signature.bind(None, **kwargs)
    except TypeError as err:
        parameters = list(signature.parameters.values())[1:]  # without self
        raise TypeError(
            f"model {name!r} does not accept arguments {sorted(kwargs)}: {err}. "
            f"Its signature is {cls.__name__}{signature.replace(parameters=parameters)}"
        ) from err
    return cls(**kwargs)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_models)
