"""From a config value to a gymnasium spec, and from a spec to an env (in any Ray worker)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import gymnasium

from actorlearner.core.errors import ConfigError


def _looks_like_path(env: str) -> bool:
    module, sep, attr = env.partition(":")
    return bool(sep) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


def _import_env_class(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import env class {path!r}: {err}") from None


def resolve_env_spec(env: Any) -> gymnasium.envs.registration.EnvSpec:
    """A gymnasium spec for a registered id, an ``Env`` subclass or its ``"pkg.module:Class"`` path.

    The spec is carried to Ray workers, which do not see the driver's gymnasium registry.

    Raises:
        ConfigError: If the id is not registered or the value is neither an id nor an Env class.
    """
    if isinstance(env, str) and env not in gymnasium.registry and _looks_like_path(env):
        env = _import_env_class(env)
    if isinstance(env, str):
        try:
            return gymnasium.spec(env)
        except gymnasium.error.Error as err:
            ours = ", ".join(k for k in gymnasium.registry if k.startswith("actorlearner/"))
            raise ConfigError(
                f"{env!r} is not a registered gymnasium id ({err}); "
                f"register it with gymnasium.register, or use one of: {ours}"
            ) from None
    if isinstance(env, type) and issubclass(env, gymnasium.Env):
        return gymnasium.envs.registration.EnvSpec(
            id=f"custom/{env.__name__}-v0",
            entry_point=env,  # type: ignore[arg-type]
        )
    raise ConfigError(f"must be a gymnasium id or a gymnasium.Env subclass, got {env!r}")


def make_env(spec: gymnasium.envs.registration.EnvSpec, env_config: Mapping[str, Any]) -> gymnasium.Env:
    """Instantiates a tool env from its spec (no registry lookup: works in any Ray worker)."""
    return gymnasium.make(spec, disable_env_checker=True, **dict(env_config))


MAKE_KEYWORDS = ("max_episode_steps",)
"""Keys of ``env_config`` that ``gymnasium.make`` itself takes (a ``TimeLimit`` wrapper)."""


def env_keywords(spec: gymnasium.envs.registration.EnvSpec) -> list[str] | None:
    """The keyword arguments the env's constructor takes, following ``**kwargs`` up its bases.

    Returns:
        The sorted names, or None when some ``**kwargs`` goes nowhere we can see (anything may be
        accepted).
    """
    creator: Any = spec.entry_point
    if isinstance(creator, str):
        creator = gymnasium.envs.registration.load_env_creator(creator)
    if creator is None:
        return None
    if isinstance(creator, type):
        inits = [c.__dict__["__init__"] for c in creator.__mro__ if "__init__" in c.__dict__]
    else:
        inits = [creator]
    names = set(MAKE_KEYWORDS)
    for init in inits:
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature (object.__init__ has one)
            return None
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names |= {p.name for p in params if p.kind in keyword and p.name != "self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return sorted(names)
    return None


def check_env_config(
    spec: gymnasium.envs.registration.EnvSpec, env_config: Mapping[str, Any], key: str
) -> None:
    """Checks that the env takes ``env_config``.

    The keys are checked against the constructor's signature, then the values by building the env
    once (its constructor checks them).

    Args:
        spec: The env.
        env_config: Its keyword arguments.
        key: The config key named in the error (``environment.env_config``).

    Raises:
        ConfigError: One line naming ``key``, the env and the keys it takes.
    """
    allowed = env_keywords(spec)
    listed = f"allowed: {', '.join(allowed)}" if allowed is not None else "see the env's constructor"
    unknown = sorted(set(env_config) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ConfigError(f"{key}: {spec.id} takes no {', '.join(map(repr, unknown))}; {listed}")
    try:
        make_env(spec, env_config).close()
    except TypeError as err:
        if "argument" not in str(err):  # not a signature mismatch: a bug, with its traceback
            raise
        raise ConfigError(f"{key}: {_one_line(err)}; {listed}") from None
    except ValueError as err:  # the env's own checks of its knobs (ConfigError is one)
        raise ConfigError(f"{key}: {spec.id}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
