"""Memory of bare Ray actors under a stream of calls: how much of the buffer's growth is Ray's own.

No code of actorlearner runs in the actors. Two actors of the same class (``max_concurrency``
1000 and no CPU, as the buffer actor) receive one call each per ``--interval`` seconds from the
driver: one a group-sized payload (8 trajectories of 160 ids and logprobs, kept in a list of the
last 200 as a buffer would), the other an empty call. Their anonymous resident memory
(``RssAnon``) is sampled every ``--every`` seconds. Prints the series and a JSON line. With
``--copy`` the payload actor copies the arrays it keeps (Ray hands them over as read-only views of
the call's buffer, which they would keep alive).

Run: ``.venv/bin/python benchmarks/ray_actor_memory.py --minutes 15``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray


class Sink:
    """Keeps the last 200 payloads it is sent."""

    def __init__(self) -> None:
        self.store: list[Any] = []

    def push(self, group: Any, copy: bool = False) -> int:
        """Stores one payload, dropping the oldest beyond 200 (``copy``: its arrays copied first)."""
        if copy:  # arrays Ray deserialized are views into the call's buffer, which they keep alive
            group = [{k: v.copy() if isinstance(v, np.ndarray) else v for k, v in t.items()} for t in group]
        self.store.append(group)
        del self.store[:-200]
        return len(self.store)

    def ping(self) -> int:
        """An empty call."""
        return 0

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()


def rss_anon_mb(pid: int) -> float:
    """Anonymous resident memory of a process in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Streams the calls and prints the memory series."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between calls")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--copy", action="store_true", help="the payload actor copies the arrays it keeps")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    actor = ray.remote(Sink).options(num_cpus=0, max_concurrency=1000)
    full: Any = actor.remote()
    empty: Any = actor.remote()
    pids = ray.get([full.pid.remote(), empty.pid.remote()])
    rng = np.random.default_rng(0)
    start = next_sample = time.monotonic()
    series: list[tuple[float, float, float]] = []
    calls = 0
    while time.monotonic() - start < args.minutes * 60:
        group = [
            {"ids": rng.integers(0, 32, 160), "logp": rng.random(160, dtype=np.float32), "text": "x" * 200}
            for _ in range(8)
        ]
        ray.get([full.push.remote(group, args.copy), empty.ping.remote()])
        calls += 1
        time.sleep(args.interval)
        if time.monotonic() >= next_sample:
            at, payload, empty_call = (
                round(time.monotonic() - start),
                rss_anon_mb(pids[0]),
                rss_anon_mb(pids[1]),
            )
            series.append((at, payload, empty_call))
            print(f"{at:>6} s  payload actor {payload:7.1f} MB  empty-call actor {empty_call:7.1f} MB")
            next_sample += args.every
    ray.shutdown()
    print(json.dumps({"args": vars(args), "calls_per_actor": calls, "series_mb": series}))


if __name__ == "__main__":
    main()
