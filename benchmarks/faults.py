"""The fault table of docs/faults.md: kill or stop a real actor process, time what follows.

Each fault runs on a fresh small Calculator run (2 runners of 0.5 CPU, a 1-CPU learner) on a local
Ray runtime: one iteration, then the fault, then training until the driver reacts. It prints one
row per fault: how long until the driver noticed, how long until the run went on (a restarted
runner answering) and the outcome.

    python benchmarks/faults.py            # all faults, about 2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actorlearner.core.errors import PartDiedError
from tests.conftest import small_config


def _pid(handle: Any) -> int:
    return int(ray.get(handle.actor.__ray_call__.remote(lambda self: os.getpid()), timeout=120))


def _build(root: Path, **training: Any) -> Any:
    config = small_config(root, num_env_runners=2, num_iterations=1000, **training)
    return config.env_runners(num_cpus_per_runner=0.5, max_restarts=1).build()


def runner_killed(root: Path) -> tuple[float, float, str]:
    """SIGKILL of runner 0: seconds until the driver restarts it, and until the new process answers."""
    algo = _build(root)
    try:
        algo.train()
        os.kill(_pid(algo.runners[0]), signal.SIGKILL)
        start = time.monotonic()
        while not algo.runner_restarts[0]:
            algo.train()
        noticed = time.monotonic() - start
        _pid(algo.runners[0])
        return noticed, time.monotonic() - start, f"restarted; {algo.iteration} iterations done meanwhile"
    finally:
        algo.stop()


def part_killed(root: Path, part: str) -> tuple[float, float, str]:
    """SIGKILL of the learner or buffer: seconds until the run stops with its one line."""
    algo = _build(root)
    try:
        algo.train()
        os.kill(_pid(getattr(algo, part)), signal.SIGKILL)
        start = time.monotonic()
        try:
            while True:
                algo.train()
        except PartDiedError as err:
            return time.monotonic() - start, float("nan"), str(err).split(";")[0]
    finally:
        algo.stop()


def runner_stopped(root: Path, timeout_s: float) -> tuple[float, float, str]:
    """SIGSTOP of runner 1, then a checkpoint: seconds until killed as hung, until the checkpoint."""
    algo = _build(root)
    pid = 0
    try:
        algo.config.env_runners.call_timeout_s = timeout_s
        algo.train()
        pid = _pid(algo.runners[1])
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        algo.checkpoint()
        return (
            timeout_s,
            time.monotonic() - start,
            "killed as hung, restarted, checkpoint written",
        )
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        algo.stop()


def learner_stopped(root: Path, wait_s: float, timeout_s: float) -> tuple[float, float, str]:
    """SIGSTOP of the learner: seconds until the update deadline stops the run."""
    algo = _build(root, max_wait_s=wait_s, update_timeout_s=timeout_s)
    pid = 0
    try:
        algo.train()
        pid = _pid(algo.learner)
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        try:
            algo.train()
        except PartDiedError as err:
            return time.monotonic() - start, float("nan"), str(err)[:60] + "..."
        return float("nan"), float("nan"), "not detected"
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--call-timeout-s", type=float, default=5.0, help="env_runners.call_timeout_s here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    faults = {
        "runner SIGKILL": lambda root: runner_killed(root),
        "learner SIGKILL": lambda root: part_killed(root, "learner"),
        "buffer SIGKILL": lambda root: part_killed(root, "buffer"),
        "runner SIGSTOP": lambda root: runner_stopped(root, args.call_timeout_s),
        "learner SIGSTOP": lambda root: learner_stopped(root, 2.0, 3.0),
    }
    print("| fault | noticed after | run going on / stopped after | outcome |\n|---|---|---|---|")
    for name, fault in faults.items():
        with tempfile.TemporaryDirectory() as tmp:
            noticed, after, outcome = fault(Path(tmp))
        print(f"| {name} | {noticed:.1f} s | {after:.1f} s | {outcome} |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
