"""A sharded learner group (``learners.sharding: fsdp2``): two members hold half the model each and
step like one learner; weights, checkpoints and exports gather the whole model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from actorlearner.config import ConfigError
from actorlearner.core.trajectory import Group
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.learner import Learner
from actorlearner.rollout.runner import EnvRunner
from actorlearner.runtime.group import LearnerGroup
from tests import test_learner
from tests.conftest import small_config
from tests.test_learner_group import _assert_like, _tensors, joined

model_dir = test_learner.model_dir  # the fixtures: a tiny model, and groups it played
groups = test_learner.groups


def _kwargs(model_dir: str, sharding: str = "fsdp2", **training) -> dict:
    # micro-batches of 4: members run several, and (odd row counts) unequal numbers of real ones
    return dict(
        model_path=model_dir,
        training=TrainingConfig(**{"lr": 1e-3, "micro_batch_size": 4, **training}),
        learner=LearnerConfig(device="cpu", num_threads=1, sharding=sharding),
        temperature=test_learner.TEMPERATURE,
        seed=0,
    )


@pytest.fixture
def sharded(ray_session, model_dir):
    """Two learner actors on the session's Ray, joined (gloo) and sharded."""
    with joined(_kwargs(model_dir), sharded=True) as made:
        yield made


@pytest.mark.ray
def test_two_sharded_learners_step_like_one_learner_and_hold_half_the_model(sharded, model_dir, groups):
    runtime, learners = sharded
    one = Learner(**_kwargs(model_dir, sharding="none"))
    one.start_rl()
    runtime.run(learners.call(Learner.start_rl))
    # 9 rows: rank 0 runs 5 (two micro-batches of 4), rank 1 runs 4 and a weightless filler; then
    # 1 row: rank 1 has none and runs a filler only.
    odd = [*groups[:2], Group(group_id="2", prompt_id="2", trajectories=groups[2].trajectories[:1])]
    single = [Group(group_id="3", prompt_id="3", trajectories=groups[2].trajectories[1:2])]
    for batch in (odd, groups, odd, single):
        expected = one.update(batch)
        got = runtime.run(learners.call(Learner.update, batch))
        for key in ("loss", "tokens", "clip_frac", "entropy", "grad_norm"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    # Each member holds about half of the parameters (embeddings and layers split by rows).
    assert got["param_bytes"] == pytest.approx(expected["param_bytes"] / 2, rel=0.02)
    weights = runtime.run(learners.call(Learner.get_weights))  # a gather on both members
    assert set(weights) >= {k for k in one.get_weights() if k != "lm_head.weight"}
    _assert_like(_tensors(weights), one)
    start = _tensors(Learner(**_kwargs(model_dir, sharding="none")).get_weights())
    assert any(not torch.equal(start[k], torch.tensor(weights[k])) for k in start if k in weights)


@pytest.mark.ray
def test_two_sharded_learners_do_sft_like_one_learner(sharded, model_dir, groups):
    runtime, learners = sharded
    demos = [t for g in groups for t in g.trajectories][:9]  # odd: one member runs a filler
    one = Learner(**_kwargs(model_dir, sharding="none"))
    one.set_demonstrations(demos)
    runtime.run(learners.call(Learner.set_demonstrations, demos))
    expected = one.sft_steps(0, 3, 3, batch_size=9, lr=1e-3)
    got = runtime.run(learners.call(Learner.sft_steps, 0, 3, 3, 9, 1e-3))
    for e, g in zip(expected, got, strict=True):
        assert g["sft/loss"] == pytest.approx(e["sft/loss"], rel=1e-5)
    _assert_like(_tensors(runtime.run(learners.call(Learner.get_weights))), one)


@pytest.mark.ray
def test_a_sharded_group_checkpoints_restores_and_exports_the_whole_model(
    sharded, model_dir, groups, tmp_path
):
    runtime, learners = sharded
    one = Learner(**_kwargs(model_dir, sharding="none"))
    one.start_rl()
    one.update(groups)
    # An unsharded learner's checkpoint restores into the shards, optimizer moments included...
    runtime.run(learners.call(Learner.set_state, one.get_state()))
    runtime.run(learners.call(Learner.start_rl, reset_optimizer=False))
    one.update(groups)
    runtime.run(learners.call(Learner.update, groups))
    # ...and the group's checkpoint is in the unsharded layout: one learner resumes from it.
    state = runtime.run(learners.call(Learner.get_state))
    assert state["version"] == 2
    _assert_like(state["model"], one)
    assert set(state["optimizer"]["state"]) == set(one.optimizer.state_dict()["state"])
    other = Learner(**_kwargs(model_dir, sharding="none"))
    other.set_state(state)
    other.start_rl(reset_optimizer=False)
    for key, value in one.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(other.optimizer.state_dict()["state"][key]["exp_avg"], value["exp_avg"])
    # The export is a whole model directory.
    runtime.run(learners.call(Learner.save_pretrained, str(tmp_path / "export")))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).state_dict()
    _assert_like(exported, one)


@pytest.mark.ray
def test_training_with_two_sharded_learners_on_ray_reaches_the_runners(ray_session, tmp_path) -> None:
    config = small_config(tmp_path, num_env_runners=1).learners(
        num_learners=2, num_cpus=0.5, sharding="fsdp2"
    )
    algo = config.build()
    try:
        assert isinstance(algo.learner, LearnerGroup) and algo.learner.sharded
        algo.pretrain()
        metrics = [algo.train() for _ in range(2)]
        algo.sync_weights()
        group = algo.runtime.run(algo.runners[0].call(EnvRunner.run_group, 3))
        algo.save(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    assert algo.version == 3  # SFT, then two RL updates
    assert all(m["learner/tokens"] > 0 for m in metrics)
    assert all(t.policy_versions == [3] for t in group.trajectories)


@pytest.mark.parametrize(
    ("learners", "training", "message"),
    [
        ({"num_learners": 1}, {}, r"^learners.sharding: fsdp2 shards the model over a learner group; needs"),
        ({"lora_rank": 4}, {}, r"^learners.lora_rank: not supported with learners.sharding=fsdp2"),
        ({"autocast": "bf16"}, {}, r"^learners.autocast: not supported with learners.sharding=fsdp2"),
        (
            {"gradient_checkpointing": True},
            {},
            r"^learners.gradient_checkpointing: not supported with learners.sharding=fsdp2",
        ),
        ({}, {"kl_beta": 0.1}, r"^training.kl_beta: not supported with learners.sharding=fsdp2"),
    ],
)
def test_sharding_refuses_what_it_does_not_support_before_ray_starts(tmp_path, learners, training, message):
    config = small_config(tmp_path, num_env_runners=1).learners(
        **{"num_learners": 2, "sharding": "fsdp2", **learners}
    )
    with pytest.raises(ConfigError, match=message):
        config.training(**training).validate()


@pytest.mark.ray
def test_a_sharded_checkpoint_before_the_first_update_changes_nothing(sharded, model_dir, groups):
    """An empty optimizer is saved empty (torch's gather would first take a zero step), and an
    unsharded run's KL reference in a checkpoint is ignored (a sharded group has no KL term)."""
    runtime, learners = sharded
    one = Learner(**_kwargs(model_dir, sharding="none"))
    one.start_rl()
    runtime.run(learners.call(Learner.start_rl))
    state = runtime.run(learners.call(Learner.get_state))
    assert state["optimizer"]["state"] == {}
    with_reference = Learner(**_kwargs(model_dir, sharding="none", kl_beta=0.1))
    with_reference.start_rl()
    state["ref_model"] = with_reference.get_state(["ref_model"])["ref_model"]
    runtime.run(learners.call(Learner.set_state, state))
    one.update(groups)
    runtime.run(learners.call(Learner.update, groups))
    _assert_like(_tensors(runtime.run(learners.call(Learner.get_weights))), one)
