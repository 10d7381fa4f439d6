"""Placement on a Ray cluster of 3 virtual nodes; a runner node lost mid-run (``tests/cluster_run.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_run import AFTER, BEFORE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_parts_are_placed_by_resources_and_a_lost_runner_node_does_not_stop_the_run(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster_run", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    nodes, metrics = result["nodes"], result["metrics"]
    # The learner and the buffer on the node with the `learn` resource; one runner on each rollout node.
    assert nodes["learner"] == nodes["buffer"] == nodes["head"]
    assert sorted(nodes["runners"]) == sorted(nodes["rollout"])
    # The second rollout node is removed: its runner is restarted on the first, and training goes on.
    assert nodes["runners_after"] == [nodes["rollout"][0]] * 2
    assert [m["iteration"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert all(m["learner/trajectories"] > 0 for m in metrics)
    restarted = [m["iteration"] for m in metrics if m["rollout/runner_restarts"]]
    assert restarted and restarted[0] > BEFORE, metrics
    assert len(restarted) >= AFTER + 1  # iterations went on after the restart
    assert metrics[-1]["rollout/runner_restarts"] == 1
