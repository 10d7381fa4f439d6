"""Asynchronous (Ray runners + learner in parallel) vs synchronous (in-process) RL throughput.

Both modes run the same classes, config and model side by side in one invocation; the result is
the ratio of learner samples per second (trajectories consumed by updates), which is what peers
report as "async over sync" speed-up. Run: ``.venv/bin/python benchmarks/async_vs_sync.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from actorlearner import AlgorithmConfig


def _config(run_dir: str, num_env_runners: int, iterations: int) -> AlgorithmConfig:
    return AlgorithmConfig.from_yaml(
        "configs/calculator.yaml",
        [
            f"env_runners.num_env_runners={num_env_runners}",
            f"training.num_iterations={iterations}",
            "sft.steps=100",
            "sft.num_demos=2048",
            "replay.filters=[]",
            f"reporting.run_dir={run_dir}",
            "reporting.progress=false",
            "reporting.tensorboard=false",
        ],
    )


def measure(num_env_runners: int, iterations: int, warmup: int) -> dict[str, float]:
    """Learner samples per second over ``iterations`` after ``warmup`` iterations."""
    with tempfile.TemporaryDirectory() as run_dir:
        algo = _config(run_dir, num_env_runners, iterations).build()
        try:
            algo.pretrain()
            for _ in range(warmup):
                algo.train()
            start = time.perf_counter()
            samples = 0.0
            for _ in range(iterations):
                metrics = algo.train()
                samples += metrics["buffer/sampled_groups"] * algo.config.env_runners.group_size
            elapsed = time.perf_counter() - start
        finally:
            algo.stop()
    return {"samples_per_s": samples / elapsed, "seconds_per_iteration": elapsed / iterations}


def main() -> None:
    """Runs both modes and prints a table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    sync = measure(0, args.iterations, args.warmup)
    async_ = measure(1, args.iterations, args.warmup)
    ratio = async_["samples_per_s"] / sync["samples_per_s"]
    print(f"{'mode':<28}{'learner samples/s':>20}{'s/iteration':>14}")
    for name, m in (("sync (in-process)", sync), ("async (1 runner + learner)", async_)):
        print(f"{name:<28}{m['samples_per_s']:>20.1f}{m['seconds_per_iteration']:>14.2f}")
    print(f"async / sync: {ratio:.2f}x")
    print(json.dumps({"sync": sync, "async": async_, "ratio": ratio}))


if __name__ == "__main__":
    main()
