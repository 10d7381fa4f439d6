"""The base of every config section: a validated pydantic model that updates its owner when called.

Each component package defines its own section next to its code (``learn/config.py``,
``rollout/config.py``, ...); :mod:`actorlearner.config` composes them into ``AlgorithmConfig``.
Errors are :class:`~actorlearner.core.errors.ConfigError` with one line naming the key.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Annotated, Any, Protocol, Self, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from actorlearner.core.errors import ConfigError
from actorlearner.core.registry import resolve_class


def _importable_class(value: Any) -> Any:
    if value is not None:
        resolve_class(value, object)  # a class; the algorithm checks it subclasses the built-in
    return value


ClassSpec = Annotated[Any, AfterValidator(_importable_class)]
"""A config field naming a class to use instead of a built-in: None, a class or ``"pkg.mod:Class"``."""

RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    builtin = sorted(set(value) & set(RAY_BUILTIN_RESOURCES))
    if builtin:
        raise ValueError(f"{builtin} are set by num_cpus/num_gpus; only custom resource names are allowed")
    negative = {k: v for k, v in value.items() if v < 0}
    if negative:
        raise ValueError(f"amounts must be >= 0, got {negative}")
    return value


CustomResources = Annotated[dict[str, float], AfterValidator(_custom_resources)]
"""Ray custom resources a part needs: names other than CPU/GPU/memory, amounts >= 0."""


class SectionOwner(Protocol):
    """What a section updates when called: ``AlgorithmConfig``, seen from below."""

    def update(self, section: str, **values: Any) -> Any:
        """Validates ``values`` and applies them to ``section``; returns the owner for chaining."""
        ...


def number_kind(annotation: Any) -> str | None:
    """``"an integer"`` or ``"a number"`` when a field holds an int or a float (maybe None), else None.

    A field that also allows ``bool`` (or anything: ``Any``) is no number field.
    """
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    if bool in options or Any in options:
        return None
    if int in options:
        return "an integer"
    return "a number" if float in options else None


class Section(BaseModel):
    """A validated config section; calling it updates it on its config (the builder syntax).

    Numbers are strict about booleans: pydantic would read ``true`` as ``1`` for an int or float
    field (``training.num_iterations=true``); here it is an error naming the key.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)
    _name: str = PrivateAttr("")
    _parent: SectionOwner | None = PrivateAttr(None)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            kind = number_kind(cls.model_fields[info.field_name].annotation)
            if kind is not None:
                raise ValueError(f"must be {kind}, got the boolean {str(value).lower()}")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a field (``config.training.lr = 1e-4``) is validated like the builder."""
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise ConfigError(one_line_error(self._name or type(self).__name__, type(self), err)) from None

    def __call__(self, **values: Any) -> Any:
        """Validates ``values``, applies them to this section and returns the config for chaining.

        Returns:
            The owning ``AlgorithmConfig``.

        Raises:
            ConfigError: One line naming the key and what is allowed.
        """
        if self._parent is None:
            raise TypeError("a detached config section cannot be updated; use AlgorithmConfig()")
        return self._parent.update(self._name, **values)

    def detached_copy(self, **update: Any) -> Self:
        """A copy with ``update`` applied unvalidated and no owner (what a worker process receives)."""
        new = self.model_copy(update=update)
        new._parent = None
        return new


def one_line_error(section: str, cls: type[Section], err: ValidationError) -> str:
    """The first error of ``err`` as ``section.key: what is wrong``.

    Args:
        section: The section's name in the config (``training``).
        cls: The section class (its fields are listed for an unknown key).
        err: The pydantic error.
    """
    first = err.errors()[0]
    key = ".".join(str(p) for p in (section, *first["loc"]))
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(cls.model_fields)
        return f"{key}: unknown key; allowed: {allowed}"
    if first["type"] == "value_error" and "ctx" in first:
        return f"{key}: {first['ctx'].get('error', first['msg'])}"
    return f"{key}: {first['msg']} (got {first.get('input')!r})"


def plain(value: Any) -> Any:
    """Plain data for YAML and JSON: callables and classes become ``module:qualname``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Callable):  # type: ignore[arg-type]
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    return repr(value)
