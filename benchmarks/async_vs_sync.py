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
* **async** (the default schedule): runners keep ``groups_in_flight * group_size`` episodes going
  and push each group as it finishes; the learner trains on what the buffer holds while generation
  goes on; weights are published once per version and runners take them from their push replies.

Both schedules are measured ``--rounds`` times (4), alternating which runs first, and the medians
are reported: on this shared 2-core machine one schedule's samples/s varied by 25-45% between runs
minutes apart, more than the difference being measured. The ratio is the median of the rounds'
ratios (each round's two runs are minutes apart); an even number of rounds runs each schedule
first equally often, so a drift of the machine's speed favours neither. Each column of the table
is its own median, so the medians of one schedule need not come from one run (nor add up).

Reported: learner samples per second (trajectories consumed by updates; what peers report as
"async over sync" speed-up), seconds per iteration and where an iteration's time goes (waiting for
data, the update, publishing weights and metrics). With ``--wall-s S`` it also reports the held-out
success each schedule reaches after the same wall time: SFT runs once, both schedules start RL from
its model, each trains for ``S`` seconds (the iteration under way when ``S`` passes finishes) and is
then evaluated on the same held-out episodes. Run: ``.venv/bin/python benchmarks/async_vs_sync.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from actorlearner import AlgorithmConfig

PARTS = ("time/wait_for_data_s", "time/update_s", "time/publish_s")
EVAL_KEYS = ("eval/greedy/success_rate", "eval/sampled/success_rate", "eval/greedy/reward_mean")


def _config(
    args: argparse.Namespace, run_dir: str, placement: list[str], synchronous: bool, extra: list[str]
) -> AlgorithmConfig:
    return AlgorithmConfig.from_yaml(
        args.config,
        [
            *placement,
            f"training.synchronous={str(synchronous).lower()}",
            "training.num_iterations=100000",
            "training.time_budget_s=null",
            f"sft.steps={args.sft_steps}",
            f"sft.num_demos={args.sft_demos}",
            "replay.filters=[]",
            "reporting.checkpoint_interval=0",
            f"reporting.run_dir={run_dir}",
            "reporting.progress=false",
            "reporting.tensorboard=false",
            *args.overrides,
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


def shared_sft(args: argparse.Namespace, root: str) -> tuple[str, dict[str, float]]:
    """SFT once (in-process) for both schedules; returns the saved model directory and its held-out score."""
    algo = _config(args, root, placement(0, 1, args.groups_in_flight), True, ["reporting.name=sft"]).build()
    try:
        algo.pretrain()
        score = algo.evaluate(args.eval_episodes)
        model = str(Path(algo.save(str(Path(root) / "sft"))) / "model")
    finally:
        algo.stop()
    return model, {key: score[key] for key in EVAL_KEYS}


def measure(
    args: argparse.Namespace, where: list[str], synchronous: bool, sft_model: str | None = None
) -> dict[str, float]:
    """Learner samples/s and the time breakdown over ``--iterations`` after ``--warmup``.

    With ``sft_model`` (``--wall-s``) the schedule starts from that model without SFT, keeps
    training until ``--wall-s`` seconds have passed since its first RL iteration, and then
    evaluates the held-out set (``--eval-episodes`` per mode).
    """
    start_from = [f"model.model={sft_model}", "sft.steps=0"] if sft_model else []
    with tempfile.TemporaryDirectory() as run_dir:
        algo = _config(args, run_dir, where, synchronous, start_from).build()
        try:
            algo.pretrain()
            rl_start = time.perf_counter()
            out = _throughput(algo, args.iterations, args.warmup)
            iterations = args.iterations + args.warmup
            if sft_model:
                while time.perf_counter() - rl_start < args.wall_s:
                    algo.train()
                    iterations += 1
                out["rl_wall_s"] = time.perf_counter() - rl_start
                out["rl_iterations"] = iterations
                score = algo.evaluate(args.eval_episodes)
                out.update({key: score[key] for key in EVAL_KEYS})
        finally:
            algo.stop()
    return out


def _throughput(algo: Any, iterations: int, warmup: int) -> dict[str, float]:
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
    return {"samples_per_s": samples / elapsed, "seconds_per_iteration": elapsed / iterations, **parts}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parse() -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--config", default="configs/calculator.yaml", help="the task and model of both")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sync-runners", type=int, default=0, help="Ray runners of sync (0: in-process)")
    parser.add_argument("--async-runners", type=int, default=2, help="Ray runners of async (0: in-process)")
    parser.add_argument("--runner-cpus", type=float, default=0.5, help="Ray CPUs reserved per runner")
    parser.add_argument("--groups-in-flight", type=int, default=32, help="shared by a schedule's runners")
    parser.add_argument("--only", choices=("sync", "async"), help="Measure one schedule only")
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=4,
        help="measure both schedules this many times, alternating which runs first; report the "
        "medians and the median of the rounds' ratios",
    )
    parser.add_argument(
        "--sft-steps", type=int, default=100, help="cold-start SFT steps (replaces the config's sft.steps)"
    )
    parser.add_argument("--sft-demos", type=int, default=2048, help="replaces the config's sft.num_demos")
    parser.add_argument(
        "--wall-s",
        type=float,
        default=0.0,
        help="also: SFT once, then train each schedule this long from it and evaluate (0: off)",
    )
    parser.add_argument("--eval-episodes", type=int, default=200, help="held-out episodes per mode")
    parser.add_argument("overrides", nargs="*", help="section.key=value for both schedules")
    return parser.parse_args()


def round_order(index: int) -> tuple[str, str]:
    """The schedules of round ``index`` in the order they run: sync first in even rounds, async
    first in odd ones (over an even number of rounds, each first equally often)."""
    return ("sync", "async") if index % 2 == 0 else ("async", "sync")


def run_rounds(
    args: argparse.Namespace, sft_model: str | None
) -> tuple[dict[str, dict[str, float]], list[dict[str, float]]]:
    """Measures both schedules ``--rounds`` times, alternating their order (:func:`round_order`).

    Returns:
        Per schedule the median of each measured value over the rounds, and per round each
        schedule's samples/s and their ratio.
    """
    runs: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    rounds: list[dict[str, float]] = []
    for index in range(args.rounds):
        for name in round_order(index):
            if args.only in (None, name):
                runners = args.sync_runners if name == "sync" else args.async_runners
                where = placement(runners, args.runner_cpus, args.groups_in_flight)
                runs[name].append(measure(args, where, name == "sync", sft_model))
        last = {name: done[-1]["samples_per_s"] if done else float("nan") for name, done in runs.items()}
        ratio = last["async"] / last["sync"] if last["sync"] > 0 else float("nan")
        rounds.append({**last, "ratio": ratio})
    return {name: _medians(done) for name, done in runs.items()}, rounds


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    if not runs:
        return {
            "samples_per_s": float("nan"),
            "seconds_per_iteration": float("nan"),
            **dict.fromkeys(PARTS, 0.0),
        }
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    """Runs both schedules and prints a table and a JSON line."""
    args = _parse()
    sft_model: str | None = None
    sft_score: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as root:
        if args.wall_s:
            sft_model, sft_score = shared_sft(args, root)
        results, rounds = run_rounds(args, sft_model)
    ratio = statistics.median(r["ratio"] for r in rounds)
    _print(args, results, sft_score, ratio)
    print(
        "per round (async / sync samples/s): "
        + ", ".join(f"{r['async']:.1f} / {r['sync']:.1f} = {r['ratio']:.2f}x" for r in rounds)
    )
    print(json.dumps({"args": vars(args), **results, "sft": sft_score, "ratio": ratio, "rounds": rounds}))


def _print(
    args: argparse.Namespace, results: dict[str, dict[str, float]], sft: dict[str, float], ratio: float
) -> None:
    header = f"{'schedule':<10}{'placement':<22}{'samples/s':>11}{'s/iter':>8}{'wait data':>11}{'update':>8}"
    print(header + f"{'publish':>9}")
    for name, runners in (("sync", args.sync_runners), ("async", args.async_runners)):
        m = results[name]
        where = f"{runners} x {args.runner_cpus:g} CPU runners" if runners else "in-process"
        cells = "".join(f"{m[k]:>{w}.2f}" for k, w in zip(PARTS, (11, 8, 9), strict=True))
        print(f"{name:<10}{where:<22}{m['samples_per_s']:>11.1f}{m['seconds_per_iteration']:>8.2f}{cells}")
    print(f"async / sync: {ratio:.2f}x (medians of {args.rounds} rounds; the ratio is the median of theirs)")
    if sft:
        print(f"held-out, {args.eval_episodes} episodes per mode: greedy / sampled success, greedy reward")
        rows = [("after the shared SFT", sft)]
        rows += [
            (f"{name}, {m['rl_iterations']:.0f} it. in {m['rl_wall_s']:.0f} s", m)
            for name, m in results.items()
            if "rl_wall_s" in m
        ]
        for label, m in rows:
            cells = " / ".join(f"{m[k]:.3f}" for k in EVAL_KEYS)
            print(f"  {label:<34}{cells}")


if __name__ == "__main__":
    main()
