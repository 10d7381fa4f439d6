"""Metrics: what episodes did (pure functions) and where numbers go (JSONL and TensorBoard).

Every metric name is documented in docs/metrics.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actorlearner.core.trajectory import Group, Trajectory


def episode_metrics(trajectories: Sequence[Trajectory], prefix: str = "") -> dict[str, float]:
    """Summary of a set of episodes.

    Returns keys ``reward_mean``, ``reward_std``, ``reward/<component>`` means, ``success_rate``,
    ``tool_use_rate`` (episodes with >= 1 tool call), ``tool_call_success_rate`` (over all calls),
    ``tool_calls_per_episode``, ``turns_mean``, ``episode_tokens_mean``, ``sampled_tokens_mean``,
    ``void_turn_rate``, ``overlong_rate``, ``truncated_rate``, ``episodes``; each with ``prefix``.
    """
    tally = RolloutTally()
    tally.add_episodes(trajectories)
    return tally.episode_metrics(prefix)


def group_metrics(groups: Sequence[Group], prefix: str = "rollout/") -> dict[str, float]:
    """:func:`episode_metrics` over all trajectories of ``groups`` plus group-level counts."""
    tally = RolloutTally()
    tally.add(groups)
    return tally.metrics(prefix)


class RolloutTally:
    """The running sums behind :func:`group_metrics`: what the buffer keeps of arriving groups.

    Adding a group reads it once; nothing of it is kept, so a group the filters drop is freed at
    once however long an iteration takes (keeping the groups themselves until the metrics were
    taken held up to a few hundred groups' worth of small objects in the buffer actor).
    """

    _KEYS = ("episodes", "reward", "reward_running_mean", "reward_m2", "success", "tool_use", "calls",
             "calls_ok", "turns", "void", "tokens", "sampled", "overlong", "truncated", "groups",
             "zero_variance")  # fmt: skip

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self._KEYS, 0.0)
        self.components: dict[str, float] = {}

    def add(self, groups: Sequence[Group]) -> None:
        """Counts the groups and their episodes."""
        for group in groups:
            self.sums["groups"] += 1
            self.sums["zero_variance"] += float(np.std(group.rewards)) < 1e-3
            self.add_episodes(group.trajectories)

    def add_episodes(self, trajectories: Sequence[Trajectory]) -> None:
        """Counts episodes (no group-level counts)."""
        s = self.sums
        for t in trajectories:
            calls, turns = t.tool_calls, t.turns
            s["episodes"] += 1
            s["reward"] += t.reward
            delta = t.reward - s["reward_running_mean"]  # Welford: exactly 0 for equal rewards
            s["reward_running_mean"] += delta / s["episodes"]
            s["reward_m2"] += delta * (t.reward - s["reward_running_mean"])
            s["success"] += bool(t.success)
            s["tool_use"] += bool(calls)
            s["calls"] += len(calls)
            s["calls_ok"] += sum(bool(c.ok) for c in calls)
            s["turns"] += len(turns)
            s["void"] += sum(bool(turn.void) for turn in turns)
            s["tokens"] += t.length
            s["sampled"] += t.num_sampled
            s["overlong"] += bool(t.overlong)
            s["truncated"] += bool(t.truncated)
            for name, value in t.reward_components.items():
                self.components[name] = self.components.get(name, 0.0) + value

    def episode_metrics(self, prefix: str = "") -> dict[str, float]:
        """:func:`episode_metrics` of the episodes added (``{}`` before any)."""
        s = self.sums
        n = s["episodes"]
        if not n:
            return {}
        out = {
            "episodes": n,
            "reward_mean": s["reward"] / n,
            "reward_std": math.sqrt(max(s["reward_m2"] / n, 0.0)),
            "success_rate": s["success"] / n,
            "tool_use_rate": s["tool_use"] / n,
            "tool_call_success_rate": s["calls_ok"] / s["calls"] if s["calls"] else math.nan,
            "tool_calls_per_episode": s["calls"] / n,
            "turns_mean": s["turns"] / n,
            "episode_tokens_mean": s["tokens"] / n,
            "sampled_tokens_mean": s["sampled"] / n,
            "void_turn_rate": s["void"] / s["turns"] if s["turns"] else 0.0,
            "overlong_rate": s["overlong"] / n,
            "truncated_rate": s["truncated"] / n,
        }
        # Components missing from an episode count as 0 there, so means are over all episodes.
        out.update({f"reward/{k}": v / n for k, v in self.components.items()})
        return {f"{prefix}{k}": float(v) for k, v in out.items()}

    def metrics(self, prefix: str = "rollout/") -> dict[str, float]:
        """:func:`group_metrics` of the groups added (``{}`` before any)."""
        out = self.episode_metrics(prefix)
        if self.sums["groups"]:
            out[f"{prefix}groups"] = self.sums["groups"]
            out[f"{prefix}zero_variance_group_rate"] = self.sums["zero_variance"] / self.sums["groups"]
        return out


class MetricsLogger:
    """Writes each iteration's metrics as a JSON line and, optionally, as TensorBoard scalars.

    Args:
        run_dir: The run directory; writes ``metrics.jsonl`` and ``tb/`` inside it.
        tensorboard: Also write TensorBoard event files.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._jsonl = self.jsonl_path.open("a")
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record: ``step``, ``time`` (wall clock, Unix seconds), then ``metrics``.

        Non-finite numbers are written as null. ``time`` goes to the JSON line only.
        """
        record = {
            "step": step,
            "time": round(time.time(), 3),
            **{k: _jsonable(v) for k, v in metrics.items()},
        }
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the files."""
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, int | np.integer):
        return int(value)
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Reads a ``metrics.jsonl`` file back."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
