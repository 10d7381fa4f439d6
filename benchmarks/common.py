"""What the rollout benchmarks share (``prefix_reuse.py``, ``rollout_vs_generate.py``)."""

from __future__ import annotations

import argparse


def rollout_parser(doc: str, threads_help: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that plays rounds of groups with the env runner.

    Args:
        doc: The script's docstring (its first line describes the parser).
        threads_help: What ``--threads`` sets in this benchmark.

    Returns:
        A parser with ``--rounds``, ``--groups``, ``--max-new-tokens`` and ``--threads``; the
        script adds its own.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--groups", type=int, default=16, help="groups of 8 played at once per round")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    return parser
