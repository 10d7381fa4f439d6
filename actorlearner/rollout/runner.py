"""Rollout actor: many episodes in flight on one engine, finished groups pushed as they complete.

The same coroutines run in-process (on the driver's event loop) or in a Ray async actor: ``run``
pushes groups to the buffer's handle until stopped and learns from each reply whether to slow down,
which prompts to skip and which weights are newest; weights are loaded between generation steps.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium
import numpy as np
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from actorlearner.core.protocols import (
    Handle,
    PushReply,
    ReplayBufferActor,
    SamplingParams,
    StatefulEngine,
)
from actorlearner.core.trajectory import Group, Trajectory
from actorlearner.env.registration import make_env
from actorlearner.rollout.chat import stop_token_ids
from actorlearner.rollout.config import EnvRunnersConfig
from actorlearner.rollout.engine import AsyncBatchingEngine
from actorlearner.rollout.engines import make_engine
from actorlearner.rollout.episode import (
    DemonstrationTurnPolicy,
    EnginePolicy,
    TurnPolicy,
    run_episode,
)

logger = logging.getLogger(__name__)

# Called as each episode of a group in the asynchronous schedule ends (frees its episode slot).
_EPISODE_ENDED: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "episode_ended", default=None
)


def _restarted() -> bool:
    """Whether this process is a Ray actor that Ray restarted after its first process died."""
    try:
        import ray

        with warnings.catch_warnings():  # Ray's own property reads its deprecated ``actor_id``
            warnings.simplefilter("ignore", DeprecationWarning)
            return bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in an actor
        return False


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


def lower_priority(increment: int) -> int:
    """Lowers the CPU priority of every thread of this process by ``increment`` nice steps (to 19 at most).

    On Linux a nice value belongs to a thread and a new thread starts with its creator's, so each
    thread present is lowered and those started later inherit it. Raising a nice value needs no
    privilege. Returns the calling thread's nice value afterwards (0 where the OS has no nice values).
    """
    if not hasattr(os, "setpriority"):  # Windows
        return 0
    if increment > 0:
        for tid in _thread_ids():
            try:
                nice = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + increment))
            except OSError:  # the thread has ended
                continue
    return os.getpriority(os.PRIO_PROCESS, 0)


def _thread_ids() -> list[int]:
    """This process's thread ids (Linux); elsewhere ``[0]``: the whole process."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


class EpisodeSlots:
    """The asynchronous schedule's episode budget.

    A group takes ``group_size`` slots at its start. Under ``env_runners.refill: episodes`` it frees
    each as its episode ends, so a group waiting on a slow episode holds one slot, not G; under
    ``groups`` it frees them all when it ends, so at most ``groups_in_flight`` groups run.

    Args:
        capacity: Episodes in play at most (``groups_in_flight * group_size``).
        group_size: Slots a new group takes.
    """

    def __init__(self, capacity: int, group_size: int) -> None:
        self.capacity = capacity
        self.group_size = group_size
        self.used = 0
        self._room = asyncio.Event()

    def take(self) -> bool:
        """Takes a group's slots when that many are free; False (nothing taken) otherwise."""
        if self.used + self.group_size > self.capacity:
            self._room.clear()
            return False
        self.used += self.group_size
        return True

    def free(self, count: int) -> None:
        """Frees ``count`` slots (episodes that ended)."""
        self.used -= count
        if self.used + self.group_size <= self.capacity:
            self._room.set()

    async def until_free(self) -> None:
        """Returns once a group's slots are free."""
        await self._room.wait()


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
        deterministic: Play reproducibly (``debugging.deterministic``): generation in lockstep
            (:class:`~actorlearner.rollout.engine.AsyncBatchingEngine`), the synchronous
            schedule's groups in waves pushed in launch order, numbered group ids, and a group's
            trajectories in a canonical order.

    Before the engine starts, the runner lowers its process's CPU priority by ``config.niceness``
    nice steps (:func:`lower_priority`); the algorithm passes 0 to an in-process runner, whose
    process it shares with the driver (and a local learner).
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
        deterministic: bool = False,
    ) -> None:
        hf_logging.disable_progress_bar()
        lower_priority(config.niceness)
        self.index = index
        self.cfg = config
        self.pool = EnvPool(env_spec, env_config)
        self.eval_pool = EnvPool(env_spec, {**env_config, **eval_env_config})
        self.engine = make_engine(
            config.engine, model_path, seed=seed + 1000 * index, **config.engine_options
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.deterministic = deterministic
        self.batcher = AsyncBatchingEngine(
            self.engine, max_wait_s=config.batch_wait_s, lockstep=deterministic
        )
        self.groups_made = 0
        self.stops = stop_token_ids(self.tokenizer)
        # A runner Ray restarted after its process died must not replay the task stream from the start.
        self.rng = np.random.default_rng([seed, index, os.getpid()] if _restarted() else [seed, index])
        self.params = SamplingParams(config.temperature, config.max_new_tokens, self.stops)
        self._stopping = False
        self._running = False
        self._paused = False
        self._executor_set = False
        self.group_errors = 0
        self.prompts_skipped = 0
        self._skip: set[str] = set()
        self._p_revisit = 1.0
        self._skip_version = -1
        self._resume_event: asyncio.Event | None = None

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
        size = self.cfg.group_size
        self.batcher.join(size)
        async with asyncio.TaskGroup() as tg:  # one failing episode cancels its siblings
            tasks = [
                tg.create_task(self._joined(self._episode(self.pool, policy, seed))) for _ in range(size)
            ]
        trajs = [t.result() for t in tasks]
        if self.deterministic:  # which episode drew which sample depends on timing, the set does not
            trajs.sort(key=lambda t: (t.token_ids.tolist(), t.reward))
        self.groups_made += 1
        group_id = f"{self.index}-{self.groups_made:09d}" if self.deterministic else uuid.uuid4().hex[:12]
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

    async def _joined(self, episode: Awaitable[Trajectory]) -> Trajectory:
        """Awaits an episode the batcher was told of (:meth:`AsyncBatchingEngine.join`); then tells it.

        In a group started by :meth:`_next_group` with slots, it also frees the episode's slot.
        """
        ended = _EPISODE_ENDED.get()
        try:
            return await episode
        finally:
            self.batcher.leave()
            if ended is not None:
                ended()

    async def _next_group(self, slots: EpisodeSlots | None = None, per_episode: bool = True) -> Group:
        """Plays a group on the next task seed, holding ``group_size`` of ``slots`` if given.

        With ``per_episode`` each episode frees its slot as it ends; otherwise the group frees them
        all when it ends (``env_runners.refill: groups``).
        """
        self._ensure_executor()
        if slots is None:
            return await self.run_group(await self._next_seed())
        left = self.cfg.group_size

        def one_ended() -> None:
            nonlocal left
            left -= 1
            slots.free(1)

        if per_episode:
            # Through the context, not an argument: a user's run_group override keeps its signature.
            _EPISODE_ENDED.set(one_ended)  # this task's context and its episodes' tasks only
        try:
            return await self.run_group(await self._next_seed())
        finally:
            slots.free(left)  # a group that failed before its episodes ended

    async def _next_seed(self, max_draws: int = 20) -> int:
        """A new task seed, below ``num_tasks`` when set.

        Prompts in the skip set are redrawn unless a ``p_revisit`` draw keeps them.
        """
        high = self.cfg.num_tasks or 2**31 - 1
        seed = int(self.rng.integers(0, high))
        for _ in range(max_draws):
            if not self._skip or await asyncio.to_thread(self._prompt_id, seed) not in self._skip:
                return seed
            if float(self.rng.random()) < self._p_revisit:
                return seed
            self.prompts_skipped += 1
            seed = int(self.rng.integers(0, high))
        return seed

    def _prompt_id(self, seed: int) -> str:
        env = self.pool.acquire()
        try:
            _, info = env.reset(seed=seed)
        finally:
            self.pool.release(env)
        return str(info.get("prompt_id", seed))

    async def run(self, buffer: Handle[ReplayBufferActor]) -> int:
        """Keeps groups going, pushing each to ``buffer`` when it is done.

        At most ``groups_in_flight * group_size`` episodes are in play (``env_runners.refill``:
        a new group starts when ``group_size`` episode slots are free, or, with ``groups``, while
        fewer than ``groups_in_flight`` groups are in flight).

        Control comes back in the push replies (:class:`~actorlearner.core.protocols.PushReply`):
        no new group starts while the buffer has no room (an empty push then waits for room),
        newer weights are staged for the next generation step, and the skip list is replaced.
        Returns the number of groups pushed after :meth:`stop`.
        """
        pushed = 0
        in_flight: set[asyncio.Task[Group]] = set()
        slots = EpisodeSlots(self.cfg.groups_in_flight * self.cfg.group_size, self.cfg.group_size)
        freed: asyncio.Task[Any] | None = None
        self._running = True
        try:
            reply = await self._push(buffer, [])
            while not self._stopping:
                launching = reply.room and not self._paused
                if launching:
                    self._launch(in_flight, slots)
                if not in_flight:
                    reply = await self._idle(buffer, reply)
                    continue
                if launching and self.cfg.refill == "episodes" and freed is None:
                    freed = asyncio.create_task(slots.until_free())
                waits: set[asyncio.Task[Any]] = set(in_flight) | ({freed} if freed else set())
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if freed is not None and freed.done():
                    freed = None
                if self._stopping:
                    break
                finished = [t for t in done if t in in_flight]
                in_flight.difference_update(finished)
                # Pushed even when only slots were freed: the reply's room is then current.
                groups = [g for g in (self._result(t) for t in finished) if g is not None]
                reply = await self._push(buffer, groups)
                pushed += len(groups)
        finally:
            if freed is not None:
                freed.cancel()
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            self._running = False
            self.batcher.close()
        return pushed

    async def play(self, num_groups: int, buffer: Handle[ReplayBufferActor]) -> int:
        """The synchronous schedule: plays exactly ``num_groups`` groups, pushing each as it finishes.

        At most ``groups_in_flight`` at a time; returns when the last is pushed: how many the
        buffer kept (its filters may drop some; failed groups are counted in
        ``rollout/group_errors`` and not pushed).
        """
        if self.deterministic:
            return await self._play_waves(num_groups, buffer)
        sem = asyncio.Semaphore(self.cfg.groups_in_flight)

        async def one() -> int:
            async with sem:
                try:
                    groups = [await self._next_group()]
                except Exception as err:
                    self._discard(err)
                    groups = []
            reply = await self._push(buffer, groups, wait_for_room=False)
            return reply.added

        return sum(await asyncio.gather(*(one() for _ in range(num_groups))))

    async def _play_waves(self, num_groups: int, buffer: Handle[ReplayBufferActor]) -> int:
        """:meth:`play` reproducibly: waves of ``groups_in_flight`` groups, each pushed in launch order.

        In the other schedules a group starts when another ends, so which groups share a
        generation batch depends on timing; a wave's groups start together and the next wave waits.
        Failed groups are counted and left out, as in :meth:`play`.
        """
        self._ensure_executor()
        kept = 0
        for start in range(0, num_groups, self.cfg.groups_in_flight):
            seeds = []
            for _ in range(min(self.cfg.groups_in_flight, num_groups - start)):
                try:
                    seeds.append(await self._next_seed())  # drawn in order: the stream is the same
                except Exception as err:
                    self._discard(err)
            results = await asyncio.gather(*(self.run_group(s) for s in seeds), return_exceptions=True)
            groups = [r for r in results if isinstance(r, Group)]
            for failed in (r for r in results if not isinstance(r, Group)):
                if not isinstance(failed, Exception):
                    raise failed  # a cancellation or an exit is not a group's failure
                self._discard(failed)
            kept += (await self._push(buffer, groups, wait_for_room=False)).added
        return kept

    def _launch(self, in_flight: set[asyncio.Task[Group]], slots: EpisodeSlots) -> None:
        """Starts groups while ``slots`` hold a whole group; ``env_runners.refill`` decides when they free."""
        per_episode = self.cfg.refill == "episodes"
        while slots.take():
            in_flight.add(asyncio.create_task(self._next_group(slots, per_episode)))

    async def _idle(self, buffer: Handle[ReplayBufferActor], reply: PushReply) -> PushReply:
        """Nothing in flight: wait to be resumed, or for room in the buffer (a long push)."""
        if self._paused:
            await self._resumed().wait()
            return reply
        return await self._push(buffer, [])

    async def _push(
        self, buffer: Handle[ReplayBufferActor], groups: list[Group], wait_for_room: bool = True
    ) -> PushReply:
        """Pushes groups with the counters since the last push; applies the reply."""
        reply = await buffer.call(
            ReplayBufferActor.push,
            groups,
            self._pop_counters(),
            self.cfg.max_ready_groups if wait_for_room else None,
            self.batcher.version,
            self._skip_version,
        )
        if reply.weights is not None and reply.weights_version > self.batcher.version:
            weights = await reply.weights[0]
            if reply.weights_version > self.batcher.version:  # newer weights may have come meanwhile
                self.batcher.stage_weights(weights, reply.weights_version)
        if reply.skip is not None:
            self._skip, self._p_revisit = set(reply.skip), reply.p_revisit
            self._skip_version = reply.skip_version
        return reply

    def _pop_counters(self) -> dict[str, float]:
        """Additive counters since the last push (the buffer sums them over runners)."""
        engine = self.batcher.pop_stats()
        keys = ("tokens", "seconds", "batches", "requests", "prefill_tokens", "reused_tokens")
        counters = {k: engine.get(k, 0.0) for k in keys}
        counters["group_errors"], self.group_errors = float(self.group_errors), 0
        counters["prompts_skipped"], self.prompts_skipped = float(self.prompts_skipped), 0
        return counters

    def _resumed(self) -> asyncio.Event:
        if self._resume_event is None:
            self._resume_event = asyncio.Event()
        return self._resume_event

    def _result(self, task: asyncio.Task[Group]) -> Group | None:
        """A finished group, or None (logged and counted) when playing it raised."""
        err = task.exception()
        if err is None:
            return task.result()
        self._discard(err)
        return None

    def _discard(self, err: BaseException) -> None:
        """Counts and logs a group whose play raised (the runner goes on)."""
        self.group_errors += 1
        logger.error("a group failed and was discarded", exc_info=err)

    async def ping(self) -> int:
        """Answers at once with the runner's index (the driver's liveness check during RL)."""
        return self.index

    async def pause(self, paused: bool = True) -> None:
        """Stops (or resumes) launching new groups; groups in flight finish."""
        self._paused = paused
        if paused:
            self._resumed().clear()
        else:
            self._resumed().set()

    async def stop(self) -> None:
        """Ends :meth:`run` (which then closes the engine's batching task) or closes it now."""
        self._stopping = True
        self._resumed().set()
        if not self._running:
            self.batcher.close()

    async def set_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Stages new weights (phase boundaries); the engine loads them before its next step."""
        self.batcher.stage_weights(weights, version)

    def get_state(self) -> dict[str, Any]:
        """The task stream's RNG, the skip list, the group counter and the engine's sampling state."""
        return {
            "rng": self.rng.bit_generator.state,
            "skip": sorted(self._skip),
            "p_revisit": self._p_revisit,
            "skip_version": self._skip_version,
            "groups_made": self.groups_made,
            "engine": self.engine.get_state() if isinstance(self.engine, StatefulEngine) else None,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned (checkpoints written before 2026-12-03 too)."""
        self.rng.bit_generator.state = state["rng"]
        self._skip, self._p_revisit = set(state["skip"]), float(state["p_revisit"])
        self._skip_version = int(state["skip_version"])
        self.groups_made = int(state.get("groups_made", self.groups_made))
        if state.get("engine") is not None and isinstance(self.engine, StatefulEngine):
            self.engine.set_state(state["engine"])

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
        policy = EnginePolicy(self.batcher, params, count=False)  # rollout/* counts training turns only
        pool = self.eval_pool if env_spec is None else EnvPool(env_spec, env_config or {})
        # Deterministic: evaluating never moves the training sampling stream (exact resume from a
        # checkpoint written after an evaluation).
        saved = (
            self.engine.get_state()
            if self.deterministic and isinstance(self.engine, StatefulEngine)
            else None
        )
        self.batcher.join(len(seeds))
        try:
            return list(await asyncio.gather(*(self._joined(self._episode(pool, policy, s)) for s in seeds)))
        finally:
            if saved is not None and isinstance(self.engine, StatefulEngine):
                self.engine.set_state(saved)

    async def demonstrations(self, num_episodes: int, seed: int) -> list[Trajectory]:
        """Episodes played by the env's demonstration policy (cold-start SFT data).

        At most ``groups_in_flight * group_size`` episodes are in play at once, as in RL: thousands
        of episodes started together would spend most of their time contending for threads.
        """
        self._ensure_executor()
        policy = DemonstrationTurnPolicy(self.tokenizer, self.stops)
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2**31 - 1, size=num_episodes).tolist()
        slots = asyncio.Semaphore(self.cfg.groups_in_flight * self.cfg.group_size)

        async def play(s: int) -> Trajectory:
            async with slots:
                return await self._episode(self.pool, policy, s)

        return list(await asyncio.gather(*(play(int(s)) for s in seeds)))
