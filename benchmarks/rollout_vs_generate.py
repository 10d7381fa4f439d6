"""The framework's rollout against the raw engine on the same work, side by side (P2).

* **framework**: the real env runner (real Calculator envs with ``--max-turns 4``, the chat
  rendering, the asyncio batching front, the HF engine with its per-episode KV cache) plays
  ``--groups`` groups of 8 episodes at once, in this process.
* **raw generate**: ``transformers``' own ``model.generate`` on the same model, with no env, Ray,
  runner or buffer. It is given exactly the framework's work of the same round: for each turn
  number, one batch of every episode's context before that turn (left-padded) and as many new
  tokens as the longest turn of that batch took (sampling at temperature 1, no stop id).

The model is the embedded tiny model at its random initial weights, which rarely calls the tool or
answers, so most episodes play all four turns, each followed by a format-error message. Both arms
use the same torch thread count (``--threads``; 1 = a runner's share in the main job). The arms
alternate for ``--rounds`` rounds. With ``--max-turns 1`` every episode is one turn from its
prompt: no context to re-run, so the ratio shows the framework's own costs (envs, rendering,
batching) against ``generate``'s.

Reported: sampled tokens per wall-second of each arm (median over rounds) and the ratio
framework / raw generate. The raw arm pads: the tokens it generates for rows whose turn was
shorter are not counted. Run: ``.venv/bin/python benchmarks/rollout_vs_generate.py`` (about two
minutes). Prints a JSON line last.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import gymnasium
import torch
from common import rollout_parser

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.core.trajectory import Trajectory
from actorlearner.env.registration import make_env
from actorlearner.models.loading import load_model_and_tokenizer
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.rollout.config import EnvRunnersConfig
from actorlearner.rollout.runner import EnvRunner

SPEC = gymnasium.spec("actorlearner/Calculator-v0")
ENV_CONFIG = {"max_operand": 99, "ops": "+-*"}


async def _framework_round(runner: EnvRunner, groups: int, seed: int) -> tuple[float, list[Trajectory]]:
    start = time.perf_counter()
    played = await asyncio.gather(*(runner.run_group(seed + g) for g in range(groups)))
    return time.perf_counter() - start, [t for group in played for t in group.trajectories]


def _turn_batches(trajs: list[Trajectory]) -> list[tuple[list[list[int]], list[int]]]:
    """Per turn number: the contexts before that turn and the tokens each turn sampled."""
    batches: dict[int, tuple[list[list[int]], list[int]]] = {}
    for traj in trajs:
        for turn in traj.turns:
            contexts, lengths = batches.setdefault(turn.index, ([], []))
            contexts.append(traj.token_ids[: turn.start].tolist())
            lengths.append(turn.end - turn.start)
    return [batches[k] for k in sorted(batches)]


def _raw_round(model: torch.nn.Module, pad_id: int, trajs: list[Trajectory]) -> float:
    """Seconds ``model.generate`` takes for the same contexts and turn lengths."""
    batches = _turn_batches(trajs)
    start = time.perf_counter()
    for contexts, lengths in batches:
        width = max(len(c) for c in contexts)
        ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in contexts])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=max(lengths),
                min_new_tokens=max(lengths),
                pad_token_id=pad_id,
            )
    return time.perf_counter() - start


def main() -> None:
    """Runs both arms alternately and prints the table and a JSON line."""
    parser = rollout_parser(__doc__, "torch threads of both arms")
    parser.add_argument("--max-turns", type=int, default=4, help="1: no context to re-run or reuse")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env_config = {**ENV_CONFIG, "max_turns": args.max_turns}
    model_dir = str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, env_config))))
    config = EnvRunnersConfig(
        group_size=8, groups_in_flight=args.groups, max_new_tokens=args.max_new_tokens, max_tokens=1024
    )
    runner = EnvRunner(0, SPEC, env_config, {}, model_dir, config, seed=0)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    rows: list[dict[str, float]] = []

    async def run() -> None:
        _, warm = await _framework_round(runner, 2, 10_000)
        _raw_round(model, pad_id, warm)
        for r in range(args.rounds):
            wall, trajs = await _framework_round(runner, args.groups, 1000 * r)
            sampled = sum(int(t.loss_mask.sum()) for t in trajs)
            raw = _raw_round(model, pad_id, trajs)
            turns = statistics.mean(len(t.turns) for t in trajs)
            rows.append({"framework": sampled / wall, "raw": sampled / raw, "turns": turns})

    asyncio.run(run())
    framework = statistics.median(r["framework"] for r in rows)
    raw = statistics.median(r["raw"] for r in rows)
    ratios = [r["framework"] / r["raw"] for r in rows]
    print(f"{args.groups * 8} episodes per round, {args.rounds} rounds, {args.threads} thread(s)")
    print(f"{'arm':<16}{'tokens/s (median)':>20}")
    print(f"{'framework':<16}{framework:>20.0f}")
    print(f"{'raw generate':<16}{raw:>20.0f}")
    print(f"turns per episode: {statistics.mean(r['turns'] for r in rows):.2f}")
    ratio = statistics.median(ratios)
    per_round = ", ".join(f"{x:.2f}" for x in ratios)
    print(f"framework / raw generate: {ratio:.2f}x (per round: {per_round})")
    print(json.dumps({"args": vars(args), "framework": framework, "raw": raw, "ratio": ratio}))


if __name__ == "__main__":
    main()
