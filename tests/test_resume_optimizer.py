"""Resuming: the RL phase that follows ``Algorithm.restore`` keeps the checkpoint's AdamW moments.

``Algorithm`` starts the RL phase lazily (on the first ``train()``) and normally resets the optimizer
there; after a restore it must not, or the restored moments are thrown away and the first steps
after a resume are full-size Adam steps from zero moments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from actorlearner.learn.learner import Learner
from tests.conftest import small_config


def _optimizer_state(algo: Any) -> dict[int, dict[str, Any]]:
    """The learner's AdamW state per parameter, read through the learner's handle."""
    state = algo.runtime.run(algo.learner.call(Learner.get_state, components=("optimizer",)))
    return state["optimizer"]["state"]


def _steps(state: dict[int, dict[str, Any]]) -> set[int]:
    return {int(s["step"]) for s in state.values()}


def test_train_after_restore_continues_the_restored_adam_moments(tmp_path: Path) -> None:
    first = small_config(tmp_path / "a").build()
    try:
        first.train()
        ckpt = first.save(str(tmp_path / "ckpt"))
        saved = _optimizer_state(first)
    finally:
        first.stop()
    assert saved and _steps(saved) == {1}

    second = small_config(tmp_path / "b").build()
    try:
        second.restore(ckpt)
        second.train()
        resumed = _optimizer_state(second)
    finally:
        second.stop()
    assert _steps(resumed) == {2}, "the RL phase reset the optimizer restored from the checkpoint"
    beta2 = second.config.training.adam_betas[1]
    for key, moments in saved.items():  # v_2 = beta2 v_1 + (1 - beta2) g^2 >= beta2 v_1
        assert torch.all(resumed[key]["exp_avg_sq"] >= beta2 * moments["exp_avg_sq"] * (1 - 1e-6))
