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


def _ref_weights(algo: Any) -> dict[str, torch.Tensor]:
    return algo.runtime.run(algo.learner.call(Learner.get_state, components=("ref_model",)))["ref_model"]


def test_restore_keeps_the_kl_reference_instead_of_rebuilding_it_from_the_policy(tmp_path: Path) -> None:
    first = small_config(tmp_path / "a", kl_beta=0.1, lr=1e-2).build()
    try:
        for _ in range(2):
            first.train()  # the reference is the policy as RL began; two updates move the policy away
        ckpt = first.save(str(tmp_path / "ckpt"))
        reference = _ref_weights(first)
        policy = first.runtime.run(first.learner.call(Learner.get_state, components=("model",)))["model"]
    finally:
        first.stop()
    assert (Path(ckpt) / "ref_model.safetensors").is_file()
    assert any(not torch.equal(reference[k], policy[k]) for k in reference)

    second = small_config(tmp_path / "b", kl_beta=0.1, lr=1e-2).build()
    try:
        second.restore(ckpt)
        second.train()  # starts the RL phase after the restore
        restored = _ref_weights(second)
    finally:
        second.stop()
    assert restored is not None and restored.keys() == reference.keys()
    assert all(torch.equal(restored[k], reference[k]) for k in reference), "the KL reference moved on resume"


def test_restore_continues_the_runners_task_stream(tmp_path: Path) -> None:
    import pickle

    from actorlearner.rollout.runner import EnvRunner

    def rng_state(algo: Any) -> dict[str, Any]:
        return algo.runtime.run(algo.runners[0].call(EnvRunner.get_state))["rng"]

    first = small_config(tmp_path / "a").build()
    try:
        fresh = rng_state(first)
        first.train()  # draws task seeds
        ckpt = first.save(str(tmp_path / "ckpt"))
    finally:
        first.stop()
    saved = pickle.loads((Path(ckpt) / "runners.pkl").read_bytes())[0]["rng"]
    assert saved != fresh  # the stream has moved on

    second = small_config(tmp_path / "b").build()
    try:
        second.restore(ckpt)
        resumed = rng_state(second)
    finally:
        second.stop()
    assert resumed == saved, "the runner's task stream restarted instead of continuing"
