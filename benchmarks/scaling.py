"""P6: rollout throughput with 1 and 2 runners on a tool-latency-bound env, and the parts' costs.

The env is ``actorlearner/SlowToolCalculator-v0`` (``envs/latency.py``): every step first waits a
lognormal time (median ``--latency`` s, sigma 1, capped at 5 s), as remote tools do. For 1 and
then 2 runners (1 CPU each on a local Ray runtime; the learner is idle), every runner plays
``--groups`` groups (``--in-flight`` at a time, 8 episodes each) with the same untrained tiny
model and pushes them to the buffer; reported: trajectories per second over all runners, and the
scaling efficiency ``rate(2) / (2 * rate(1))`` (goal >= 0.85).

For the written model of larger clusters (docs/cluster.md), the costs of the central parts are
measured too: the buffer's time per pushed group (``--pushes`` pushes of a played group from the
driver, one at a time and all at once), and the learner's weights publication (from ``weight_sync.json`` when
``benchmarks/weight_sync.py`` has run).

Run: ``.venv/bin/python benchmarks/scaling.py`` (about 4 minutes). Writes
``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from actorlearner import AlgorithmConfig
from actorlearner.core.protocols import ReplayBufferActor
from actorlearner.rollout.runner import EnvRunner
from actorlearner.runtime.handles import gather


def tiny_model() -> str:
    """The main job's tiny model, built from the plain Calculator (the same vocabulary).

    Building it from the slow env would step it through 64 demonstrations, waiting at every step.
    """
    import gymnasium

    from actorlearner.models.tiny import ensure_tiny_model, env_corpus

    arch = AlgorithmConfig.from_yaml("configs/calculator.yaml").model
    sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
    corpus = env_corpus(lambda: gymnasium.make("actorlearner/Calculator-v0", max_operand=99))
    return str(ensure_tiny_model(corpus, **{k: getattr(arch, k) for k in sizes}))


def _config(run_dir: str, runners: int, args: argparse.Namespace) -> AlgorithmConfig:
    return AlgorithmConfig.from_yaml(
        "configs/calculator.yaml",
        [
            f"model.model={args.model}",
            "environment.env=actorlearner/SlowToolCalculator-v0",
            f"environment.env_config={{latency_median_s: {args.latency}, max_operand: 99}}",
            f"env_runners.num_env_runners={runners}",
            "env_runners.num_cpus_per_runner=1",
            f"env_runners.groups_in_flight={args.in_flight}",
            "env_runners.group_size=8",
            "env_runners.max_ready_groups=100000",
            "replay.capacity=100000",
            "replay.filters=[]",
            "learners.num_cpus=0",
            "sft.enabled=false",
            f"reporting.run_dir={run_dir}",
            "reporting.progress=false",
            "reporting.tensorboard=false",
        ],
    )


def rollout_rate(runners: int, args: argparse.Namespace) -> dict[str, float]:
    """Trajectories per second of ``runners`` runners each playing ``args.groups`` groups."""
    with tempfile.TemporaryDirectory() as run_dir:
        algo = _config(run_dir, runners, args).build()
        try:

            async def play(num_groups: int) -> list[int]:
                calls = [r.call(EnvRunner.play, num_groups, algo.buffer) for r in algo.runners]
                return list(await asyncio.gather(*calls))

            algo.runtime.run(play(2))  # warm-up: model loaded, threads started
            start = time.perf_counter()
            kept = algo.runtime.run(play(args.groups))
            elapsed = time.perf_counter() - start
            push_s = _push_cost(algo, args.pushes) if runners == 1 else None
        finally:
            algo.stop()
    trajectories = sum(kept) * 8
    out = {"runners": runners, "trajectories": trajectories, "seconds": round(elapsed, 1),
           "trajectories_per_s": round(trajectories / elapsed, 2)}  # fmt: skip
    if push_s is not None:
        out.update({f"buffer_push_{k}": round(v, 2) for k, v in push_s.items()})
    return out


def _push_cost(algo: Any, pushes: int) -> dict[str, float]:
    """The buffer's cost per pushed group: one push at a time (round trip), and many at once.

    The buffer is an async actor: pushes from many runners overlap their Ray transport, but its
    own work (adding the group, priorities) runs one push at a time on its event loop. ``pushes``
    pushes sent at once, in 5 rounds, give its throughput when saturated (the best round).
    """
    group = algo.runtime.run(algo.runners[0].call(EnvRunner.run_group, 12345))
    push = ReplayBufferActor.push
    times = []
    for _ in range(pushes):
        start = time.perf_counter()
        algo.runtime.run(algo.buffer.call(push, [group]))
        times.append(time.perf_counter() - start)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        algo.runtime.run(gather([algo.buffer.call(push, [group]) for _ in range(pushes)]))
        rounds.append((time.perf_counter() - start) / pushes)
    return {"round_trip_ms": statistics.median(times) * 1e3, "saturated_ms": min(rounds) * 1e3}


def main() -> None:
    """Measures 1 and 2 runners and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3, help="median tool wait (s)")
    parser.add_argument("--groups", type=int, default=48, help="groups per runner")
    parser.add_argument("--in-flight", type=int, default=8, help="groups in flight per runner")
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args()
    args.model = tiny_model()
    rows = [rollout_rate(n, args) for n in (1, 2)]
    efficiency = rows[1]["trajectories_per_s"] / (2 * rows[0]["trajectories_per_s"])
    print("| runners | trajectories | seconds | trajectories/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['runners']} | {r['trajectories']} | {r['seconds']} | {r['trajectories_per_s']} |")
    first = rows[0]
    print(
        f"efficiency: {efficiency:.3f}; buffer per pushed group: {first['buffer_push_round_trip_ms']} ms "
        f"one at a time, {first['buffer_push_saturated_ms']} ms when {args.pushes} arrive at once"
    )
    result = {"rows": rows, "efficiency": round(efficiency, 3), "latency_median_s": args.latency}
    weight_sync = Path("benchmarks/results/weight_sync.json")
    if weight_sync.exists():
        result["weight_sync"] = json.loads(weight_sync.read_text())
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
