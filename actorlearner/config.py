"""Typed configuration, RLlib style: one validated section per component and a builder.

``AlgorithmConfig().environment(...).env_runners(...).training(...).replay(...).build()``. YAML files
in ``configs/`` are overrides of the defaults, and so are ``key=value`` pairs on the command line.
Unknown keys and bad values fail at once with one line naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from actorlearner.core.errors import ConfigError
from actorlearner.core.registry import FILTERS, PRIORITIES
from actorlearner.env.registration import resolve_env_spec

if TYPE_CHECKING:
    from actorlearner.algorithm import Algorithm


class _Section(BaseModel):
    """A validated config section; calling it updates it on its config (the builder syntax)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)
    _name: str = PrivateAttr("")
    _parent: AlgorithmConfig | None = PrivateAttr(None)

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a field (``config.training.lr = 1e-4``) is validated like the builder."""
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise ConfigError(_one_line(self._name or type(self).__name__, type(self), err)) from None

    def __call__(self, **values: Any) -> AlgorithmConfig:
        """Validates ``values``, applies them to this section and returns the config for chaining.

        Raises:
            ConfigError: One line naming the key and what is allowed.
        """
        if self._parent is None:
            raise TypeError("a detached config section cannot be updated; use AlgorithmConfig()")
        return self._parent.update(self._name, **values)


class EnvironmentConfig(_Section):
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

    def __call__(self, env: Any = None, **values: Any) -> AlgorithmConfig:  # type: ignore[override]
        """Sets the env (a gymnasium id or an Env subclass) and its ``env_config``."""
        if env is not None:
            values["env"] = env
        return super().__call__(**values)


class EnvRunnersConfig(_Section):
    """The rollout actors and how they sample."""

    num_env_runners: int = Field(1, ge=0, description="Ray rollout actors; 0 runs everything in-process.")
    groups_in_flight: int = Field(32, ge=1, description="Groups each runner keeps in flight at once.")
    group_size: int = Field(8, ge=2, description="G: episodes per prompt (GRPO group).")
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


class TrainingConfig(_Section):
    """The RL phase: GRPO-family loss and optimizer."""

    num_iterations: int = Field(200, ge=0, description="Learner updates in the RL phase.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop the RL phase after this long.")
    train_batch_groups: int = Field(32, ge=1, description="Groups per learner update.")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    advantage: Literal["grpo", "drgrpo"] = Field("grpo", description="Advantage estimator.")
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = Field(
        "token_mean", description="How per-token losses reduce to a scalar."
    )
    clip_low: float = Field(0.2, ge=0, description="PPO clip range below 1.")
    clip_high: float = Field(0.2, ge=0, description="PPO clip range above 1 (DAPO clip-higher: 0.28).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip constant c (e.g. 3), off when null.")
    kl_beta: float = Field(0.0, ge=0, description="Weight of the KL penalty to the reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator.")
    entropy_advantage_coef: float = Field(
        0.0, ge=0, description="TAO-RL: c of A' = A(1 + c z(H)) at post-tool tokens (0 off; paper 0.01)."
    )
    entropy_advantage_detach: bool = Field(
        True, description="Detach the entropy in that shaping (our choice); false reproduces the reference."
    )
    micro_batch_size: int = Field(128, ge=1, description="Trajectories per forward/backward pass.")
    max_wait_s: float = Field(
        60.0, gt=0, description="Longest the learner waits for a full batch; then it trains on what is there."
    )


class SFTConfig(_Section):
    """Cold start: supervised fine-tuning on the env's demonstrations before RL."""

    enabled: bool = Field(True, description="Run SFT when the env offers demonstration(); skip otherwise.")
    steps: int = Field(300, ge=0, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Trajectories per step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (cosine decay to 0).")
    num_demos: int = Field(4096, ge=1, description="Demonstration episodes collected.")


class ReplayConfig(_Section):
    """The group-level prioritized replay buffer: priorities and filters decide what trains."""

    priority_fn: Any = Field("uniform", description="Registered name, 'pkg.mod:fn' path or callable.")
    filters: list[Any] = Field(
        default_factory=lambda: ["zero_variance"],
        description="Filter chain: names, {'name': ..., **options} or callables, in order.",
    )
    capacity: int = Field(1024, ge=1, description="Groups the buffer holds; the oldest go first.")
    max_reuse: int = Field(1, ge=1, description="Times a group may be sampled.")
    max_staleness: int = Field(4, ge=0, description="eta: evict groups older than this many versions.")
    alpha: float = Field(0.6, ge=0, description="Priority exponent.")
    beta: float = Field(0.4, ge=0, le=1, description="Initial importance-sampling exponent.")
    beta_anneal_iters: int = Field(200, ge=1, description="Iterations over which beta anneals to 1.")
    history_window: int = Field(8, ge=1, description="Groups of history kept per prompt.")

    @field_validator("priority_fn")
    @classmethod
    def _known_priority(cls, value: Any) -> Any:
        PRIORITIES.resolve(value)
        return value

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: list[Any]) -> list[Any]:
        for item in value:
            FILTERS.resolve(item)
        return value


class LearnerConfig(_Section):
    """The learner actor."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved for the learner.")
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: Ray's per-actor share.")


class ModelConfig(_Section):
    """The policy model."""

    model: str = Field("tiny", description="'tiny' builds the embedded default; else a local directory.")
    hidden_size: int = Field(128, ge=8, description="Tiny model: hidden size.")
    num_layers: int = Field(4, ge=1, description="Tiny model: transformer layers.")
    num_heads: int = Field(4, ge=1, description="Tiny model: attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Tiny model: key/value heads.")
    intermediate_size: int = Field(512, ge=8, description="Tiny model: FFN width.")


class EvaluationConfig(_Section):
    """Held-out evaluation."""

    num_episodes: int = Field(500, ge=1, description="Held-out episodes (seeds 0..n-1 of the eval split).")
    interval: int = Field(0, ge=0, description="Evaluate every N iterations (0: only before and after).")


class ReportingConfig(_Section):
    """Where results go."""

    run_dir: str = Field("runs", description="Parent folder of run directories.")
    name: str | None = Field(None, description="Run name; default: env name and a timestamp.")
    progress: bool = Field(True, description="Show a progress bar.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    checkpoint_interval: int = Field(0, ge=0, description="Save every N iterations (0: only at the end).")


class DebuggingConfig(_Section):
    """Seeds and Ray set-up."""

    seed: int = Field(0, ge=0, description="Seeds tasks, sampling and model init.")
    ray_address: str | None = Field(None, description="Connect to this Ray cluster; default: start local.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray runtime.")


SECTIONS: dict[str, type[_Section]] = {
    "environment": EnvironmentConfig,
    "env_runners": EnvRunnersConfig,
    "training": TrainingConfig,
    "sft": SFTConfig,
    "replay": ReplayConfig,
    "learners": LearnerConfig,
    "model": ModelConfig,
    "evaluation": EvaluationConfig,
    "reporting": ReportingConfig,
    "debugging": DebuggingConfig,
}


def _one_line(section: str, cls: type[_Section], err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in (section, *first["loc"]))
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(cls.model_fields)
        return f"{key}: unknown key; allowed: {allowed}"
    if first["type"] == "value_error" and "ctx" in first:
        return f"{key}: {first['ctx'].get('error', first['msg'])}"
    return f"{key}: {first['msg']} (got {first.get('input')!r})"


class AlgorithmConfig:
    """Builder for an :class:`~actorlearner.algorithm.Algorithm`.

    Each section is an attribute (``config.training.lr``) and is also called to update it
    (``config.training(lr=1e-4)``): values are validated at once, and the config is returned for
    chaining.

    Example:
        >>> config = (AlgorithmConfig()
        ...     .environment("actorlearner/Calculator-v0", env_config={"max_operand": 99})
        ...     .env_runners(num_env_runners=1, group_size=8)
        ...     .training(lr=2e-4, train_batch_groups=32)
        ...     .replay(priority_fn="uniform", filters=["zero_variance"]))
    """

    def __init__(self) -> None:
        self.sections: dict[str, _Section] = {}
        for name, cls in SECTIONS.items():
            self._attach(name, cls())

    def _attach(self, name: str, section: _Section) -> None:
        section._name = name
        section._parent = self
        self.sections[name] = section

    def update(self, section: str, **values: Any) -> AlgorithmConfig:
        """Validates and applies ``values`` to ``section``.

        Raises:
            ConfigError: One line naming the key and what is allowed.
        """
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section; allowed: {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        merged = {**self.sections[section].model_dump(), **values}
        try:
            self._attach(section, cls.model_validate(merged))
        except ValidationError as err:
            raise ConfigError(_one_line(section, cls, err)) from None
        return self

    @property
    def environment(self) -> EnvironmentConfig:
        """Which env: ``.environment(env, env_config={...})``."""
        return self.sections["environment"]  # type: ignore[return-value]

    @property
    def env_runners(self) -> EnvRunnersConfig:
        """Rollout actors: ``.env_runners(num_env_runners=..., group_size=...)``."""
        return self.sections["env_runners"]  # type: ignore[return-value]

    @property
    def training(self) -> TrainingConfig:
        """RL phase: ``.training(lr=..., train_batch_groups=...)``."""
        return self.sections["training"]  # type: ignore[return-value]

    @property
    def sft(self) -> SFTConfig:
        """Cold-start SFT: ``.sft(steps=..., lr=...)``."""
        return self.sections["sft"]  # type: ignore[return-value]

    @property
    def replay(self) -> ReplayConfig:
        """Priorities, filters and buffer: ``.replay(priority_fn=..., filters=[...])``."""
        return self.sections["replay"]  # type: ignore[return-value]

    @property
    def learners(self) -> LearnerConfig:
        """Learner actor: ``.learners(device=...)``."""
        return self.sections["learners"]  # type: ignore[return-value]

    @property
    def model(self) -> ModelConfig:
        """Policy model: ``.model(model="path/to/dir")``."""
        return self.sections["model"]  # type: ignore[return-value]

    @property
    def evaluation(self) -> EvaluationConfig:
        """Held-out evaluation: ``.evaluation(num_episodes=...)``."""
        return self.sections["evaluation"]  # type: ignore[return-value]

    @property
    def reporting(self) -> ReportingConfig:
        """Run directory and logging: ``.reporting(run_dir=..., progress=...)``."""
        return self.sections["reporting"]  # type: ignore[return-value]

    @property
    def debugging(self) -> DebuggingConfig:
        """Seeds and Ray: ``.debugging(seed=...)``."""
        return self.sections["debugging"]  # type: ignore[return-value]

    def update_from_dict(self, data: Mapping[str, Any]) -> AlgorithmConfig:
        """Applies ``{section: {key: value}}`` overrides.

        Raises:
            ConfigError: On an unknown section or key, or a bad value.
        """
        for section, values in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"{section}: unknown section; allowed: {', '.join(SECTIONS)}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"{section}: must be a mapping of keys to values")
            self.update(section, **values)
        return self

    def update_from_overrides(self, overrides: Iterable[str]) -> AlgorithmConfig:
        """Applies ``section.key=value`` strings; values are parsed as YAML (``1e-4``, ``[a, b]``)."""
        for item in overrides:
            path, sep, raw = item.partition("=")
            section, dot, key = path.partition(".")
            if not sep or not dot or not key:
                raise ConfigError(f"{item}: overrides look like section.key=value")
            self.update(section, **{key: yaml.safe_load(raw)})
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> AlgorithmConfig:
        """Loads a YAML file of overrides of the defaults, then ``key=value`` overrides."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: must be a mapping of sections")
        return cls().update_from_dict(data).update_from_overrides(overrides)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain-data view (callables and classes shown by their qualified names)."""
        return {name: _plain(section.model_dump()) for name, section in self.sections.items()}

    def copy(self) -> AlgorithmConfig:
        """A deep copy (sections are re-attached to the copy)."""
        new = AlgorithmConfig()
        for name, section in self.sections.items():
            new._attach(name, section.model_copy(deep=True))
        return new

    def build(self) -> Algorithm:
        """Builds the :class:`~actorlearner.algorithm.Algorithm` (starts Ray unless local)."""
        from actorlearner.algorithm import Algorithm

        return Algorithm(self.copy())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Callable):  # type: ignore[arg-type]
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def config_reference() -> str:
    """The README's configuration reference, generated from the sections' field descriptions."""
    lines: list[str] = []
    for name, cls in SECTIONS.items():
        lines += [
            f"**`{name}`**: {(cls.__doc__ or '').strip()}",
            "",
            "| key | default | meaning |",
            "|---|---|---|",
        ]
        for key, field in cls.model_fields.items():
            default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
            lines.append(f"| `{key}` | `{_plain(default)!r}` | {field.description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # regenerates the README's configuration reference
    import re
    import sys

    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    text = readme.read_text()
    pattern = r"(<!-- config-reference:start[^>]*-->\n).*?(<!-- config-reference:end -->)"
    fresh = re.sub(pattern, lambda m: m.group(1) + config_reference() + m.group(2), text, flags=re.S)
    readme.write_text(fresh)
