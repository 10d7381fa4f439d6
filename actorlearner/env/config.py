"""Config section of the environment: which tool env to train on, and its keyword arguments."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from actorlearner.core.config import Section
from actorlearner.env.registration import resolve_env_spec


class EnvironmentConfig(Section):
    """Which tool env to train on."""

    env: Any = Field(
        "actorlearner/Calculator-v0",
        description="A gymnasium id (registered with gymnasium.register) or a gymnasium.Env subclass.",
    )
    env_config: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the env.")
    eval_env_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of env_config for held-out evaluation.",
    )

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: Any) -> Any:
        resolve_env_spec(value)
        return value

    def __call__(self, env: Any = None, **values: Any) -> Any:
        """Sets the env (a gymnasium id or an Env subclass) and its ``env_config``.

        Returns:
            The owning ``AlgorithmConfig``, for chaining.
        """
        if env is not None:
            values["env"] = env
        return super().__call__(**values)
