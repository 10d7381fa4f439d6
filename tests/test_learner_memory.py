"""Memory knobs of the learner for real models: gradient checkpointing and bfloat16 autocast."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.learner import Learner, collate
from tests import test_learner
from tests.conftest import small_config

TEMPERATURE = test_learner.TEMPERATURE
model_dir = test_learner.model_dir  # the fixtures: a tiny model, and groups it played
groups = test_learner.groups


def _learner(model_dir: str, **learner) -> Learner:
    training = TrainingConfig(lr=1e-3, shared_prefix=False)  # one forward per micro-batch in both arms
    return Learner(
        model_dir, training, LearnerConfig(device="cpu", **learner), temperature=TEMPERATURE, seed=0
    )


def _updated(learner: Learner, groups) -> tuple[dict[str, torch.Tensor], int]:
    """Parameters after one update, and the elements of the tensors autograd saved for backward."""
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel()
        return tensor

    learner.start_rl()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        learner.update(groups)
    return {k: v.detach().clone() for k, v in learner.model.named_parameters()}, saved[0]


def test_gradient_checkpointing_saves_fewer_activations_and_keeps_the_update(model_dir, groups) -> None:
    plain, plain_saved = _updated(_learner(model_dir), groups)
    checked, checked_saved = _updated(_learner(model_dir, gradient_checkpointing=True), groups)
    assert checked_saved < 0.5 * plain_saved, (checked_saved, plain_saved)  # layers are recomputed instead
    for name, value in plain.items():
        torch.testing.assert_close(checked[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_float32_weights(model_dir, groups) -> None:
    before = {k: v.detach().clone() for k, v in _learner(model_dir).model.named_parameters()}
    plain, _ = _updated(_learner(model_dir), groups)
    learner = _learner(model_dir, autocast="bf16")
    dtypes = []
    learner.model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, i, out: dtypes.append(out.dtype)
    )
    mixed, _ = _updated(learner, groups)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    # The head runs in float32: logprobs stay close to float32's on the same weights (bf16 head: ~0.1).
    fresh, mixed_learner = _learner(model_dir), _learner(model_dir, autocast="bf16")
    batch = collate([t for g in groups for t in g.trajectories])
    with torch.no_grad():
        exact, _ = fresh._logprobs(fresh.model, batch)
        rounded, _ = mixed_learner._logprobs(mixed_learner.model, batch)
        copied, _ = mixed_learner._logprobs(mixed_learner._frozen_copy(), batch)  # the KL reference's path
    on = batch.mask > 0
    assert rounded.dtype == torch.float32
    assert float((rounded - exact)[on].abs().max()) < 0.05
    torch.testing.assert_close(copied, rounded)
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())
    step = torch.cat([(plain[k] - before[k]).flatten() for k in before])
    step_bf16 = torch.cat([(mixed[k] - before[k]).flatten() for k in before])
    assert float(torch.nn.functional.cosine_similarity(step, step_bf16, dim=0)) > 0.9  # the same direction


@pytest.mark.parametrize(
    ("knobs", "drop"),
    [
        ({"gradient_checkpointing": True}, 0.2),
        ({"autocast": "bf16"}, 0.2),
        # Adapters on the layers cannot move the embedding or the output head, where this random tiny
        # model learns fastest: measured 5.80 -> 5.53 nats over the 40 steps (full: about -25%).
        ({"lora_rank": 8, "lora_alpha": 32}, 0.03),
    ],
)
def test_a_run_with_the_knob_learns_reaches_the_runner_and_round_trips(tmp_path, knobs, drop) -> None:
    config = small_config(tmp_path, num_iterations=2).sft(steps=40, num_demos=64, batch_size=16, lr=3e-3)
    algo = config.learners(**knobs).build()
    try:
        algo.pretrain()
        algo.train()
        algo.evaluate(2, modes=("greedy",))  # sends the weights; the engine loads them before its next step
        learner = algo.learner.obj
        engine_weights = algo.runners[0].obj.engine.state_dict()
        for name, value in learner.get_weights().items():  # the runner generates with the learner's weights
            torch.testing.assert_close(engine_weights[name], torch.as_tensor(value), msg=name)
        path = algo.save()
        restored = config.learners(**knobs).build()
        try:
            restored.restore(path)
            for name, value in learner.get_weights().items():
                np.testing.assert_allclose(restored.learner.obj.get_weights()[name], value, err_msg=name)
        finally:
            restored.stop()
    finally:
        algo.stop()
    records = [json.loads(line) for line in (algo.run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r["sft/loss"] for r in records if r.get("phase") == "sft"]
    assert len(sft) == 40 and sum(sft[-5:]) < (1 - drop) * sum(sft[:5])  # the loss falls


def test_gradient_checkpointing_refuses_a_model_with_dropout(model_dir, tmp_path) -> None:
    """Checkpointed layers stay in training mode in RL updates: dropout inside them would act."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dropped = tmp_path / "dropout-model"
    config = AutoConfig.from_pretrained(model_dir)
    config.attention_dropout = 0.1
    AutoModelForCausalLM.from_pretrained(model_dir, config=config).save_pretrained(dropped)
    with pytest.raises(
        ValueError, match=r"gradient_checkpointing: the model has dropout \{'attention_dropout': 0.1\}"
    ):
        _learner(str(dropped), gradient_checkpointing=True)


def test_the_output_head_runs_in_float32_under_autocast_and_in_a_deep_copy() -> None:
    """Logits near 30 (a trained model's): a bfloat16 head rounds them by ~0.1, a float32 one does not."""
    from actorlearner.learn.learner import _head_in_float32

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = torch.nn.Linear(64, 500, bias=False)
            torch.nn.init.normal_(self.lm_head.weight, std=4.0)

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.lm_head

    model, hidden = Tiny(), torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    exact = model.lm_head(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = model.lm_head(hidden).float()
    assert float((rounded - exact).abs().max()) > 0.05  # what autocast alone does to the head
    _head_in_float32(model)  # type: ignore[arg-type]
    twin = copy.deepcopy(model)
    torch.nn.init.zeros_(twin.lm_head.weight)  # the copy must use its own weights, not the original's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept, copied = model.lm_head(hidden), twin.lm_head(hidden)
    assert kept.dtype == torch.float32 and float((kept - exact).abs().max()) < 1e-4
    assert float(copied.abs().max()) == 0.0
