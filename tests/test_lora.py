"""LoRA adapters (``learners.lora_rank``): only adapters train; engines get merged full weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actorlearner.learn import lora
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.learner import Learner
from tests import test_learner

TEMPERATURE = test_learner.TEMPERATURE
model_dir = test_learner.model_dir  # the fixtures: a tiny model, and groups it played
groups = test_learner.groups


def _learner(model_dir: str, **learner) -> Learner:
    return Learner(
        model_dir, TrainingConfig(lr=1e-2), LearnerConfig(device="cpu", **learner), temperature=TEMPERATURE
    )


def test_only_adapters_train_and_engines_get_merged_weights_under_the_base_names(model_dir, groups) -> None:
    plain, adapted = _learner(model_dir), _learner(model_dir, lora_rank=4, lora_alpha=8)
    trainable = [n for n, p in adapted.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)  # all-linear leaves the output head out
    start = adapted.get_weights()
    assert start.keys() == plain.get_weights().keys()  # what any engine loads
    for name, value in plain.get_weights().items():  # B starts at 0: the merged model is the base
        np.testing.assert_array_equal(start[name], value, err_msg=name)
    frozen = {n: p.detach().clone() for n, p in adapted.model.named_parameters() if not p.requires_grad}
    adapted.start_rl()
    adapted.update(groups)
    for name, param in adapted.model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name]), name  # the base never moves
    merged = adapted.get_weights()
    expected = lora.merged_copy(adapted.model).state_dict()  # peft's own merge
    moved = [k for k in merged if not np.array_equal(merged[k], start[k])]
    assert moved and all(k.endswith("_proj.weight") for k in moved)  # only adapted layers change
    for name, value in merged.items():
        torch.testing.assert_close(torch.as_tensor(value), expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_the_optimizer_holds_state_for_the_adapters_only(model_dir, groups) -> None:
    adapted = _learner(model_dir, lora_rank=4)
    adapted.start_rl()
    adapted.update(groups)
    held = sum(p.numel() for group in adapted.optimizer.param_groups for p in group["params"])
    assert held == sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
    assert held < 0.5 * sum(p.numel() for p in adapted.model.parameters())


def test_adapters_round_trip_through_a_checkpoint_and_refuse_a_mismatch(model_dir, groups) -> None:
    adapted = _learner(model_dir, lora_rank=4)
    adapted.start_rl()
    adapted.update(groups)
    state = adapted.get_state(components=("version", "optimizer"))  # as a checkpoint: weights exported
    assert set(state) == {"version", "optimizer", "adapters"}
    fresh = _learner(model_dir, lora_rank=4)
    fresh.start_rl()
    fresh.set_state({**state, "model_dir": model_dir})
    for name, value in adapted.get_weights().items():
        np.testing.assert_array_equal(fresh.get_weights()[name], value, err_msg=name)
    with pytest.raises(RuntimeError, match="lora_rank or lora_target_modules changed"):
        _learner(model_dir, lora_rank=8).set_state(state)


def test_targets_one_name_or_refuse_the_embedding_and_the_head(model_dir) -> None:
    one = _learner(model_dir, lora_rank=4, lora_target_modules="q_proj")  # a name, not a regex
    assert {n.split(".")[-4] for n, p in one.model.named_parameters() if p.requires_grad} == {"q_proj"}
    for target in (["embed_tokens"], ["lm_head"]):  # tied in many models: the runners would lose the delta
        with pytest.raises(ValueError, match="is the embedding or the output head"):
            _learner(model_dir, lora_rank=4, lora_target_modules=target)
    with pytest.raises(ValueError, match=r"^learners.lora_target_modules: \['nothing_here'\]"):
        _learner(model_dir, lora_rank=4, lora_target_modules=["nothing_here"])


def test_a_checkpoint_without_adapters_is_refused_before_anything_changes(model_dir) -> None:
    from actorlearner.core.errors import CheckpointError

    plain = _learner(model_dir)
    plain.start_rl()
    state = {**plain.get_state(components=("version", "optimizer")), "model_dir": model_dir}
    state["ref_model"] = plain.get_state(components=("model",))["model"]
    adapted = _learner(model_dir, lora_rank=4)
    with pytest.raises(CheckpointError, match="the checkpoint has no LoRA adapters"):
        adapted.set_state(state)
    assert adapted.ref_model is None
