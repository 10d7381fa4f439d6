"""The main job: evaluate, cold-start SFT, evaluate, asynchronous RL, evaluate, checkpoint.

Prints held-out success before and after each phase, greedy and at the training temperature, so
the RL phase's own gain is visible.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from tqdm import tqdm

from actorlearner.config import AlgorithmConfig
from actorlearner.core.protocols import Trainer

REPORT_KEYS = (
    ("greedy success", "eval/greedy/success_rate"),
    ("sampled success", "eval/sampled/success_rate"),
    ("greedy tool use", "eval/greedy/tool_use_rate"),
    ("sampled tool use", "eval/sampled/tool_use_rate"),
    ("sampled reward", "eval/sampled/reward_mean"),
)


def _fmt(key: str, value: Any) -> str:
    if not (isinstance(value, float) and math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if "reward" in key else f"{100 * value:.1f}%"


def format_report(phases: dict[str, dict[str, float]]) -> str:
    """A small table: one row per phase, one column per held-out metric."""
    header = f"{'held-out':<14}" + "".join(f"{label:>18}" for label, _ in REPORT_KEYS)
    rows = [header, "-" * len(header)]
    for phase, metrics in phases.items():
        rows.append(f"{phase:<14}" + "".join(f"{_fmt(key, metrics.get(key)):>18}" for _, key in REPORT_KEYS))
    return "\n".join(rows)


def _rl_loop(algo: Trainer, show: bool) -> dict[str, float]:
    training = algo.config.training
    start = time.monotonic()
    last: dict[str, float] = {}
    with tqdm(total=training.num_iterations, desc="RL", unit="it", disable=not show) as bar:
        for _ in range(training.num_iterations):
            last = algo.train()
            bar.update(1)
            bar.set_postfix(
                reward=f"{last.get('rollout/reward_mean', math.nan):.2f}",
                success=f"{last.get('rollout/success_rate', math.nan):.2f}",
                tool=f"{last.get('rollout/tool_use_rate', math.nan):.2f}",
                stale=f"{last.get('learner/staleness_mean', math.nan):.1f}",
            )
            if training.time_budget_s and time.monotonic() - start > training.time_budget_s:
                break
    return last


def run_training(config: AlgorithmConfig, *, initial_eval: bool = True) -> dict[str, Any]:
    """Runs the main job and returns its summary (also written to ``summary.json``).

    Args:
        config: The validated config.
        initial_eval: Also evaluate the untrained model.
    """
    show = config.reporting.progress
    t0 = time.monotonic()
    algo = config.build()
    phases: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {"setup_s": time.monotonic() - t0}
    try:
        print(f"run dir: {algo.run_dir}\nmodel:   {algo.model_path}\nenv:     {algo.env_spec.id}")
        if initial_eval:
            phases["initial"] = algo.evaluate()
        t = time.monotonic()
        with tqdm(total=config.sft.steps, desc="SFT", unit="step", disable=not show) as bar:

            def show_sft(done: int, m: dict[str, float]) -> None:
                bar.update(done - bar.n)
                bar.set_postfix(loss=f"{m['sft/loss']:.3f}")

            sft = algo.pretrain(show_sft)
        timings["sft_s"] = time.monotonic() - t
        if sft:
            phases["after SFT"] = algo.evaluate()
        t = time.monotonic()
        last = _rl_loop(algo, show)
        timings["rl_s"] = time.monotonic() - t
        phases["after RL"] = algo.evaluate()
        checkpoint = algo.save()
    finally:
        algo.stop()
    timings["total_s"] = time.monotonic() - t0
    summary = {
        "run_dir": str(algo.run_dir),
        "checkpoint": checkpoint,
        "iterations": algo.iteration,
        "phases": phases,
        "timings": timings,
        "last_iteration": last,
    }
    (algo.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(format_report(phases))
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return summary
