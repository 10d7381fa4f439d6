"""Registries at the extension points: priority functions and trajectory filters.

A name in YAML, a ``"package.module:function"`` path, or a callable in Python all resolve to a
callable. Duplicate names raise; an unknown name lists the known ones.

A registered (or imported, or given) *class* is a factory: resolving it builds a fresh instance,
with the options of ``{"name": ..., **options}`` as constructor keywords. Stateful extensions such
as the DSCL priority (which tracks warm-up and sub-task mastery across groups) register a class
whose instances are the callables; plain functions get their options bound with
``functools.partial``. Options are checked against the signature at resolve time, so a typo in a
config fails when the config is validated, not in the middle of a run.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(ValueError):
    """A name is unknown, taken twice, or cannot be imported."""


class Registry(Generic[F]):
    """Names mapped to callables of one kind (e.g. priority functions).

    Args:
        kind: What the registry holds, used in error messages ("priority function").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Returns a decorator that registers a callable under ``name``.

        Raises:
            RegistryError: If ``name`` is taken.
        """

        def decorator(fn: F) -> F:
            if name in self._items:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return decorator

    def unregister(self, name: str) -> None:
        """Removes ``name`` (tests and notebooks that re-run a cell use it)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def resolve(self, spec: str | F | Mapping[str, Any]) -> F:
        """Turns a name, an import path, a callable or ``{"name": ..., **options}`` into a callable.

        Options given in a mapping are bound as keyword arguments with ``functools.partial``; a class
        (registered, imported or given) is instantiated with them instead, so each resolve of a
        stateful extension gets fresh state.

        Raises:
            RegistryError: If the name is unknown, the path does not import, or the options do not
                fit the callable's signature (or its constructor rejects them).
        """
        if isinstance(spec, Mapping):
            options = dict(spec)
            name = options.pop("name", None)
            if name is None:
                raise RegistryError(f"a {self.kind} given as a mapping needs a 'name' key")
            return self._bind(self._lookup(name), options, str(name))
        if isinstance(spec, type):
            return self._bind(spec, {}, spec.__name__)  # type: ignore[arg-type]
        if callable(spec):
            return spec
        return self._bind(self._lookup(spec), {}, spec)

    def _lookup(self, spec: str | F) -> F:
        if callable(spec):
            return spec
        if spec in self._items:
            return self._items[spec]
        if ":" in spec:
            return self._import(spec)
        raise RegistryError(f"unknown {self.kind} {spec!r}; known: {', '.join(self.names())}")

    def _bind(self, target: F, options: dict[str, Any], label: str) -> F:
        if isinstance(target, type):
            try:
                return target(**options)  # type: ignore[no-any-return]
            except (TypeError, ValueError) as err:
                raise RegistryError(f"{self.kind} {label!r}: bad options {options}: {err}") from err
        if not options:
            return target
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # builtins without a signature: bind blindly
            signature = None
        if signature is not None:
            try:
                signature.bind_partial(**options)
            except TypeError as err:
                raise RegistryError(f"{self.kind} {label!r}: bad options {options}: {err}") from err
        return functools.partial(target, **options)  # type: ignore[return-value]

    def _import(self, path: str) -> F:
        module_name, _, attr = path.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise RegistryError(f"cannot import {self.kind} {path!r}: {err}") from err
        if not callable(fn):
            raise RegistryError(f"{self.kind} {path!r} is not callable")
        return fn  # type: ignore[no-any-return]


PRIORITIES: Registry[Callable[..., float]] = Registry("priority function")
FILTERS: Registry[Callable[..., Any]] = Registry("filter")


def register_priority(name: str) -> Callable[[F], F]:
    """Registers a priority function ``fn(group, history) -> float >= 0`` under ``name``.

    Example:
        >>> @register_priority("shortest_first")
        ... def shortest_first(group, history):
        ...     return 1.0 / (1 + group.num_tokens)
    """
    return PRIORITIES.register(name)  # type: ignore[return-value]


def register_filter(name: str) -> Callable[[F], F]:
    """Registers a group filter ``fn(group, **options) -> Group | None`` under ``name``."""
    return FILTERS.register(name)  # type: ignore[return-value]
