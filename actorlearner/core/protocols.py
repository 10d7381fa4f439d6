"""The few protocols of actorlearner, on one screen.

Data flows one way: a tool env (a ``gymnasium.Env``) is played by an :class:`EnvRunner` with an
:class:`Engine`; each finished :class:`~actorlearner.core.trajectory.Group` is pushed to the
:class:`ReplayBufferActor`, whose reply (a :class:`PushReply`) tells the runner which prompts to
skip, whether there is room for more, and which weights are newest. The buffer's
:data:`PriorityFn` and :data:`GroupFilter` chain decide what the :class:`Learner` consumes; the
learner owns the weights version and publishes each version once (through the buffer, which hands it
to runners in their replies). Every part that has state uses one vocabulary, :class:`Stateful`.
The runtime (``actorlearner.runtime``) places these parts in-process or on Ray and calls them
through handles typed against these protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from actorlearner.core.history import PromptHistory
from actorlearner.core.trajectory import Group, Trajectory

T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")
P = ParamSpec("P")


class Handle(Protocol[T_co]):
    """Calls methods of a part placed somewhere (typed by the protocol ``T`` it implements)."""

    @overload
    def call(
        self,
        method: Callable[Concatenate[T_co, P], Coroutine[Any, Any, R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Awaitable[R]: ...

    @overload
    def call(
        self, method: Callable[Concatenate[T_co, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> Awaitable[R]: ...

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Starts ``method`` on the part; returns a reference to await or to pass on."""
        ...

    def kill(self, restart: bool = False) -> None:
        """Ends the part at once (never raises); ``restart``: let the runtime restart it (Ray)."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """Anything checkpointed: ``set_state(get_state())`` restores it exactly."""

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume, as picklable data (tensors allowed)."""
        ...

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        ...


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
    """Generates turns for a batch of token-id prompts and accepts new weights (``hf``, ``vllm``)."""

    version: int

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Samples one turn for each prompt, batched."""
        ...

    def load_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Replaces the weights; later turns record ``version``."""
        ...


@runtime_checkable
class StatefulEngine(Protocol):
    """An engine whose sampling state goes into checkpoints (exact resume; ``hf`` is one)."""

    def get_state(self) -> dict[str, Any]:
        """The sampling generator's state (picklable)."""
        ...

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        ...


WeightsRef = Awaitable[Mapping[str, Any]]
"""Published weights: a Ray ``ObjectRef`` (one copy in the object store) or, in-process, a future."""


@dataclass
class PushReply:
    """What a runner learns in the reply to a push: control flows back with the data.

    Attributes:
        size: Groups held that are fresh for the learner.
        added: Groups of this push the filters kept.
        room: False while the buffer holds ``max_ready`` fresh groups: launch nothing new, push
            again (an empty push waits for room up to a deadline).
        weights_version: Newest published weights version (-1: none published yet).
        weights: ``[ref]`` of those weights when newer than the runner's, else ``None`` (a list,
            so that Ray passes the reference through without fetching it).
        skip: Prompt ids to rarely re-issue (DSCL's mastered ones) when the skip list changed
            since the runner's ``skip_version``, else ``None``.
        p_revisit: Probability of issuing a skipped prompt anyway.
        skip_version: Version of the skip list in ``skip``.
    """

    size: int
    added: int = 0
    room: bool = True
    weights_version: int = -1
    weights: list[WeightsRef] | None = None
    skip: list[str] | None = None
    p_revisit: float = 1.0
    skip_version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ReplayBuffer(Stateful, Protocol):
    """Stores groups and samples them by priority (RLlib's buffer API, at group level)."""

    def __len__(self) -> int: ...

    def add(self, groups: Sequence[Group]) -> dict[str, float]:
        """Filters and stores groups; returns counters of what was kept and dropped."""
        ...

    def sample(self, num_groups: int, learner_version: int) -> list[Group]:
        """Samples up to ``num_groups`` groups by priority."""
        ...

    def update_priorities(self, group_ids: Sequence[str], priorities: Sequence[float]) -> int:
        """Re-prioritizes held groups; returns how many were found."""
        ...


class ReplayBufferActor(ReplayBuffer, Protocol):
    """The buffer as an actor: runners push, the learner side waits for batches."""

    async def push(
        self,
        groups: Sequence[Group],
        stats: Mapping[str, float],
        max_ready: int | None,
        weights_version: int,
        skip_version: int,
    ) -> PushReply:
        """Adds groups and runner counters; replies with room, newest weights and the skip list."""
        ...

    async def sample_wait(self, num_groups: int, learner_version: int, timeout_s: float) -> list[Group]:
        """Waits (up to ``timeout_s``) for ``num_groups`` fresh groups, then samples."""
        ...

    async def publish_weights(
        self, version: int, weights: list[WeightsRef], metrics: bool = True
    ) -> dict[str, Any]:
        """Records the learner's newest weights for the runners; returns the metrics since last call."""
        ...

    def pop_metrics(self) -> dict[str, Any]:
        """Buffer, filter, priority and rollout metrics since the last call."""
        ...


class EnvRunner(Stateful, Protocol):
    """Plays many episodes at once and pushes finished groups to the buffer."""

    async def run(self, buffer: Any) -> int:
        """Keeps groups in flight and pushes each to ``buffer`` (a handle) until stopped."""
        ...

    async def play(self, num_groups: int, buffer: Any) -> int:
        """The synchronous schedule: plays exactly ``num_groups`` groups and pushes them."""
        ...

    async def set_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Stages new weights, loaded before the next generation step (phase boundaries)."""
        ...

    async def ping(self) -> int:
        """Answers at once with the runner's index (the driver's liveness check during RL)."""
        ...

    async def pause(self, paused: bool = True) -> None:
        """Stops (or resumes) launching new groups; groups in flight finish."""
        ...

    async def evaluate(
        self, seeds: list[int], temperature: float, env_spec: Any = None, env_config: Any = None
    ) -> list[Trajectory]:
        """One held-out episode per seed."""
        ...

    async def demonstrations(self, num_episodes: int, seed: int) -> list[Trajectory]:
        """Episodes played by the env's demonstration policy (cold-start SFT data)."""
        ...

    async def stop(self) -> None:
        """Ends :meth:`run`; never raises."""
        ...


class Learner(Stateful, Protocol):
    """Updates the policy from groups and owns the weights version.

    Its state holds the version, the optimizer and the model weights; ``set_state`` also takes
    ``model_dir`` (a directory :meth:`save_pretrained` wrote) in place of the weights.
    """

    def update(self, groups: Sequence[Group]) -> dict[str, float]:
        """One optimizer step on a batch of groups; returns metrics, ``version`` included."""
        ...

    def get_state(self, components: Collection[str] | None = None) -> dict[str, Any]:
        """``version``, ``optimizer`` and ``model`` (weights), or only the named ``components``."""
        ...

    def get_weights(self) -> Mapping[str, Any]:
        """The current weights, to publish to the runners."""
        ...

    def get_version(self) -> int:
        """The weights version (updates so far)."""
        ...

    def start_rl(self, reset_optimizer: bool = True) -> None:
        """Starts the RL phase (a fresh optimizer unless resuming)."""
        ...

    def set_demonstrations(self, trajectories: Sequence[Trajectory]) -> int:
        """Stores the SFT demonstrations; returns how many."""
        ...

    def sft_steps(
        self,
        start: int,
        num_steps: int,
        total_steps: int,
        batch_size: int,
        lr: float,
        num_threads: int | None = None,
    ) -> list[dict[str, float]]:
        """SFT steps on the demonstrations; one metrics dict per step."""
        ...

    def save_pretrained(self, path: str) -> None:
        """Exports the policy as a model directory ``from_pretrained`` loads (checkpoints, eval)."""
        ...

    def rendezvous_address(self) -> str:
        """``ip:port`` on this learner's node where a learner group can form."""
        ...

    def join_group(self, address: str, rank: int, world_size: int, backend: str, timeout_s: float) -> int:
        """Joins a data-parallel learner group at ``address`` as ``rank``; returns the rank."""
        ...


class Trainer(Protocol):
    """What ``AlgorithmConfig.build()`` returns: the phases of a run (RLlib's ``Algorithm`` API)."""

    config: Any
    run_dir: Path
    model_path: str
    env_spec: Any
    iteration: int
    version: int

    def pretrain(self, progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """Cold-start SFT on the env's demonstrations."""
        ...

    def train(self) -> dict[str, float]:
        """One RL iteration; returns its metrics."""
        ...

    def evaluate(self, num_episodes: int | None = None) -> dict[str, float]:
        """Held-out evaluation metrics."""
        ...

    def evaluate_on(
        self, env: Any, env_config: dict[str, Any], num_episodes: int, temperature: float = 0.0
    ) -> list[Trajectory]:
        """Episodes of another env with the current policy."""
        ...

    def save(self, path: str | None = None) -> str:
        """Writes a checkpoint; returns its directory."""
        ...

    def restore(self, path: str) -> None:
        """Loads a checkpoint (verified first: a damaged one raises and changes nothing)."""
        ...

    def checkpoint(self) -> str:
        """Writes the run's checkpoint for this iteration and keeps the newest K; returns its directory."""
        ...

    def latest_checkpoint(self) -> str:
        """The run directory's newest valid checkpoint."""
        ...

    def stop(self) -> None:
        """Releases every part; never raises."""
        ...


PriorityFn = Callable[[Group, PromptHistory], float]
"""A group and its prompt's history -> a non-negative priority (runs inside the buffer)."""


@runtime_checkable
class StatefulPriority(Stateful, Protocol):
    """A priority function with memory (DSCL is one): what the replay buffer calls, and when.

    A plain ``fn(group, history) -> float`` is a priority function too; an object that also has
    the members below gets them called. Required: ``__call__``, ``get_state`` and ``set_state``
    (what a checkpoint keeps, in ``buffer.pkl``: return picklable data). The others are optional;
    the buffer looks each up once and skips what is absent. In the buffer actor, in order:

    1. on every arriving group, before any filter: :meth:`observe` (kept or not: the groups that
       ``zero_variance`` drops are exactly the mastered and the hard ones);
    2. on each group the filters keep: ``__call__(group, history)`` for its priority (``history``
       already holds this group), then ``reweight_group(group) -> Group`` if defined (it returns a
       new group and never mutates its input);
    3. after each learner update: :meth:`skip_prompt` for every known prompt; the ids it flags go
       to the runners in their push replies, which redraw such a prompt unless a draw below
       ``p_revisit`` keeps it;
    4. each iteration: :meth:`metrics`, merged into the iteration's metrics.

    An object with ``observe`` and an ``auto_observe`` attribute gets ``auto_observe = False``, so
    that ``__call__`` does not observe the group a second time.
    """

    p_revisit: float

    def __call__(self, group: Group, history: PromptHistory) -> float:
        """The kept group's priority (a finite float >= 0)."""
        ...

    def observe(self, group: Group) -> None:
        """Records an arriving group, before the filters (optional)."""
        ...

    def skip_prompt(self, history: PromptHistory) -> bool:
        """True for a prompt the runners should rarely re-issue (optional)."""
        ...

    def metrics(self) -> dict[str, float]:
        """Metrics since the last call, with their full names, e.g. ``dscl/...`` (optional)."""
        ...


GroupFilter = Callable[[Group], "Group | None"]
"""A group -> the kept group (possibly with trajectories masked), or None to drop it."""


@runtime_checkable
class DemonstrationPolicy(Protocol):
    """An env that can show how to act: used by the cold-start SFT phase."""

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """Returns the next assistant turn's text for the conversation so far."""
        ...
