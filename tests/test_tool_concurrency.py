"""A slow tool of one episode never stalls the others on the same env runner; per-call timeouts.

The env runner plays every episode as an asyncio task; ``env.step`` (and so every tool call) runs in
a worker thread, and generation runs in the engine's own thread. These tests run the real
:class:`~actorlearner.rollout.runner.EnvRunner` in-process (``num_env_runners=0`` uses the same class)
with a tiny model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import gymnasium
import numpy as np
import pytest

from actorlearner.config import EnvRunnersConfig
from actorlearner.core.protocols import Generation
from actorlearner.core.trajectory import Group
from actorlearner.env.toolenv import Messages, ToolEnv, tool
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.rollout.episode import TIMEOUT_MESSAGE, DemonstrationTurnPolicy, EnginePolicy
from actorlearner.rollout.runner import EnvRunner
from tests.conftest import SMALL_MODEL

SLEEP_S = 3.0
"""How long the slow tool sleeps."""


class SlowLookup(ToolEnv):
    """Answer what `lookup` says about a key; `lookup` takes ``sleep_s`` on a quarter of the tasks.

    Every finished sleep is recorded in ``naps`` (start, end), shared by all instances: the runner
    makes its own instances.
    """

    max_turns = 3
    naps: list[tuple[float, float]] = []  # noqa: RUF012
    lock = threading.Lock()

    def __init__(self, *, sleep_s: float = SLEEP_S, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sleep_s = sleep_s

    @tool
    def lookup(self, key: str) -> str:
        """Looks a key up.

        Args:
            key: The key.
        """
        assert self.task is not None
        if self.task["slow"] and self.sleep_s > 0:
            start = time.monotonic()
            time.sleep(self.sleep_s)
            with self.lock:
                self.naps.append((start, time.monotonic()))
        return key.upper()

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        n = int(rng.integers(1000))
        return {"key": f"k{n}", "slow": n % 4 == 0}

    def prompt_messages(self, task: dict[str, Any]) -> Messages:
        return [{"role": "user", "content": f"Look up {task['key']}."}]

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        correct = answer == task["key"].upper()
        return {"answer": float(correct)}, correct

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        assert self.task is not None
        last = messages[-1]
        if last["role"] == "tool" and not last["content"].startswith("Error"):
            return self.format_answer(last["content"])
        return self.format_call("lookup", {"key": self.task["key"]})


SPEC = gymnasium.envs.registration.EnvSpec("test/SlowLookup-v0", entry_point=SlowLookup)


def seeds(slow: bool, n: int) -> list[int]:
    """The first ``n`` seeds whose task is (or is not) slow."""
    env, found = SlowLookup(), []
    for seed in range(1000):
        env.reset(seed=seed)
        assert env.task is not None
        if env.task["slow"] == slow:
            found.append(seed)
    return found[:n]


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: SlowLookup(sleep_s=0.0)), **SMALL_MODEL))


def make_runner(model_dir: str, env_config: dict[str, Any], **cfg: Any) -> EnvRunner:
    config = EnvRunnersConfig(
        num_env_runners=0,
        group_size=2,
        groups_in_flight=16,
        max_new_tokens=8,
        max_tokens=512,
        **cfg,
    )
    return EnvRunner(0, SPEC, env_config, {}, model_dir, config, seed=0)


class Mixed:
    """Slow tasks play the demonstration (a call to the slow tool); the others sample from the engine.

    Records the time at which each engine generation returned.
    """

    def __init__(self, runner: EnvRunner) -> None:
        self.demo = DemonstrationTurnPolicy(runner.tokenizer, runner.stops)
        self.engine = EnginePolicy(runner.batcher, runner.params)
        self.generated_at: list[float] = []

    async def __call__(
        self, ids: Sequence[int], env: gymnasium.Env, messages: Messages, budget: int
    ) -> Generation:
        if env.unwrapped.task["slow"]:  # type: ignore[attr-defined]
            return await self.demo(ids, env, messages, budget)
        gen = await self.engine(ids, env, messages, budget)
        self.generated_at.append(time.monotonic())
        return gen


async def timed(group: Awaitable[Group]) -> tuple[Group, float]:
    """The group and the time it finished."""
    return await group, time.monotonic()


def test_a_slow_tool_does_not_stall_the_other_episodes(model_dir: str) -> None:
    runner = make_runner(model_dir, {})
    slow, fast = seeds(True, 2), seeds(False, 6)
    SlowLookup.naps.clear()

    async def main() -> tuple[list[tuple[Group, float]], Mixed, float, float]:
        policy = Mixed(runner)
        start = time.monotonic()
        results = await asyncio.gather(*(timed(runner.run_group(s, policy)) for s in slow + fast))
        end = time.monotonic()
        runner.batcher.close()
        return list(results), policy, start, end

    results, policy, start, end = asyncio.run(main())
    slow_results, fast_results = results[: len(slow)], results[len(slow) :]
    naps = sorted(SlowLookup.naps)
    # The 4 slow episodes (2 groups of 2) called the tool, slept at the same time and then answered.
    assert len(naps) == 4
    assert naps[-1][0] - naps[0][0] < 1.0, f"the slow calls ran one after another: {naps}"
    for group, _ in slow_results:
        assert all(t.success and t.turns[0].tool_calls[0].ok for t in group.trajectories)
    first_wake = min(e for _, e in naps)
    # Meanwhile the fast episodes generated turn after turn and finished, while the tool slept.
    fast_turns = sum(len(t.turns) for g, _ in fast_results for t in g.trajectories)
    assert fast_turns >= 12
    during = [t for t in policy.generated_at if naps[-1][0] < t < first_wake]
    assert len(during) >= 12, f"{len(during)} generations while the slow tools slept"
    assert all(done < first_wake for _, done in fast_results), "a fast group waited for the slow tool"
    # Wall time is about one sleep, far below the serial sum of the sleeps alone.
    serial = sum(e - s for s, e in naps)
    assert serial >= 4 * SLEEP_S
    assert end - start < 0.5 * serial, f"wall {end - start:.1f} s vs serial {serial:.1f} s"


def play_slow_demo_group(runner: EnvRunner) -> tuple[Group, float]:
    """Plays one group of a slow task with the demonstration policy; returns it and its wall time."""
    seed = seeds(True, 1)[0]
    policy = DemonstrationTurnPolicy(runner.tokenizer, runner.stops)

    async def main() -> tuple[Group, float]:
        start = time.monotonic()
        group = await runner.run_group(seed, policy)
        runner.batcher.close()
        return group, time.monotonic() - start

    return asyncio.run(main())


def test_a_tool_over_its_timeout_is_an_error_and_the_episode_goes_on(model_dir: str) -> None:
    runner = make_runner(model_dir, {"tool_timeout_s": 0.3}, step_timeout_s=30.0)
    group, elapsed = play_slow_demo_group(runner)
    for traj in group.trajectories:
        assert traj.env_error is None  # the per-call limit fired, not the runner's step timeout
        assert len(traj.turns) == SlowLookup.max_turns and traj.truncated  # retried on every turn
        for turn in traj.turns:
            call = turn.tool_calls[0]
            assert not call.ok and call.error == "lookup timed out after 0.3 s"
        assert traj.reward_components["format"] == pytest.approx(-0.3)  # charged like a failed call
    # Three turns of about the timeout each; the sleeping threads finish in the background.
    assert 0.9 <= elapsed < SLEEP_S, elapsed


def test_the_runner_step_timeout_stays_the_outer_guard(model_dir: str) -> None:
    runner = make_runner(model_dir, {}, step_timeout_s=0.5)
    group, elapsed = play_slow_demo_group(runner)  # returns once the stuck step threads end
    assert elapsed < SLEEP_S
    for traj in group.trajectories:
        assert traj.env_error == TIMEOUT_MESSAGE and traj.truncated


class SlowReset(SlowLookup):
    """SlowLookup whose ``reset`` takes ``sleep_s`` on slow tasks (building a database, say)."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, dict]:
        out = super().reset(seed=seed, options=options)
        assert self.task is not None
        if self.task["slow"]:
            time.sleep(self.sleep_s)
        return out


def test_a_slow_reset_does_not_stall_the_other_episodes(model_dir: str) -> None:
    spec = gymnasium.envs.registration.EnvSpec("test/SlowReset-v0", entry_point=SlowReset)
    config = EnvRunnersConfig(num_env_runners=0, group_size=2, groups_in_flight=8, max_new_tokens=8)
    runner = EnvRunner(0, spec, {"sleep_s": 2.0}, {}, model_dir, config, seed=0)
    slow, fast = seeds(True, 1), seeds(False, 3)

    async def main() -> tuple[list[tuple[Group, float]], float]:
        policy = EnginePolicy(runner.batcher, runner.params)
        start = time.monotonic()
        results = await asyncio.gather(*(timed(runner.run_group(s, policy)) for s in slow + fast))
        runner.batcher.close()
        return list(results), start

    results, start = asyncio.run(main())
    slow_done = results[0][1] - start
    assert slow_done >= 2.0
    assert all(done - start < 1.5 for _, done in results[1:]), "a fast group waited for the slow reset"
