"""The ablation's endpoints (benchmarks/ablation.py), re-derived by hand on small curves."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "ablation", Path(__file__).parents[1] / "benchmarks/ablation.py"
)
assert _spec is not None and _spec.loader is not None
ablation = importlib.util.module_from_spec(_spec)
sys.modules["ablation"] = ablation  # dataclasses look their module up there
_spec.loader.exec_module(ablation)


def _curve(points: list[tuple[float, float, float]]) -> list[dict[str, float]]:
    return [{"rollouts": r, "samples": s, "reward": y} for r, s, y in points]


def test_gain_auc_is_the_mean_gain_over_the_budget():
    curve = _curve([(0, 0, -1.0), (100, 10, 0.0), (200, 20, 0.0)])
    # gain rises linearly 0 -> 1 over [0, 100] (area 50), then stays 1 (area 100): 150 / 200
    assert ablation.gain_auc(curve, "rollouts", 200) == pytest.approx(0.75, abs=1e-3)
    assert ablation.gain_auc(curve, "rollouts", 100) == pytest.approx(0.5, abs=1e-3)
    assert ablation.gain_auc(curve, "samples", 40) == pytest.approx((5 + 10 + 20) / 40, abs=1e-3)  # held at 1
    assert ablation.gain_auc(curve, "rollouts", 0) == 0.0


def test_to_target_interpolates_and_marks_censored_runs():
    curve = _curve([(0, 0, -1.0), (100, 10, -0.8), (300, 30, -0.2)])
    value, reached = ablation.to_target(curve, "rollouts", 0.5)
    assert reached and value == pytest.approx(100 + 200 * (0.5 - 0.2) / 0.6)
    assert ablation.to_target(curve, "rollouts", 0.0) == (0.0, True)
    assert ablation.to_target(curve, "rollouts", 2.0) == (300.0, False)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_pairs():
    rng = np.random.default_rng(0)
    few, many = list(rng.normal(1.0, 1.0, 5)), list(rng.normal(1.0, 1.0, 200))
    lo, hi = ablation.bootstrap_ci(few)
    assert lo < np.mean(few) < hi
    lo2, hi2 = ablation.bootstrap_ci(many)
    assert hi2 - lo2 < hi - lo and lo2 < 1.0 < hi2
    assert all(math.isnan(v) for v in ablation.bootstrap_ci([1.0]))
    assert ablation.geometric_mean(np.array([0.5, 2.0])) == pytest.approx(1.0)


def test_paired_compares_arms_of_the_same_seed_over_a_common_rollout_budget():
    def run(arm: str, seed: int, points: list[tuple[float, float, float]]) -> dict:
        iterations = [
            {
                "rollout/episodes": points[-1][0],
                "learner/useful_trajectories": 10.0,
                "rollout/prompts_skipped": 2.0,
            }
        ]
        return {"arm": arm, "seed": seed, "curve": _curve(points), "iterations": iterations}

    results = [
        run("uniform", 0, [(0, 0, -1.0), (200, 20, -0.5)]),
        run("dscl+tao_rl", 0, [(0, 0, -1.0), (100, 20, -0.5)]),
        run("uniform", 1, [(0, 0, -1.0), (200, 20, -0.5)]),  # no partner: left out
    ]
    (row,) = ablation.paired(results, target_gain=0.5)
    assert row["seed"] == 0 and row["rollouts_common"] == 100
    assert row["uniform_auc_rollouts"] == pytest.approx(0.125, abs=1e-3)  # half-way up at 100
    assert row["dscl_auc_rollouts"] == pytest.approx(0.25, abs=1e-3)
    assert row["to_target_ratio"] == pytest.approx(0.5)
    assert row["dscl_useful_share"] == pytest.approx(0.1) and row["uniform_useful_share"] == pytest.approx(
        0.05
    )
    assert "Paired over 1 seeds" in ablation.summarize(results, 0.5)


def test_endpoints_read_the_settings_metric_not_always_the_reward():
    curve = [
        {"rollouts": 0.0, "samples": 0.0, "reward": 0.0, "success": 0.1},
        {"rollouts": 100.0, "samples": 10.0, "reward": 0.0, "success": 0.5},
    ]
    assert ablation.gain_auc(curve, "rollouts", 100) == 0.0  # the reward never moves
    assert ablation.gain_auc(curve, "rollouts", 100, "success") == pytest.approx(0.2, abs=1e-3)
    assert ablation.to_target(curve, "rollouts", 0.2, "success") == (pytest.approx(50.0), True)
    assert ablation.to_target(curve, "rollouts", 0.2) == (100.0, False)


def test_every_setting_builds_a_valid_config_for_both_arms():
    from actorlearner import AlgorithmConfig

    root = Path(__file__).parents[1]
    assert set(ablation.SETTINGS) == {"function_calling", "calculator"}
    prefixes = {s.prefix for s in ablation.SETTINGS.values()}
    assert len(prefixes) == len(ablation.SETTINGS)  # one result file per protocol
    for setting in ablation.SETTINGS.values():
        assert setting.metric in ("reward", "success")
        assert set(setting.arms) == set(ablation.ARMS)
        for arm in setting.arms.values():
            overrides = ablation._overrides({**setting.common, **arm})
            config = AlgorithmConfig.from_yaml(str(root / setting.config), overrides)
            assert config.training.synchronous and config.env_runners.num_tasks == 256
            assert config.replay.capacity == 4 * config.training.train_batch_groups


def test_an_sft_checkpoint_of_another_protocol_is_never_reused(tmp_path):
    import argparse
    import json

    (tmp_path / "sft-3.json").write_text(
        json.dumps({"seed": 3, "setting": "function_calling", "sft_steps": 200})
    )
    args = argparse.Namespace(setting="calculator", sft_steps=600)
    with pytest.raises(SystemExit, match="use another --work"):
        ablation.prepare_seed(3, args, tmp_path)
    args = argparse.Namespace(setting="function_calling", sft_steps=200)
    assert ablation.prepare_seed(3, args, tmp_path)["seed"] == 3  # the same protocol's: reused
