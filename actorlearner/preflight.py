"""Checks a config before anything starts: sections that must fit together, and this machine.

Each key is validated when it is set (:mod:`actorlearner.config`); what one key cannot tell is
checked here, by :meth:`AlgorithmConfig.validate`, which ``build()`` calls before Ray starts or a
model is built: the env takes ``env_config``, CUDA is there for ``learners.device=cuda``, the run
directory is writable, the Ray cluster answers. Every failure is a one-line
:class:`~actorlearner.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Protocol

from actorlearner.core.errors import ConfigError
from actorlearner.env.config import EnvironmentConfig
from actorlearner.env.registration import check_env_config, resolve_env_spec
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.replay.config import ReplayConfig
from actorlearner.rollout.config import EnvRunnersConfig
from actorlearner.runtime.config import DebuggingConfig, ReportingConfig
from actorlearner.runtime.placement import check_ray_address


class CheckedConfig(Protocol):
    """The sections these checks read, as :class:`actorlearner.config.AlgorithmConfig` has them.

    A protocol, so that this module sits below the config builder that calls it (no import cycle).
    """

    @property
    def environment(self) -> EnvironmentConfig:
        """The ``environment`` section."""
        ...

    @property
    def env_runners(self) -> EnvRunnersConfig:
        """The ``env_runners`` section."""
        ...

    @property
    def training(self) -> TrainingConfig:
        """The ``training`` section."""
        ...

    @property
    def replay(self) -> ReplayConfig:
        """The ``replay`` section."""
        ...

    @property
    def learners(self) -> LearnerConfig:
        """The ``learners`` section."""
        ...

    @property
    def reporting(self) -> ReportingConfig:
        """The ``reporting`` section."""
        ...

    @property
    def debugging(self) -> DebuggingConfig:
        """The ``debugging`` section."""
        ...


def check_config(cfg: CheckedConfig) -> None:
    """Runs every check below, cheapest first.

    Raises:
        ConfigError: One line naming the first key that fails.
    """
    check_cross_fields(cfg)
    check_deterministic(cfg)
    check_device(cfg)
    check_run_dir(cfg.reporting.run_dir, "reporting.run_dir")
    if cfg.env_runners.num_env_runners > 0:  # 0: everything in this process, no Ray
        check_ray_address(cfg.debugging.ray_address, "debugging.ray_address")
    check_env_configs(cfg)


def check_cross_fields(cfg: CheckedConfig) -> None:
    """Checks that values of different sections fit together."""
    runners, training = cfg.env_runners, cfg.training
    if runners.max_ready_groups < training.train_batch_groups:
        raise ConfigError(
            f"env_runners.max_ready_groups: must be >= training.train_batch_groups "
            f"({training.train_batch_groups}), got {runners.max_ready_groups}"
        )
    if cfg.replay.capacity < max(training.train_batch_groups, runners.max_ready_groups):
        raise ConfigError(
            f"replay.capacity: must be >= training.train_batch_groups and env_runners.max_ready_groups "
            f"({max(training.train_batch_groups, runners.max_ready_groups)}), got {cfg.replay.capacity}"
        )
    if runners.max_new_tokens >= runners.max_tokens:
        raise ConfigError(
            f"env_runners.max_new_tokens: must be < env_runners.max_tokens ({runners.max_tokens}), "
            f"got {runners.max_new_tokens}"
        )
    check_learner_group(cfg)
    check_local_ray(cfg)
    context = runners.engine_options.get("max_model_len")  # vllm's context cap
    if context is not None and context < runners.max_tokens:
        raise ConfigError(
            f"env_runners.engine_options.max_model_len: must be >= env_runners.max_tokens "
            f"({runners.max_tokens}), or the engine rejects an episode's last turns; got {context}"
        )


def check_local_ray(cfg: CheckedConfig) -> None:
    """The object store knobs size a Ray runtime that actorlearner starts, not a running cluster."""
    debugging = cfg.debugging
    if debugging.ray_address is None:
        return
    for key in ("ray_object_store_mb", "ray_preallocate_object_store"):
        if getattr(debugging, key):
            raise ConfigError(
                f"debugging.{key}: sets up a local Ray runtime; a cluster at debugging.ray_address "
                "sets its object store when it starts (ray start --object-store-memory)"
            )


def check_learner_group(cfg: CheckedConfig) -> None:
    """A learner group needs Ray (its members are processes); NCCL needs CUDA learners."""
    learners = cfg.learners
    if learners.num_learners > 1 and cfg.env_runners.num_env_runners == 0:
        raise ConfigError(
            f"learners.num_learners: {learners.num_learners} learners need Ray (env_runners.num_env_runners "
            "> 0); local mode has one learner in this process"
        )
    if learners.backend == "nccl" and learners.device == "cpu":
        raise ConfigError(
            "learners.backend: nccl needs CUDA learners; allowed with learners.device=cpu: auto, gloo"
        )
    if learners.sharding == "fsdp2":
        check_sharding(cfg)


def check_sharding(cfg: CheckedConfig) -> None:
    """FSDP2 shards over two or more members, and not with the knobs its path has not been tested with."""
    learners = cfg.learners
    if learners.num_learners < 2:
        raise ConfigError(
            f"learners.sharding: fsdp2 shards the model over a learner group; needs learners.num_learners "
            f">= 2, got {learners.num_learners}"
        )
    unsupported = {
        "learners.lora_rank": learners.lora_rank > 0,
        "learners.gradient_checkpointing": learners.gradient_checkpointing,
        "learners.autocast": learners.autocast != "none",
        "training.kl_beta": cfg.training.kl_beta > 0,
    }
    for key, on in unsupported.items():
        if on:
            raise ConfigError(
                f"{key}: not supported with learners.sharding=fsdp2 (allowed: lora_rank 0, "
                "gradient_checkpointing false, autocast none, kl_beta 0)"
            )


def check_deterministic(cfg: CheckedConfig) -> None:
    """``debugging.deterministic`` needs local mode, no wall-clock budget and an engine with state."""
    if not cfg.debugging.deterministic:
        return
    runners = cfg.env_runners
    if runners.num_env_runners != 0:
        raise ConfigError(
            "debugging.deterministic: needs env_runners.num_env_runners=0 (local mode; Ray mode is not "
            f"reproducible, docs/faults.md), got num_env_runners={runners.num_env_runners}"
        )
    if cfg.training.time_budget_s is not None:
        raise ConfigError(
            "training.time_budget_s: must be null with debugging.deterministic=true (a wall-clock budget "
            f"ends runs at different iterations), got {cfg.training.time_budget_s}"
        )
    from actorlearner.core.protocols import StatefulEngine  # only now: it imports no torch, the engine may
    from actorlearner.rollout.engines import engine_class

    engine = engine_class(runners.engine)
    if not (isinstance(engine, type) and issubclass(engine, StatefulEngine)):
        raise ConfigError(
            f"env_runners.engine: {runners.engine!r} has no get_state/set_state for its sampling "
            "generator, which debugging.deterministic needs for an exact resume; allowed: hf"
        )


def check_device(cfg: CheckedConfig) -> None:
    """``learners.device=cuda`` and ``learners.backend=nccl`` need CUDA here.

    Not checked when the learners may run on a Ray cluster's GPU nodes.
    """
    on_a_cluster = cfg.debugging.ray_address is not None and cfg.env_runners.num_env_runners > 0
    wants = (
        "device" if cfg.learners.device == "cuda" else "backend" if cfg.learners.backend == "nccl" else None
    )
    if wants is None or on_a_cluster:
        return
    import torch  # only now: validating a config imports no torch otherwise

    if not torch.cuda.is_available():
        value = getattr(cfg.learners, wants)
        allowed = "auto, cpu" if wants == "device" else "auto, gloo"
        raise ConfigError(
            f"learners.{wants}: {value!r} but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); allowed here: {allowed}"
        )


def check_run_dir(run_dir: str, key: str) -> None:
    """Creates ``run_dir`` if needed and writes a temporary file in it.

    Raises:
        ConfigError: One line naming ``key`` when the directory cannot be created or written.
    """
    path = Path(run_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"{key}: cannot create or write {run_dir} ({reason}); allowed: a writable directory"
        ) from None


def check_env_configs(cfg: CheckedConfig) -> None:
    """The env takes ``env_config``, and ``env_config`` updated by ``eval_env_config`` (builds each once)."""
    env = cfg.environment
    spec = resolve_env_spec(env.env)
    check_env_config(spec, env.env_config, "environment.env_config")
    if env.eval_env_config:
        check_env_config(spec, {**env.env_config, **env.eval_env_config}, "environment.eval_env_config")
