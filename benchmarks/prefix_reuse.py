"""Rollout throughput with and without reusing an episode's KV cache across turns, side by side.

Both arms run the real env runner (real envs, the asyncio batching front, the HF engine) on
Calculator with ``max_turns=4`` and the embedded model at its random initial weights: such a model
rarely calls the tool or answers, so nearly every episode plays all four turns, each followed by a
format-error message, and the context grows by a turn and a message each time. The only difference
is the engine option ``prefix_cache_mb`` (0: every turn runs its whole context; the default: only the
ids after the stored turn). The arms alternate for ``--rounds`` rounds with the same task seeds.

Reported: sampled tokens per wall-second of each arm (median over rounds), the ratio, and the
prompt ids the engine ran and took from stored caches. Run:
``.venv/bin/python benchmarks/prefix_reuse.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import gymnasium
import torch
from common import rollout_parser

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.env.registration import make_env
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.rollout.config import EnvRunnersConfig
from actorlearner.rollout.runner import EnvRunner

SPEC = gymnasium.spec("actorlearner/Calculator-v0")
ENV_CONFIG = {"max_operand": 99, "ops": "+-*", "max_turns": 4}


def _runner(model_dir: str, prefix_cache_mb: float, args: argparse.Namespace) -> EnvRunner:
    config = EnvRunnersConfig(
        group_size=8,
        groups_in_flight=args.groups,
        max_new_tokens=args.max_new_tokens,
        max_tokens=1024,
        engine_options={"prefix_cache_mb": prefix_cache_mb},
    )
    return EnvRunner(0, SPEC, ENV_CONFIG, {}, model_dir, config, seed=0)


async def _round(runner: EnvRunner, groups: int, seed: int) -> dict[str, float]:
    runner.batcher.pop_stats()
    start = time.perf_counter()
    played = await asyncio.gather(*(runner.run_group(seed + g) for g in range(groups)))
    wall = time.perf_counter() - start
    stats = runner.batcher.pop_stats()
    trajs = [t for group in played for t in group.trajectories]
    sampled = sum(int(t.loss_mask.sum()) for t in trajs)
    return {
        "tokens_per_s": sampled / wall,
        "turns": statistics.mean(len(t.turns) for t in trajs),
        "prefill": stats["prefill_tokens"],
        "reused": stats["reused_tokens"],
    }


def main() -> None:
    """Runs both arms alternately and prints the table."""
    parser = rollout_parser(__doc__, "torch threads (a runner's share)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, ENV_CONFIG))))
    arms = {"full context": _runner(model_dir, 0, args), "prefix reuse": _runner(model_dir, 256, args)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}

    async def run() -> None:
        for runner in arms.values():  # warm-up
            await _round(runner, 2, 10_000)
        for r in range(args.rounds):
            for name, runner in arms.items():
                results[name].append(await _round(runner, args.groups, 1000 * r))

    asyncio.run(run())
    print(f"{args.groups * 8} episodes per round, {args.rounds} rounds, {args.threads} thread(s)")
    print(
        f"{'arm':<14}{'tokens/s (median)':>20}{'turns/episode':>15}{'prompt ids run':>16}{'ids reused':>12}"
    )
    for name, rows in results.items():
        print(
            f"{name:<14}{statistics.median(r['tokens_per_s'] for r in rows):>20.0f}"
            f"{statistics.mean(r['turns'] for r in rows):>15.2f}"
            f"{statistics.mean(r['prefill'] for r in rows):>16.0f}"
            f"{statistics.mean(r['reused'] for r in rows):>12.0f}"
        )
    ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(*results.values(), strict=True)]
    print(
        f"ratio prefix reuse / full context: {statistics.median(ratios):.2f}x (per round: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + ")"
    )
    medians = {name: statistics.median(r["tokens_per_s"] for r in rows) for name, rows in results.items()}
    print(json.dumps({"args": vars(args), "tokens_per_s": medians, "ratio": statistics.median(ratios)}))


if __name__ == "__main__":
    main()
