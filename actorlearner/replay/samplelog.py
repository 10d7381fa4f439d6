"""What the learner was given, for ``actorlearner view``: ``RUN_DIR/samples.jsonl``.

The replay buffer appends one JSON line per logged group: up to ``groups_per_draw`` of the groups
each draw hands the learner (``"sampled"``, with the priority the draw used, the group's inclusion
probability, its importance weight and staleness), and up to as many of the groups the filters
dropped since the previous draw (``"dropped"``). Every line holds the whole group: token ids, loss
mask, turn records with tool calls, rewards and their components, and what the filter chain did
(``filter_note``). Writing never raises: a failed write is reported once and logging stops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actorlearner.core.trajectory import Group, Trajectory

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""Facts of a run the viewer needs: ``{"model_path": ...}`` (written when the run starts)."""

SAMPLES_FILE = "samples.jsonl"


def trajectory_record(traj: Trajectory) -> dict[str, Any]:
    """A trajectory as plain JSON values (ids and masks as lists)."""
    return {
        "token_ids": [int(i) for i in traj.token_ids],
        "loss_mask": [round(float(m), 4) for m in traj.loss_mask],
        "prompt_length": int(traj.prompt_length),
        "turns": [
            {
                "index": t.index,
                "text": t.text,
                "start": t.start,
                "end": t.end,
                "tool_calls": [vars(c) for c in t.tool_calls],
                "final_answer": t.final_answer,
                "void": t.void,
                "policy_version": t.policy_version,
            }
            for t in traj.turns
        ],
        "reward": float(traj.reward),
        "reward_components": {k: float(v) for k, v in traj.reward_components.items()},
        "success": bool(traj.success),
        "policy_versions": [int(v) for v in traj.policy_versions],
        "terminated": bool(traj.terminated),
        "truncated": bool(traj.truncated),
        "overlong": bool(traj.overlong),
        "env_error": traj.env_error,
    }


def group_record(group: Group) -> dict[str, Any]:
    """A group as plain JSON values."""
    return {
        "group_id": group.group_id,
        "prompt_id": group.prompt_id,
        "task_id": group.task_id,
        "sub_tasks": list(group.sub_tasks),
        "filter_note": group.filter_note,
        "trajectories": [trajectory_record(t) for t in group.trajectories],
    }


class SampleLog:
    """Appends logged groups to ``path`` (see the module docstring).

    Args:
        path: The JSON-lines file (created on first write; appended to on resume).
        groups_per_draw: Groups logged per draw, and dropped groups logged between two draws.
    """

    def __init__(self, path: str | Path, groups_per_draw: int) -> None:
        self.path = Path(path)
        self.groups_per_draw = groups_per_draw
        self._dropped_left = groups_per_draw
        self._broken = False

    def sampled(
        self,
        draw: int,
        learner_version: int,
        groups: Sequence[Group],
        priorities: np.ndarray,
        inclusion: np.ndarray,
        ages: np.ndarray,
    ) -> None:
        """Logs the first ``groups_per_draw`` groups of draw number ``draw``."""
        self._dropped_left = self.groups_per_draw
        rows = []
        for i, group in enumerate(groups[: self.groups_per_draw]):
            rows.append(
                {
                    "kind": "sampled",
                    "draw": draw,
                    "learner_version": learner_version,
                    "priority": float(priorities[i]),
                    "inclusion": float(inclusion[i]),
                    "is_weight": float(group.is_weight),
                    "staleness": int(ages[i]),
                    **group_record(group),
                }
            )
        self._write(rows)

    def dropped(self, draw: int, group: Group, note: str) -> None:
        """Logs a group the filters dropped (at most ``groups_per_draw`` between two draws)."""
        if self._dropped_left <= 0:
            return
        self._dropped_left -= 1
        self._write([{"kind": "dropped", "draw": draw, **group_record(group.replace(filter_note=note))}])

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self._broken or not rows:
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        except (OSError, TypeError, ValueError) as err:
            self._broken = True
            log.warning("sample log %s: writing failed (%s); samples are no longer logged", self.path, err)
