"""Every benchmark of ``make bench`` in one run, and one table of their ratios against the goals.

Runs each benchmark script in turn with this Python (its own table shows as it runs), reads the
JSON line each prints last, and writes ``benchmarks/results/bench.md`` (the table, each command,
the machine) and ``bench.json`` (every script's last JSON line), after every benchmark. A
benchmark that fails, prints no usable JSON line or runs past ``--timeout-s`` is a failed row;
the others still run, and the exit code is 1.

Run: ``make bench`` or ``.venv/bin/python benchmarks/table.py [--only P2 P4]`` (about 40 minutes
for all of them on a 2-core machine; run it on a quiet machine: each ratio is measured side by side,
but a heavy job beside it still skews them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
Result = dict[str, Any]


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script and arguments, how to read its ratio, and the goal.

    Attributes:
        key: Short name (``--only`` selects by it).
        title: What is compared.
        argv: The script (in ``benchmarks/``) and its arguments.
        ratio: Reads the headline ratio from the script's JSON line.
        goal: The ratio to reach (None: no goal, reported for information).
        detail: Reads a short note from the JSON line (the absolute numbers behind the ratio).
    """

    key: str
    title: str
    argv: tuple[str, ...]
    ratio: Callable[[Result], float]
    goal: float | None
    detail: Callable[[Result], str]


def _p1(r: Result) -> str:
    text = f"{r['async']['samples_per_s']:.1f} vs {r['sync']['samples_per_s']:.1f} learner samples/s"
    if len(r.get("rounds", ())) > 1:
        per_round = ", ".join(f"{x['ratio']:.2f}" for x in r["rounds"])
        text += f"{_MEDIANS}; per round {per_round}"
    if r.get("sft"):
        wall = r["args"]["wall_s"]
        cells = [
            f"{name} {r[name]['eval/greedy/success_rate']:.1%} / {r[name]['eval/sampled/success_rate']:.1%}"
            for name in ("sync", "async")
        ]
        start = f"{r['sft']['eval/greedy/success_rate']:.1%} / {r['sft']['eval/sampled/success_rate']:.1%}"
        text += f"; held-out greedy / sampled success after {wall:g} s of RL: "
        text += f"{', '.join(cells)} (from {start})"
    return text


_MEDIANS = " (medians of the rounds; the ratio is the median of the rounds' ratios)"


def _p2(r: Result) -> str:
    return f"{r['framework']:.0f} vs {r['raw']:.0f} sampled tokens/s{_MEDIANS}"


def _p3(r: Result) -> str:
    seconds = r["s_per_update"]
    return f"{r['tokens'] / seconds['learner']:.0f} vs {r['tokens'] / seconds['bare']:.0f} tokens/s"


def _p4(r: Result) -> str:
    res = r["results"]["tree"]["1048576"]
    return f"{res['ours']['cycle']:,.0f} vs {res['rllib']['cycle']:,.0f} items/s"


def _prefix(r: Result) -> str:
    rates = r["tokens_per_s"]
    return f"{rates['prefix reuse']:.0f} vs {rates['full context']:.0f} sampled tokens/s{_MEDIANS}"


BENCHES = (
    Bench(
        "P1",
        "async vs sync, instant tool (learner samples/s)",
        ("async_vs_sync.py",),
        lambda r: r["ratio"],
        1.0,
        _p1,
    ),
    Bench(
        "P1-slow",
        "async vs sync, tools with lognormal latency (learner samples/s)",
        (
            "async_vs_sync.py",
            "--config=configs/calculator_slow_tools.yaml",
            "--sft-steps=600",
            "--wall-s=240",
            "--sft-demos=16384",
            "--rounds=1",  # one round takes ~15 minutes
        ),
        lambda r: r["ratio"],
        3.0,
        _p1,
    ),
    Bench(
        "P2",
        "env runner vs raw `model.generate`, 4-turn episodes (tokens/s)",
        ("rollout_vs_generate.py",),
        lambda r: r["ratio"],
        0.9,
        _p2,
    ),
    Bench(
        "P3",
        "`Learner.update` vs a bare PyTorch loop (tokens/s)",
        ("learner.py",),
        lambda r: r["ratio"],
        0.9,
        _p3,
    ),
    Bench(
        "P4",
        "sum-tree insert+sample+update at batch 32, 2^20 leaves, vs RLlib's `SumSegmentTree`",
        ("buffer.py", "--batch=32", "--tree-capacities=1048576", "--buffer-capacities=10000"),
        lambda r: r["ratios"]["tree/1e+06/cycle"],
        10.0,
        _p4,
    ),
    Bench(
        "prefix",
        "prefix KV reuse across turns vs the full context every turn (tokens/s)",
        ("prefix_reuse.py",),
        lambda r: r["ratio"],
        None,
        _prefix,
    ),
)


def run(bench: Bench, timeout_s: float = 3600.0) -> Result:
    """Runs one script, echoing its output; returns its last JSON line, or ``{"error": ...}``.

    A script that exits non-zero, prints no JSON line or a broken one, or runs longer than
    ``timeout_s`` (then it is killed) is an error, not a crash of the table.
    """
    cmd = [sys.executable, str(HERE / bench.argv[0]), *bench.argv[1:]]
    print(f"\n== {bench.key}: {' '.join(bench.argv)}", flush=True)
    last = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE.parent) as proc:
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith("{"):
                    last = line
        finally:
            timer.cancel()
    if timed_out.is_set():
        return {"error": f"killed after {timeout_s:g} s"}
    if proc.returncode != 0 or not last:
        return {"error": f"exit {proc.returncode}" if proc.returncode else "no JSON line"}
    try:
        return dict(json.loads(last))
    except ValueError as err:
        return {"error": f"bad JSON line ({err})"}


def machine() -> dict[str, str]:
    """The machine and code the numbers come from."""
    lines = _read("/proc/cpuinfo").splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "unknown"
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=HERE, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def row(bench: Bench, result: Result) -> dict[str, Any]:
    """The table row of one benchmark: ratio, goal, met or not, the numbers behind it.

    A result that is an error, or that lacks what ``bench`` reads from it, is a failed row.
    """
    failed = {"key": bench.key, "title": bench.title, "ratio": None, "goal": bench.goal, "met": False}
    if "error" in result:
        return {**failed, "detail": f"failed: {result['error']}"}
    try:
        ratio, detail = float(bench.ratio(result)), bench.detail(result)
    except (KeyError, TypeError, ValueError) as err:
        return {**failed, "detail": f"failed: unexpected JSON ({type(err).__name__}: {err})"}
    met = None if bench.goal is None else ratio >= bench.goal
    return {**failed, "ratio": ratio, "met": met, "detail": detail}


def markdown(rows: list[dict[str, Any]], where: dict[str, str]) -> str:
    """The table, the commands and the machine as markdown."""
    lines = [
        f"Last run on {where['cores']} cores ({where['cpu']}), Python {where['python']}; each row "
        "gives when and at which commit it was measured.",
        "",
        "| | benchmark | ratio | goal | met | numbers | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        goal = "-" if r["goal"] is None else f">= {r['goal']:g}x"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        cells = [r["key"], r["title"], ratio, goal, met, r["detail"], r.get("measured", "-")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Commands (from the repository root):", ""]
    by_key = {b.key: b for b in BENCHES}
    lines += [f"- {r['key']}: `.venv/bin/python benchmarks/{' '.join(by_key[r['key']].argv)}`" for r in rows]
    return "\n".join(lines) + "\n"


def earlier(path: Path) -> tuple[dict[str, dict[str, Any]], Result]:
    """Rows and results of an earlier run written to ``path`` (empty when there is none)."""
    if not path.is_file():
        return {}, {}
    old = json.loads(path.read_text())
    stamp = f"{old['machine']['date']}, `{old['machine']['commit']}`"
    known = {b.key for b in BENCHES}
    rows = {r["key"]: {"measured": stamp, **r} for r in old["rows"] if r["key"] in known}
    return rows, old["results"]


def main() -> None:
    """Runs the selected benchmarks and writes the table.

    With ``--only``, the rows of the other benchmarks are kept from the earlier table, each with
    the date and commit it was measured at.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    keys = [b.key for b in BENCHES]
    parser.add_argument("--only", nargs="+", choices=keys, help="run these benchmarks only")
    parser.add_argument("--out", default=str(HERE / "results" / "bench"), help="writes OUT.md and OUT.json")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="kill a benchmark after this long")
    args = parser.parse_args()
    out = Path(args.out)
    rows, results = earlier(out.with_suffix(".json")) if args.only else ({}, {})
    table = ""
    for bench in BENCHES:
        if not args.only or bench.key in args.only:
            results[bench.key] = run(bench, args.timeout_s)
            where = machine()
            rows[bench.key] = {
                **row(bench, results[bench.key]),
                "measured": f"{where['date']}, `{where['commit']}`",
            }
            table = write(out, [rows[k] for k in keys if k in rows], results, where)
    print(f"\n{table}\nwritten: {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    if any("error" in results[k] for k in args.only or keys):
        sys.exit(1)


def write(out: Path, rows: list[dict[str, Any]], results: dict[str, Result], where: dict[str, str]) -> str:
    """Writes ``out``.md and .json (after each benchmark: a later crash loses nothing); returns the table."""
    table = markdown(rows, where)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    kept = {r["key"]: results[r["key"]] for r in rows if r["key"] in results}
    out.with_suffix(".json").write_text(
        json.dumps({"machine": where, "rows": rows, "results": kept}, indent=2)
    )
    return table


if __name__ == "__main__":
    main()
