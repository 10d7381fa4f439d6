"""``actorlearner report RUN_DIR``: PNG plots and a short ``report.md`` from a run's metrics files.

Each figure is drawn from the metrics named in docs/metrics.md. A figure whose
metrics are all absent is skipped (and listed as skipped in ``report.md``); null, NaN and
non-numeric values are left out of the curves. Figures are drawn on :class:`matplotlib.figure.Figure`
objects directly, rendered by Agg: no display, no pyplot global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Record = Mapping[str, Any]

SMOOTH_FROM = 100  # curves with at least this many points are drawn faint, under a moving average
FILTER_COUNTS = ("groups_dropped", "trajectories_dropped", "tokens_dropped", "tokens_masked")
CURRICULUM_FIRST = ("mastery", "focus")  # dscl/<family>/<name>: these families first, then the rest
SUMMARY_COLUMNS = (
    ("greedy success", "eval/greedy/success_rate"),
    ("sampled success", "eval/sampled/success_rate"),
    ("greedy tool use", "eval/greedy/tool_use_rate"),
    ("sampled tool use", "eval/sampled/tool_use_rate"),
    ("greedy reward", "eval/greedy/reward_mean"),
    ("sampled reward", "eval/sampled/reward_mean"),
)


@dataclass
class Run:
    """What a run directory holds, split by phase.

    Attributes:
        sft: Records with ``"phase": "sft"``, x-axis ``step``.
        rl: Every other record (RL iterations), x-axis ``iteration`` (else ``step``).
        summary: ``summary.json`` when present and readable.
        notes: Problems met while reading (unparsable lines, unreadable summary).
    """

    sft: list[Record] = field(default_factory=list)
    rl: list[Record] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def load_run(run_dir: Path) -> Run:
    """Reads ``metrics.jsonl`` (skipping unparsable lines, e.g. one cut by a crash) and ``summary.json``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``metrics.jsonl``.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    run, bad = Run(), 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record, bad = None, bad + 1
        if isinstance(record, dict):
            is_sft = record.get("phase") == "sft" or ("phase" not in record and _has_prefix(record, "sft/"))
            (run.sft if is_sft else run.rl).append(record)
    if bad:
        run.notes.append(f"{bad} unparsable line(s) in metrics.jsonl were skipped.")
    summary_path = Path(run_dir) / "summary.json"
    if summary_path.is_file():
        try:
            run.summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            run.notes.append(f"summary.json is unreadable ({err}).")
    return run


def _has_prefix(record: Record, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in record)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _x(record: Record, index: int) -> float:
    for key in ("iteration", "step"):
        if (x := _number(record.get(key))) is not None:
            return x
    return float(index)


def _series(
    records: Sequence[Record], key: str, missing_is_zero: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the records with a finite number for ``key``."""
    points = []
    for i, record in enumerate(records):
        y = _number(record.get(key, 0.0 if missing_is_zero else None))
        if y is not None:
            points.append((_x(record, i), y))
    if not points:
        return np.empty(0), np.empty(0)
    xy = np.array(points, dtype=float)
    return xy[:, 0], xy[:, 1]


def _names(records: Iterable[Record], prefix: str, suffix: str = "") -> list[str]:
    """Sorted ``<name>`` of keys ``<prefix><name><suffix>`` (``name`` without ``/``)."""
    names = set()
    for record in records:
        for key in record:
            if key.startswith(prefix) and key.endswith(suffix):
                name = key[len(prefix) : len(key) - len(suffix)]
                if name and "/" not in name:
                    names.add(name)
    return sorted(names)


class Panel(Protocol):
    """One axes of a figure."""

    def has_data(self, records: Sequence[Record]) -> bool:
        """Whether any of the panel's metrics has a number."""
        ...

    def draw(self, ax: Axes, records: Sequence[Record], xlabel: str) -> None:
        """Draws the panel."""
        ...


@dataclass
class Lines:
    """Curves of some metrics over iterations.

    Attributes:
        title: Axes title.
        ylabel: Y-axis label.
        keys: ``(metric, legend label)`` pairs; held-out (``eval/``) metrics are drawn with markers.
        missing_is_zero: An absent key counts as 0 (counters that are only logged when non-zero).
        unit: The values are fractions: the y-axis spans [0, 1] when they fit in it.
        legend: Always draw the legend (by default only when there are several curves).
    """

    title: str
    ylabel: str
    keys: Sequence[tuple[str, str]]
    missing_is_zero: bool = False
    unit: bool = False
    legend: bool = False

    def _present(self, records: Sequence[Record]) -> list[tuple[str, str]]:
        return [(k, label) for k, label in self.keys if any(_number(r.get(k)) is not None for r in records)]

    def has_data(self, records: Sequence[Record]) -> bool:
        """Whether any of the panel's metrics has a number."""
        return bool(self._present(records))

    def draw(self, ax: Axes, records: Sequence[Record], xlabel: str) -> None:
        """Draws one curve per present metric, smoothed when long."""
        lows, highs = [], []
        present = self._present(records)
        for key, label in present:
            xs, ys = _series(records, key, self.missing_is_zero)
            lows.append(ys.min())
            highs.append(ys.max())
            if key.startswith("eval/") or len(ys) == 1:
                ax.plot(xs, ys, "o--", markersize=4, label=label)
            elif len(ys) >= SMOOTH_FROM:
                (line,) = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
                width = len(ys) // 25
                smooth = np.convolve(ys, np.ones(width) / width, mode="valid")
                ax.plot(
                    xs[width // 2 : width // 2 + len(smooth)], smooth, color=line.get_color(), label=label
                )
            else:
                ax.plot(xs, ys, label=label)
        if self.unit and min(lows) >= 0 and max(highs) <= 1:
            ax.set_ylim(-0.03, 1.03)
        ax.set(title=self.title, xlabel=xlabel, ylabel=self.ylabel)
        ax.grid(alpha=0.3)
        if self.legend or len(present) > 1:
            ax.legend(fontsize="small")


@dataclass
class PriorityHistogram:
    """The buffer's priority distribution.

    Snapshots of ``buffer/priority_hist`` (counts, with edges ``buffer/priority_bins`` when logged)
    at the first, middle and last iteration that logged one; without them, the distribution of
    ``buffer/priority_mean`` over iterations.
    """

    def _snapshots(self, records: Sequence[Record]) -> list[Record]:
        with_hist = [r for r in records if _counts(r.get("buffer/priority_hist")) is not None]
        picks = sorted({0, len(with_hist) // 2, len(with_hist) - 1}) if with_hist else []
        return [with_hist[i] for i in picks]

    def has_data(self, records: Sequence[Record]) -> bool:
        """Whether a histogram or any mean priority was logged."""
        return bool(self._snapshots(records)) or _series(records, "buffer/priority_mean")[1].size > 0

    def draw(self, ax: Axes, records: Sequence[Record], xlabel: str) -> None:
        """Draws the snapshots as step histograms, or a histogram of the mean priority."""
        snapshots = self._snapshots(records)
        if snapshots:
            binned = False
            for i, record in enumerate(snapshots):
                counts = _counts(record["buffer/priority_hist"])
                assert counts is not None
                edges = _counts(record.get("buffer/priority_bins"))
                binned = binned or (edges is not None and len(edges) == len(counts) + 1)
                if edges is None or len(edges) != len(counts) + 1:
                    edges = np.arange(len(counts) + 1, dtype=float)
                ax.stairs(counts, edges, label=f"iteration {_x(record, i):g}")
            ax.set(title="Priority distribution in the buffer", ylabel="groups")
            ax.set_xlabel("priority" if binned else "priority bin")
            ax.legend(fontsize="small")
        else:
            values = _series(records, "buffer/priority_mean")[1]
            ax.hist(values, bins=int(np.clip(len(values) // 3, 5, 30)))
            ax.set(title="Mean buffer priority, distribution over iterations")
            ax.set(xlabel="mean priority", ylabel="iterations")
        ax.grid(alpha=0.3)


def _counts(value: Any) -> np.ndarray | None:
    """A list of finite numbers as an array (None otherwise)."""
    if not isinstance(value, list) or not value:
        return None
    numbers = [_number(v) for v in value]
    return None if any(n is None for n in numbers) else np.array(numbers, dtype=float)


def _figure(title: str, records: Sequence[Record], panels: Sequence[Panel], xlabel: str) -> Figure | None:
    """A figure of the panels that have data (None when none has)."""
    present = [p for p in panels if p.has_data(records)]
    if not present:
        return None
    cols = min(len(present), 3)
    rows = math.ceil(len(present) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows), layout="constrained")
    fig.suptitle(title, fontweight="bold")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, present, strict=False):
        panel.draw(ax, records, xlabel)
    for ax in axes[len(present) :]:
        ax.set_visible(False)
    return fig


Panels = tuple[Sequence[Record], Sequence[Panel], str]
"""What a figure shows: its records, its panels, the x-axis label."""


def reward_panels(run: Run) -> Panels:
    """Reward, success and tool use over RL iterations, with held-out points where logged."""
    modes = (("greedy", "held-out greedy"), ("sampled", "held-out sampled"))
    reward = [("rollout/reward_mean", "rollout")] + [(f"eval/{m}/reward_mean", lab) for m, lab in modes]
    rates = [("rollout/success_rate", "success (rollout)"), ("rollout/tool_use_rate", "tool use (rollout)")]
    for metric, name in (("success_rate", "success"), ("tool_use_rate", "tool use")):
        rates += [(f"eval/{m}/{metric}", f"{name} ({lab})") for m, lab in modes]
    panels = [
        Lines("Episode reward", "mean reward", reward),
        Lines("Success and tool use", "fraction of episodes", rates, unit=True),
    ]
    return run.rl, panels, "RL iteration"


def sft_panels(run: Run) -> Panels:
    """Cold-start SFT loss and next-token accuracy."""
    panels = [
        Lines("SFT loss", "cross-entropy", [("sft/loss", "loss")]),
        Lines("SFT token accuracy", "next-token accuracy", [("sft/token_accuracy", "accuracy")], unit=True),
    ]
    return run.sft, panels, "SFT step"


def curriculum_panels(run: Run) -> Panels:
    """One panel per ``dscl/<family>/<name>`` family: mastery, focus weights, then any other."""
    families = {
        key.split("/")[1] for r in run.rl for key in r if key.startswith("dscl/") and key.count("/") == 2
    }
    ordered = [f for f in CURRICULUM_FIRST if f in families] + sorted(families - set(CURRICULUM_FIRST))
    titles = {"mastery": "Sub-task mastery (EMA)", "focus": "Sub-task focus weights"}
    panels = [
        Lines(
            titles.get(family, f"DSCL {family}"),
            family,
            [(f"dscl/{family}/{name}", name) for name in _names(run.rl, f"dscl/{family}/")],
            unit=family in titles,
            legend=True,
        )
        for family in ordered
    ]
    return run.rl, panels, "RL iteration"


def filter_panels(run: Run) -> Panels:
    """What each filter dropped or masked per iteration (counters absent in a record count as 0)."""
    panels = [
        Lines(
            count.replace("_", " ").capitalize() + " per iteration",
            count.split("_")[0],
            [(f"filter/{name}/{count}", name) for name in _names(run.rl, "filter/", f"/{count}")],
            missing_is_zero=True,
            legend=True,
        )
        for count in FILTER_COUNTS
    ]
    return run.rl, panels, "RL iteration"


def priority_panels(run: Run) -> Panels:
    """Priority distribution, mean priority and importance-sampling weight floor (none without priorities)."""
    histogram = PriorityHistogram()
    if not histogram.has_data(run.rl):
        return run.rl, [], "RL iteration"
    panels: list[Panel] = [
        histogram,
        Lines("Mean buffer priority", "priority", [("buffer/priority_mean", "mean")]),
        Lines("Importance-sampling weights", "batch minimum weight", [("buffer/is_weight_min", "minimum")]),
    ]
    return run.rl, panels, "RL iteration"


def learner_panels(run: Run) -> Panels:
    """Learner health: loss, gradient norm, behaviour/learner KL, entropy, staleness, throughput."""
    staleness = [("learner/staleness_mean", "mean"), ("learner/staleness_max", "max")]
    throughput = [("learner/tokens_per_s", "learner"), ("rollout/tokens_per_s", "rollout engines")]
    panels = [
        Lines("Policy loss", "loss", [("learner/loss", "loss")]),
        Lines("Gradient norm (before clipping)", "norm", [("learner/grad_norm", "grad norm")]),
        Lines("Behaviour vs learner KL (k3)", "KL", [("learner/mismatch_kl", "mismatch KL")]),
        Lines("Policy entropy", "nats per token", [("learner/entropy", "entropy")]),
        Lines("Staleness", "weight versions", staleness),
        Lines("Throughput", "tokens/s", throughput),
    ]
    return run.rl, panels, "RL iteration"


class FigureSpec(NamedTuple):
    """One figure of the report: ``<stem>.png``, skipped when none of its panels has data."""

    stem: str
    title: str
    needs: str  # the metrics it is drawn from, for the "skipped" note of report.md
    panels: Callable[[Run], Panels]


FIGURES = (
    FigureSpec(
        "rewards", "Reward and success", "`rollout/reward_mean`, `rollout/success_rate`", reward_panels
    ),
    FigureSpec("sft", "Cold-start SFT", "`sft/loss`, `sft/token_accuracy`", sft_panels),
    FigureSpec(
        "curriculum", "DSCL curriculum", "`dscl/mastery/<sub_task>`, `dscl/focus/...`", curriculum_panels
    ),
    FigureSpec(
        "filters", "Filter drops", "`filter/<name>/groups_dropped`, `.../tokens_masked`", filter_panels
    ),
    FigureSpec(
        "priorities", "Replay priorities", "`buffer/priority_hist`, `buffer/priority_mean`", priority_panels
    ),
    FigureSpec("learner", "Learner health", "`learner/loss`, `learner/grad_norm`, ...", learner_panels),
)
"""The figures, in report order."""


def write_report(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Writes the PNG figures and ``report.md`` for a run.

    Args:
        run_dir: A run directory holding ``metrics.jsonl`` (and optionally ``summary.json``).
        out_dir: Where to write; defaults to ``run_dir/report``.

    Returns:
        The written files: the PNGs in report order, then ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``metrics.jsonl``.
    """
    run = load_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[FigureSpec, Path]] = []
    skipped: list[FigureSpec] = []
    for spec in FIGURES:
        fig = _figure(spec.title, *spec.panels(run))
        if fig is None:
            skipped.append(spec)
            continue
        path = out / f"{spec.stem}.png"
        fig.savefig(path, dpi=110)
        made.append((spec, path))
    report = out / "report.md"
    report.write_text(_markdown(Path(run_dir), run, made, skipped))
    return [path for _, path in made] + [report]


def _markdown(run_dir: Path, run: Run, made: list[tuple[FigureSpec, Path]], skipped: list[FigureSpec]) -> str:
    lines = [f"# Run report: {run_dir.name}", "", f"Run directory: `{run_dir}`. "]
    last = _x(run.rl[-1], len(run.rl) - 1) if run.rl else None
    lines[-1] += f"{len(run.sft)} SFT steps and {len(run.rl)} RL iterations logged"
    lines[-1] += f" (last iteration {last:g})." if last is not None else "."
    lines += [f"_{note}_" for note in run.notes]
    if run.summary is not None:
        lines += ["", *_summary_table(run.summary)]
    lines += ["", "## Figures", ""]
    lines += [f"### {spec.title}\n\n![{spec.title}]({path.name})\n" for spec, path in made] or ["None.", ""]
    if skipped:
        lines += ["## Skipped (metrics absent from this run)", ""]
        lines += [f"- {spec.title} (`{spec.stem}.png`): no {spec.needs}" for spec in skipped]
    return "\n".join(lines).rstrip() + "\n"


def _summary_table(summary: Mapping[str, Any]) -> list[str]:
    """The held-out before/after table of ``summary.json`` (one row per phase) and the timings."""
    phases = summary.get("phases")
    lines = ["## Held-out evaluation (summary.json)", ""]
    if isinstance(phases, dict) and phases:
        lines.append("| phase | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |")
        lines.append("|---" * (len(SUMMARY_COLUMNS) + 1) + "|")
        for phase, metrics in phases.items():
            cells = [
                _cell(key, metrics.get(key) if isinstance(metrics, dict) else None)
                for _, key in SUMMARY_COLUMNS
            ]
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    else:
        lines.append("No evaluation phases recorded.")
    timings = summary.get("timings")
    if isinstance(timings, dict):
        parts = [f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timings.items() if _number(v) is not None]
        if parts:
            lines += ["", "Timings: " + ", ".join(parts) + "."]
    return lines


def _cell(key: str, value: Any) -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    return f"{number:.3f}" if "reward" in key else f"{100 * number:.1f}%"
