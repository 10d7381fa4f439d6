"""Paired ablation: uniform replay vs DSCL + TAO-RL (protocols: benchmarks/ABLATION.md).

Two protocols (``--setting``): ``calculator`` (protocol 2, the default: the main job's env, where
RL learns) and ``function_calling`` (protocol 1, where RL did not improve on its SFT checkpoint).

For each seed: cold-start SFT once, a checkpoint, the greedy held-out reward of that checkpoint;
then each arm trains from the checkpoint with the same task and evaluation seeds (a paired design),
on the synchronous schedule, so every count is independent of machine load. Every run logs, per
iteration, the rollouts generated (every trajectory the runners played, kept or dropped), the
learner samples and the counters that explain them, and at each evaluation the greedy held-out
reward and success on a fixed set of prompts (the setting's ``metric`` is the endpoint).

Endpoints (all fixed in ABLATION.md before any run): the area under the held-out gain curve against
rollouts generated (primary) and against learner samples; rollouts to a target gain (secondary);
paired across seeds with bootstrap 95% intervals.

Run: ``.venv/bin/python benchmarks/ablation.py`` (resumable: finished runs in
``OUT/<prefix>.partial.jsonl`` are not run again), split over two processes with
``--seeds 0 2 4 6 8 --threads 1`` and ``--seeds 1 3 5 7 9 --threads 1``; ``--summarize`` rebuilds
the table and plot from the partial file; ``--quick`` is a smoke run whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actorlearner import AlgorithmConfig
from actorlearner.replay.dscl import penalty_format_yaml


@dataclass(frozen=True)
class Setting:
    """One protocol of ABLATION.md: its config, shared settings, arms and budget defaults.

    Attributes:
        config: The YAML config every run starts from.
        common: Settings every run of the protocol shares ("Setting").
        arms: The two arms ("Arms"); everything not named there is ``common`` or the config's.
        metric: The held-out number the endpoints use ("reward" or "success").
        prefix: Stem of the result files in ``--out`` (``<prefix>.partial.jsonl``, ``.md``...).
        title: The plot's title.
        defaults: The protocol's budget (argparse defaults: sft_steps, iterations, eval_every,
            eval_episodes, target_gain).
    """

    config: str
    common: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    metric: str
    prefix: str
    title: str
    defaults: dict[str, Any] = field(default_factory=dict)


_SHARED: dict[str, Any] = {
    "training.synchronous": "true",
    "training.time_budget_s": "null",
    "env_runners.num_env_runners": 0,
    "env_runners.num_tasks": 256,
    "replay.max_reuse": 2,
    "replay.max_staleness": 4,
    "evaluation.interval": 0,
    "reporting.progress": "false",
    "reporting.tensorboard": "false",
    "reporting.checkpoint_interval": 0,
}
TAO_FILTERS = "[tool_failure_mask, uniform_tool_outcome, void_turn, overlong, zero_variance]"


def _arms(reward_range: str, batch_groups: int, dscl_extra: str = "") -> dict[str, dict[str, Any]]:
    """The two arms on an env's reward range; ``dscl_extra``: more DSCL options (``, key: value``)."""
    dscl = (
        f"{{name: dscl, reward_range: {reward_range}, warmup_batches: 0, batch_groups: {batch_groups}"
        f"{dscl_extra}}}"
    )
    return {
        "uniform": {
            "replay.priority_fn": "uniform",
            "replay.filters": "[void_turn, overlong, zero_variance]",
            "training.entropy_advantage_coef": 0.0,
        },
        "dscl+tao_rl": {
            "replay.priority_fn": dscl,
            "replay.filters": TAO_FILTERS,
            "training.entropy_advantage_coef": 0.01,
        },
    }


SETTINGS: dict[str, Setting] = {
    # Protocol 1 (2026-12-02): FunctionCalling, ToolRL reward; RL did not improve on SFT.
    "function_calling": Setting(
        config="configs/function_calling.yaml",
        common={
            **_SHARED,
            "training.train_batch_groups": 8,
            "environment.env_config": "{categories: [single, multiple, parallel]}",
            "replay.capacity": 32,
        },
        arms=_arms("[-3, 4]", 8),
        metric="reward",
        prefix="ablation",
        title="FunctionCalling ablation (paired seeds)",
        defaults={
            "sft_steps": 200,
            "iterations": 30,
            "eval_every": 2,
            "eval_episodes": 100,
            "target_gain": 0.1,
        },
    ),
    # Protocol 2 (2026-12-04): the main job's Calculator, where RL does learn (ABLATION.md).
    "calculator": Setting(
        config="configs/calculator.yaml",
        common={**_SHARED, "training.train_batch_groups": 16, "replay.capacity": 64},
        # the format penalty's range (docs/algorithms.md §7b): the pilot's DSCL read it on [0, 1]
        arms=_arms("[-1, 1]", 16, f", component_ranges: {penalty_format_yaml()}"),
        metric="success",
        prefix="ablation_calculator",
        title="Calculator ablation (paired seeds)",
        defaults={
            "sft_steps": 600,
            "iterations": 60,
            "eval_every": 2,
            "eval_episodes": 200,
            "target_gain": 0.4,
        },
    ),
}
"""The protocols of ABLATION.md by ``--setting`` name."""
ARMS = tuple(SETTINGS["calculator"].arms)
"""The arm names (the same in every setting)."""

COUNTERS = (
    "rollout/episodes",
    "rollout/groups",
    "rollout/prompts_skipped",
    "buffer/groups_added",
    "buffer/groups_dropped",
    "buffer/sampled_groups",
    "learner/trajectories",
    "learner/useful_trajectories",
    "dscl/excluded",
    "dscl/revisited",
    "dscl/down_weighted",
    "rollout/reward_mean",
)
"""Per-iteration metrics kept in the raw results."""


def _overrides(settings: dict[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


def _threads(args: argparse.Namespace) -> dict[str, Any]:
    """Thread caps, and the ``--set`` overrides (pilots only: the protocol's runs use none)."""
    extra = dict(item.split("=", 1) for item in args.set)
    if not args.threads:
        return extra
    return {"learners.num_threads": args.threads, "debugging.ray_num_cpus": args.threads, **extra}


def evaluate(algo: Any, args: argparse.Namespace) -> dict[str, float]:
    """Greedy held-out reward and success on the fixed prompts (test-split seeds 0..n-1)."""
    out = algo.evaluate(args.eval_episodes, modes=("greedy",))
    return {"reward": out["eval/greedy/reward_mean"], "success": out["eval/greedy/success_rate"]}


def prepare_seed(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """SFT once for ``seed``; returns the checkpoint's model directory and its held-out score."""
    done = root / f"sft-{seed}.json"
    if done.exists():
        info: dict[str, Any] = json.loads(done.read_text())
        made = (info.get("setting", args.setting), info.get("sft_steps", args.sft_steps))
        if made != (args.setting, args.sft_steps):
            raise SystemExit(
                f"{done}: an SFT checkpoint of (setting, sft steps) {made}, not "
                f"{(args.setting, args.sft_steps)}; use another --work"
            )
        return info
    setting = SETTINGS[args.setting]
    settings = {
        **setting.common,
        **_threads(args),
        "debugging.seed": seed,
        "sft.steps": args.sft_steps,
        "reporting.run_dir": str(root),
        "reporting.name": f"sft-{seed}",
    }
    algo = AlgorithmConfig.from_yaml(setting.config, _overrides(settings)).build()
    try:
        start = time.perf_counter()
        algo.pretrain()
        sft_s = time.perf_counter() - start
        score = evaluate(algo, args)
        model = str(Path(algo.save(str(root / f"sft-{seed}"))) / "model")
    finally:
        algo.stop()
    info = {"seed": seed, "model": model, "start": score, "sft_s": sft_s}
    info.update(setting=args.setting, sft_steps=args.sft_steps)  # checked when the checkpoint is reused
    done.write_text(json.dumps(info))
    return info


def run_arm(arm: str, seed: int, sft: dict[str, Any], args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One arm from the seed's SFT checkpoint: the per-iteration counters and the held-out curve."""
    setting = SETTINGS[args.setting]
    settings = {
        **setting.common,
        **setting.arms[arm],
        **_threads(args),
        "debugging.seed": seed,
        "model.model": sft["model"],
        "sft.steps": 0,
        "training.num_iterations": args.iterations,
        "reporting.run_dir": str(root),
        "reporting.name": f"{arm}-{seed}",
    }
    algo = AlgorithmConfig.from_yaml(setting.config, _overrides(settings)).build()
    rollouts, samples = 0.0, 0.0
    curve = [{"iteration": 0, "rollouts": 0.0, "samples": 0.0, **sft["start"]}]
    iterations: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        for it in range(1, args.iterations + 1):
            metrics = algo.train()
            rollouts += metrics.get("rollout/episodes", 0.0)
            samples += metrics.get("learner/trajectories", 0.0)
            iterations.append({k: float(metrics.get(k, 0.0)) for k in COUNTERS})
            if it % args.eval_every == 0 or it == args.iterations:
                curve.append(
                    {"iteration": it, "rollouts": rollouts, "samples": samples, **evaluate(algo, args)}
                )
    finally:
        algo.stop()
    return {
        "arm": arm,
        "seed": seed,
        "curve": curve,
        "iterations": iterations,
        "seconds": time.perf_counter() - start,
        "settings": {k: str(v) for k, v in settings.items()},
    }


# -- endpoints (pure functions, tested in tests/test_ablation.py) --------------------------------


def gain_auc(curve: list[dict[str, float]], x: str, x_max: float, metric: str = "reward") -> float:
    """Mean held-out gain over ``[0, x_max]`` of ``x`` ("rollouts" or "samples").

    The gain is ``metric`` (the reward or the success rate) minus the curve's first point (the
    shared SFT checkpoint), linearly interpolated between evaluations; the area is divided by
    ``x_max``, so it is in ``metric``'s units. A curve ending before ``x_max`` is held at its last
    value.
    """
    xs = np.array([p[x] for p in curve], dtype=np.float64)
    ys = np.array([p[metric] for p in curve], dtype=np.float64) - curve[0][metric]
    grid = np.linspace(0.0, x_max, 513)
    return float(np.trapezoid(np.interp(grid, xs, ys), grid) / x_max) if x_max > 0 else 0.0


def to_target(
    curve: list[dict[str, float]], x: str, gain: float, metric: str = "reward"
) -> tuple[float, bool]:
    """``x`` at which the held-out gain first reaches ``gain``, interpolated between evaluations.

    Returns:
        (value, reached). A curve that never reaches the target gives its last ``x`` and False:
        a lower bound (censored).
    """
    base = curve[0][metric]
    for p0, p1 in itertools.pairwise(curve):
        g0, g1 = p0[metric] - base, p1[metric] - base
        if g0 >= gain:
            return float(p0[x]), True
        if g1 >= gain:
            return float(p0[x] + (p1[x] - p0[x]) * (gain - g0) / (g1 - g0)), True
    return float(curve[-1][x]), False


def bootstrap_ci(
    values: list[float], stat: Any = np.mean, n: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``stat`` over ``values`` (resampling pairs)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = rng.choice(arr, size=(n, arr.size), replace=True)
    stats = np.apply_along_axis(stat, 1, draws)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def geometric_mean(values: np.ndarray) -> float:
    """exp(mean(log(values)))."""
    return float(np.exp(np.mean(np.log(values))))


def paired(results: list[dict[str, Any]], target_gain: float, metric: str = "reward") -> list[dict[str, Any]]:
    """Per seed with both arms: the endpoints of each arm and their paired comparison."""
    by = {(r["seed"], r["arm"]): r for r in results}
    rows = []
    for seed in sorted({s for s, _ in by}):
        u, d = by.get((seed, "uniform")), by.get((seed, "dscl+tao_rl"))
        if u is None or d is None:
            continue
        r_common = min(u["curve"][-1]["rollouts"], d["curve"][-1]["rollouts"])
        s_common = min(u["curve"][-1]["samples"], d["curve"][-1]["samples"])
        row: dict[str, Any] = {"seed": seed, "rollouts_common": r_common}
        for name, run in (("uniform", u), ("dscl", d)):
            row[f"{name}_auc_rollouts"] = gain_auc(run["curve"], "rollouts", r_common, metric)
            row[f"{name}_auc_samples"] = gain_auc(run["curve"], "samples", s_common, metric)
            row[f"{name}_to_target"], row[f"{name}_reached"] = to_target(
                run["curve"], "rollouts", target_gain, metric
            )
            row[f"{name}_final"] = run["curve"][-1][metric]
            its = run["iterations"]
            generated = sum(i["rollout/episodes"] for i in its)
            row[f"{name}_useful_share"] = sum(i["learner/useful_trajectories"] for i in its) / max(
                generated, 1
            )
            row[f"{name}_skipped"] = sum(i["rollout/prompts_skipped"] for i in its)
        row["auc_rollouts_diff"] = row["dscl_auc_rollouts"] - row["uniform_auc_rollouts"]
        row["auc_samples_diff"] = row["dscl_auc_samples"] - row["uniform_auc_samples"]
        row["to_target_ratio"] = row["dscl_to_target"] / max(row["uniform_to_target"], 1.0)
        rows.append(row)
    return rows


def summarize(results: list[dict[str, Any]], target_gain: float, metric: str = "reward") -> str:
    """The markdown report: per-pair rows, then the paired estimates with bootstrap intervals."""
    rows = paired(results, target_gain, metric)
    if not rows:
        return "no complete pair yet"
    lines = [
        "| seed | start | final u / d | AUC gain vs rollouts (u / d) | AUC gain vs samples (u / d) "
        f"| rollouts to +{target_gain} (u / d) | useful share (u / d) | prompts skipped (d) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    starts = {r["seed"]: r["curve"][0][metric] for r in results}
    for r in rows:
        mark = {True: "", False: "+"}
        lines.append(
            f"| {r['seed']} | {starts[r['seed']]:.2f} | {r['uniform_final']:.2f} / {r['dscl_final']:.2f} "
            f"| {r['uniform_auc_rollouts']:.3f} / {r['dscl_auc_rollouts']:.3f} "
            f"| {r['uniform_auc_samples']:.3f} / {r['dscl_auc_samples']:.3f} "
            f"| {r['uniform_to_target']:.0f}{mark[r['uniform_reached']]} / "
            f"{r['dscl_to_target']:.0f}{mark[r['dscl_reached']]} "
            f"| {r['uniform_useful_share']:.2f} / {r['dscl_useful_share']:.2f} | {r['dscl_skipped']:.0f} |"
        )
    n = len(rows)
    ratios = np.array([r["to_target_ratio"] for r in rows])
    lines += [
        "",
        f"Paired over {n} seeds (bootstrap 95% intervals over seeds; `+`: target not reached, the run's "
        "last count is a lower bound):",
        "",
        _estimate("AUC gain vs rollouts, dscl+tao - uniform", [r["auc_rollouts_diff"] for r in rows]),
        _estimate("AUC gain vs learner samples, dscl+tao - uniform", [r["auc_samples_diff"] for r in rows]),
        f"- rollouts to +{target_gain}, dscl+tao / uniform (geometric mean): {geometric_mean(ratios):.2f}x "
        f"[{_fmt(bootstrap_ci(list(ratios), geometric_mean))}]; reached: uniform "
        f"{sum(r['uniform_reached'] for r in rows)}/{n}, dscl+tao {sum(r['dscl_reached'] for r in rows)}/{n}",
    ]
    return "\n".join(lines)


def _fmt(ci: tuple[float, float]) -> str:
    return f"{ci[0]:.2f}, {ci[1]:.2f}"


def _estimate(label: str, diffs: list[float]) -> str:
    ci = bootstrap_ci(diffs)
    wins = sum(d > 0 for d in diffs)
    mean = np.mean(diffs)
    return f"- {label}: {mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]; dscl+tao ahead on {wins}/{len(diffs)}"


def plot(results: list[dict[str, Any]], path: Path, setting: Setting) -> None:
    """Held-out greedy gain against rollouts generated and against learner samples, one line per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    colours = {"uniform": "tab:gray", "dscl+tao_rl": "tab:green"}
    for k, x in enumerate(("rollouts", "samples")):
        ax = fig.add_subplot(1, 2, k + 1)
        labelled: set[str] = set()
        for r in results:
            xs = [p[x] for p in r["curve"]]
            ys = [p[setting.metric] - r["curve"][0][setting.metric] for p in r["curve"]]
            label = None if r["arm"] in labelled else r["arm"]
            labelled.add(r["arm"])
            ax.plot(xs, ys, color=colours[r["arm"]], alpha=0.6, label=label)
        ax.set_xlabel("rollouts generated" if x == "rollouts" else "learner samples (trajectories)")
        ax.set_ylabel(f"held-out greedy {setting.metric} gain over SFT")
        ax.legend()
    fig.suptitle(setting.title)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def write_outputs(results: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    """Prints the report and writes the setting's ``.md``, ``.json`` and ``.png`` (``ablation*``)."""
    setting = SETTINGS[args.setting]
    report = summarize(results, args.target_gain, setting.metric)
    print(report)
    pairs = paired(results, args.target_gain, setting.metric)
    stem = out / setting.prefix
    stem.with_suffix(".json").write_text(json.dumps({"args": vars(args), "pairs": pairs}, indent=2))
    stem.with_suffix(".md").write_text(report + "\n")
    plot(results, stem.with_suffix(".png"), setting)


def load(path: Path) -> list[dict[str, Any]]:
    """The finished runs in a partial JSONL file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _parse_args() -> argparse.Namespace:
    """The command line; the budget's defaults are the chosen ``--setting``'s protocol."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=list(SETTINGS), default="calculator", help="the protocol")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--target-gain", type=float, help="see ABLATION.md")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: default)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the protocol (pilots)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--work", help="SFT checkpoints and run dirs (default /tmp/actorlearner-ablation/SETTING)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the script runs")
    parser.add_argument("--summarize", action="store_true", help="no runs: report the setting's partial file")
    args = parser.parse_args()
    for key, value in SETTINGS[args.setting].defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.work is None:
        args.work = f"/tmp/actorlearner-ablation/{args.setting}"
    return args


def main() -> None:
    """Runs every (seed, arm) not yet in the partial file, then writes the report."""
    args = _parse_args()
    setting = SETTINGS[args.setting]
    if args.quick:
        args.seeds, args.iterations, args.eval_every, args.eval_episodes, args.sft_steps = [0], 2, 1, 4, 5
        args.out, args.work = str(Path(args.work) / "quick-out"), str(Path(args.work) / "quick")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out, root = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    partial = out / f"{setting.prefix}.partial.jsonl"
    if not args.summarize:
        done = {(r["seed"], r["arm"]) for r in load(partial)}
        for seed in args.seeds:
            if all((seed, arm) in done for arm in args.arms):
                continue
            sft = prepare_seed(seed, args, root)
            for arm in args.arms:
                if (seed, arm) in done:
                    continue
                result = run_arm(arm, seed, sft, args, root)
                print(json.dumps({k: result[k] for k in ("arm", "seed", "seconds")}), flush=True)
                with partial.open("a") as f:
                    f.write(json.dumps(result) + "\n")
    write_outputs(load(partial), args, out)


if __name__ == "__main__":
    main()
