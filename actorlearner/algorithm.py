"""The Algorithm: wires env runners, the replay buffer and the learner, in Ray or in-process.

``train()`` is one learner iteration: sample a batch of groups from the buffer (runners keep
filling it asynchronously), update, publish the new weights to the runners. With
``num_env_runners=0`` the same classes run in-process and sampling is synchronous.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from actorlearner.config import AlgorithmConfig, ConfigError
from actorlearner.core.metrics import MetricsLogger, episode_metrics
from actorlearner.core.registry import FILTERS, PRIORITIES
from actorlearner.core.trajectory import Trajectory
from actorlearner.env.registration import make_env, resolve_env_spec
from actorlearner.learn.learner import Learner
from actorlearner.replay.buffer import BufferActor
from actorlearner.replay.filters import FilterChain
from actorlearner.rollout.runner import EnvRunner

MAX_SKIPPED_ITERATIONS = 3
"""Consecutive iterations without a single group before ``train()`` raises."""


def _check_cross_fields(cfg: AlgorithmConfig) -> None:
    """Checks that values of different sections fit together (one-line ConfigError)."""
    runners, training = cfg.env_runners, cfg.training
    if runners.max_ready_groups < training.train_batch_groups:
        raise ConfigError(
            f"env_runners.max_ready_groups: must be >= training.train_batch_groups "
            f"({training.train_batch_groups}), got {runners.max_ready_groups}"
        )
    if runners.max_new_tokens >= runners.max_tokens:
        raise ConfigError(
            f"env_runners.max_new_tokens: must be < env_runners.max_tokens ({runners.max_tokens}), "
            f"got {runners.max_new_tokens}"
        )


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


def _name_of(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return str(spec.get("name"))
    return str(getattr(spec, "__name__", type(spec).__name__))


class _Local:
    """Calls methods of an in-process object with the ``handle.method.remote(...)`` syntax of Ray."""

    def __init__(self, obj: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._obj = obj
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._obj, name)
        loop = self._loop

        class _Method:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Any:
                result = method(*args, **kwargs)
                if isinstance(result, Coroutine):
                    return loop.run_until_complete(result)
                return result

        return _Method()


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
        self.env_spec = resolve_env_spec(cfg.environment.env)
        _check_cross_fields(cfg)
        self.model_path = self._resolve_model()
        self._check_prompt_fits()
        self.local = cfg.env_runners.num_env_runners == 0
        self.run_dir = self._make_run_dir()
        (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.reporting.tensorboard)
        self.iteration = 0
        self.version = 0
        self._rl_started = False
        self._optimizer_restored = False
        self._skipped = 0
        self._run_refs: list[Any] = []
        self._owns_ray = False
        self._loop = asyncio.new_event_loop()
        if self.local:
            self._build_local()
        else:
            self._build_ray()

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
        rep = self.config.reporting
        name = rep.name or f"{self.env_spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(rep.run_dir) / name
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
            seed=cfg.debugging.seed,
        )
        learner_kwargs = dict(
            model_path=self.model_path,
            training=cfg.training,
            learner=cfg.learners,
            temperature=cfg.env_runners.temperature,
            seed=cfg.debugging.seed,
            max_tokens=cfg.env_runners.max_tokens,
        )
        return {"buffer": buffer_kwargs, "learner": learner_kwargs}

    def _runner_kwargs(self, index: int) -> dict[str, Any]:
        cfg = self.config
        return dict(
            index=index,
            env_spec=self.env_spec,
            env_config=cfg.environment.env_config,
            eval_env_config=cfg.environment.eval_env_config,
            model_path=self.model_path,
            config=cfg.env_runners,
            seed=cfg.debugging.seed,
        )

    def _build_local(self) -> None:
        args = self._component_args()
        loop = self._loop
        self.buffer: Any = _Local(BufferActor(**args["buffer"]), loop)
        self.learner: Any = _Local(Learner(**args["learner"]), loop)
        self.runners: list[Any] = [_Local(EnvRunner(**self._runner_kwargs(0)), loop)]
        self._get: Callable[[Any], Any] = lambda x: x

    def _build_ray(self) -> None:
        import ray

        cfg = self.config
        if not ray.is_initialized():
            ray.init(
                address=cfg.debugging.ray_address,
                num_cpus=cfg.debugging.ray_num_cpus,
                include_dashboard=False,
                log_to_driver=True,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
            )
            self._owns_ray = True
        self._check_resources(ray.cluster_resources())
        args = self._component_args()
        _check_picklable(args["buffer"]["priority_fn"], "replay.priority_fn")
        for name, fn in args["buffer"]["filters"].filters:
            _check_picklable(fn, f"replay.filters ({name})")
        gpus = 1 if torch.cuda.is_available() and cfg.learners.device != "cpu" else 0
        self.buffer = ray.remote(num_cpus=0)(BufferActor).options(max_concurrency=64).remote(**args["buffer"])
        self.learner = ray.remote(num_cpus=cfg.learners.num_cpus, num_gpus=gpus)(Learner).remote(
            **args["learner"]
        )
        runner_cls = ray.remote(num_cpus=cfg.env_runners.num_cpus_per_runner)(EnvRunner)
        self.runners = [
            runner_cls.options(max_concurrency=1000).remote(**self._runner_kwargs(i))
            for i in range(cfg.env_runners.num_env_runners)
        ]
        self._get = ray.get

    def _check_resources(self, resources: dict[str, float]) -> None:
        r = self.config.env_runners
        need = r.num_env_runners * r.num_cpus_per_runner + self.config.learners.num_cpus
        have = resources.get("CPU", 0.0)
        if need > have:
            raise ConfigError(
                f"env_runners.num_env_runners: {r.num_env_runners} runners x {r.num_cpus_per_runner} CPUs "
                f"+ learners.num_cpus {self.config.learners.num_cpus} needs {need:g} CPUs, Ray has {have:g}; "
                "lower num_env_runners or num_cpus_per_runner"
            )

    # ---------------------------------------------------------------------------- the phases
    def _sync_weights(self) -> None:
        weights = self.learner.get_weights.remote()
        self._get([r.set_weights.remote(weights, self.version) for r in self.runners])

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
        per_runner = -(-sft.num_demos // len(self.runners))
        refs = [
            r.demonstrations.remote(per_runner, self.config.debugging.seed + i)
            for i, r in enumerate(self.runners)
        ]
        demos: list[Trajectory] = [t for chunk in self._get(refs) for t in chunk]
        self._get(self.learner.set_demonstrations.remote(demos))
        last: dict[str, float] = {}
        chunk = 25
        for start in range(0, sft.steps, chunk):
            n = min(chunk, sft.steps - start)
            history = self._get(
                self.learner.sft_steps.remote(
                    start, n, sft.steps, sft.batch_size, sft.lr, self._cpu_threads()
                )
            )
            for i, record in enumerate(history):
                self.logger.log(start + i, {"phase": "sft", **record})
            last = history[-1]
            if progress is not None:
                progress(start + n, last)
        self.version = int(self._get(self.learner.get_version.remote()))
        self._sync_weights()
        return last

    def _cpu_threads(self) -> int:
        """Cores of this machine the learner may use while the runners are idle (SFT)."""
        cpus = self.config.debugging.ray_num_cpus or os.cpu_count() or 1
        return max(1, min(cpus, os.cpu_count() or 1))

    def _start_rl(self) -> None:
        self._get(self.learner.start_rl.remote(reset_optimizer=not self._optimizer_restored))
        if not self.local:
            self._get([r.pause.remote(False) for r in self.runners])
            self._run_refs = [r.run.remote(self.buffer) for r in self.runners]
        self._rl_started = True

    def _sample_batch(self) -> Any:
        n = self.config.training.train_batch_groups
        wait = self.config.training.max_wait_s
        if not self.local:
            ref = self.buffer.sample_wait.remote(n, self.version, wait)
            self._wait_watching_runners(ref)
            return ref
        buf = self.buffer._obj
        deadline = time.monotonic() + wait
        while buf.num_fresh(self.version) < n and time.monotonic() < deadline:
            buf.add(self.runners[0].sample.remote(self.config.env_runners.groups_in_flight))
        return buf.sample(n, self.version)

    def _steer_prompts(self) -> None:
        """Passes the prompts the priority function wants rarely re-issued (DSCL) to the runners."""
        skip = self.buffer.skip_list.remote()
        self._get([r.set_skip_prompts.remote(*self._get(skip)) for r in self.runners])

    def _wait_watching_runners(self, ref: Any) -> None:
        """Waits for ``ref``; if a runner's rollout loop ends first, raises its error here."""
        import ray

        while True:
            ready, _ = ray.wait([ref, *self._run_refs], num_returns=1, timeout=None)
            if ready[0] == ref:
                return
            ray.get(ready[0])  # raises the runner's exception
            raise RuntimeError("an env runner's rollout loop ended unexpectedly")

    def train(self) -> dict[str, float]:
        """One iteration: a batch from the buffer, one learner update, new weights to the runners.

        Returns:
            Metrics: ``learner/*``, ``rollout/*``, ``buffer/*``, ``filter/*``, ``time/*``.
        """
        if not self._rl_started:
            self._start_rl()
        start = time.perf_counter()
        batch = self._sample_batch()
        waited = time.perf_counter() - start
        learner_metrics = self._get(self.learner.update.remote(batch))
        self.version = int(learner_metrics.get("version", self.version))
        self._skipped = self._skipped + 1 if learner_metrics.get("skipped") else 0
        self._sync_weights()
        self._steer_prompts()
        metrics: dict[str, float] = {f"learner/{k}": v for k, v in learner_metrics.items()}
        metrics.update(self._get(self.buffer.metrics.remote()))
        for stats in self._get([r.stats.remote() for r in self.runners]):
            metrics.update(stats)
        if self._skipped >= MAX_SKIPPED_ITERATIONS:
            raise RuntimeError(
                f"no group reached the learner in {self._skipped} iterations of up to "
                f"{self.config.training.max_wait_s:g}s: rollout/group_errors="
                f"{metrics.get('rollout/group_errors', 0):g}, filter drops="
                f"{ {k: v for k, v in metrics.items() if k.endswith('groups_dropped')} }; "
                "check the runner logs, the env, and replay.filters"
            )
        metrics["time/wait_for_data_s"] = waited
        metrics["time/iteration_s"] = time.perf_counter() - start
        self.iteration += 1
        metrics["iteration"] = float(self.iteration)
        interval = self.config.evaluation.interval
        if interval and self.iteration % interval == 0:
            metrics.update(self.evaluate())
        self.logger.log(self.iteration, {"phase": "rl", **metrics})
        ckpt = self.config.reporting.checkpoint_interval
        if ckpt and self.iteration % ckpt == 0:
            self.save(str(self.run_dir / f"checkpoint_{self.iteration:06d}"))
        return metrics

    def evaluate(self, num_episodes: int | None = None) -> dict[str, float]:
        """Held-out success, greedy and at the training temperature, on seeds ``0..n-1``.

        Returns:
            ``eval/greedy/*`` and ``eval/sampled/*`` episode metrics (success_rate, tool_use_rate...).
        """
        n = num_episodes or self.config.evaluation.num_episodes
        seeds = list(range(n))
        shards = [seeds[i :: len(self.runners)] for i in range(len(self.runners))]
        if self._rl_started and not self.local:
            self._get([r.pause.remote(True) for r in self.runners])
        out: dict[str, float] = {}
        for label, temp in (("greedy", 0.0), ("sampled", self.config.env_runners.temperature)):
            refs = [r.evaluate.remote(s, temp) for r, s in zip(self.runners, shards, strict=True) if s]
            trajs = [t for chunk in self._get(refs) for t in chunk]
            out.update(episode_metrics(trajs, prefix=f"eval/{label}/"))
        if self._rl_started and not self.local:
            self._get([r.pause.remote(False) for r in self.runners])
        return out

    def evaluate_on(
        self, env: Any, env_config: dict[str, Any], num_episodes: int, temperature: float = 0.0
    ) -> list[Trajectory]:
        """Episodes of another env (seeds ``0..n-1``), e.g. one BFCL category, with the current policy."""
        spec = resolve_env_spec(env)
        seeds = list(range(num_episodes))
        shards = [seeds[i :: len(self.runners)] for i in range(len(self.runners))]
        refs = [
            r.evaluate.remote(s, temperature, spec, env_config)
            for r, s in zip(self.runners, shards, strict=True)
            if s
        ]
        return [t for chunk in self._get(refs) for t in chunk]

    # ----------------------------------------------------------------------- save and restore
    def save(self, path: str | None = None) -> str:
        """Writes a checkpoint and returns its directory.

        It holds the model (safetensors, with the tokenizer), the optimizer tensors, the JSON state
        and the replay buffer's state (``buffer.pkl``: groups, priorities, prompt histories, the
        priority function's state such as DSCL's mastery). ``buffer.pkl`` is a pickle: restore
        only checkpoints you trust.
        """
        from transformers import AutoTokenizer

        out = Path(path or self.run_dir / "checkpoint")
        out.mkdir(parents=True, exist_ok=True)
        self._get(self.learner.save.remote(str(out)))
        AutoTokenizer.from_pretrained(self.model_path).save_pretrained(out / "model")
        state = {"iteration": self.iteration, "version": self.version, "config": self.config.to_dict()}
        (out / "algorithm.json").write_text(json.dumps(state, indent=2))
        (out / "buffer.pkl").write_bytes(pickle.dumps(self._get(self.buffer.state.remote())))
        return str(out)

    def restore(self, path: str) -> None:
        """Loads a checkpoint written by :meth:`save` and sends its weights to the runners.

        The replay buffer is restored too when the checkpoint has ``buffer.pkl``.
        """
        src = Path(path)
        state = json.loads((src / "algorithm.json").read_text())
        self._get(self.learner.restore.remote(str(src)))
        if (src / "buffer.pkl").exists():
            self._get(self.buffer.load_state.remote(pickle.loads((src / "buffer.pkl").read_bytes())))
        self._optimizer_restored = True  # the RL phase must not reset the restored AdamW moments
        self.iteration = int(state["iteration"])
        self.version = int(state["version"])
        self._sync_weights()

    def stop(self) -> None:
        """Stops the runners and actors and closes the metric files."""
        if self.local:
            self._get([r.stop.remote() for r in self.runners])
        else:
            import ray

            self._get([r.stop.remote() for r in self.runners])
            if self._run_refs:
                ray.wait(self._run_refs, num_returns=len(self._run_refs), timeout=30)
            for actor in [*self.runners, self.buffer, self.learner]:
                ray.kill(actor)
            if self._owns_ray:
                ray.shutdown()
        self.logger.close()
        self._loop.close()
