"""The solver registry: built-ins register on import, third-party plugins through entry points.

Plugins declare, in their ``pyproject.toml``::

    [project.entry-points."aimle_zoo.solvers"]
    matching = "my_pkg.matching:hungarian"

where ``hungarian`` is decorated with ``@register_solver("matching", ...)``. Entry points are
loaded lazily, once, the first time the registry is queried. A plugin that fails to load never
breaks the built-ins: its failure is remembered and raised when its name is requested.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from types import MappingProxyType
from typing import Any, TypeVar, cast

from torch import Tensor

from .._names import UnknownNameError, did_you_mean
from ._base import (
    _SPEC_ATTR,
    SOLUTION_VALUES,
    FunctionSolver,
    Sense,
    SolutionValues,
    Solver,
    SolverSpec,
)

ENTRY_POINT_GROUP = "aimle_zoo.solvers"

T = TypeVar("T")

_specs: dict[str, SolverSpec] = {}  # canonical name -> spec (written only by this module)
_aliases: dict[str, str] = {}  # alias -> canonical name
_plugin_failures: dict[str, SolverPluginError] = {}  # entry-point name -> error
_plugins_loaded = False
_loading_source: str | None = None  # the distribution whose entry point is being loaded

#: Read-only view of the registry: canonical name -> :class:`SolverSpec`.
solver_registry: Mapping[str, SolverSpec] = MappingProxyType(_specs)


class UnknownSolverError(UnknownNameError):
    """No solver is registered under the requested name."""


class SolverPluginError(ImportError):
    """A third-party solver plugin could not be loaded."""


def register_solver(
    name: str,
    *,
    sense: Sense = "max",
    exportable: bool = False,
    input_shape: str = "[B, ...]",
    constraints: tuple[str, ...] = (),
    description: str = "",
    aliases: tuple[str, ...] = (),
    example: Callable[..., Any] | None = None,
    objective: Callable[..., Any] | None = None,
    values: SolutionValues = "binary",
) -> Callable[[T], T]:
    """Register a solver class or function under ``name`` (decorator).

    A class must build a callable ``theta -> z`` from keyword parameters (subclass
    :class:`Solver` to make it exportable); a function has the signature
    ``fn(theta, **params) -> z``. ``get_solver(name, **params)`` builds it. A class without
    its own ``sense`` attribute gets ``sense`` as one, so a subclass solves in the same sense
    unless it sets another (an instance attribute ``self.sense`` lets one class do both).
    ``values="integer"`` declares solutions with integer entries other than 0 and 1 (ranks,
    counts); the default is 0/1 indicators.

    Raises:
        ValueError: ``name`` or one of ``aliases`` is already taken, or ``sense`` or ``values``
            is invalid.

    Example::

        @register_solver("argmax", description="one-hot argmax over the last dimension")
        def argmax(theta):
            return torch.nn.functional.one_hot(theta.argmax(-1), theta.shape[-1]).to(theta)
    """
    if sense not in ("max", "min"):
        raise ValueError(f"sense must be 'max' or 'min', got {sense!r}")
    if values not in SOLUTION_VALUES:
        raise ValueError(
            f"register_solver({name!r}): values must be one of {list(SOLUTION_VALUES)}, got "
            f"{values!r}"
        )
    for label, strings in (("aliases", aliases), ("constraints", constraints)):
        if isinstance(strings, str):
            raise TypeError(
                f"register_solver({name!r}): {label} must be a sequence of strings, got the "
                f"string {strings!r}; write ({strings!r},)"
            )
    for key in (name, *aliases):
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"solver names and aliases must be non-empty strings, got {key!r}")

    def decorator(obj: T) -> T:
        for key in (name, *aliases):
            if key in _specs or key in _aliases:
                owner = _specs.get(key) or _specs[_aliases[key]]
                if _same_definition(owner.factory, obj) and owner.name == name:
                    continue  # the same module run again (a reload, a notebook cell)
                raise ValueError(
                    f"a solver is already registered under the name {key!r} "
                    f"(by {owner.source}); choose another name"
                )
        if not callable(obj):
            raise TypeError(f"register_solver({name!r}) needs a class or function, got {obj!r}")
        doc = inspect.getdoc(obj) or ""
        spec = SolverSpec(
            name=name,
            factory=obj,
            sense=sense,
            exportable=exportable,
            input_shape=input_shape,
            constraints=tuple(constraints),
            description=description or (doc.splitlines()[0] if doc else ""),
            aliases=tuple(aliases),
            example=example,
            objective=objective,
            source=_loading_source or _module_source(obj),
            values=values,
        )
        _specs[name] = spec
        for alias in aliases:
            _aliases[alias] = name
        setattr(obj, _SPEC_ATTR, spec)
        if inspect.isclass(obj) and "sense" not in vars(obj):
            obj.sense = sense  # inherited by subclasses
        return obj

    return decorator


def _same_definition(registered: object, new: object) -> bool:
    """Whether ``new`` is ``registered`` defined again: the same module and qualified name."""
    return all(
        getattr(registered, attribute, None) == getattr(new, attribute, object())
        for attribute in ("__module__", "__qualname__")
    )


def _module_source(obj: object) -> str:
    """``"builtin"`` for aimle_zoo's own solvers, else the module that registered ``obj``."""
    module = getattr(obj, "__module__", None) or "<unknown module>"
    return "builtin" if module.split(".")[0] == "aimle_zoo" else f"module {module}"


def get_solver(name: str, **params: Any) -> Solver:
    """Build the solver registered under ``name`` (or an alias) with keyword ``params``.

    Returns an ``nn.Module`` mapping ``theta [B, *S]`` to ``z [B, *S]``.

    Raises:
        UnknownSolverError: no such solver; the message lists close matches and known names.
        SolverPluginError: the plugin providing ``name`` failed to import.
        TypeError: ``params`` do not match the solver's signature.
    """
    spec = _resolve(name)
    factory = spec.factory
    is_class = inspect.isclass(factory)
    signature = inspect.signature(factory)
    leading = () if is_class else (None,)  # a function takes theta before its parameters
    try:
        signature.bind(*leading, **params)
    except TypeError as err:
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        unexpected = [] if takes_any else sorted(set(params) - set(signature.parameters))
        problem = f"unexpected parameter(s) {unexpected}" if unexpected else str(err)
        raise TypeError(
            f"solver {spec.name!r}: {problem} (given {sorted(params) or 'no parameters'}). "
            f"Its signature is {spec.name}{signature}"
        ) from err
    if is_class:  # errors raised by the constructor itself propagate unchanged
        instance = cast(Callable[..., Tensor], factory(**params))
        solver = instance if isinstance(instance, Solver) else FunctionSolver(instance)
    else:
        solver = FunctionSolver(factory, **params)
    setattr(solver, _SPEC_ATTR, spec)
    setattr(solver, "params", dict(params))  # noqa: B010 - nn.Module attribute, typed loosely
    return solver


def get_solver_spec(name: str) -> SolverSpec:
    """The :class:`SolverSpec` registered under ``name`` (or an alias)."""
    return _resolve(name)


def list_solvers() -> list[str]:
    """Sorted canonical names of every registered solver, plugins included."""
    load_plugins()
    return sorted(_specs)


def load_plugins(*, reload: bool = False) -> dict[str, SolverPluginError]:
    """Load the ``aimle_zoo.solvers`` entry points (once) and return those that failed."""
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return dict(_plugin_failures)
    _plugins_loaded = True
    _plugin_failures.clear()  # failures of entry points that are gone or fixed are forgotten
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(entry_point)
    return dict(_plugin_failures)


def _load_entry_point(entry_point: metadata.EntryPoint) -> None:
    dist = entry_point.dist.name if entry_point.dist is not None else "<unknown distribution>"
    where = f"entry point {entry_point.name!r} = {entry_point.value!r} of distribution {dist!r}"
    taken = _specs.get(_aliases.get(entry_point.name, entry_point.name))
    if taken is not None:
        if taken.source == dist:
            return  # loaded already
        if entry_point.module in sys.modules and _loads(entry_point) is taken.factory:
            # the plugin registered itself when its module was imported, before discovery
            _retag(taken, dist)
            return
        warnings.warn(
            f"ignoring solver plugin {where}: the name is taken by solver {taken.name!r} "
            f"({taken.source})",
            stacklevel=3,
        )
        return
    registered, aliased = set(_specs), set(_aliases)
    try:
        with _source(dist):
            loaded = entry_point.load()
        if entry_point.name not in _specs and entry_point.name not in _aliases:
            spec = getattr(loaded, _SPEC_ATTR, None)
            if spec is None:
                raise TypeError(
                    "the object it names is not decorated with "
                    f"@register_solver({entry_point.name!r}, ...)"
                )
            raise TypeError(
                f"the object it names is registered as {spec.name!r}, "
                f"not {entry_point.name!r}; make the two names agree"
            )
    except Exception as err:  # a broken plugin must never break the built-ins
        for name in set(_specs) - registered:  # nor leave half of itself registered
            del _specs[name]
        for alias in set(_aliases) - aliased:
            del _aliases[alias]
        _plugin_failures[entry_point.name] = SolverPluginError(
            f"failed to load solver plugin {where}: {type(err).__name__}: {err}. "
            f"Fix or uninstall {dist!r} (pip uninstall {dist})."
        )
        _plugin_failures[entry_point.name].__cause__ = err
    else:
        _plugin_failures.pop(entry_point.name, None)


def _loads(entry_point: metadata.EntryPoint) -> object:
    """The object ``entry_point`` names, or ``None`` if it cannot be loaded."""
    try:
        return entry_point.load()
    except Exception:
        return None


def _retag(spec: SolverSpec, dist: str) -> None:
    """Record ``dist`` as the source of ``spec`` (registered before its entry point was read)."""
    updated = replace(spec, source=dist)
    _specs[spec.name] = updated
    setattr(spec.factory, _SPEC_ATTR, updated)


@contextmanager
def _source(name: str) -> Iterator[None]:
    global _loading_source
    previous, _loading_source = _loading_source, name
    try:
        yield
    finally:
        _loading_source = previous


def _resolve(name: str) -> SolverSpec:
    if not isinstance(name, str):
        raise TypeError(f"solver name must be a string, got {type(name).__name__}")
    for attempt in range(2):
        canonical = _aliases.get(name, name)
        if canonical in _specs:
            return _specs[canonical]
        if name in _plugin_failures:
            raise _plugin_failures[name]
        if attempt == 0:
            load_plugins()
    known = sorted([*_specs, *_aliases])
    failed = ""
    if _plugin_failures:  # the name may be one that a broken plugin would have registered
        failed = (
            f" Solver plugins that failed to load: {', '.join(sorted(_plugin_failures))}; "
            "`aimle-zoo solvers` says why."
        )
    raise UnknownSolverError(
        f"unknown solver {name!r}.{did_you_mean(name, known)} Known solvers: {', '.join(known)}. "
        f"Register your own with @aimle_zoo.solvers.register_solver.{failed}"
    )
