"""Soak: a long RL run of the main job's config, sampling the memory (RSS) of every process.

Starts ``actorlearner train configs/calculator.yaml`` (short SFT, then RL bounded by
``--minutes`` of wall time, two Ray runners beside the learner and the buffer, as shipped) and
samples the resident memory of the driver and of each Ray actor process every ``--every``
seconds. Reported per process: RSS two minutes into RL, at the end, the largest, and the growth
from minute 2 to the end, sample to sample and peak to peak (goal: under 5%; the buffer and its
prompt histories are bounded), and the growth of its private pages alone with the pages of Ray's
shared object store it maps (``RssAnon``, ``RssShmem``): a process's RSS counts every page of the
store it has touched, which is the store's memory, bounded by its size.
Writes ``benchmarks/results/soak.json`` (``series_mb``: per process ``[seconds into RL, RSS,
private, shared]``). Run: ``.venv/bin/python benchmarks/soak.py`` (about
12 minutes with the default 10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROLES = ("ray::Learner", "ray::EnvRunner", "ray::BufferActor")
BASELINE_S = 120.0


FIELDS = ("VmRSS", "RssAnon", "RssShmem")


def _rss(pid: int) -> tuple[int, int, int] | None:
    """Resident memory of a process in bytes (Linux ``/proc``): all of it, its private (anonymous)
    pages and the shared-memory pages it maps (Ray's object store); None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = {x.split(":")[0]: int(x.split()[1]) * 1024 for x in status.splitlines() if x.startswith(FIELDS)}
    if "VmRSS" not in found:
        return None
    return found["VmRSS"], found.get("RssAnon", 0), found.get("RssShmem", 0)


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _sample(driver: int) -> dict[str, tuple[int, int, int]]:
    """Memory (:func:`_rss`) of the driver and of each actor process, keyed ``role:pid``."""
    found = {f"driver:{driver}": _rss(driver)}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            title = _title(int(entry.name))
            role = next((r for r in ROLES if title.startswith(r)), None)
            if role is not None:
                found[f"{role.removeprefix('ray::')}:{entry.name}"] = _rss(int(entry.name))
    return {key: value for key, value in found.items() if value is not None}


def _rl_started(metrics: Path) -> bool:
    if not metrics.is_file():
        return False
    return any('"phase": "rl"' in line for line in metrics.read_text().splitlines())


def _growth(before: float | None, after: float) -> float:
    return (after - before) / before * 100 if before else float("nan")


def _report(
    samples: list[tuple[float, dict[str, tuple[int, int, int]]]], rl_start: float
) -> list[dict[str, Any]]:
    """Per process: RSS at minute 2 and at the end, and growths from minute 2 to the end.

    ``growth_pct`` compares two single samples. A process whose memory swings with its work (the
    learner's batches, checkpoints) makes that a coin toss, so ``peak_growth_pct`` compares the
    largest RSS of minute 2 (2-3 min) with the largest of the last minute: the high-water mark,
    which is what runs a machine out of memory. ``private_growth_pct`` is ``growth_pct`` of the
    private (anonymous) pages alone: RSS also counts the pages of Ray's shared object store a
    process has touched, which stay counted while the store is mapped (they are the store's memory,
    bounded by its size, and counted once on the machine, not per process).
    """
    base_t = rl_start + BASELINE_S
    rows = []
    for key in sorted({k for _, s in samples for k in s}):
        series = [(t, s[key]) for t, s in samples if key in s]
        base = next((v for t, v in series if t >= base_t), None)
        end_t, end = series[-1]
        base_peak = max((v[0] for t, v in series if base_t <= t < base_t + 60), default=None)
        end_peak = max(v[0] for t, v in series if t >= end_t - 60)
        rows.append(
            {"process": key, "rss_minute2_mb": (base[0] if base else 0) / 2**20, "rss_end_mb": end[0] / 2**20,
             "rss_max_mb": max(v[0] for _, v in series) / 2**20,
             "growth_pct": _growth(base[0] if base else None, end[0]),
             "peak_growth_pct": _growth(base_peak, end_peak),
             "shared_minute2_mb": (base[2] if base else 0) / 2**20, "shared_end_mb": end[2] / 2**20,
             "private_growth_pct": _growth(base[1] if base else None, end[1])}
        )  # fmt: skip
    return rows


def main() -> None:
    """Runs the soak and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="RL wall time")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", default="benchmarks/results/soak.json")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (probes)"
    )
    args = parser.parse_args()
    run_root = Path(tempfile.mkdtemp(prefix="soak-"))
    cmd = [
        str(Path(sys.executable).parent / "actorlearner"), "train", "configs/calculator.yaml",
        "sft.steps=100", "sft.num_demos=2048", "training.num_iterations=100000",
        f"training.time_budget_s={args.minutes * 60}", "evaluation.num_episodes=50",
        f"reporting.run_dir={run_root}", "reporting.name=soak", "reporting.progress=false",
        "--no-initial-eval", *args.set,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = proc.pid
    metrics = run_root / "soak" / "metrics.jsonl"
    samples: list[tuple[float, dict[str, tuple[int, int, int]]]] = []
    rl_start = None
    while proc.poll() is None:
        now = time.monotonic()
        if rl_start is None and _rl_started(metrics):
            rl_start = now
        if rl_start is not None:
            samples.append((now, _sample(driver)))
        time.sleep(args.every)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or rl_start is None:
        sys.exit(f"soak: the run failed (exit {proc.returncode}): {stderr[-2000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    rl = [r for r in records if r.get("phase") == "rl"]
    rows = _report(samples, rl_start)
    result = {
        "minutes": args.minutes,
        "overrides": args.set,
        "iterations": len(rl),
        "buffer_size_last": rl[-1].get("buffer/size"),
        "processes": rows,
        "series_mb": {
            key: [
                [round(t - rl_start), *(round(v / 2**20, 1) for v in sample[key])]
                for t, sample in samples
                if key in sample
            ]
            for key in sorted({k for _, sample in samples for k in sample})
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{len(rl)} RL iterations in {args.minutes:g} minutes; RSS sampled every {args.every:g} s")
    head = f"{'process':<24}{'minute 2 (MB)':>14}{'end (MB)':>10}{'max (MB)':>10}"
    print(f"{head}{'growth':>9}{'peak growth':>13}{'shared (MB)':>14}{'private growth':>16}")
    for row in rows:
        print(
            f"{row['process']:<24}{row['rss_minute2_mb']:>14.0f}{row['rss_end_mb']:>10.0f}"
            f"{row['rss_max_mb']:>10.0f}{row['growth_pct']:>8.1f}%{row['peak_growth_pct']:>12.1f}%"
            f"{row['shared_minute2_mb']:>6.0f} -> {row['shared_end_mb']:<4.0f}"
            f"{row['private_growth_pct']:>14.1f}%"
        )


if __name__ == "__main__":
    main()
