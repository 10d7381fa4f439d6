"""The runner's dataflow into the buffer, seen from outside: back-pressure and failed groups.

A real :class:`EnvRunner` (tiny model, Calculator env) runs in-process against a real
:class:`BufferActor` behind a :class:`LocalHandle`, exactly as in local mode. Only public behaviour is
observed: how many groups the buffer holds and received, and the ``rollout/*`` counters it reports.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium
import pytest

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.config import EnvRunnersConfig
from actorlearner.env.registration import make_env, resolve_env_spec
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.replay.buffer import BufferActor
from actorlearner.replay.filters import FilterChain
from actorlearner.replay.priorities import uniform
from actorlearner.rollout.runner import EnvRunner, EpisodeSlots
from actorlearner.runtime.handles import LocalHandle
from envs.calculator import Calculator
from tests.conftest import SMALL_MODEL

SPEC = gymnasium.spec("actorlearner/Calculator-v0")
ENV_CONFIG = {"max_operand": 20}
TIMEOUT_S = 60.0


class FirstResetFails(Calculator):
    """A Calculator whose very first reset (over all instances) raises: one group fails."""

    resets = itertools.count()

    def reset(self, *args: Any, **kwargs: Any) -> Any:
        if next(FirstResetFails.resets) == 0:
            raise RuntimeError("the task database is not ready")
        return super().reset(*args, **kwargs)


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, ENV_CONFIG)), **SMALL_MODEL))


def _runner(model_dir: str, spec: Any, **rollout: Any) -> EnvRunner:
    config = EnvRunnersConfig(
        **{"group_size": 2, "max_new_tokens": 6, "max_tokens": 44, "batch_wait_s": 0.0, **rollout}
    )
    return EnvRunner(0, spec, ENV_CONFIG, {}, model_dir, config, seed=0)


def _buffer(loop: asyncio.AbstractEventLoop) -> LocalHandle[BufferActor]:
    buffer = BufferActor(uniform, FilterChain([]), capacity=64, max_staleness=100, hold_s=0.1)
    return LocalHandle(buffer, loop)


async def _until(condition: Callable[[], bool], what: str) -> float:
    """Waits (polling) until ``condition()``; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < TIMEOUT_S, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_runner_stops_launching_while_the_buffer_holds_max_ready_groups(model_dir: str) -> None:
    async def main() -> tuple[int, int, int]:
        handle = _buffer(asyncio.get_running_loop())
        buffer = handle.obj
        runner = _runner(model_dir, SPEC, groups_in_flight=1, max_ready_groups=2)
        run = asyncio.ensure_future(runner.run(handle))
        fill_s = await _until(lambda: len(buffer) >= 2 or run.done(), "two groups")
        await asyncio.sleep(max(1.0, 1.5 * fill_s))  # unthrottled, ~3 more groups would arrive
        held = len(buffer)
        drained = len(await handle.call(BufferActor.sample_wait, 2, 0, 1.0))
        await _until(lambda: len(buffer) >= 1 or run.done(), "the runner to resume after the buffer drained")
        await runner.stop()
        pushed = await asyncio.wait_for(run, TIMEOUT_S)
        return held, drained, pushed

    held, drained, pushed = asyncio.run(main())
    assert held == 2, f"the runner kept launching groups into a full buffer ({held} held, cap 2)"
    assert drained == 2
    assert pushed >= 3  # it resumed once the learner consumed the groups


def test_a_failing_group_is_counted_and_the_runner_goes_on(model_dir: str) -> None:
    FirstResetFails.resets = itertools.count()

    async def main() -> tuple[int, dict[str, Any]]:
        handle = _buffer(asyncio.get_running_loop())
        runner = _runner(model_dir, resolve_env_spec(FirstResetFails), groups_in_flight=2)
        run = asyncio.ensure_future(runner.run(handle))
        await _until(lambda: len(handle.obj) >= 3 or run.done(), "three groups after the failed one")
        assert not run.done(), "the runner died"
        await runner.stop()
        pushed = await asyncio.wait_for(run, TIMEOUT_S)
        return pushed, handle.obj.pop_metrics()

    pushed, metrics = asyncio.run(main())
    assert metrics["rollout/group_errors"] == 1
    assert pushed >= 3 and metrics["buffer/groups_added"] == pushed
    assert metrics["rollout/episodes"] == 2 * pushed  # no trajectory of the failed group arrived


def test_evaluation_turns_stay_out_of_the_rollout_counters(model_dir: str) -> None:
    async def main() -> tuple[float, float, float]:
        handle = _buffer(asyncio.get_running_loop())
        runner = _runner(model_dir, SPEC)
        await runner.evaluate([0, 1, 2], temperature=0.0)
        await runner.evaluate([0, 1], temperature=1.0)
        after_eval = runner.batcher.pop_stats()["tokens"]
        await runner.play(1, handle)  # its push carries the runner's counters to the buffer
        played = handle.obj.pop_metrics()
        runner.batcher.close()
        return after_eval, played["rollout/tokens"], played["rollout/requests"]

    after_eval, tokens, requests = asyncio.run(main())
    assert after_eval == 0.0  # five held-out episodes generated, none counted
    assert tokens > 0 and requests >= 2  # a training group of 2 episodes is counted


def test_num_tasks_bounds_the_training_task_seeds(model_dir: str) -> None:
    async def seeds(runner: EnvRunner) -> list[int]:
        return [await runner._next_seed() for _ in range(200)]

    bounded = asyncio.run(seeds(_runner(model_dir, SPEC, num_tasks=5)))
    assert set(bounded) == set(range(5))  # a fixed training set: every task recurs
    free = asyncio.run(seeds(_runner(model_dir, SPEC)))
    assert len(set(free)) == 200 and max(free) > 1000


class CountedCalculator(Calculator):
    """A Calculator that counts how many instances were built."""

    built = itertools.count()

    def __init__(self, **kwargs: Any) -> None:
        next(CountedCalculator.built)
        super().__init__(**kwargs)


def test_demonstrations_keep_at_most_groups_in_flight_episodes_in_play(model_dir: str) -> None:
    spec = resolve_env_spec(CountedCalculator)
    runner = _runner(model_dir, spec, groups_in_flight=2, group_size=2)
    CountedCalculator.built = itertools.count()
    demos = asyncio.run(runner.demonstrations(60, seed=0))
    assert len(demos) == 60 and all(t.reward is not None for t in demos)
    # one env per episode in play: 60 episodes started at once used to build 60 envs
    assert next(CountedCalculator.built) <= 2 * 2


class HeldCalculator(CountedCalculator):
    """A Calculator holding the first episode of each of the first two prompts in its first step.

    Those two groups then wait on one straggler each until the test sets ``release``; every env
    built is counted (``CountedCalculator.built``), one per episode in play at once.
    """

    release = threading.Event()
    held_seeds: ClassVar[set[int | None]] = set()
    held_prompts: ClassVar[set[str]] = set()
    lock = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        observation, info = super().reset(seed=seed, options=options)
        with HeldCalculator.lock:
            self.held = seed not in HeldCalculator.held_seeds and len(HeldCalculator.held_seeds) < 2
            if self.held:
                HeldCalculator.held_seeds.add(seed)
                HeldCalculator.held_prompts.add(info["prompt_id"])
        return observation, info

    def step(self, action: Any) -> Any:
        if self.held:
            HeldCalculator.release.wait(TIMEOUT_S)
        return super().step(action)


@pytest.mark.parametrize("refill", ["episodes", "groups"])
def test_a_group_waiting_on_a_straggler_holds_its_slot_only(model_dir: str, refill: str) -> None:
    HeldCalculator.release, HeldCalculator.held_seeds = threading.Event(), set()
    HeldCalculator.held_prompts = set()
    CountedCalculator.built = itertools.count()

    async def main() -> tuple[int, int, set[str]]:
        handle = _buffer(asyncio.get_running_loop())
        spec = resolve_env_spec(HeldCalculator)  # a held step must not time out (that drops its env)
        runner = _runner(model_dir, spec, groups_in_flight=2, refill=refill, step_timeout_s=4 * TIMEOUT_S)
        run = asyncio.ensure_future(runner.run(handle))
        try:
            await _until(lambda: len(HeldCalculator.held_seeds) == 2 or run.done(), "two held groups")
            if refill == "episodes":  # 2 of the 4 slots are free: groups go on around the stragglers
                await _until(lambda: len(handle.obj) >= 3 or run.done(), "groups around the stragglers")
            else:
                await asyncio.sleep(2.0)
            held = len(handle.obj)
        finally:
            HeldCalculator.release.set()
        prompts = lambda: {g.prompt_id for g in handle.obj.groups}  # noqa: E731
        await _until(lambda: HeldCalculator.held_prompts <= prompts() or run.done(), "the held groups")
        await runner.stop()
        return held, await asyncio.wait_for(run, TIMEOUT_S), prompts()

    held, pushed, prompts = asyncio.run(main())
    assert len(HeldCalculator.held_prompts) == 2 and HeldCalculator.held_prompts <= prompts
    if refill == "groups":
        assert held == 0, "two groups in flight, both waiting: nothing else may run"
    else:
        assert held >= 3
    assert pushed >= held + 2  # the two held groups arrived after the release
    assert next(CountedCalculator.built) <= 2 * 2  # never more episodes in play than 4 slots


def test_episode_slots_count_what_groups_hold() -> None:
    async def main() -> None:
        slots = EpisodeSlots(capacity=8, group_size=3)
        assert slots.take() and slots.take() and not slots.take()  # 6 used, 2 free: not a group's 3
        assert slots.used == 6
        waiter = asyncio.ensure_future(slots.until_free())
        slots.free(1)  # 3 free now: a group fits
        await asyncio.wait_for(waiter, 1.0)
        assert slots.take() and slots.used == 8 and not slots.take()
        waiter = asyncio.ensure_future(slots.until_free())
        slots.free(1)  # 1 free: still no room for a group
        await asyncio.sleep(0.05)
        assert not waiter.done()
        slots.free(7)
        await asyncio.wait_for(waiter, 1.0)
        assert slots.used == 0 and slots.take()

    asyncio.run(main())


LOWER_PRIORITY = """
import os, sys, threading
from actorlearner.rollout.runner import lower_priority
def nice(tid):
    return os.getpriority(os.PRIO_PROCESS, tid)
before = nice(0)
started = threading.Event()
done = threading.Event()
seen = {}
def early():
    seen["early"] = threading.get_native_id()
    started.set()
    done.wait(30)
threading.Thread(target=early).start()
started.wait(30)
after = lower_priority(int(sys.argv[1]))
late = {}
thread = threading.Thread(target=lambda: late.setdefault("nice", nice(0)))
thread.start(); thread.join()
print(before, after, nice(seen["early"]), late["nice"])
done.set()
"""


@pytest.mark.parametrize("increment", [0, 3, 40])
def test_lower_priority_lowers_every_thread_and_those_started_after(increment) -> None:
    """In a fresh process (nice is per thread on Linux): a thread started before and one started
    after are lowered as the calling thread is, capped at 19; 0 changes nothing."""
    out = subprocess.run(
        [sys.executable, "-c", LOWER_PRIORITY, str(increment)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after, early, late = (int(x) for x in out.stdout.split())
    assert after == early == late == min(19, before + increment)
