"""The local Ray runtime actorlearner starts: its object store (size, preallocation), its workers' nice."""

from __future__ import annotations

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
print(size_mb, round(shmem_mb() - before), ray.get(nice.remote(), timeout=120))
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
    assert worker_nice == 0  # not Ray's 15: runners' env_runners.niceness then puts them below the learner
    if preallocate:
        assert shmem_mb >= 200, shmem_mb
    else:
        assert shmem_mb < 100, shmem_mb
