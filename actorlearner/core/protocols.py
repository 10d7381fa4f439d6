"""The few protocols of actorlearner, on one screen.

Data flows one way: a tool env (a ``gymnasium.Env``) is played by an :class:`EnvRunner` with an
:class:`Engine`; finished :class:`~actorlearner.core.trajectory.Group` s go to the :class:`ReplayBuffer`,
whose :data:`PriorityFn` and :data:`GroupFilter` chain decide what the :class:`Learner` consumes;
the learner's weights go back to the runners with a version number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from actorlearner.core.history import PromptHistory
from actorlearner.core.trajectory import Group


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples one assistant turn.

    Attributes:
        temperature: Softmax temperature; 0 means greedy.
        max_new_tokens: Cap on the turn's length in tokens.
        stop_token_ids: Ids that end the turn (kept as the turn's last id).
    """

    temperature: float = 1.0
    max_new_tokens: int = 32
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class Generation:
    """One sampled turn.

    Attributes:
        token_ids: The sampled ids, the stop id included when one was hit.
        logprobs: Log-probability of each sampled id at the sampling temperature.
        finish_reason: "stop" when a stop id ended the turn, "length" at ``max_new_tokens``.
        version: Weights version of the engine that sampled the turn.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int = 0


class Engine(Protocol):
    """Generates turns for a batch of token-id prompts and accepts new weights."""

    version: int

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Samples one turn for each prompt, batched."""
        ...

    def load_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Replaces the weights; later turns record ``version``."""
        ...


class EnvRunner(Protocol):
    """Plays many episodes at once and produces finished groups."""

    async def sample(self, num_groups: int) -> list[Group]:
        """Runs episodes until ``num_groups`` groups are complete and returns them."""
        ...

    async def set_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Stages new weights, loaded before the next generation step."""
        ...


class ReplayBuffer(Protocol):
    """Stores groups and samples them by priority (RLlib's buffer API, at group level)."""

    def __len__(self) -> int: ...

    def add(self, groups: Sequence[Group]) -> dict[str, float]:
        """Filters and stores groups; returns counters of what was kept and dropped."""
        ...

    def sample(self, num_groups: int, learner_version: int) -> list[Group]:
        """Samples up to ``num_groups`` groups by priority."""
        ...

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume (for checkpoints)."""
        ...

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what ``get_state`` returned."""
        ...


class Learner(Protocol):
    """Updates the policy from groups and publishes versioned weights."""

    version: int

    def update(self, groups: Sequence[Group]) -> dict[str, float]:
        """One optimizer step on a batch of groups; returns metrics."""
        ...

    def get_weights(self) -> dict[str, Any]:
        """The current weights, to send to the runners."""
        ...


PriorityFn = Callable[[Group, PromptHistory], float]
"""A group and its prompt's history -> a non-negative priority (runs inside the buffer)."""

GroupFilter = Callable[[Group], "Group | None"]
"""A group -> the kept group (possibly with trajectories masked), or None to drop it."""


@runtime_checkable
class DemonstrationPolicy(Protocol):
    """An env that can show how to act: used by the cold-start SFT phase."""

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """Returns the next assistant turn's text for the conversation so far."""
        ...
