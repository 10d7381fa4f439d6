"""End to end: real iterations through a real Ray runtime (and the same classes in-process)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle

import numpy as np
import pytest
import torch

from actorlearner.core.metrics import read_metrics
from actorlearner.learn.learner import Learner
from actorlearner.replay.buffer import BufferActor
from actorlearner.rollout.runner import EnvRunner
from tests.conftest import small_config


def _weights(algo) -> dict[str, torch.Tensor]:
    weights = algo.runtime.run(algo.learner.call(Learner.get_weights))
    return {k: torch.tensor(v) for k, v in weights.items()}


def _buffer_state(algo) -> dict:
    return algo.runtime.run(algo.buffer.call(BufferActor.get_state))


def _nice_values(handle) -> tuple[int, int]:
    """A Ray actor's main-thread nice value and the lowest of its threads' (Linux: per thread)."""
    import ray

    def read(_actor) -> tuple[int, int]:
        values = []
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                values.append(os.getpriority(os.PRIO_PROCESS, int(tid)))
        return os.getpriority(os.PRIO_PROCESS, os.getpid()), min(values)

    return ray.get(handle.actor.__ray_call__.remote(read), timeout=60)


@pytest.mark.ray
def test_ray_iterations_change_parameters_and_log_metrics(ray_session, tmp_path) -> None:
    algo = small_config(tmp_path, num_env_runners=1).build()
    try:
        before = _weights(algo)
        sft = algo.pretrain()
        assert sft["sft/loss"] > 0
        after_sft = _weights(algo)
        metrics = [algo.train() for _ in range(3)]
        after = _weights(algo)
        # The learner's weights reach the runner with the learner's version (1 SFT + 3 RL versions).
        algo.sync_weights()
        assert algo.version == 4
        group = algo.runtime.run(algo.runners[0].call(EnvRunner.run_group, 7))
        run_dir = algo.run_dir
        # The runner yields the CPU to the learner: each of its threads is env_runners.niceness
        # steps lower (up to 19) than Ray started it; the suite's Ray starts workers at 15.
        learner_nice, _ = _nice_values(algo.learner)
        runner_nice, runner_lowest = _nice_values(algo.runners[0])
        increment = algo.config.env_runners.niceness
    finally:
        algo.stop()
    assert increment == 10
    assert runner_nice == min(19, learner_nice + increment) > learner_nice
    assert runner_lowest >= increment  # threads Ray started at 0 went to 10
    assert any(not torch.equal(before[k], after_sft[k]) for k in before)
    assert any(not torch.equal(after_sft[k], after[k]) for k in before)
    for m in metrics:
        assert m["learner/tokens"] > 0 and np.isfinite(m["learner/loss"])
        assert m["buffer/sampled_groups"] == 2
    # Trajectories carry masks (1 only on sampled ids) and the weights version that sampled them.
    for traj in group.trajectories:
        sampled = sum(t.end - t.start for t in traj.turns)
        assert traj.loss_mask.sum() == sampled > 0
        assert traj.loss_mask[: traj.prompt_length].sum() == 0
        assert traj.policy_versions == [4]
        assert all(t.policy_version == 4 for t in traj.turns)
    # Metrics files exist: JSONL with SFT and RL records, TensorBoard event files.
    records = read_metrics(run_dir / "metrics.jsonl")
    assert {r["phase"] for r in records} == {"sft", "rl"}
    assert [r["step"] for r in records if r["phase"] == "rl"] == [1, 2, 3]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "config.json").read_text())["training"]["num_iterations"] == 3


def test_local_mode_trains_saves_and_restores(tmp_path) -> None:
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    algo = small_config(tmp_path, num_env_runners=0).build()
    try:
        assert os.getpriority(os.PRIO_PROCESS, 0) == nice  # an in-process runner leaves the driver's priority
        algo.pretrain()
        m = algo.train()
        assert m["learner/version"] == 2 and m["rollout/groups"] >= 2
        ckpt = algo.save(str(tmp_path / "ckpt"))
        saved = _weights(algo)
        buffered = pickle.loads((tmp_path / "ckpt" / "buffer.pkl").read_bytes())
        algo.train()
        assert any(not torch.equal(saved[k], v) for k, v in _weights(algo).items())
        algo.restore(ckpt)
        assert all(torch.equal(saved[k], v) for k, v in _weights(algo).items())
        assert algo.version == 2 and algo.iteration == 1
        # The runner keeps pushing while the driver's loop runs: the restored groups come first.
        restored = [g.group_id for g in _buffer_state(algo)["groups"]]
        saved_ids = [g.group_id for g in buffered["groups"]]
        assert saved_ids and restored[: len(saved_ids)] == saved_ids
        ev = algo.evaluate(num_episodes=4)
        assert ev["eval/greedy/episodes"] == 4 and "eval/sampled/success_rate" in ev
        greedy = algo.evaluate(num_episodes=2, modes=("greedy",))
        assert greedy["eval/greedy/episodes"] == 2 and not any(k.startswith("eval/sampled/") for k in greedy)
        with pytest.raises(ValueError, match=r"unknown modes.*beam"):
            algo.evaluate(modes=("beam",))
    finally:
        algo.stop()


def test_runner_rarely_reissues_prompts_the_priority_function_marks_mastered(tmp_path) -> None:
    import copy

    algo = small_config(tmp_path, num_env_runners=0).build()
    try:
        runner = algo.runners[0].obj
        peek = copy.deepcopy(runner.rng)
        upcoming = [int(peek.integers(0, 2**31 - 1)) for _ in range(5)]
        skip = [runner._prompt_id(s) for s in upcoming[:3]]
        runner.set_state({**runner.get_state(), "skip": skip, "p_revisit": 0.0})
        seed = algo.runtime.run(runner._next_seed())
        assert runner._prompt_id(seed) not in skip
        assert runner.prompts_skipped >= 1  # the first upcoming draw was skipped
        assert runner._pop_counters()["prompts_skipped"] >= 1
    finally:
        algo.stop()


def test_dscl_marks_mastered_prompts_for_the_runners_after_warm_up() -> None:
    from actorlearner.core.registry import PRIORITIES
    from actorlearner.replay.buffer import GroupReplayBuffer
    from actorlearner.replay.filters import FilterChain
    from tests.conftest import make_group

    dscl = PRIORITIES.resolve(
        {
            "name": "dscl",
            "reward_range": [0, 1],
            "warmup_batches": 1,
            "t_warm": 0.1,
            "batch_groups": 1,
            "p_revisit": 0.05,
        }
    )
    buf = GroupReplayBuffer(dscl, FilterChain([]))
    buf.add([make_group([1, 1, 1, 1], prompt_id="solved"), make_group([0, 1, 0, 1], prompt_id="open")])
    ids, p_revisit = buf.prompts_to_skip()
    assert ids == ["solved"] and p_revisit == 0.05


@pytest.mark.parametrize("synchronous", [False, True])
def test_local_mode_runs_the_same_coroutines_in_both_schedules(tmp_path, synchronous) -> None:
    """In-process, the runner's push loop (or the synchronous batch) feeds the learner through the
    buffer; runner counters reach the metrics through the buffer, and weights reach the runner."""
    algo = small_config(tmp_path, num_env_runners=0).training(synchronous=synchronous).build()
    try:
        metrics = [algo.train() for _ in range(2)]
        runner = algo.runners[0].obj
        if synchronous:  # weights are synced to the runner after every update
            assert runner.batcher.version == algo.version == 2
    finally:
        algo.stop()
    for m in metrics:
        assert m["buffer/sampled_groups"] == 2
        assert m["time/iteration_s"] >= m["time/update_s"] > 0
    assert sum(m["rollout/tokens"] for m in metrics) > 0 and metrics[0]["rollout/requests"] > 0


def test_synchronous_schedule_replaces_dropped_groups_instead_of_waiting(tmp_path) -> None:
    """With a filter dropping groups, the classic loop plays more instead of waiting max_wait_s."""
    config = small_config(tmp_path, synchronous=True, max_wait_s=30.0).replay(filters=["zero_variance"])
    algo = config.build()
    try:
        metrics = algo.train()
    finally:
        algo.stop()
    assert metrics["time/iteration_s"] < 30.0
    assert metrics["buffer/sampled_groups"] >= 1


def test_evaluation_after_training_uses_the_newest_weights(tmp_path) -> None:
    algo = small_config(tmp_path).build()
    try:
        for _ in range(2):
            algo.train()
        algo.evaluate(num_episodes=2)
        assert algo.runners[0].obj.batcher.version == algo.version == 2
    finally:
        algo.stop()


def test_capacity_below_the_batch_fails_before_anything_starts(tmp_path) -> None:
    from actorlearner import ConfigError

    with pytest.raises(ConfigError, match=r"^replay\.capacity: must be >= "):
        small_config(tmp_path).replay(capacity=1).build()


def test_stop_twice_is_a_quiet_no_op(tmp_path) -> None:
    algo = small_config(tmp_path).build()
    algo.train()
    algo.stop()
    algo.stop()  # must neither raise nor touch the closed loop


def test_local_handle_resolves_references_passed_by_keyword() -> None:
    import asyncio

    from actorlearner.runtime.handles import LocalHandle

    class Part:
        def add(self, a: int, b: int = 0) -> int:
            return a + b

    loop = asyncio.new_event_loop()
    try:
        handle = LocalHandle(Part(), loop, threaded=True)
        one = handle.call(Part.add, 1)
        assert loop.run_until_complete(handle.call(Part.add, 2, b=one)) == 3
        handle.kill()
    finally:
        loop.close()
