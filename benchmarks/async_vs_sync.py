"""Asynchronous vs synchronous RL throughput, side by side in one invocation, with a time breakdown.

Both schedules run the same framework, config and model, each on the placement that suits it on a
small machine (both can be changed):

* **sync** runs in-process by default (``--sync-runners 0``): generation and the update alternate,
  and each phase has every core to itself. This is the strongest classic-loop baseline here.
* **async** runs on Ray by default with ``--async-runners 2`` runners of 0.5 CPU each beside a
  1-CPU learner (``--runner-cpus``): the runners' generation takes the cores whenever the learner
  is idle, which is what an asynchronous schedule is for. Together they keep
  ``--groups-in-flight`` (32) groups going, as the single runner of the main config does.

The schedules:

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
    run_dir: str, placement: list[str], synchronous: bool, iterations: int, extra: list[str]
) -> AlgorithmConfig:
    return AlgorithmConfig.from_yaml(
        "configs/calculator.yaml",
        [
            *placement,
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


def placement(runners: int, runner_cpus: float, groups_in_flight: int) -> list[str]:
    """Overrides that put ``runners`` runners (``runner_cpus`` each) on Ray, or run in-process (0).

    The runners share ``groups_in_flight`` groups between them.
    """
    per_runner = max(1, groups_in_flight // max(runners, 1))
    return [
        f"env_runners.num_env_runners={runners}",
        f"env_runners.num_cpus_per_runner={runner_cpus}",
        f"env_runners.groups_in_flight={per_runner}",
    ]


def measure(
    where: list[str],
    synchronous: bool,
    iterations: int,
    warmup: int,
    extra: list[str] = (),  # type: ignore[assignment]
) -> dict[str, float]:
    """Learner samples per second and the mean time breakdown over ``iterations`` after ``warmup``."""
    with tempfile.TemporaryDirectory() as run_dir:
        algo = _config(run_dir, where, synchronous, iterations, list(extra)).build()
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
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sync-runners", type=int, default=0, help="Ray runners of sync (0: in-process)")
    parser.add_argument("--async-runners", type=int, default=2, help="Ray runners of async (0: in-process)")
    parser.add_argument("--runner-cpus", type=float, default=0.5, help="Ray CPUs reserved per runner")
    parser.add_argument("--groups-in-flight", type=int, default=32, help="shared by a schedule's runners")
    parser.add_argument("--only", choices=("sync", "async"), help="Measure one schedule only")
    parser.add_argument("overrides", nargs="*", help="section.key=value for both schedules")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for name, runners in (("sync", args.sync_runners), ("async", args.async_runners)):
        if args.only in (None, name):
            where = placement(runners, args.runner_cpus, args.groups_in_flight)
            results[name] = measure(where, name == "sync", args.iterations, args.warmup, args.overrides)
        else:
            results[name] = {"samples_per_s": float("nan"), "seconds_per_iteration": float("nan")}
            results[name].update(dict.fromkeys(PARTS, 0.0))
    ratio = results["async"]["samples_per_s"] / results["sync"]["samples_per_s"]
    header = f"{'schedule':<10}{'placement':<22}{'samples/s':>11}{'s/iter':>8}{'wait data':>11}{'update':>8}"
    print(header + f"{'publish':>9}")
    for name, runners in (("sync", args.sync_runners), ("async", args.async_runners)):
        m = results[name]
        where = f"{runners} x {args.runner_cpus:g} CPU runners" if runners else "in-process"
        cells = "".join(f"{m[k]:>{w}.2f}" for k, w in zip(PARTS, (11, 8, 9), strict=True))
        print(f"{name:<10}{where:<22}{m['samples_per_s']:>11.1f}{m['seconds_per_iteration']:>8.2f}{cells}")
    print(f"async / sync: {ratio:.2f}x")
    print(json.dumps({"args": vars(args), **results, "ratio": ratio}))


if __name__ == "__main__":
    main()
