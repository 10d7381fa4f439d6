"""Metrics: what episodes did (pure functions) and where numbers go (JSONL and TensorBoard).

Every metric name is documented in docs/metrics.md.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
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
    if not trajectories:
        return {}
    rewards = np.array([t.reward for t in trajectories])
    calls = [c for t in trajectories for c in t.tool_calls]
    turns = [turn for t in trajectories for turn in t.turns]
    components: dict[str, list[float]] = defaultdict(list)
    for t in trajectories:
        for name, value in t.reward_components.items():
            components[name].append(value)
    out = {
        "episodes": float(len(trajectories)),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "success_rate": float(np.mean([t.success for t in trajectories])),
        "tool_use_rate": float(np.mean([bool(t.tool_calls) for t in trajectories])),
        "tool_call_success_rate": float(np.mean([c.ok for c in calls])) if calls else math.nan,
        "tool_calls_per_episode": len(calls) / len(trajectories),
        "turns_mean": float(np.mean([len(t.turns) for t in trajectories])),
        "episode_tokens_mean": float(np.mean([t.length for t in trajectories])),
        "sampled_tokens_mean": float(np.mean([t.num_sampled for t in trajectories])),
        "void_turn_rate": float(np.mean([turn.void for turn in turns])) if turns else 0.0,
        "overlong_rate": float(np.mean([t.overlong for t in trajectories])),
        "truncated_rate": float(np.mean([t.truncated for t in trajectories])),
    }
    # Components missing from an episode count as 0 there, so means are over all episodes.
    out.update({f"reward/{k}": float(sum(v) / len(trajectories)) for k, v in components.items()})
    return {f"{prefix}{k}": v for k, v in out.items()}


def group_metrics(groups: Sequence[Group], prefix: str = "rollout/") -> dict[str, float]:
    """:func:`episode_metrics` over all trajectories of ``groups`` plus group-level counts."""
    trajectories = [t for g in groups for t in g.trajectories]
    out = episode_metrics(trajectories, prefix)
    if groups:
        stds = [float(np.std(g.rewards)) for g in groups]
        out[f"{prefix}groups"] = float(len(groups))
        out[f"{prefix}zero_variance_group_rate"] = float(np.mean([s < 1e-3 for s in stds]))
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
