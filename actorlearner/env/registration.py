"""From a config value to a gymnasium spec, and from a spec to an env (in any Ray worker)."""

from __future__ import annotations

import importlib
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
