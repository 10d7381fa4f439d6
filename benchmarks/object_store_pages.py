"""Why some weight syncs are slow: fresh pages of Ray's object store, without any actorlearner code.

Two measurements, one after the other:

1. ``shm``: writing a 400 MB array into a new shared-memory file (``/dev/shm``) the first time,
   then again into the same pages (the kernel gives a page memory, zeroed, when it is first
   written);
2. ``ray.put``: ``--rounds`` puts of the same 400 MB array into a local Ray object store (its
   size ``--object-store-mb``, default Ray's), each reference dropped before the next, with the
   milliseconds of each put.

Run: ``.venv/bin/python benchmarks/object_store_pages.py`` (under a minute). Writes
``benchmarks/results/object_store_pages.json``. docs/cluster.md, "Weight sync (P7)", reads it.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 400 * 2**20


def _shm_writes(source: np.ndarray) -> tuple[float, float]:
    """Seconds to write ``source`` into a new shared-memory file, then into the same pages again."""
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        os.ftruncate(f.fileno(), source.nbytes)
        with mmap.mmap(f.fileno(), source.nbytes) as m:
            view = np.frombuffer(m, np.uint8)
            times = []
            for _ in range(2):
                start = time.perf_counter()
                view[:] = source
                times.append(time.perf_counter() - start)
            del view
    return times[0], times[1]


def _puts(source: np.ndarray, rounds: int, store_mb: int | None) -> list[float]:
    """Milliseconds of each ``ray.put`` of ``source`` (the previous object freed first)."""
    import ray

    store = {"object_store_memory": store_mb * 2**20} if store_mb else {}
    ray.init(num_cpus=2, include_dashboard=False, **store)
    try:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            ref = ray.put(source)
            times.append((time.perf_counter() - start) * 1e3)
            del ref
        return times
    finally:
        ray.shutdown()


def main() -> None:
    """Measures both and prints a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--object-store-mb", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/object_store_pages.json")
    args = parser.parse_args()
    source = np.ones(SIZE, np.uint8)
    fresh, again = _shm_writes(source)
    puts = _puts(source, args.rounds, args.object_store_mb)
    median = statistics.median(puts)
    result: dict[str, Any] = {
        "mb": SIZE / 2**20,
        "shm_first_write_ms": round(fresh * 1e3, 1),
        "shm_second_write_ms": round(again * 1e3, 1),
        "object_store_mb": args.object_store_mb,
        "put_median_ms": round(median, 1),
        "slow_puts": [i for i, t in enumerate(puts) if t > 4 * median],
        "put_ms": [round(t, 1) for t in puts],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"400 MB into new shared memory: {fresh * 1e3:.0f} ms first, {again * 1e3:.0f} ms again")
    print(f"ray.put x {args.rounds}: median {median:.0f} ms; over 4x the median at {result['slow_puts']}")
    print(" ".join(f"{t:.0f}" for t in puts))


if __name__ == "__main__":
    main()
