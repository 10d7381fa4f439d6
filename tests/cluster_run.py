"""Training on a 3-node Ray cluster, one node removed mid-run (run by ``tests/test_cluster.py``).

Runs in its own process: ``ray.cluster_utils.Cluster`` starts its own head and nodes, which must
not meet the test session's local Ray. Nodes (virtual, on this machine):

- the head: ``learn`` resource: the learner and the replay buffer;
- two rollout nodes: ``rollout`` resource, one runner each (runners are spread).

After ``BEFORE`` iterations the second rollout node is removed; training goes on until the lost
runner has been restarted on the other rollout node, then ``AFTER`` more
iterations. Prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BEFORE, AFTER = 3, 3
NOTICE_DEADLINE_S = 240.0
"""Longest the run trains on before the lost node's runner must have been restarted."""


def _node_of(handle: Any, deadline_s: float = 180.0) -> str:
    """The id of the node an actor runs on (waits while Ray restarts it)."""
    import ray
    from ray.exceptions import ActorUnavailableError

    def node(_self: Any) -> str:
        return str(ray.get_runtime_context().get_node_id())

    end = time.monotonic() + deadline_s
    while True:
        try:
            return str(ray.get(handle.actor.__ray_call__.remote(node), timeout=deadline_s))
        except ActorUnavailableError:
            if time.monotonic() > end:
                raise
            time.sleep(1.0)


def main(tmp: str) -> dict[str, Any]:
    """Trains on the cluster; returns where the parts ran and what the iterations logged."""
    import ray
    from ray.cluster_utils import Cluster

    from tests.conftest import small_config

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"learn": 2}})
    rollout = [cluster.add_node(num_cpus=1, resources={"rollout": 2}) for _ in range(2)]
    cluster.wait_for_nodes()
    config = (
        small_config(Path(tmp), num_env_runners=2)
        .env_runners(num_cpus_per_runner=0.5, resources={"rollout": 1}, max_restarts=2)
        .learners(num_cpus=1, resources={"learn": 1})
        .replay(resources={"learn": 1})
        .sft(enabled=False)
        .debugging(ray_address=cluster.address)
    )
    ray.init(address=cluster.address, log_to_driver=False)
    algo = config.build()
    try:
        nodes = {
            "head": cluster.head_node.node_id,
            "rollout": [n.node_id for n in rollout],
            "learner": _node_of(algo.learner),
            "buffer": _node_of(algo.buffer),
            "runners": [_node_of(r) for r in algo.runners],
        }
        metrics = [algo.train() for _ in range(BEFORE)]
        cluster.remove_node(rollout[1])
        # Ray notices a lost node after its health checks fail (seconds): train until the runner's
        # death has been seen and it is back, then AFTER more iterations.
        end = time.monotonic() + NOTICE_DEADLINE_S
        while not metrics[-1]["rollout/runner_restarts"] and time.monotonic() < end:
            metrics.append(algo.train())
        metrics += [algo.train() for _ in range(AFTER)]
        nodes["runners_after"] = [_node_of(r) for r in algo.runners]
    finally:
        algo.stop()
        ray.shutdown()
        cluster.shutdown()
    keys = ("iteration", "learner/trajectories", "learner/version", "rollout/runner_restarts")
    return {"nodes": nodes, "metrics": [{k: m.get(k) for k in keys} for m in metrics]}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = main(sys.argv[1] if len(sys.argv) > 1 else tmp)
    print("RESULT " + json.dumps(result))
