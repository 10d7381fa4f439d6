"""Command line: ``actorlearner train CONFIG [section.key=value ...]``, ``eval`` and ``report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from actorlearner.config import AlgorithmConfig, ConfigError
from actorlearner.core.errors import PartDiedError
from actorlearner.env.suites import EvalSuite, get_eval_suite
from actorlearner.runtime.checkpoint import verify_checkpoint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actorlearner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="cold-start SFT, then asynchronous RL, with held-out evaluation")
    train.add_argument(
        "config", nargs="?", help="YAML file of overrides of the defaults (see configs/); not with --resume"
    )
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.lr=1e-4")
    train.add_argument("--no-initial-eval", action="store_true", help="skip evaluating the untrained model")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its newest valid checkpoint, with its config.json and these overrides",
    )
    ev = sub.add_parser("eval", help="held-out evaluation of a checkpoint")
    ev.add_argument("checkpoint", help="a checkpoint directory written by train")
    ev.add_argument("overrides", nargs="*", help="section.key=value, e.g. evaluation.num_episodes=100")
    ev.add_argument(
        "--bfcl",
        nargs="*",
        metavar="CATEGORY",
        help="report greedy accuracy per BFCL v4 category instead (all supported ones when none given); "
        "evaluation.num_episodes caps the tasks per category",
    )
    report = sub.add_parser("report", help="PNG plots and report.md from a run's metrics.jsonl")
    report.add_argument("run_dir", help="a run directory written by train")
    report.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    view = sub.add_parser("view", help="an HTML page of the trajectories the learner saw (samples.jsonl)")
    view.add_argument("run_dir", help="a run directory written by train")
    view.add_argument("--out", help="output file (default: RUN_DIR/view.html)")
    view.add_argument("--tokenizer", help="tokenizer directory (default: the run's model, from run.json)")
    return parser


def _train(args: argparse.Namespace) -> int:
    """Trains; exits 128 + the signal's number when SIGINT (130) or SIGTERM (143) stopped the run."""
    from actorlearner.train import run_training

    config = _resume_config(args) if args.resume else None
    if config is None:
        if args.config is None or "=" in args.config:
            raise ConfigError("train: pass a YAML config (see configs/), or --resume RUN_DIR")
        config = AlgorithmConfig.from_yaml(args.config, args.overrides)
    summary = run_training(config, initial_eval=not args.no_initial_eval)
    return 128 + summary["signal"] if summary.get("signal") else 0


def _resume_config(args: argparse.Namespace) -> AlgorithmConfig:
    """The config of the run to resume (its ``config.json``) with the command line's overrides."""
    run_dir = Path(args.resume)
    if args.config is not None and "=" not in args.config:
        raise ConfigError(
            f"train: with --resume the config is {run_dir / 'config.json'}; pass only key=value overrides"
        )
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"resume: {run_dir} has no readable config.json ({type(err).__name__})") from None
    overrides = [*([args.config] if args.config else []), *args.overrides]
    config = AlgorithmConfig().update_from_dict(saved).update_from_overrides(overrides)
    return config.reporting(run_dir=str(run_dir.parent), name=run_dir.name, resume=True)


EVAL_SECTIONS = ("environment", "env_runners", "model", "evaluation", "debugging")


def _eval(args: argparse.Namespace) -> int:
    from actorlearner.train import format_report

    suite, categories = None, []
    if args.bfcl is not None:  # checked before anything starts
        suite = get_eval_suite("bfcl")
        categories = suite.check_categories(args.bfcl)
    ckpt = Path(args.checkpoint)
    saved = _checkpoint_config(ckpt)
    config = AlgorithmConfig()
    saved["model"] = {**saved.get("model", {}), "model": str(ckpt / "model")}  # not the one trained from
    for section in EVAL_SECTIONS:  # what evaluation needs; the rest may name driver-only objects
        config.update(section, **saved.get(section, {}))
    config.sft(enabled=False).training(num_iterations=0)
    config.reporting(name=f"eval-{ckpt.parent.name}-{ckpt.name}").update_from_overrides(args.overrides)
    algo = config.build()
    try:
        if suite is not None:
            metrics = _run_suite(algo, suite, categories, config.evaluation.num_episodes)
        else:
            metrics = algo.evaluate()
            print(format_report({ckpt.name: metrics}))
    finally:
        algo.stop()
    print(json.dumps(metrics, indent=2))
    return 0


def _checkpoint_config(ckpt: Path) -> dict[str, Any]:
    """The config saved in a checkpoint, after the checkpoint is verified against its manifest.

    Raises:
        ConfigError: One line (a ``CheckpointError`` naming the file when the checkpoint is damaged).
    """
    state_file = ckpt / "algorithm.json"
    if not state_file.is_file():
        raise ConfigError(f"checkpoint: {ckpt} has no algorithm.json; pass a directory written by train")
    try:
        saved = json.loads(state_file.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(
            f"checkpoint: {state_file} is not a checkpoint's state ({err!r}); "
            "pass a directory written by train"
        ) from None
    verify_checkpoint(ckpt)
    return dict(saved)


def _run_suite(algo: Any, suite: EvalSuite, categories: list[str], max_episodes: int) -> dict[str, float]:
    """Plays a suite's categories (the first ``max_episodes`` tasks of each) and prints its table."""
    scores, results = suite.run(algo.evaluate_on, categories, max_episodes)
    width = max(len(c) for c in scores)
    print(f"{suite.name.upper() + ' category':<{width}}  accuracy  tasks")
    for category, value in scores.items():
        tasks = len(results[category]) if category in results else sum(len(r) for r in results.values())
        print(f"{category:<{width}}  {100 * value:7.1f}%  {tasks:5d}")
    return scores


def _report(args: argparse.Namespace) -> int:
    from actorlearner.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"report: {run_dir} has no metrics.jsonl; pass a run directory written by train")
    for path in write_report(run_dir, Path(args.out) if args.out else None):
        print(path)
    return 0


def _view(args: argparse.Namespace) -> int:
    from actorlearner.view import write_view

    print(write_view(Path(args.run_dir), Path(args.out) if args.out else None, args.tokenizer))
    return 0


COMMANDS = {"train": _train, "eval": _eval, "report": _report, "view": _view}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; overrides may also follow an option (``train CONFIG --no-initial-eval k=v``).

    argparse ends a ``nargs="*"`` positional at the first option, so what follows it would be
    "unrecognized": those words are overrides when the command takes them.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(word.startswith("-") for word in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``actorlearner`` console script."""
    args = _parse(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:  # every bad input ends here: one line, exit code 2, no traceback
        message = " ".join(str(err).splitlines())
        print(f"actorlearner: config error: {message}", file=sys.stderr)
        return 2
    except PartDiedError as err:  # a fault the run cannot survive: one line, exit code 1
        print(f"actorlearner: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
