"""Asynchronous vs synchronous RL throughput, side by side in one invocation, with a time breakdown.

Both schedules run the same framework, config, model and placement (``--runners`` Ray runners, or
in-process with ``--runners 0``):

* **sync** (``training.synchronous=true``): the classic loop. Each iteration the runners play
  exactly one batch of groups with the current weights (the slowest episode holds the batch), the
  learner trains on it, and the new weights are synced to every runner before the next batch.
* **async** (the default schedule): runners keep ``groups_in_flight`` groups going and push each
  as it finishes; the learner trains on what the buffer holds while generation goes on; weights
  are published once per version and runners take them from their push replies.

Reported: learner samples per second (trajectories consumed by updates; what peers report as
"async over sync" speed-up), seconds per iteration and where an iteration's time goes (waiting for
data, the update, publishing weights and metrics). Run: ``.venv/bin/python benchmarks/async_vs_sync.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from actorlearner import AlgorithmConfig

PARTS = ("time/wait_for_data_s", "time/update_s", "time/publish_s")


def _config(
    run_dir: str, runners: int, synchronous: bool, iterations: int, extra: list[str]
) -> AlgorithmConfig:
    return AlgorithmConfig.from_yaml(
        "configs/calculator.yaml",
        [
            f"env_runners.num_env_runners={runners}",
            f"training.synchronous={str(synchronous).lower()}",
            f"training.num_iterations={iterations}",
            "training.time_budget_s=null",
            "sft.steps=100",
            "sft.num_demos=2048",
            "replay.filters=[]",
            f"reporting.run_dir={run_dir}",
            "reporting.progress=false",
            "reporting.tensorboard=false",
            *extra,
        ],
    )


def measure(
    runners: int,
    synchronous: bool,
    iterations: int,
    warmup: int,
    extra: list[str] = (),  # type: ignore[assignment]
) -> dict[str, float]:
    """Learner samples per second and the mean time breakdown over ``iterations`` after ``warmup``."""
    with tempfile.TemporaryDirectory() as run_dir:
        algo = _config(run_dir, runners, synchronous, iterations, list(extra)).build()
        try:
            algo.pretrain()
            for _ in range(warmup):
                algo.train()
            start = time.perf_counter()
            samples = 0.0
            parts = dict.fromkeys(PARTS, 0.0)
            for _ in range(iterations):
                metrics = algo.train()
                samples += metrics["buffer/sampled_groups"] * algo.config.env_runners.group_size
                for key in PARTS:
                    parts[key] += metrics[key] / iterations
            elapsed = time.perf_counter() - start
        finally:
            algo.stop()
    return {"samples_per_s": samples / elapsed, "seconds_per_iteration": elapsed / iterations, **parts}


def main() -> None:
    """Runs both schedules and prints a table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runners", type=int, default=1, help="Ray env runners (0: in-process)")
    parser.add_argument("--only", choices=("sync", "async"), help="Measure one schedule only")
    parser.add_argument("overrides", nargs="*", help="section.key=value for both schedules")
    args = parser.parse_args()
    empty = {
        "samples_per_s": float("nan"),
        "seconds_per_iteration": float("nan"),
        **dict.fromkeys(PARTS, 0.0),
    }
    run = {s: args.only in (None, s) for s in ("sync", "async")}
    sync = measure(args.runners, True, args.iterations, args.warmup, args.overrides) if run["sync"] else empty
    async_ = (
        measure(args.runners, False, args.iterations, args.warmup, args.overrides) if run["async"] else empty
    )
    ratio = async_["samples_per_s"] / sync["samples_per_s"]
    header = f"{'schedule':<10}{'samples/s':>11}{'s/iter':>8}{'wait data':>11}{'update':>8}{'publish':>9}"
    print(header)
    for name, m in (("sync", sync), ("async", async_)):
        cells = "".join(f"{m[k]:>{w}.2f}" for k, w in zip(PARTS, (11, 8, 9), strict=True))
        print(f"{name:<10}{m['samples_per_s']:>11.1f}{m['seconds_per_iteration']:>8.2f}{cells}")
    print(f"async / sync: {ratio:.2f}x ({args.runners} runner(s){'' if args.runners else ', in-process'})")
    print(json.dumps({"runners": args.runners, "sync": sync, "async": async_, "ratio": ratio}))


if __name__ == "__main__":
    main()
