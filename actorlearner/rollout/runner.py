"""Rollout actor: many episodes in flight on one engine, finished groups pushed as they complete.

The same class runs in-process (``sample``) or as a Ray async actor (``run`` pushes to the buffer
actor until stopped). Weights arrive with a version and are loaded between generation steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium
import numpy as np
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from actorlearner.config import EnvRunnersConfig
from actorlearner.core.protocols import SamplingParams
from actorlearner.core.trajectory import Group, Trajectory
from actorlearner.env.registration import make_env
from actorlearner.rollout.chat import stop_token_ids
from actorlearner.rollout.engine import AsyncBatchingEngine, HFEngine
from actorlearner.rollout.episode import (
    DemonstrationTurnPolicy,
    EnginePolicy,
    TurnPolicy,
    run_episode,
)

logger = logging.getLogger(__name__)


class EnvPool:
    """Reuses env instances: one per episode in flight."""

    def __init__(self, spec: gymnasium.envs.registration.EnvSpec, env_config: Mapping[str, Any]) -> None:
        self.spec = spec
        self.env_config = dict(env_config)
        self._free: list[gymnasium.Env] = []

    def acquire(self) -> gymnasium.Env:
        """A free env, or a new one (safe to call from several threads at once)."""
        try:
            return self._free.pop()
        except IndexError:
            return make_env(self.spec, self.env_config)

    def release(self, env: gymnasium.Env) -> None:
        """Returns an env for reuse."""
        self._free.append(env)


class EnvRunner:
    """Plays groups of episodes with an engine.

    Args:
        index: Runner number (seeds its task stream).
        env_spec: The env's gymnasium spec (carried to workers, which lack the driver's registry).
        env_config: Env kwargs for training episodes.
        eval_env_config: Env kwargs for held-out evaluation (merged over ``env_config``).
        model_path: Directory of the policy (``from_pretrained``).
        config: Rollout settings.
        seed: Base seed.
    """

    def __init__(
        self,
        index: int,
        env_spec: gymnasium.envs.registration.EnvSpec,
        env_config: Mapping[str, Any],
        eval_env_config: Mapping[str, Any],
        model_path: str,
        config: EnvRunnersConfig,
        seed: int = 0,
    ) -> None:
        hf_logging.disable_progress_bar()
        self.index = index
        self.cfg = config
        self.pool = EnvPool(env_spec, env_config)
        self.eval_pool = EnvPool(env_spec, {**env_config, **eval_env_config})
        self.engine = HFEngine(model_path, seed=seed + 1000 * index)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.batcher = AsyncBatchingEngine(self.engine, max_wait_s=config.batch_wait_s)
        self.stops = stop_token_ids(self.tokenizer)
        self.rng = np.random.default_rng([seed, index])
        self.params = SamplingParams(config.temperature, config.max_new_tokens, self.stops)
        self._stopping = False
        self._running = False
        self._paused = False
        self._executor_set = False
        self.group_errors = 0
        self.prompts_skipped = 0
        self._skip: set[str] = set()
        self._p_revisit = 1.0

    def _ensure_executor(self) -> None:
        # Episodes run env.step in threads; the default pool (cores + 4) is too small for many in flight.
        if not self._executor_set:
            workers = max(64, self.cfg.groups_in_flight * self.cfg.group_size)
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=workers))
            self._executor_set = True

    async def _episode(self, pool: EnvPool, policy: TurnPolicy, seed: int) -> Trajectory:
        env = await asyncio.to_thread(pool.acquire)  # building an env may be slow (e.g. a database)
        traj = await run_episode(
            env, policy, self.tokenizer, seed, self.cfg.max_tokens, self.cfg.step_timeout_s, self.stops
        )
        if traj.env_error is None:  # an env whose step timed out or raised may still be busy: drop it
            pool.release(env)
        return traj

    async def run_group(self, seed: int, policy: TurnPolicy | None = None) -> Group:
        """Plays G episodes of one prompt (same reset seed) concurrently."""
        self._ensure_executor()
        policy = policy or EnginePolicy(self.batcher, self.params)
        async with asyncio.TaskGroup() as tg:  # one failing episode cancels its siblings
            tasks = [
                tg.create_task(self._episode(self.pool, policy, seed)) for _ in range(self.cfg.group_size)
            ]
        trajs = [t.result() for t in tasks]
        group_id = uuid.uuid4().hex[:12]
        for t in trajs:
            t.group_id = group_id
        first = trajs[0]
        return Group(
            group_id=group_id,
            prompt_id=first.prompt_id,
            trajectories=list(trajs),
            task_id=first.task_id,
            sub_tasks=list(first.sub_tasks),
            created_at=time.time(),
        )

    async def _next_group(self) -> Group:
        """Plays a group on the next task seed."""
        self._ensure_executor()
        return await self.run_group(await self._next_seed())

    async def _next_seed(self, max_draws: int = 20) -> int:
        """A new task seed; prompts in the skip set are redrawn unless a ``p_revisit`` draw keeps them."""
        seed = int(self.rng.integers(0, 2**31 - 1))
        for _ in range(max_draws):
            if not self._skip or await asyncio.to_thread(self._prompt_id, seed) not in self._skip:
                return seed
            if float(self.rng.random()) < self._p_revisit:
                return seed
            self.prompts_skipped += 1
            seed = int(self.rng.integers(0, 2**31 - 1))
        return seed

    def _prompt_id(self, seed: int) -> str:
        env = self.pool.acquire()
        try:
            _, info = env.reset(seed=seed)
        finally:
            self.pool.release(env)
        return str(info.get("prompt_id", seed))

    async def set_skip_prompts(self, prompt_ids: list[str], p_revisit: float) -> None:
        """Prompts to rarely re-issue (DSCL's mastered ones) and the chance of issuing one anyway."""
        self._skip, self._p_revisit = set(prompt_ids), float(p_revisit)

    async def sample(self, num_groups: int) -> list[Group]:
        """Plays ``num_groups`` groups (``groups_in_flight`` at a time) and returns them."""
        sem = asyncio.Semaphore(self.cfg.groups_in_flight)

        async def one() -> Group:
            async with sem:
                return await self._next_group()

        return list(await asyncio.gather(*(one() for _ in range(num_groups))))

    async def run(self, buffer: Any) -> int:
        """Ray mode: keeps ``groups_in_flight`` groups going, pushing each to ``buffer`` when done.

        Pauses while the buffer holds ``max_ready_groups``; returns the number of groups pushed
        after :meth:`stop`.
        """
        pushed = 0
        in_flight: set[asyncio.Task[Group]] = set()
        self._running = True
        try:
            while not self._stopping:
                while len(in_flight) < self.cfg.groups_in_flight and not self._paused:
                    in_flight.add(asyncio.create_task(self._next_group()))
                if not in_flight:
                    await asyncio.sleep(0.05)
                    continue
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                if self._stopping:
                    break
                groups = [g for g in (self._result(t) for t in done) if g is not None]
                result = await buffer.add_groups.remote(groups)
                pushed += len(groups)
                while result["size"] >= self.cfg.max_ready_groups and not self._stopping:
                    await asyncio.sleep(0.05)
                    result = {"size": await buffer.size.remote()}
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            self._running = False
            self.batcher.close()
        return pushed

    def _result(self, task: asyncio.Task[Group]) -> Group | None:
        """A finished group, or None (logged and counted) when playing it raised."""
        err = task.exception()
        if err is None:
            return task.result()
        self.group_errors += 1
        logger.error("a group failed and was discarded", exc_info=err)
        return None

    async def pause(self, paused: bool = True) -> None:
        """Stops (or resumes) launching new groups; groups in flight finish."""
        self._paused = paused

    async def stop(self) -> None:
        """Ends :meth:`run` (which then closes the engine's batching task) or closes it now."""
        self._stopping = True
        if not self._running:
            self.batcher.close()

    async def set_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Stages new weights; the engine loads them before its next generation step."""
        self.batcher.stage_weights(weights, version)

    async def evaluate(
        self,
        seeds: list[int],
        temperature: float,
        env_spec: gymnasium.envs.registration.EnvSpec | None = None,
        env_config: Mapping[str, Any] | None = None,
    ) -> list[Trajectory]:
        """One held-out episode per seed (greedy when ``temperature`` is 0).

        ``env_spec``/``env_config`` evaluate on another env (e.g. a BFCL category) instead of the
        held-out split of the training env.
        """
        self._ensure_executor()
        params = SamplingParams(temperature, self.cfg.max_new_tokens, self.stops)
        policy = EnginePolicy(self.batcher, params)
        pool = self.eval_pool if env_spec is None else EnvPool(env_spec, env_config or {})
        return list(await asyncio.gather(*(self._episode(pool, policy, s) for s in seeds)))

    async def demonstrations(self, num_episodes: int, seed: int) -> list[Trajectory]:
        """Episodes played by the env's demonstration policy (cold-start SFT data)."""
        self._ensure_executor()
        policy = DemonstrationTurnPolicy(self.tokenizer, self.stops)
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2**31 - 1, size=num_episodes).tolist()
        return list(await asyncio.gather(*(self._episode(self.pool, policy, int(s)) for s in seeds)))

    async def stats(self) -> dict[str, float]:
        """Engine counters since the last call (tokens/s, batch sizes), prefixed ``rollout/``."""
        stats = {f"rollout/{k}": v for k, v in self.batcher.pop_stats().items()}
        stats["rollout/group_errors"], self.group_errors = float(self.group_errors), 0
        stats["rollout/prompts_skipped"], self.prompts_skipped = float(self.prompts_skipped), 0
        return stats

    async def version(self) -> int:
        """Weights version the next generation step uses (staged weights included)."""
        return int(self.batcher.version)
