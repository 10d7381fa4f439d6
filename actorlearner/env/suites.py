"""Evaluation suites: benchmarks scored category by category, e.g. ``actorlearner eval --bfcl``.

An env package describes a benchmark as an :class:`EvalSuite` and registers it under a name with
:func:`register_eval_suite`, preferably as a ``"package.module:ATTR"`` path, so that nothing of the
benchmark is imported until a command asks for it (:func:`get_eval_suite`). The built-in envs
register ``"bfcl"`` (:data:`envs.bfcl.BFCL_SUITE`) in :func:`envs.register_envs`.

The CLI checks the category names (:meth:`EvalSuite.check_categories`) before it starts Ray, then
plays the categories with the checkpoint's policy (:meth:`EvalSuite.run`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actorlearner.core.errors import ConfigError

Evaluate = Callable[[str, dict[str, Any], int], Sequence[Any]]
"""``evaluate(env_id, env_config, num_episodes) -> episodes``, e.g. ``Algorithm.evaluate_on``."""


@dataclass(frozen=True)
class EvalSuite:
    """A benchmark played category by category, each category an env config of one env.

    Attributes:
        name: The suite's name, as the CLI knows it.
        env: Gymnasium id of the env that serves a category.
        categories: The categories, in report order.
        env_config: A category's env keyword arguments, e.g. ``{"category": "simple_python"}``.
        num_tasks: How many tasks a category has.
        score: Metrics from the episodes of each category (trajectories with ``success``), e.g.
            accuracy per category and ``"overall"``.
    """

    name: str
    env: str
    categories: tuple[str, ...]
    env_config: Callable[[str], dict[str, Any]]
    num_tasks: Callable[[str], int]
    score: Callable[[Mapping[str, Sequence[Any]]], dict[str, float]]

    def check_categories(self, names: Sequence[str]) -> list[str]:
        """The categories to play: ``names``, or all of them when ``names`` is empty.

        Raises:
            ConfigError: If a name is not one of :attr:`categories` (the message lists them).
        """
        unknown = sorted(set(names) - set(self.categories))
        if unknown:
            raise ConfigError(
                f"--{self.name}: unknown categories {unknown}; allowed: {', '.join(self.categories)}"
            )
        return list(names) or list(self.categories)

    def run(
        self, evaluate: Evaluate, categories: Sequence[str], max_episodes: int
    ) -> tuple[dict[str, float], dict[str, Sequence[Any]]]:
        """Plays the first ``max_episodes`` tasks of each category (seeds ``0..n-1``) and scores them.

        Args:
            evaluate: Plays episodes of an env, e.g. ``Algorithm.evaluate_on``.
            categories: Categories to play (checked with :meth:`check_categories`).
            max_episodes: Cap on the episodes per category.

        Returns:
            The metrics of :attr:`score` and the episodes per category.
        """
        results: dict[str, Sequence[Any]] = {}
        for category in categories:
            n = min(max_episodes, self.num_tasks(category))
            results[category] = evaluate(self.env, self.env_config(category), n)
        return self.score(results), results


_SUITES: dict[str, EvalSuite | str] = {}
"""Name -> the suite or its import path, as registered."""
_LOADED: dict[str, EvalSuite] = {}
"""Name -> the suite, once imported."""


def register_eval_suite(name: str, suite: EvalSuite | str) -> None:
    """Registers an evaluation suite, or the ``"package.module:ATTR"`` path of one (imported on use).

    Registering the same value twice is a no-op, so an env package may register on every import.

    Raises:
        ValueError: If ``name`` is taken by another suite.
    """
    if _SUITES.get(name, suite) != suite:
        raise ValueError(f"evaluation suite {name!r} is already registered")
    _SUITES[name] = suite
    if isinstance(suite, EvalSuite):
        _LOADED[name] = suite


def eval_suite_names() -> list[str]:
    """Names of the registered suites, sorted."""
    return sorted(_SUITES)


def get_eval_suite(name: str) -> EvalSuite:
    """The suite registered under ``name``, imported now if it was registered as a path.

    Raises:
        ConfigError: If no suite has that name, or its path does not import to an :class:`EvalSuite`.
    """
    if name not in _SUITES:
        raise ConfigError(
            f"unknown evaluation suite {name!r}; known: {', '.join(eval_suite_names()) or 'none'}"
        )
    if name not in _LOADED:
        path = str(_SUITES[name])
        module, _, attr = path.partition(":")
        try:
            loaded = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"evaluation suite {name!r}: cannot import {path!r}: {err}") from None
        if not isinstance(loaded, EvalSuite):
            raise ConfigError(f"evaluation suite {name!r}: {path!r} is not an EvalSuite")
        _LOADED[name] = loaded
    return _LOADED[name]
