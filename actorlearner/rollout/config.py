"""Config section of the rollout actors: how many, how they sample, and with which engine."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from actorlearner.core.config import ClassSpec, CustomResources, Section
from actorlearner.rollout.engines import ENGINES, check_engine_available, check_engine_options, engine_class


class EnvRunnersConfig(Section):
    """The rollout actors and how they sample."""

    num_env_runners: int = Field(1, ge=0, description="Ray rollout actors; 0 runs everything in-process.")
    groups_in_flight: int = Field(
        32,
        ge=1,
        description="Each runner keeps groups_in_flight * group_size episodes in play (asynchronous "
        "schedule; see refill) or this many groups (synchronous schedule).",
    )
    refill: Literal["episodes", "groups"] = Field(
        "episodes",
        description="When the asynchronous schedule starts a new group: 'episodes', as soon as "
        "group_size of the episode slots are free (a group waiting on its slowest episodes holds "
        "only their slots); 'groups', when a whole group has finished.",
    )
    group_size: int = Field(8, ge=2, description="G: episodes per prompt (GRPO group).")
    num_tasks: int | None = Field(
        None,
        ge=1,
        description="Training task seeds are drawn from 0..num_tasks-1 (a fixed training set, so prompts "
        "recur and per-prompt priorities such as DSCL's categories have a history); null: any seed.",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of training rollouts.")
    max_new_tokens: int = Field(32, ge=1, description="Cap on one assistant turn, in tokens.")
    max_tokens: int = Field(256, ge=8, description="Cap on a whole episode (prompt included), in tokens.")
    step_timeout_s: float = Field(30.0, gt=0, description="Time limit of one env.step (tool call).")
    batch_wait_s: float = Field(
        0.05, ge=0, description="Longest a generation request waits for others to join its batch."
    )
    max_ready_groups: int = Field(
        64, ge=1, description="Runners pause while the buffer holds this many unconsumed groups."
    )
    num_cpus_per_runner: float = Field(1.0, ge=0, description="Ray CPUs reserved per runner.")
    niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="How many nice steps below the learner's the CPU priority of runners in their own "
        "process (Ray) is; 0: equal. Where runners and the learner share cores, the learner, which "
        "paces the loop, gets most of the contested CPU and runners take the rest.",
    )
    num_gpus_per_runner: float = Field(
        0.0,
        ge=0,
        description="Ray GPUs reserved per runner (a GPU engine on Ray: Ray shows a runner only the GPUs "
        "it reserved; fractions share one GPU).",
    )
    resources: CustomResources = Field(
        default_factory=dict,
        description="Ray custom resources each runner needs (e.g. {'rollout': 1}: only on nodes started "
        "with that resource); runners are spread over the nodes that have them.",
    )
    call_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest the driver waits for a runner's answer to a short call (pause, state); "
        "a runner that does not answer is killed as hung and restarted.",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Times Ray restarts a dead runner while the others go on (its groups in flight are "
        "lost); 0: a runner's death ends the run.",
    )
    engine: Any = Field(
        "hf",
        description=f"Generation engine: a registered name ({', '.join(ENGINES.names())}), "
        "'pkg.mod:Class' path or class.",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments of the engine's constructor."
    )
    env_runner_cls: ClassSpec = Field(
        None,
        description="An EnvRunner subclass or 'pkg.mod:Class' path to run instead of the built-in (null).",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: Any) -> Any:
        if not (isinstance(value, str) and value in ENGINES):  # a known name is not imported here
            engine_class(value)
        check_engine_available(value)
        return value

    @field_validator("engine_options")
    @classmethod
    def _engine_takes_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if value and "engine" in info.data:  # checking them imports the engine (and torch): only if given
            check_engine_options(info.data["engine"], value)
        return value

    def portable(self) -> EnvRunnersConfig:
        """A detached copy for another process (a Ray runner): a driver-only engine name becomes its class."""
        return self.detached_copy(engine=ENGINES.portable(self.engine))
