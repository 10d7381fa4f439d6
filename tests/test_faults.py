"""Faults on a real Ray runtime: real actor processes are killed (SIGKILL) or frozen (SIGSTOP).

A dead env runner is restarted by Ray and the run goes on with the other runner meanwhile; a dead
learner or buffer stops the run with one line naming it; a frozen learner is reported as hung
after the update deadline; and ``stop()`` frees every actor whatever died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actorlearner.core.errors import PartDiedError
from tests.conftest import small_config

pytestmark = pytest.mark.ray


def _pid(handle: Any) -> int:
    import ray

    return int(ray.get(handle.actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60))


def _config(tmp_path, **training: Any):
    return small_config(tmp_path, num_env_runners=2, **training).env_runners(
        num_cpus_per_runner=0.5, max_restarts=1
    )


def test_a_killed_runner_is_restarted_and_training_goes_on(ray_session, tmp_path) -> None:
    algo = _config(tmp_path, num_iterations=8).build()
    try:
        algo.train()
        first = _pid(algo.runners[0])
        os.kill(first, signal.SIGKILL)
        started = time.monotonic()
        metrics = []
        # The other runner feeds the learner while Ray restarts runner 0 and it re-enters its loop.
        while (not algo.runner_restarts[0] or 0 in algo._restarting) and time.monotonic() - started < 120:
            metrics.append(algo.train())
        metrics += [algo.train() for _ in range(2)]
        second = _pid(algo.runners[0])  # the restarted process answers
        assert second != first
        assert metrics[-1]["rollout/runner_restarts"] == 1.0
        assert algo.runner_restarts == [1, 0]
        assert all(m["learner/trajectories"] > 0 for m in metrics)
        # A second death exceeds max_restarts=1: the run stops with one line naming the runner.
        os.kill(second, signal.SIGKILL)
        with pytest.raises(PartDiedError, match=r"env runner 0 died and env_runners\.max_restarts=1"):
            for _ in range(4):
                algo.train()
    finally:
        algo.stop()


@pytest.mark.parametrize("part", ["learner", "buffer"])
def test_a_killed_learner_or_buffer_stops_the_run_with_one_line_naming_it(
    ray_session, tmp_path, part
) -> None:
    algo = _config(tmp_path, num_iterations=4).build()
    pids = []
    try:
        algo.train()
        algo.checkpoint()
        pids = [_pid(h) for h in (algo.learner, algo.buffer, *algo.runners)]
        os.kill(_pid(getattr(algo, part)), signal.SIGKILL)
        with pytest.raises(PartDiedError) as caught:
            algo.train()
        message = str(caught.value)
        name = {"learner": "the learner", "buffer": "the replay buffer"}[part]
        assert "\n" not in message and message.startswith(name), message
        assert f"--resume {algo.run_dir}" in message
    finally:
        started = time.monotonic()
        algo.stop()  # never raises, even with a dead part
        assert time.monotonic() - started < 60
    # ... and frees every part: no actor process is left.
    started = time.monotonic()
    while any(_running(p) for p in pids) and time.monotonic() - started < 60:
        time.sleep(0.5)
    assert not [p for p in pids if _running(p)]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
            return stat.read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_a_frozen_learner_is_reported_as_hung_after_the_deadline(ray_session, tmp_path) -> None:
    algo = _config(tmp_path, num_iterations=4).build()
    pid = 0
    try:
        algo.train()  # a cold first update on a busy machine may take a while: short deadline after it
        algo.config.training.max_wait_s, algo.config.training.update_timeout_s = 2.0, 3.0
        pid = _pid(algo.learner)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(PartDiedError, match="hung"):
            algo.train()
        assert time.monotonic() - started < 30
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        algo.stop()


def test_a_frozen_runner_is_killed_as_hung_restarted_and_the_checkpoint_written(
    ray_session, tmp_path
) -> None:
    algo = _config(tmp_path, num_iterations=6).build()
    algo.config.env_runners.call_timeout_s = 15.0  # the healthy runner answers well within it
    with _frozen_runner(algo, 1) as pid:
        started = time.monotonic()
        path = algo.checkpoint()  # asks every runner for its state: runner 1 does not answer
        assert time.monotonic() - started < 90
        assert algo.runner_restarts == [0, 1]
        assert (tmp_path / path).exists() or os.path.isdir(path)
        assert _pid(algo.runners[1]) != pid
        metrics = [algo.train() for _ in range(2)]  # both runners feed the learner again
        assert metrics[-1]["rollout/runner_restarts"] == 1.0


@contextlib.contextmanager
def _frozen_runner(algo: Any, index: int, train_first: bool = True) -> Iterator[int]:
    """After one iteration (or none), freezes runner ``index`` (SIGSTOP); yields its pid; stops the run."""
    pid = 0
    try:
        if train_first:
            algo.train()
        pid = _pid(algo.runners[index])
        os.kill(pid, signal.SIGSTOP)
        yield pid
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        algo.stop()


def test_a_runner_frozen_during_rl_is_found_by_its_ping_and_restarted(ray_session, tmp_path) -> None:
    """No checkpoint and no evaluation call the runners here: only the pings can find the frozen one."""
    algo = _config(tmp_path, num_iterations=200).reporting(checkpoint_interval=0).build()
    algo.config.env_runners.call_timeout_s = 5.0
    with _frozen_runner(algo, 1) as pid:
        started = time.monotonic()
        metrics = []
        while algo.runner_restarts == [0, 0] and time.monotonic() - started < 90:
            metrics.append(algo.train())  # runner 0 feeds the learner meanwhile
        found = time.monotonic() - started
        assert algo.runner_restarts == [0, 1] and found < 60, found
        assert all(m["learner/trajectories"] > 0 for m in metrics)
        while 1 in algo._restarting and time.monotonic() - started < 240:
            metrics.append(algo.train())
        assert _pid(algo.runners[1]) != pid  # a new process answers
        assert algo.train()["rollout/runner_restarts"] == 1.0


def test_a_runner_killed_in_the_synchronous_schedule_is_restarted_and_its_share_replayed(
    ray_session, tmp_path
) -> None:
    algo = _config(tmp_path, num_iterations=20, synchronous=True).reporting(checkpoint_interval=0).build()
    try:
        algo.train()
        first = _pid(algo.runners[1])
        os.kill(first, signal.SIGKILL)
        metrics = [algo.train() for _ in range(3)]  # the first waits for the new process
        assert algo.runner_restarts == [0, 1]
        assert _pid(algo.runners[1]) != first
        assert all(m["learner/trajectories"] == 8 for m in metrics)  # full batches: 2 groups of 4
        assert metrics[-1]["rollout/runner_restarts"] == 1.0
    finally:
        algo.stop()


def test_a_runner_frozen_during_an_evaluation_is_replaced_and_its_episodes_played(
    ray_session, tmp_path
) -> None:
    """Before RL the evaluation's call is the only one the frozen runner gets: its pings must find it."""
    algo = _config(tmp_path).build()
    algo.config.env_runners.call_timeout_s = 5.0
    with _frozen_runner(algo, 1, train_first=False) as pid:
        started = time.monotonic()
        metrics = algo.evaluate(8, modes=("greedy",))
        assert time.monotonic() - started < 120
        assert algo.runner_restarts == [0, 1] and _pid(algo.runners[1]) != pid
        assert metrics["eval/greedy/episodes"] == 8.0  # the frozen runner's shard was played again


def test_a_runner_killed_before_its_demonstrations_is_restarted_and_sft_goes_on(
    ray_session, tmp_path
) -> None:
    algo = _config(tmp_path).build()
    try:
        first = _pid(algo.runners[0])
        os.kill(first, signal.SIGKILL)
        metrics = algo.pretrain()
        assert algo.runner_restarts == [1, 0] and _pid(algo.runners[0]) != first
        assert metrics["sft/loss"] > 0
        assert len(ray_get_demos(algo)) == 32  # both runners' shares of sft.num_demos
    finally:
        algo.stop()


def ray_get_demos(algo: Any) -> list[Any]:
    import ray

    return ray.get(algo.learner.actor.__ray_call__.remote(lambda self: list(self.demos)), timeout=60)
