"""actorlearner: asynchronous actor-learner RL for multi-turn tool-using LLM agents.

Public names: :class:`ToolEnv` and :func:`tool` to write tool envs, :func:`check_env` to check one
against the protocol, :class:`AlgorithmConfig` to configure and build an :class:`Algorithm`,
:func:`register_priority` and :func:`register_filter` to decide what the learner trains on,
``register_*`` for losses, estimators and engines, :class:`StepInfo`, the step ``info`` contract,
and :class:`StatefulPriority` with :class:`PromptHistory`, what a priority with memory implements
and reads.
"""

from actorlearner.config import AlgorithmConfig, ConfigError
from actorlearner.core.history import PromptHistory
from actorlearner.core.protocols import StatefulPriority
from actorlearner.core.registry import register_filter, register_priority
from actorlearner.core.trajectory import Group, ToolCallRecord, Trajectory, TurnRecord
from actorlearner.env.checker import EnvCheckError, check_env
from actorlearner.env.info import StepInfo
from actorlearner.env.toolenv import ToolEnv, tool
from actorlearner.learn.registry import (
    register_advantage_estimator,
    register_kl_estimator,
    register_loss_aggregation,
    register_policy_loss,
)
from actorlearner.replay import filters as _filters  # noqa: F401  (registers the built-in filters)
from actorlearner.replay import priorities as _priorities  # noqa: F401  (registers the built-in priorities)
from actorlearner.rollout.engines import register_engine

from envs import register_envs as _register_envs  # isort: skip

_register_envs()

__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "ConfigError",
    "EnvCheckError",
    "Group",
    "PromptHistory",
    "StatefulPriority",
    "StepInfo",
    "ToolCallRecord",
    "ToolEnv",
    "Trajectory",
    "TurnRecord",
    "check_env",
    "register_advantage_estimator",
    "register_engine",
    "register_filter",
    "register_kl_estimator",
    "register_loss_aggregation",
    "register_policy_loss",
    "register_priority",
    "tool",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``Algorithm`` is imported on first use: validating a config must not import torch."""
    if name == "Algorithm":
        from actorlearner.algorithm import Algorithm

        return Algorithm
    raise AttributeError(f"module 'actorlearner' has no attribute {name!r}")
