"""The local Ray runtime actorlearner starts: its object store (size, preallocation), its workers' nice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys
def shmem_mb():
    for line in open("/proc/meminfo"):
        if line.startswith("Shmem:"):
            return int(line.split()[1]) / 1024
before = shmem_mb()
import ray
from actorlearner.runtime.placement import RayRuntime
RayRuntime(num_cpus=1, object_store_mb=256, preallocate=sys.argv[1] == "1")
size_mb = round(ray.cluster_resources()["object_store_memory"] / 2**20)
@ray.remote(num_cpus=0)
def nice():
    import os
    return os.getpriority(os.PRIO_PROCESS, 0)
import os
relative = ray.get(nice.remote(), timeout=120) - os.getpriority(os.PRIO_PROCESS, 0)
print(size_mb, round(shmem_mb() - before), relative)
ray.shutdown()
"""


@pytest.mark.parametrize("preallocate", [False, True])
def test_the_object_store_has_the_configured_size_and_is_touched_only_when_preallocated(preallocate):
    """In a fresh process (the suite's own Ray runtime is already running): the store's shared
    memory is in use at start only with preallocation."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "1" if preallocate else "0"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    size_mb, shmem_mb, worker_nice = (int(x) for x in out.stdout.split()[-3:])
    assert size_mb == 256
    # Workers at the driver's priority, not 15 below it: env_runners.niceness then orders runners
    # below the learner (Ray applies worker_niceness relative to the driver's nice value).
    assert worker_nice == 0
    if preallocate:
        assert shmem_mb >= 200, shmem_mb
    else:
        assert shmem_mb < 100, shmem_mb


JOIN = """
import ray
from actorlearner.runtime.placement import RayRuntime
RayRuntime()
print(len(ray.nodes()))
ray.shutdown()
"""


@pytest.mark.ray
def test_a_runtime_that_finds_a_cluster_joins_it_without_its_own_settings_and_says_so(ray_session):
    """Without an address Ray joins the cluster RAY_ADDRESS names (as under Ray Jobs), which refuses
    ``_system_config``: the runtime joins without it and logs what was not applied."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out = subprocess.run(
        [sys.executable, "-c", JOIN], env=env, capture_output=True, text=True, timeout=180, check=True
    )
    assert out.stdout.split()[-1] == "1"
    assert "keeps its own settings" in out.stderr and "worker_niceness" in out.stderr
