"""A short Ray training run on FunctionCalling with DSCL priorities and the TAO-RL filter chain."""

from __future__ import annotations

import numpy as np
import pytest

from actorlearner import AlgorithmConfig
from tests.conftest import SMALL_MODEL
from tests.test_readme import _documented_patterns


@pytest.mark.ray
def test_dscl_and_tao_rl_train_on_function_calling(ray_session, tmp_path) -> None:
    config = (
        AlgorithmConfig.from_yaml("configs/function_calling.yaml")
        .env_runners(groups_in_flight=4, group_size=4, max_ready_groups=8)
        .training(num_iterations=2, train_batch_groups=2, max_wait_s=30)
        .sft(steps=10, num_demos=64, batch_size=8)
        .replay(filters=["tool_failure_mask"])  # keep groups flowing at random init
        .model(**SMALL_MODEL)
        .evaluation(num_episodes=4)
        .reporting(run_dir=str(tmp_path), progress=False)
    )
    algo = config.build()
    try:
        algo.pretrain()
        metrics = [algo.train() for _ in range(2)]
    finally:
        algo.stop()
    last = metrics[-1]
    assert last["learner/version"] == 3 and np.isfinite(last["learner/loss"])
    assert any(k.startswith("dscl/category/") for m in metrics for k in m)
    assert any(
        k.startswith("rollout/reward/") and k.split("/")[-1] in {"name", "keys", "values"}
        for m in metrics
        for k in m
    )
    patterns = _documented_patterns()
    missing = sorted({k for m in metrics for k in m if not any(p.match(k) for p in patterns)})
    assert not missing, f"undocumented metrics: {missing}"
