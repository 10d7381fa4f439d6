"""The main job: evaluate, cold-start SFT, evaluate, asynchronous RL, evaluate, checkpoint.

A resumed run (``reporting.resume``) restores its newest checkpoint and goes straight to RL;
SIGINT/SIGTERM during RL end it after the current iteration, with a checkpoint.

Prints held-out success before and after each phase, greedy and at the training temperature, so
the RL phase's own gain is visible.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from actorlearner.config import AlgorithmConfig
from actorlearner.core.protocols import Trainer

REPORT_KEYS = (
    ("greedy success", "eval/greedy/success_rate"),
    ("sampled success", "eval/sampled/success_rate"),
    ("greedy tool use", "eval/greedy/tool_use_rate"),
    ("sampled tool use", "eval/sampled/tool_use_rate"),
    ("sampled reward", "eval/sampled/reward_mean"),
)


def _fmt(key: str, value: Any) -> str:
    if not (isinstance(value, float) and math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if "reward" in key else f"{100 * value:.1f}%"


def format_report(phases: dict[str, dict[str, float]]) -> str:
    """A small table: one row per phase, one column per held-out metric."""
    header = f"{'held-out':<14}" + "".join(f"{label:>18}" for label, _ in REPORT_KEYS)
    rows = [header, "-" * len(header)]
    for phase, metrics in phases.items():
        rows.append(f"{phase:<14}" + "".join(f"{_fmt(key, metrics.get(key)):>18}" for _, key in REPORT_KEYS))
    return "\n".join(rows)


class StoppedBeforeRL(Exception):
    """SIGINT or SIGTERM came before the RL phase: the run ends without a checkpoint."""


class StopFlag:
    """A signal handler that asks the run to stop at the next safe point.

    In the RL phase that is the end of the current iteration (then a checkpoint is written).
    Before it, during the initial evaluation or SFT, it is the end of the current evaluation or
    chunk of SFT steps: :meth:`check` raises :class:`StoppedBeforeRL` and no checkpoint is written
    (a resume restores RL checkpoints only). A second SIGINT (Ctrl-C) raises ``KeyboardInterrupt``
    at once.

    Attributes:
        signum: The signal received, or None.
        phase: What the run is doing (``"evaluation"``, ``"SFT"`` or ``"RL"``), for the message.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "RL"

    def __call__(self, signum: int, frame: Any) -> None:
        """Records the signal (the handler installed by :func:`stop_on_signals`)."""
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        if self.phase == "RL":
            print(f"{name}: finishing this iteration, then writing a checkpoint", file=sys.stderr, flush=True)
        else:
            print(
                f"{name}: stopping after this {self.phase} chunk, before RL: no checkpoint",
                file=sys.stderr,
                flush=True,
            )

    def check(self) -> None:
        """Raises :class:`StoppedBeforeRL` when a signal came (call it before the RL phase only)."""
        if self.signum is not None:
            raise StoppedBeforeRL(signal.Signals(self.signum).name)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Installs :class:`StopFlag` for SIGINT and SIGTERM (main thread only), restoring the old handlers."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _rl_loop(algo: Trainer, show: bool, flag: StopFlag) -> dict[str, float]:
    """RL iterations until ``training.num_iterations`` in all (a resumed run counts the restored ones)."""
    training = algo.config.training
    start = time.monotonic()
    last: dict[str, float] = {}
    total = training.num_iterations
    with tqdm(total=total, initial=algo.iteration, desc="RL", unit="it", disable=not show) as bar:
        while algo.iteration < total and flag.signum is None:
            last = algo.train()
            bar.update(1)
            bar.set_postfix(
                reward=f"{last.get('rollout/reward_mean', math.nan):.2f}",
                success=f"{last.get('rollout/success_rate', math.nan):.2f}",
                tool=f"{last.get('rollout/tool_use_rate', math.nan):.2f}",
                stale=f"{last.get('learner/staleness_mean', math.nan):.1f}",
            )
            if training.time_budget_s and time.monotonic() - start > training.time_budget_s:
                break
    return last


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Adds the wall-clock seconds of the block to ``timings[key]``."""
    start = time.monotonic()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.monotonic() - start


def _before_rl(
    algo: Trainer, initial_eval: bool, show: bool, timings: dict[str, float], flag: StopFlag
) -> dict[str, Any]:
    """The initial evaluation and cold-start SFT (with its evaluation); returns the phases' metrics.

    Raises:
        StoppedBeforeRL: After the evaluation or SFT chunk during which a signal came.
    """
    phases: dict[str, Any] = {}
    if initial_eval:
        flag.phase = "evaluation"
        with timed(timings, "eval_initial_s"):
            phases["initial"] = algo.evaluate(algo.config.evaluation.initial_episodes)
        flag.check()
    flag.phase = "SFT"
    with (
        timed(timings, "sft_s"),
        tqdm(total=algo.config.sft.steps, desc="SFT", unit="step", disable=not show) as bar,
    ):

        def show_sft(done: int, m: dict[str, float]) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{m['sft/loss']:.3f}")
            flag.check()

        sft = algo.pretrain(show_sft)
    for part in ("demos", "steps"):
        if f"sft/{part}_s" in sft:
            timings[f"sft_{part}_s"] = sft[f"sft/{part}_s"]
    flag.check()
    if sft:
        flag.phase = "evaluation"
        with timed(timings, "eval_sft_s"):
            phases["after SFT"] = algo.evaluate()
        flag.check()
    flag.phase = "RL"
    return phases


def run_training(config: AlgorithmConfig, *, initial_eval: bool = True) -> dict[str, Any]:
    """Runs the main job and returns its summary (also written to ``summary.json``).

    With ``reporting.resume`` it restores the run directory's newest valid checkpoint and runs
    only the remaining RL iterations (no initial evaluation, no SFT). SIGINT or SIGTERM during
    the RL phase ends it after the current iteration with a checkpoint and no final evaluation;
    before it (evaluation, SFT) after the current evaluation or chunk of SFT steps, without a
    checkpoint. The summary's ``signal`` is then the signal's number (else None).

    Args:
        config: The validated config.
        initial_eval: Also evaluate the untrained model.
    """
    t0 = time.monotonic()
    algo = config.build()
    phases: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {"setup_s": time.monotonic() - t0}
    checkpoint: str | None = None
    last: dict[str, float] = {}
    try:
        print(f"run dir: {algo.run_dir}\nmodel:   {algo.model_path}\nenv:     {algo.env_spec.id}")
        with stop_on_signals() as flag:
            if config.reporting.resume:
                resumed = algo.latest_checkpoint()
                algo.restore(resumed)
                print(f"resumed: {resumed} (iteration {algo.iteration})", flush=True)
            else:
                phases.update(_before_rl(algo, initial_eval, config.reporting.progress, timings, flag))
            with timed(timings, "rl_s"):
                last = _rl_loop(algo, config.reporting.progress, flag)
            if flag.signum is None:
                with timed(timings, "eval_rl_s"):
                    phases["after RL"] = algo.evaluate()
            with timed(timings, "checkpoint_s"):
                checkpoint = algo.checkpoint()
    except StoppedBeforeRL as stopped:
        print(f"{stopped}: stopped before RL; no checkpoint written", file=sys.stderr, flush=True)
    finally:
        algo.stop()
    timings["total_s"] = time.monotonic() - t0
    summary = {
        "run_dir": str(algo.run_dir),
        "checkpoint": checkpoint,
        "iterations": algo.iteration,
        "signal": flag.signum,
        "phases": phases,
        "timings": timings,
        "last_iteration": last,
    }
    (algo.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(format_report(phases))
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return summary
