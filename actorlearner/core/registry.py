"""Registries at the extension points: priority functions, trajectory filters and the like.

A name in YAML, a ``"package.module:function"`` path, or a callable in Python all resolve to a
callable. Duplicate names raise; an unknown name lists the known ones.

Built-in entries can be *lazy*: a name mapped to an import path that is imported on first use.
Config validation then checks a built-in name without importing its module (and torch with it),
so a bad config fails in a second; the learner and the runners import what they use.

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
T = TypeVar("T")


class RegistryError(ValueError):
    """A name is unknown, taken twice, or cannot be imported."""


class Registry(Generic[F]):
    """Names mapped to callables of one kind (e.g. priority functions).

    Args:
        kind: What the registry holds, used in error messages ("priority function").
        lazy: Built-in entries as ``{name: "package.module:attr"}``, imported on first lookup.
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        self._builtin = frozenset(self._lazy)

    def register(self, name: str) -> Callable[[F], F]:
        """Returns a decorator that registers a callable under ``name``.

        Raises:
            RegistryError: If ``name`` is taken.
        """

        def decorator(fn: F) -> F:
            if name in self:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return decorator

    def unregister(self, name: str) -> None:
        """Removes ``name`` (tests and notebooks that re-run a cell use it)."""
        self._items.pop(name, None)
        self._lazy.pop(name, None)
        self._builtin -= {name}

    def names(self) -> list[str]:
        """Registered names (lazy built-ins included), sorted."""
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def get(self, spec: str | F) -> F:
        """The object a name or import path refers to, as registered: not bound, not instantiated.

        Engines use it: the registry holds classes that are built later with runtime arguments.

        Raises:
            RegistryError: If the name is unknown or the path does not import.
        """
        self._check_type(spec)
        return self._lookup(spec)

    def check(self, spec: Any) -> Any:
        """Validates a spec for a config field and returns it unchanged.

        A registered name is only looked up (a lazy built-in is not imported); paths, callables
        and ``{"name": ..., **options}`` mappings are resolved as :meth:`resolve` would.

        Raises:
            RegistryError: One line naming the problem (and the known names for an unknown one).
        """
        self._check_type(spec)
        if isinstance(spec, str) and spec in self:
            return spec
        self.resolve(spec)
        return spec

    def portable(self, spec: Any) -> Any:
        """``spec`` with names registered in this process replaced by what they name.

        A Ray worker imports the lazy built-ins itself but never ran a registration made in the
        driver (a notebook cell, a script's ``__main__``); give it the object, which pickles.
        """
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            return {**spec, "name": self.portable(spec["name"])}
        if isinstance(spec, str) and spec in self._items and spec not in self._builtin:
            return self._items[spec]
        return spec

    def _check_type(self, spec: Any) -> None:
        if not isinstance(spec, str | Mapping) and not callable(spec):
            raise RegistryError(
                f"expected a registered {self.kind} name, 'package.module:attr' path or callable, "
                f"got {spec!r}; known: {', '.join(self.names())}"
            )

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
                raise RegistryError(f"{self.kind} given as a mapping needs a 'name' key")
            return self._bind(self._lookup(name), options, str(name))
        if isinstance(spec, type):
            return self._bind(spec, {}, spec.__name__)  # type: ignore[arg-type]
        if callable(spec):
            return spec
        return self._bind(self._lookup(spec), {}, spec)

    def _lookup(self, spec: str | F) -> F:
        if callable(spec):
            return spec
        if not isinstance(spec, str):
            raise RegistryError(f"{self.kind} name must be a string, got {spec!r}")
        if spec in self._items:
            return self._items[spec]
        if spec in self._lazy:
            self._items[spec] = self._import(self._lazy[spec])  # a failed import leaves the entry lazy
            del self._lazy[spec]
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


def resolve_class(spec: type[T] | str | None, base: type[T]) -> type[T]:
    """Resolves a class given in a config (RLlib's ``env_runner_cls``): ``base`` itself when None.

    Args:
        spec: None, a class, or a ``"package.module:Class"`` path.
        base: The built-in class; ``spec`` must be it or a subclass of it.

    Returns:
        The class.

    Raises:
        RegistryError: One line, if the path does not import or the class does not subclass ``base``.
    """
    if spec is None:
        return base
    what = f"{base.__module__}.{base.__qualname__}"
    cls: Any = spec
    if isinstance(spec, str):
        module_name, sep, attr = spec.partition(":")
        if not sep:
            raise RegistryError(
                f"expected a subclass of {what} or a 'package.module:Class' path, got {spec!r}"
            )
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise RegistryError(f"cannot import {spec!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise RegistryError(f"{cls!r} is not a subclass of {what}")
    return cls


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
