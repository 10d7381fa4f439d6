"""The Algorithm: wires env runners, the replay buffer and the learner, in Ray or in-process.

``train()`` is one learner iteration: a batch sampled from the buffer (runners keep filling it
asynchronously) goes to the learner, which updates; its weights are published once, and runners
pick them up in the replies to their pushes. A runtime places the parts (``num_env_runners=0``:
every part in this process, all coroutines on one event loop; else Ray actors) and the same
coroutines drive both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from actorlearner.config import AlgorithmConfig, ConfigError
from actorlearner.core.errors import CheckpointError, PartDiedError
from actorlearner.core.metrics import MetricsLogger, episode_metrics
from actorlearner.core.protocols import EnvRunner as EnvRunnerProtocol
from actorlearner.core.protocols import Handle, ReplayBufferActor
from actorlearner.core.protocols import Learner as LearnerProtocol
from actorlearner.core.registry import FILTERS, PRIORITIES, RegistryError, resolve_class
from actorlearner.core.trajectory import Trajectory
from actorlearner.env.registration import make_env, resolve_env_spec
from actorlearner.learn.learner import Learner
from actorlearner.preflight import check_cross_fields
from actorlearner.replay.buffer import BufferActor
from actorlearner.replay.filters import FilterChain
from actorlearner.replay.samplelog import RUN_FILE, SAMPLES_FILE, SampleLog
from actorlearner.rollout.runner import EnvRunner
from actorlearner.runtime.checkpoint import (
    list_checkpoints,
    prune_checkpoints,
    publish_checkpoint,
    read_checkpoint,
    temp_dir_for,
    verify_checkpoint,
    write_checkpoint,
    write_manifest,
)
from actorlearner.runtime.group import LearnerGroup
from actorlearner.runtime.handles import gather, is_part_death, is_part_unavailable
from actorlearner.runtime.placement import LocalRuntime, RayRuntime, Runtime

logger = logging.getLogger(__name__)

MAX_SKIPPED_ITERATIONS = 3
"""Consecutive iterations without a single group before ``train()`` raises."""
RESTART_DEADLINE_S = 300.0
"""Longest a call waits for Ray to restart a runner whose process died."""
PING_INTERVAL_S = 5.0
"""While the driver waits for an update or a synchronous batch it pings each runner this often; one
that does not answer within ``env_runners.call_timeout_s`` is killed as hung and restarted."""

MAX_PLAY_ROUNDS = 8
"""Synchronous schedule: rounds of play to replace dropped groups before training on fewer."""


def _check_picklable(fn: Any, key: str) -> None:
    """Priority functions and filters run inside the buffer actor: they must pickle.

    Raises:
        ConfigError: Naming the key and the function when cloudpickle cannot serialize it.
    """
    from ray import cloudpickle

    try:
        cloudpickle.dumps(fn)
    except Exception as err:
        name = getattr(getattr(fn, "func", fn), "__qualname__", repr(fn))
        raise ConfigError(
            f"{key}: {name} cannot be pickled for the replay-buffer actor ({type(err).__name__}: {err}); "
            "define it at module level and keep locks, files and sockets out of its closure"
        ) from None


def _subclass(spec: Any, base: type, key: str) -> Any:
    """The configured class (``base`` when None), checked to subclass ``base``.

    Raises:
        ConfigError: One line naming ``key``, before anything starts.
    """
    try:
        return resolve_class(spec, base)
    except RegistryError as err:
        raise ConfigError(f"{key}: {err}") from None


def _name_of(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return str(spec.get("name"))
    return str(getattr(spec, "__name__", type(spec).__name__))


def empty_update_message(metrics: dict[str, float], max_wait_s: float) -> str:
    """Says why an update trained on nothing: which filter dropped what, the rewards, what to do.

    Args:
        metrics: The iteration's metrics (``filter/*``, ``rollout/*``, ``buffer/*``).
        max_wait_s: How long the learner waited for groups.
    """
    drops = {
        key.split("/")[1]: int(value)
        for key, value in metrics.items()
        if key.startswith("filter/") and key.endswith("/groups_dropped") and value
    }
    arrived = int(metrics.get("rollout/groups", 0))
    rewards = (
        f"reward mean {metrics.get('rollout/reward_mean', float('nan')):.3g}, "
        f"std {metrics.get('rollout/reward_std', float('nan')):.3g}"
    )
    cause = (
        f"the filters dropped every group ({', '.join(f'{k}: {v}' for k, v in drops.items())})"
        if drops
        else f"no group arrived within training.max_wait_s={max_wait_s:g}s"
    )
    return (
        f"an update trained on nothing: {arrived} group(s) arrived and {cause}; {rewards}, "
        f"errors {int(metrics.get('rollout/group_errors', 0))}. With an untrained policy every group "
        "can have equal rewards (zero_variance drops them): run cold-start SFT (sft.steps), use a "
        "reward with partial credit, or relax replay.filters. Training goes on (this is said once)."
    )


class Algorithm:
    """Asynchronous actor-learner RL for a tool env. Build it with ``AlgorithmConfig().build()``.

    Args:
        config: A validated config.
    """

    def __init__(self, config: AlgorithmConfig) -> None:
        hf_logging.disable_progress_bar()
        self.config = config
        cfg = config
        seed = cfg.debugging.seed
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.synchronous = cfg.training.synchronous or cfg.debugging.deterministic
        self.env_spec = resolve_env_spec(cfg.environment.env)
        check_cross_fields(cfg)  # build() checked everything (validate()); this, for a direct call
        self._classes: tuple[type[Learner], type[EnvRunner]] = (
            _subclass(cfg.learners.learner_cls, Learner, "learners.learner_cls"),
            _subclass(cfg.env_runners.env_runner_cls, EnvRunner, "env_runners.env_runner_cls"),
        )
        self.model_path = self._resolve_model()
        self._check_prompt_fits()
        self.local = cfg.env_runners.num_env_runners == 0
        self.run_dir = self._make_run_dir()
        (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (self.run_dir / RUN_FILE).write_text(json.dumps({"model_path": self.model_path}))
        self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.reporting.tensorboard)
        self.iteration = 0
        self.version = 0
        self._rl_started = False
        self._optimizer_restored = False
        self._skipped = 0
        self._skipped_totals: dict[str, float] = {}  # group errors and drops over the skipped iterations
        self._warned_empty = False
        self._run_refs: list[asyncio.Future[Any]] = []
        self.runner_restarts = [0] * max(1, self.config.env_runners.num_env_runners)
        self._restarting: set[int] = set()
        self._evaluating = False  # the runners are paused for an evaluation (_episodes)
        self._pings: dict[int, tuple[float, asyncio.Future[Any]]] = {}
        self._stopped = False
        args = self._component_args()  # resolved once: the instances checked are the ones placed
        self.runtime: Runtime = LocalRuntime() if self.local else self._ray_runtime(args)
        try:
            self._place_parts(args)
        except BaseException:
            self.runtime.shutdown()
            self.logger.close()
            raise

    # ----------------------------------------------------------------------------------- set-up
    def _resolve_model(self) -> str:
        cfg = self.config.model
        if cfg.model != "tiny":
            return cfg.model
        from actorlearner.models.tiny import ensure_tiny_model, env_corpus

        env_config = self.config.environment.env_config
        corpus = env_corpus(lambda: make_env(self.env_spec, env_config))
        path = ensure_tiny_model(
            corpus,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            intermediate_size=cfg.intermediate_size,
            seed=self.config.debugging.seed,
        )
        return str(path)

    def _check_prompt_fits(self) -> None:
        """Fails fast when the env's first prompt leaves no room for a turn under ``max_tokens``."""
        from transformers import AutoTokenizer

        from actorlearner.rollout.chat import prompt_ids

        runners = self.config.env_runners
        messages, info = make_env(self.env_spec, self.config.environment.env_config).reset(seed=0)
        n = len(prompt_ids(AutoTokenizer.from_pretrained(self.model_path), messages, info.get("tools")))
        if n + runners.max_new_tokens > runners.max_tokens:
            raise ConfigError(
                f"env_runners.max_tokens: {runners.max_tokens} leaves no room for a turn after the "
                f"env's {n}-token prompt (max_new_tokens {runners.max_new_tokens}); raise it to at least "
                f"{n + runners.max_new_tokens}"
            )

    def _make_run_dir(self) -> Path:
        """``reporting.run_dir/reporting.name``: a fresh directory unless ``reporting.resume``.

        A name whose directory already holds a run (a ``metrics.jsonl``) gets a suffix (``-2``,
        ``-3``...), so two runs never share a metrics file.

        Raises:
            ConfigError: With ``resume``, when the directory holds no run.
        """
        rep = self.config.reporting
        path = Path(rep.run_dir) / (rep.name or f"{self.env_spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        taken = (path / "metrics.jsonl").exists()
        if rep.resume and not taken:
            raise ConfigError(f"resume: {path} holds no run (no metrics.jsonl); pass a run directory")
        if taken and not rep.resume:
            fresh = next(p for i in range(2, 10**6) if not (p := path.with_name(f"{path.name}-{i}")).exists())
            logger.warning("%s already holds a run: writing to %s (resume with --resume)", path, fresh)
            path = fresh
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _component_args(self) -> dict[str, Any]:
        cfg = self.config
        rep = cfg.replay
        chain = FilterChain([(_name_of(f), FILTERS.resolve(f)) for f in rep.filters])
        buffer_kwargs = dict(
            priority_fn=PRIORITIES.resolve(rep.priority_fn),
            filters=chain,
            capacity=rep.capacity,
            alpha=rep.alpha,
            beta=rep.beta,
            beta_anneal_iters=rep.beta_anneal_iters,
            max_reuse=rep.max_reuse,
            max_staleness=rep.max_staleness,
            history_window=rep.history_window,
            max_histories=rep.max_histories,
            seed=cfg.debugging.seed,
            sample_log=(
                SampleLog(self.run_dir / SAMPLES_FILE, cfg.reporting.log_samples)
                if cfg.reporting.log_samples
                else None
            ),
        )
        learner_kwargs = dict(
            model_path=self.model_path,
            training=cfg.training.portable(),
            learner=cfg.learners,
            temperature=cfg.env_runners.temperature,
            seed=cfg.debugging.seed,
            max_tokens=cfg.env_runners.max_tokens,
            publish_views=not self.local,  # a Ray actor: its return values are serialized at once
        )
        return {"buffer": buffer_kwargs, "learner": learner_kwargs}

    def _runner_kwargs(self, index: int) -> dict[str, Any]:
        cfg = self.config
        config = cfg.env_runners.portable()
        if self.local:  # the runner shares the driver's process: its priority stays the driver's
            config = config.detached_copy(niceness=0)
        return dict(
            index=index,
            env_spec=self.env_spec,
            env_config=cfg.environment.env_config,
            eval_env_config=cfg.environment.eval_env_config,
            model_path=self.model_path,
            config=config,
            seed=cfg.debugging.seed,
            deterministic=cfg.debugging.deterministic,
        )

    def _ray_runtime(self, args: dict[str, Any]) -> RayRuntime:
        _check_picklable(args["buffer"]["priority_fn"], "replay.priority_fn")
        for name, fn in args["buffer"]["filters"].filters:
            _check_picklable(fn, f"replay.filters ({name})")
        debugging = self.config.debugging
        runtime = RayRuntime(
            debugging.ray_address,
            debugging.ray_num_cpus,
            debugging.ray_object_store_mb,
            debugging.ray_preallocate_object_store,
        )
        try:
            self._check_resources(runtime.resources())
        except ConfigError:
            runtime.shutdown()
            raise
        return runtime

    def _place_parts(self, args: dict[str, Any]) -> None:
        """Places the buffer, the learner(s) and the runners (one in-process runner in local mode)."""
        cfg = self.config
        # Each runner may hold a push open (back-pressure) while the learner awaits a sample: the
        # cap on concurrent calls must not be what limits the number of runners.
        self.buffer: Handle[ReplayBufferActor] = self.runtime.place(
            BufferActor, args["buffer"], num_cpus=0, max_concurrency=1000, resources=cfg.replay.resources
        )
        self.learner: Handle[LearnerProtocol] = self._place_learners(args["learner"])
        _, runner_cls = self._classes
        num_runners = max(1, cfg.env_runners.num_env_runners)
        self.runners: list[Handle[EnvRunnerProtocol]] = [
            self.runtime.place(
                runner_cls,
                self._runner_kwargs(i),
                num_cpus=cfg.env_runners.num_cpus_per_runner,
                num_gpus=cfg.env_runners.num_gpus_per_runner,
                max_concurrency=1000,
                max_restarts=cfg.env_runners.max_restarts,
                resources=cfg.env_runners.resources,
                scheduling=None if self.local else "SPREAD",
            )
            for i in range(num_runners)
        ]

    def _place_learners(self, kwargs: dict[str, Any]) -> Handle[LearnerProtocol]:
        """One learner, or ``learners.num_learners`` packed together and joined as one group."""
        cfg = self.config.learners
        gpus = 1 if torch.cuda.is_available() and cfg.device != "cpu" else 0
        slots = self.runtime.pack(cfg.num_learners, cfg.num_cpus, gpus, cfg.resources)
        members: list[Handle[LearnerProtocol]] = [
            self.runtime.place(
                self._classes[0],
                kwargs,
                threaded=True,
                num_cpus=cfg.num_cpus,
                num_gpus=gpus,
                resources=cfg.resources,
                scheduling=slot,
            )
            for slot in slots
        ]
        if len(members) == 1:
            return members[0]
        group = LearnerGroup(members, sharded=cfg.sharding == "fsdp2")
        self.runtime.run(group.join(cfg.backend))
        return group

    def _check_resources(self, resources: dict[str, float]) -> None:
        r = self.config.env_runners
        learners = self.config.learners
        need = r.num_env_runners * r.num_cpus_per_runner + learners.num_learners * learners.num_cpus
        have = resources.get("CPU", 0.0)
        if need > have:
            raise ConfigError(
                f"env_runners.num_env_runners: {r.num_env_runners} runners x {r.num_cpus_per_runner} CPUs "
                f"+ {learners.num_learners} learners x learners.num_cpus {learners.num_cpus} needs {need:g} "
                f"CPUs, Ray has {have:g}; lower num_env_runners, num_cpus_per_runner or learners.num_cpus"
            )
        gpus = r.num_env_runners * r.num_gpus_per_runner
        if gpus > resources.get("GPU", 0.0):
            raise ConfigError(
                f"env_runners.num_gpus_per_runner: {r.num_env_runners} runners x {r.num_gpus_per_runner} "
                f"GPUs needs {gpus:g} GPUs, Ray has {resources.get('GPU', 0.0):g}"
            )
        cfg = self.config
        custom = {"env_runners": r.resources, "learners": learners.resources, "replay": cfg.replay.resources}
        for section, wanted in custom.items():
            short = {k: v for k, v in wanted.items() if v > resources.get(k, 0.0)}
            if short:  # Ray would wait forever for a node that has them
                raise ConfigError(
                    f"{section}.resources: {short} exceeds what the cluster has "
                    f"({ {k: resources.get(k, 0.0) for k in short} }); start nodes with "
                    "`ray start --resources=...` or change the resources"
                )

    # ---------------------------------------------------------------------------- the phases
    async def _publish(self, metrics: bool = True, weights: Any = None) -> dict[str, Any]:
        """Publishes the learner's weights once (object store); returns the buffer's metrics."""
        if weights is None:
            weights = self.learner.call(LearnerProtocol.get_weights)  # a reference: never fetched here
        return await self.buffer.call(ReplayBufferActor.publish_weights, self.version, [weights], metrics)

    async def _sync_weights(self, metrics: bool = True) -> dict[str, Any]:
        """Every runner stages the learner's weights now (phase boundaries, the synchronous schedule).

        Returns:
            The buffer's metrics since the last publication (``{}`` with ``metrics=False``).
        """
        weights = self.learner.call(LearnerProtocol.get_weights)
        # A reference stands for its value: each runner fetches the weights where it runs. The
        # buffer publishes the same reference meanwhile (a runner given it in a push reply first
        # stages the same version: harmless).
        publish = asyncio.ensure_future(self._publish(metrics, weights))
        try:
            await self._all_runners(EnvRunnerProtocol.set_weights, weights, self.version)
        except BaseException:
            publish.cancel()  # nothing left running behind the error
            raise
        return await publish

    def sync_weights(self) -> None:
        """Sends the learner's weights to every runner now and waits until they are staged.

        Training never needs this (runners take new weights from their push replies); it is for
        a caller that wants the very next episodes on the newest weights.
        """
        self.runtime.run(self._sync_weights(metrics=False))

    def pretrain(self, progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """Cold-start SFT on the env's demonstrations (skipped when disabled or not offered).

        Args:
            progress: Called after each chunk of steps with ``(steps_done, last_metrics)``.

        Returns:
            The last SFT metrics, or ``{}`` when skipped.
        """
        sft = self.config.sft
        probe = make_env(self.env_spec, self.config.environment.env_config)
        if not sft.enabled or sft.steps == 0 or not hasattr(probe.unwrapped, "demonstration"):
            return {}
        return self.runtime.run(self._pretrain(progress))

    async def _pretrain(self, progress: Callable[[int, dict[str, float]], None] | None) -> dict[str, float]:
        sft = self.config.sft
        per_runner = -(-sft.num_demos // len(self.runners))
        started = time.perf_counter()
        seed = self.config.debugging.seed
        demos = EnvRunnerProtocol.demonstrations
        chunks = await self._watched(
            [self._runner_job(i, demos, per_runner, seed + i) for i in range(len(self.runners))]
        )
        await self.learner.call(LearnerProtocol.set_demonstrations, [t for c in chunks for t in c])
        demos_s = time.perf_counter() - started
        last: dict[str, float] = {}
        chunk = 25
        for start in range(0, sft.steps, chunk):
            n = min(chunk, sft.steps - start)
            history = await self.learner.call(
                LearnerProtocol.sft_steps, start, n, sft.steps, sft.batch_size, sft.lr, self._cpu_threads()
            )
            for i, record in enumerate(history):
                self.logger.log(start + i, {"phase": "sft", **record})
            last = history[-1]
            if progress is not None:
                progress(start + n, last)
        self.version = int(await self.learner.call(LearnerProtocol.get_version))
        await self._sync_weights()
        return {**last, "sft/demos_s": demos_s, "sft/steps_s": time.perf_counter() - started - demos_s}

    def _cpu_threads(self) -> int:
        """Cores of this machine each learner may use while the runners are idle (SFT)."""
        cpus = self.config.debugging.ray_num_cpus or os.cpu_count() or 1
        return max(1, min(cpus, os.cpu_count() or 1) // self.config.learners.num_learners)

    async def _start_rl(self) -> None:
        await self.learner.call(LearnerProtocol.start_rl, reset_optimizer=not self._optimizer_restored)
        self._rl_started = True
        if self.synchronous:
            return  # the runners play each batch on demand (_play_batch)
        await self._all_runners(EnvRunnerProtocol.pause, False)
        self._run_refs = [
            asyncio.ensure_future(r.call(EnvRunnerProtocol.run, self.buffer)) for r in self.runners
        ]

    async def _play_batch(self) -> None:
        """The synchronous schedule: the runners play until one batch of groups is kept, then stop.

        Groups the filters drop (or that fail) are replaced, up to ``MAX_PLAY_ROUNDS`` rounds. A
        runner that dies (or is found hung by its pings) is restarted as in the asynchronous
        schedule; its share of the round is played again in the next round.
        """
        missing, k = self.config.training.train_batch_groups, len(self.runners)
        for _ in range(MAX_PLAY_ROUNDS):
            shares = [missing // k + (i < missing % k) for i in range(k)]
            plays = [asyncio.ensure_future(self._play_share(i, m)) for i, m in enumerate(shares) if m]
            while not all(p.done() for p in plays):
                self._check_pings()
                await asyncio.wait(plays, timeout=PING_INTERVAL_S, return_when=asyncio.ALL_COMPLETED)
            missing -= sum(p.result() for p in plays)
            if missing <= 0:
                return

    async def _play_share(self, index: int, num_groups: int) -> int:
        """Runner ``index`` plays ``num_groups`` groups; 0 kept when it died and was restarted."""
        try:
            return int(await self.runners[index].call(EnvRunnerProtocol.play, num_groups, self.buffer))
        except Exception as err:
            await self._after_death(index, err)
            return 0

    async def _after_death(self, index: int, err: Exception) -> None:
        """Re-raises ``err`` unless it is runner ``index``'s death; else waits for its restart."""
        if not self._own_death(index, err):
            raise err
        if index not in self._restarting:  # not already counted as hung by _check_pings
            self._count_restart(index, "died", type(err).__name__, err)
            self._replace_run_ref(index)  # its rollout loop died too
        await self._until_restarted(index)

    async def _runner_job(self, index: int, method: Callable[..., Any], *args: Any) -> Any:
        """A long call to runner ``index`` (an evaluation shard, demonstrations) that outlives it.

        If the runner dies, or its pings find it hung (:meth:`_watched`), Ray restarts it; the new
        process stages the learner's newest weights and the call is made again there. Each restart
        counts against ``env_runners.max_restarts``.
        """
        restarted = False
        while True:
            try:
                if restarted and method is not EnvRunnerProtocol.demonstrations:  # scripted: no weights
                    weights = self.learner.call(LearnerProtocol.get_weights)
                    await self._runner_call(index, EnvRunnerProtocol.set_weights, weights, self.version)
                return await self.runners[index].call(method, *args)
            except Exception as err:
                await self._after_death(index, err)
                restarted = True

    async def _watched(self, jobs: Sequence[Awaitable[Any]]) -> list[Any]:
        """Awaits ``jobs`` while the runners are pinged, so that a hung one is found and replaced.

        Raises:
            Exception: The first job's error; the other jobs are cancelled.
        """
        futures = [asyncio.ensure_future(job) for job in jobs]
        try:
            while not all(f.done() for f in futures):
                self._check_pings()
                await asyncio.wait(futures, timeout=PING_INTERVAL_S, return_when=asyncio.FIRST_EXCEPTION)
                failed = next((f for f in futures if f.done() and f.exception() is not None), None)
                if failed is not None:
                    failed.result()
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()
            await asyncio.gather(*futures, return_exceptions=True)

    async def _watch_runners(self, ref: asyncio.Future[Any]) -> None:
        """Waits for ``ref`` (an update); a runner whose process died is restarted meanwhile.

        A runner's loop ending any other way raises here, and so does an update that takes longer
        than ``training.max_wait_s + training.update_timeout_s`` (a hung learner or buffer).

        Ray restarts a dead runner (``env_runners.max_restarts``) by running its constructor again;
        its rollout loop is started anew and takes the newest weights from its first push reply.
        The groups it had in flight are lost with its process (their episodes: at most
        ``groups_in_flight * group_size``).
        """
        training = self.config.training
        limit = training.max_wait_s + training.update_timeout_s
        deadline = time.monotonic() + limit
        while not ref.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise PartDiedError(
                    f"the learner's update (with the buffer's sample) did not finish within "
                    f"training.max_wait_s + training.update_timeout_s = {limit:g}s at iteration "
                    f"{self.iteration}: the learner or the buffer is hung; the run stops"
                )
            self._check_pings()
            await asyncio.wait(
                [ref, *self._run_refs],
                timeout=min(left, PING_INTERVAL_S),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for i, run in enumerate(self._run_refs):
                if run.done():
                    self._run_refs[i] = self._restart_runner(i, run)

    def _check_pings(self) -> None:
        """Pings each runner every ``PING_INTERVAL_S``; one silent past ``call_timeout_s`` is hung.

        A frozen process (SIGSTOP, a deadlock in native code) keeps its actor alive for Ray, so its
        rollout loop never fails: without pings it would be found only at the next checkpoint or
        evaluation. A hung runner is killed for Ray to restart it, as in :meth:`_runner_call`.
        """
        if self.local:
            return
        now, timeout = time.monotonic(), self.config.env_runners.call_timeout_s
        for i, runner in enumerate(self.runners):
            sent, ping = self._pings.get(i, (0.0, None))
            if i in self._restarting:
                self._pings.pop(i, None)  # a restarting runner loads its model: _relaunch waits for it
            elif ping is None or (ping.done() and now - sent >= PING_INTERVAL_S):
                if ping is not None and not ping.cancelled():
                    ping.exception()  # retrieved: a death shows in the rollout loop's reference
                self._pings[i] = (now, asyncio.ensure_future(runner.call(EnvRunnerProtocol.ping)))
            elif not ping.done() and now - sent > timeout:
                ping.cancel()
                self._pings.pop(i)
                self._kill_hung_runner(i, "a ping")

    def _death_message(self, err: BaseException) -> str:
        """One line: which part died, and where the run can resume from."""
        actor_id = getattr(err, "actor_id", None)
        parts = {"the learner": self.learner, "the replay buffer": self.buffer}
        parts.update({f"env runner {i}": r for i, r in enumerate(self.runners)})
        ids = {n: getattr(h, "actor_ids", [getattr(h, "actor_id", None)]) for n, h in parts.items()}
        name = next((n for n, i in ids.items() if actor_id and actor_id in i), "a part of the run")
        found = list_checkpoints(self.run_dir)
        resume = "no checkpoint yet"
        if found:
            resume = f"resume from {found[-1]} with: actorlearner train --resume {self.run_dir}"
        what = "became unreachable" if is_part_unavailable(err) else "died"
        return f"{name} {what} ({type(err).__name__}) at iteration {self.iteration}; the run stops; {resume}"

    def _restart_runner(self, index: int, run: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """The rollout loop of runner ``index``, started again once Ray has restarted it; else raises.

        Training goes on meanwhile: the returned future first waits for the new process.
        """
        err = run.exception()
        if err is None:
            raise RuntimeError(f"env runner {index}: its rollout loop ended unexpectedly")
        if not self._own_death(index, err):
            raise err
        self._count_restart(index, "died", type(err).__name__, err)
        return asyncio.ensure_future(self._relaunch(index))

    def _own_death(self, index: int, err: BaseException) -> bool:
        """Whether ``err`` is runner ``index``'s death (not its error, nor the buffer's it called)."""
        own_id = getattr(self.runners[index], "actor_id", None)
        return is_part_death(err) and getattr(err, "actor_id", None) == own_id

    def _count_restart(self, index: int, cause: str, detail: str, err: BaseException | None = None) -> None:
        """Counts one restart of runner ``index`` and logs it; raises when none is left.

        Args:
            index: The runner.
            cause: What happened to it (``"died"``, ``"did not answer ..."``).
            detail: Shown in parentheses after the cause (the error's type, the deadline).
            err: The error that ended it, chained to the one raised.

        Raises:
            PartDiedError: When ``env_runners.max_restarts`` restarts are used up, or in local mode.
        """
        limit = self.config.env_runners.max_restarts
        if self.local or self.runner_restarts[index] >= limit:
            used_up = f"env_runners.max_restarts={limit} restarts are used up"
            why = "an in-process runner cannot be restarted" if self.local else used_up
            raise PartDiedError(
                f"env runner {index} {cause} and {why} "
                f"({detail}) at iteration {self.iteration}; the run stops"
            ) from err
        self.runner_restarts[index] += 1
        self._restarting.add(index)
        logger.warning(
            "env runner %d %s (%s); restarting it (%d of %d), the other runners go on",
            index,
            cause,
            detail,
            self.runner_restarts[index],
            limit,
        )

    async def _until_restarted(self, index: int) -> None:
        """Waits until Ray has restarted runner ``index`` (its constructor loads the model again)."""
        try:  # cheap and idempotent; a runner comes back paused during an evaluation
            while True:  # an evaluation may have begun or ended while the call was retried
                paused = self._evaluating
                await self._runner_call(index, EnvRunnerProtocol.pause, paused)
                if paused == self._evaluating:
                    return
        except Exception as err:
            raise PartDiedError(f"env runner {index} died and did not come back: {err}") from err

    async def _all_runners(self, method: Callable[..., Any], *args: Any) -> list[Any]:
        """:meth:`_runner_call` on every runner at once."""
        return await gather([self._runner_call(i, method, *args) for i in range(len(self.runners))])

    async def _runner_call(self, index: int, method: Callable[..., Any], *args: Any) -> Any:
        """A short idempotent call to runner ``index`` that waits out a restart of its process.

        Ray fails calls to an actor it is restarting at once ("unavailable"); they are repeated
        every 0.5 s for up to ``RESTART_DEADLINE_S``.
        """
        start = time.monotonic()
        while True:
            # A runner being restarted first loads the model: it gets the longer deadline.
            restarting = index in self._restarting
            timeout = RESTART_DEADLINE_S if restarting else self.config.env_runners.call_timeout_s
            try:
                answer = await asyncio.wait_for(self.runners[index].call(method, *args), timeout)
                self._restarting.discard(index)
                return answer
            except TimeoutError:
                if restarting:
                    raise PartDiedError(f"env runner {index} did not come back within {timeout:g}s") from None
                self._kill_hung_runner(index, method.__name__)
            except Exception as err:
                if not is_part_unavailable(err) or time.monotonic() - start > RESTART_DEADLINE_S:
                    raise
            await asyncio.sleep(0.5)

    def _kill_hung_runner(self, index: int, what: str) -> None:
        """Kills runner ``index``, which did not answer ``what`` in time, for Ray to restart it."""
        timeout = self.config.env_runners.call_timeout_s
        self._count_restart(index, f"did not answer {what}", f"hung: env_runners.call_timeout_s={timeout:g}s")
        self.runners[index].kill(restart=True)
        self._replace_run_ref(index)  # its rollout loop ends with the process

    def _replace_run_ref(self, index: int) -> None:
        """During asynchronous RL: runner ``index``'s rollout loop, started again once it is back.

        The old loop's reference is dropped; its error (the death) is retrieved, not logged.
        """
        if self._run_refs:
            self._run_refs[index].add_done_callback(lambda f: f.cancelled() or f.exception())
            self._run_refs[index] = asyncio.ensure_future(self._relaunch(index))

    async def _relaunch(self, index: int) -> Any:
        await self._until_restarted(index)
        return await self.runners[index].call(EnvRunnerProtocol.run, self.buffer)

    def train(self) -> dict[str, float]:
        """One iteration: a batch from the buffer, one learner update, the new weights published.

        The batch goes from the buffer to the learner and the weights from the learner to the
        buffer (whence runners take them in their push replies) as references: the driver moves
        only metrics.

        Returns:
            Metrics: ``learner/*``, ``rollout/*``, ``buffer/*``, ``filter/*``, ``time/*``.
        """
        try:
            metrics = self.runtime.run(self._train())
        except Exception as err:
            if is_part_death(err):
                raise PartDiedError(self._death_message(err)) from err
            raise
        self.iteration += 1
        metrics["iteration"] = float(self.iteration)
        interval = self.config.evaluation.interval
        if interval and self.iteration % interval == 0:
            metrics.update(self.evaluate())
        self.logger.log(self.iteration, {"phase": "rl", **metrics})
        ckpt = self.config.reporting.checkpoint_interval
        if ckpt and self.iteration % ckpt == 0:
            self.checkpoint()
        return metrics

    async def _train(self) -> dict[str, float]:
        if not self._rl_started:
            await self._start_rl()
        training = self.config.training
        start = time.perf_counter()
        if self.synchronous:
            await self._play_batch()
        played = time.perf_counter()
        wait = 0.0 if self.synchronous else training.max_wait_s  # synchronous: the batch is there
        batch = self.buffer.call(
            ReplayBufferActor.sample_wait, training.train_batch_groups, self.version, wait
        )
        # The batch reference goes to the learner as is: the groups never pass through here.
        update = asyncio.ensure_future(self.learner.call(LearnerProtocol.update, batch))  # type: ignore[call-overload]
        await self._watch_runners(update)
        learner_metrics = update.result()
        updated = time.perf_counter()
        self.version = int(learner_metrics.get("version", self.version))
        self._skipped = self._skipped + 1 if learner_metrics.get("skipped") else 0
        metrics: dict[str, float] = {f"learner/{k}": v for k, v in learner_metrics.items()}
        metrics.update(await (self._sync_weights() if self.synchronous else self._publish()))
        self._check_progress(metrics)
        waited = metrics.get("buffer/wait_s", 0.0) + (played - start)
        metrics["time/wait_for_data_s"] = waited
        metrics["time/update_s"] = updated - start - waited
        metrics["time/publish_s"] = time.perf_counter() - updated
        metrics["time/iteration_s"] = time.perf_counter() - start
        metrics["rollout/runner_restarts"] = float(sum(self.runner_restarts))
        return metrics

    def _check_progress(self, metrics: dict[str, float]) -> None:
        if self._skipped and not self._warned_empty:
            self._warned_empty = True
            logger.warning(empty_update_message(metrics, self.config.training.max_wait_s))
        if not self._skipped:
            self._skipped_totals = {}
            return
        totals = self._skipped_totals
        for key, value in metrics.items():  # summed: a runner may fail early and then fall silent
            if key == "rollout/group_errors" or (
                key.startswith("filter/") and key.endswith("groups_dropped")
            ):
                totals[key] = totals.get(key, 0.0) + value
        if self._skipped >= MAX_SKIPPED_ITERATIONS:
            drops = {k: v for k, v in totals.items() if k.endswith("groups_dropped")}
            raise RuntimeError(
                f"no group reached the learner in {self._skipped} iterations of up to "
                f"{self.config.training.max_wait_s:g}s: rollout/group_errors="
                f"{totals.get('rollout/group_errors', 0):g} and filter drops {drops} in those "
                "iterations; check the runner logs, the env, and replay.filters"
            )

    def evaluate(
        self, num_episodes: int | None = None, modes: Sequence[str] = ("greedy", "sampled")
    ) -> dict[str, float]:
        """Held-out success, greedy and at the training temperature, on seeds ``0..n-1``.

        Args:
            num_episodes: Episodes per mode (default ``evaluation.num_episodes``).
            modes: ``"greedy"`` (temperature 0) and/or ``"sampled"`` (the training temperature).

        Returns:
            ``eval/greedy/*`` and ``eval/sampled/*`` episode metrics (success_rate, tool_use_rate...).
        """
        temperatures = {"greedy": 0.0, "sampled": self.config.env_runners.temperature}
        unknown = [m for m in modes if m not in temperatures]
        if unknown:
            raise ValueError(f"evaluate: unknown modes {unknown}; allowed: {sorted(temperatures)}")
        n = num_episodes or self.config.evaluation.num_episodes
        if self._rl_started:  # runners take new weights from push replies: make sure they have the newest
            self.sync_weights()
        out: dict[str, float] = {}
        for label in modes:
            temp = temperatures[label]
            trajs = self.runtime.run(self._episodes(list(range(n)), temp))
            out.update(episode_metrics(trajs, prefix=f"eval/{label}/"))
        return out

    def evaluate_on(
        self, env: Any, env_config: dict[str, Any], num_episodes: int, temperature: float = 0.0
    ) -> list[Trajectory]:
        """Episodes of another env (seeds ``0..n-1``), e.g. one BFCL category, with the current policy."""
        spec = resolve_env_spec(env)
        return self.runtime.run(self._episodes(list(range(num_episodes)), temperature, spec, env_config))

    async def _episodes(
        self, seeds: list[int], temperature: float, spec: Any = None, env_config: Any = None
    ) -> list[Trajectory]:
        """Evaluation episodes sharded over the runners, which launch no training group meanwhile."""
        shards = [seeds[i :: len(self.runners)] for i in range(len(self.runners))]
        if self._rl_started:
            self._evaluating = True
            await self._all_runners(EnvRunnerProtocol.pause, True)
        try:
            jobs = [
                self._runner_job(i, EnvRunnerProtocol.evaluate, s, temperature, spec, env_config)
                for i, s in enumerate(shards)
                if s
            ]
            return [t for chunk in await self._watched(jobs) for t in chunk]
        finally:
            if self._rl_started:
                self._evaluating = False
                await self._all_runners(EnvRunnerProtocol.pause, False)

    # ----------------------------------------------------------------------- save and restore
    def save(self, path: str | None = None) -> str:
        """Writes a checkpoint atomically and returns its directory.

        It holds the model (``model/``: safetensors and the tokenizer, loadable with
        ``from_pretrained``), the learner's optimizer tensors and version, the runners' task
        streams, the JSON state, the replay buffer's state (``buffer.pkl``: groups, priorities,
        prompt histories, the priority function's state such as DSCL's mastery) and
        ``manifest.json`` (each file's size and sha256). Everything is written into a hidden
        temp directory beside ``path`` and renamed into place: a crash leaves the previous
        checkpoint of that name intact. ``buffer.pkl`` and ``runners.pkl`` are pickles: restore
        only checkpoints you trust.
        """
        out = Path(path or self.run_dir / "checkpoint")
        tmp = temp_dir_for(out)
        try:
            states = self.runtime.run(self._gather_states(str(tmp / "model")))
            write_checkpoint(tmp, states, self.model_path)
            state = {"iteration": self.iteration, "version": self.version, "config": self.config.to_dict()}
            (tmp / "algorithm.json").write_text(json.dumps(state, indent=2))
            write_manifest(tmp)
            publish_checkpoint(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(out)

    def checkpoint(self) -> str:
        """The run's checkpoint at this iteration (``RUN_DIR/checkpoint_NNNNNN``), then keep-last-K.

        Writes it unless a valid one for this iteration exists (a periodic save just before the
        final one, or the checkpoint a resumed run started from), then deletes all but the newest
        ``reporting.keep_checkpoints`` periodic checkpoints.

        Returns:
            Its directory.
        """
        out = self.run_dir / f"checkpoint_{self.iteration:06d}"
        try:
            verify_checkpoint(out)
        except CheckpointError:
            self.save(str(out))
        for gone in prune_checkpoints(self.run_dir, self.config.reporting.keep_checkpoints):
            logger.info("deleted old checkpoint %s (reporting.keep_checkpoints)", gone)
        return str(out)

    def latest_checkpoint(self) -> str:
        """The newest valid checkpoint of this run directory (damaged ones are skipped, with a warning).

        Raises:
            CheckpointError: When the run directory has no valid checkpoint.
        """
        for path in reversed(list_checkpoints(self.run_dir)):
            try:
                verify_checkpoint(path)
            except CheckpointError as err:
                logger.warning("skipping %s", err)
                continue
            return str(path)
        raise CheckpointError(f"resume: {self.run_dir} has no valid checkpoint to resume from")

    async def _gather_states(self, model_dir: str) -> dict[str, Any]:
        await self.learner.call(LearnerProtocol.save_pretrained, model_dir)
        learner, buffer, *runners = await gather(
            [
                self.learner.call(
                    LearnerProtocol.get_state, components=("version", "optimizer", "ref_model")
                ),
                self.buffer.call(ReplayBufferActor.get_state),
                *[self._runner_call(i, EnvRunnerProtocol.get_state) for i in range(len(self.runners))],
            ]
        )
        return {"learner": learner, "buffer": buffer, "runners": runners}

    def restore(self, path: str) -> None:
        """Loads a checkpoint written by :meth:`save` and sends its weights to the runners.

        The checkpoint is verified against its manifest and read in full before any part changes:
        a damaged or incomplete one raises and leaves the algorithm as it was.

        Raises:
            CheckpointError: One line naming the missing or damaged file.
        """
        src = Path(path)
        verify_checkpoint(src)
        try:
            state = json.loads((src / "algorithm.json").read_text())
            iteration, version = int(state["iteration"]), int(state["version"])
            states = read_checkpoint(src)
        except (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as err:
            raise CheckpointError(f"checkpoint: {src} cannot be read ({type(err).__name__}: {err})") from None
        if len(states["runners"]) != len(self.runners):
            logger.warning(
                "checkpoint has %d runner states for %d runners", len(states["runners"]), len(self.runners)
            )
        self.runtime.run(self._restore(states))
        self._optimizer_restored = True  # the RL phase must not reset the restored AdamW moments
        self.iteration, self.version = iteration, version
        self.runtime.run(self._sync_weights(metrics=False))

    async def _restore(self, states: dict[str, Any]) -> None:
        await self.learner.call(LearnerProtocol.set_state, states["learner"])
        await self.buffer.call(ReplayBufferActor.set_state, states["buffer"])
        for runner, runner_state in zip(self.runners, states.get("runners") or [], strict=False):
            await runner.call(EnvRunnerProtocol.set_state, runner_state)

    def stop(self) -> None:
        """Stops the runners and actors and closes the metric files; never raises; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.runtime.run(self._stop())
        except Exception as err:  # a dead actor must not hide the error that led here
            logger.warning("stopping the parts failed: %r", err)
        parts: list[Handle[Any]] = [*self.runners, self.buffer, self.learner]
        for part in parts:
            part.kill()
        self.runtime.shutdown()
        self.logger.close()

    async def _stop(self) -> None:
        for _, ping in self._pings.values():
            ping.cancel()
        stops = [r.call(EnvRunnerProtocol.stop) for r in self.runners]
        answers = await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), 30)
        for index, answer in enumerate(answers):  # a dead or restarting runner: the others still stop
            if isinstance(answer, BaseException):
                logger.warning("env runner %d did not stop cleanly: %r", index, answer)
        if self._run_refs:
            done, _ = await asyncio.wait(self._run_refs, timeout=30)
            for run in done:  # retrieved: a dead runner's loop ended with its death, already reported
                if not run.cancelled():
                    run.exception()
