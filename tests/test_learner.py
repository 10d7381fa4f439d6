"""The learner's update: on-policy consistency with the engine, micro-batch invariance, resuming."""

from __future__ import annotations

import asyncio

import gymnasium
import numpy as np
import pytest
import torch

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner import register_advantage_estimator, register_kl_estimator, register_policy_loss
from actorlearner.core.protocols import SamplingParams
from actorlearner.core.trajectory import Group
from actorlearner.env.registration import make_env
from actorlearner.learn import losses
from actorlearner.learn.config import LearnerConfig, TrainingConfig
from actorlearner.learn.learner import Learner, collate, group_batch
from actorlearner.learn.prefix import plan_prefix
from actorlearner.learn.registry import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.rollout.engine import AsyncBatchingEngine, HFEngine
from actorlearner.rollout.episode import EnginePolicy, run_episode
from tests.conftest import SMALL_MODEL

SPEC = gymnasium.spec("actorlearner/Calculator-v0")
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {})), **SMALL_MODEL))


@pytest.fixture(scope="module")
def groups(model_dir: str) -> list[Group]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    async def play() -> list[Group]:
        engine = AsyncBatchingEngine(HFEngine(model_dir, seed=1))
        policy = EnginePolicy(engine, SamplingParams(TEMPERATURE, 12, ()))
        out = []
        for seed in range(3):
            trajs = await asyncio.gather(
                *(run_episode(make_env(SPEC, {}), policy, tok, seed, max_tokens=120) for _ in range(4))
            )
            for i, t in enumerate(trajs):
                t.reward = float(i % 2)  # give every group some signal
            out.append(Group(group_id=str(seed), prompt_id=str(seed), trajectories=list(trajs)))
        engine.close()
        return out

    return asyncio.run(play())


def _learner(model_dir: str, **training) -> Learner:
    cfg = TrainingConfig(**{"lr": 1e-3, **training})
    return Learner(model_dir, cfg, LearnerConfig(device="cpu"), temperature=TEMPERATURE, seed=0)


def test_learner_logprobs_match_the_engine_on_sampled_tokens(model_dir, groups) -> None:
    learner = _learner(model_dir)
    learner.start_rl()
    trajs = [t for g in groups for t in g.trajectories]
    batch = collate(trajs)
    with torch.no_grad():
        logp, _ = learner._logprobs(learner.model, batch)
    on = batch.mask > 0
    diff = (logp[on] - batch.old_logprobs[on]).abs()
    assert on.sum() > 50
    assert float(diff.max()) < 1e-3, "shift alignment or temperature differs between engine and learner"


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batching_does_not_change_the_gradient(model_dir, groups, aggregation) -> None:
    grads = []
    for micro in (1, 64):
        learner = _learner(model_dir, micro_batch_size=micro, loss_aggregation=aggregation)
        learner.start_rl()
        learner.optimizer.step = lambda: None  # keep weights: compare gradients only
        learner.update(groups)
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kl_beta", [0.0, 0.1])
def test_a_shared_prompt_run_once_gives_the_same_update_and_sft_gradient(model_dir, groups, kl_beta) -> None:
    batch = group_batch(groups).sorted_by_length()
    plan = plan_prefix(batch.input_ids, batch.mask, batch.attention_mask)
    assert plan is not None and plan.prefixes.shape[0] < batch.input_ids.shape[0], "nothing shared"
    grads, sft = [], []
    for shared in (False, True):
        learner = _learner(model_dir, shared_prefix=shared, kl_beta=kl_beta)
        learner.start_rl()
        learner.optimizer.step = lambda: None  # keep weights: compare gradients only
        metrics = learner.update(groups)
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters() if p.grad is not None]))
        learner.model.zero_grad()
        sft.append((learner._sft_backward(batch), [p.grad.clone() for p in learner.model.parameters()]))
        assert metrics["loss"] != 0.0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert sft[0][0] == pytest.approx(sft[1][0], rel=1e-5)
    for a, b in zip(sft[0][1], sft[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sft_micro_batches_give_the_full_batch_gradient_loss_and_accuracy(model_dir, groups) -> None:
    trajs = [t for g in groups for t in g.trajectories]
    learner = _learner(model_dir)
    learner.model.zero_grad()
    full = collate(trajs)
    logits = learner.model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), full.targets, reduction="none")
    loss = losses.masked_mean(nll, full.mask)
    loss.backward()
    accuracy = losses.masked_mean((logits.argmax(-1) == full.targets).float(), full.mask)
    expected = [p.grad.clone() for p in learner.model.parameters()]
    learner.cfg.micro_batch_size = 5  # 12 rows: micro-batches of 5, 5 and 2, each trimmed to its length
    learner.model.zero_grad()
    got_loss, got_accuracy = learner._sft_backward(collate(trajs).sorted_by_length())
    assert got_loss == pytest.approx(float(loss), rel=1e-5)
    assert got_accuracy == pytest.approx(float(accuracy), rel=1e-6)
    for p, g in zip(learner.model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_update_changes_weights_and_bumps_version(model_dir, groups) -> None:
    learner = _learner(model_dir)
    learner.start_rl()
    before = learner.get_weights()
    metrics = learner.update(groups)
    after = learner.get_weights()
    assert metrics["version"] == 1 and np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert all(isinstance(v, np.ndarray) for v in after.values())  # numpy: Ray's object store maps it
    before["model.norm.weight"][:] = 7.0  # copies in this process: the runner may hold them until it loads
    assert not np.array_equal(learner.get_weights()["model.norm.weight"], before["model.norm.weight"])
    assert learner.update([])["skipped"] == 1.0
    learner.publish_views = True  # a Ray actor's: views, serialized by Ray when the call returns
    view = learner.get_weights()["model.norm.weight"]
    assert np.shares_memory(view, learner.model.get_parameter("model.norm.weight").detach().numpy())


def test_restore_before_rl_keeps_the_optimizer_moments(model_dir, groups, tmp_path) -> None:
    a = _learner(model_dir)
    a.start_rl()
    a.update(groups)
    a.save_pretrained(str(tmp_path / "model"))
    state = a.get_state(components=("version", "optimizer"))
    b = _learner(model_dir)
    b.set_state({**state, "model_dir": str(tmp_path / "model")})
    b.start_rl(reset_optimizer=False)
    state_a, state_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert state_b and all(torch.equal(state_a[k]["exp_avg"], state_b[k]["exp_avg"]) for k in state_a)
    assert b.version == a.version == 1


@pytest.mark.parametrize("detach", [True, False])
def test_entropy_guided_advantage_changes_the_update_only_through_post_tool_tokens(model_dir, groups, detach):
    def grads(coef: float, post_tool: bool) -> torch.Tensor:
        marked = []
        for g in groups:
            trajs = [
                t.replace(post_tool=(t.loss_mask > 0).astype(np.int8) if post_tool else t.post_tool * 0)
                for t in g.trajectories
            ]
            marked.append(g.replace(trajectories=trajs))
        learner = _learner(model_dir, entropy_advantage_coef=coef, entropy_advantage_detach=detach)
        learner.start_rl()
        learner.optimizer.step = lambda: None
        metrics = learner.update(marked)
        if coef and post_tool:
            assert metrics["entropy_advantage_change"] > 0
        return torch.cat([p.grad.flatten() for p in learner.model.parameters() if p.grad is not None])

    base = grads(0.0, True)
    torch.testing.assert_close(grads(0.5, False), base)  # no post-tool token: nothing changes
    assert not torch.allclose(grads(0.5, True), base)


def _grads(learner: Learner, groups: list[Group]) -> tuple[torch.Tensor, dict[str, float]]:
    """One update's gradient (the weights are kept) and its metrics."""
    learner.start_rl()
    learner.optimizer.step = lambda: None
    metrics = learner.update(groups)
    return torch.cat([p.grad.flatten() for p in learner.model.parameters() if p.grad is not None]), metrics


def test_a_registered_advantage_estimator_drives_the_update(model_dir, groups) -> None:
    @register_advantage_estimator("test_negated_grpo")
    def negated(rewards: np.ndarray) -> np.ndarray:
        return -losses.grpo_advantages(rewards)

    try:
        base, _ = _grads(_learner(model_dir), groups)
        flipped, _ = _grads(_learner(model_dir, advantage="test_negated_grpo"), groups)
    finally:
        ADVANTAGE_ESTIMATORS.unregister("test_negated_grpo")
    assert base.abs().sum() > 0
    torch.testing.assert_close(flipped, -base, rtol=1e-4, atol=1e-6)


def test_a_registered_policy_loss_drives_the_update(model_dir, groups) -> None:
    seen: list[TrainingConfig] = []

    @register_policy_loss("test_double_ppo")
    def double(logprobs, old_logprobs, advantages, mask, config):
        seen.append(config)
        loss, _ = losses.ppo_clip_loss(logprobs, old_logprobs, advantages, mask, config)
        return 2.0 * loss, torch.ones_like(loss)  # and it says every token was clipped

    try:
        base, base_metrics = _grads(_learner(model_dir, grad_clip=100.0), groups)  # no norm clip at 2x
        doubled, metrics = _grads(
            _learner(model_dir, policy_loss="test_double_ppo", clip_high=0.28, grad_clip=100.0), groups
        )
    finally:
        POLICY_LOSSES.unregister("test_double_ppo")
    torch.testing.assert_close(doubled, 2.0 * base, rtol=1e-4, atol=1e-6)
    assert metrics["clip_frac"] == pytest.approx(1.0) and base_metrics["clip_frac"] < 0.5
    assert seen and seen[0].clip_high == 0.28


def test_a_registered_kl_estimator_drives_the_penalty(model_dir, groups) -> None:
    @register_kl_estimator("test_constant_kl")
    def constant(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return torch.full_like(logprobs, 0.5) + 0.0 * logprobs

    try:
        _, k3 = _grads(_learner(model_dir, kl_beta=0.1), groups)
        _, custom = _grads(_learner(model_dir, kl_beta=0.1, kl_estimator="test_constant_kl"), groups)
    finally:
        KL_ESTIMATORS.unregister("test_constant_kl")
    assert k3["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy still equals its reference
    assert custom["kl"] == pytest.approx(0.5)
    assert custom["loss"] == pytest.approx(k3["loss"] + 0.1 * 0.5, rel=1e-4)


def test_a_loss_aggregation_given_as_a_callable_is_used(model_dir, groups) -> None:
    def token_sum(loss, mask, max_len=None, total_tokens=None, total_rows=None):
        return (loss * mask).sum()

    _, mean = _grads(_learner(model_dir), groups)
    _, total = _grads(_learner(model_dir, loss_aggregation=token_sum), groups)
    assert total["loss"] == pytest.approx(mean["loss"] * mean["tokens"], rel=1e-4)


def test_entropy_advantage_scope_is_a_training_knob_that_reaches_the_update(model_dir, groups):
    from typing import get_args

    scopes = get_args(TrainingConfig.model_fields["entropy_advantage_scope"].annotation)
    assert scopes == losses.ENTROPY_ADVANTAGE_SCOPES
    assert TrainingConfig().entropy_advantage_scope == "post_tool"
    with pytest.raises(ValueError, match="entropy_advantage_scope"):
        TrainingConfig(entropy_advantage_scope="everywhere")
    unmarked = [
        g.replace(trajectories=[t.replace(post_tool=t.post_tool * 0) for t in g.trajectories]) for g in groups
    ]

    def change(scope: str) -> float:
        learner = _learner(model_dir, entropy_advantage_coef=0.5, entropy_advantage_scope=scope)
        learner.start_rl()
        learner.optimizer.step = lambda: None
        return learner.update(unmarked)["entropy_advantage_change"]

    assert change("post_tool") == 0.0  # no post-tool token: nothing shaped
    assert change("post_tool_else_all") > 0  # falls back to every loss token
    assert change("all") > 0


def test_update_counts_the_trajectories_that_move_the_policy(model_dir, groups) -> None:
    learner = _learner(model_dir)
    learner.start_rl()
    flat = groups[0].replace(trajectories=[t.replace(reward=1.0) for t in groups[0].trajectories])
    masked = groups[1].replace(
        trajectories=[t.replace(loss_mask=np.zeros_like(t.loss_mask)) for t in groups[1].trajectories]
    )
    metrics = learner.update([flat, masked, groups[2]])
    assert metrics["trajectories"] == 12
    assert metrics["useful_trajectories"] == 4  # no spread (advantage 0) and no loss token don't count


@pytest.mark.parametrize("correction", ["tis", "decoupled"])
def test_off_policy_corrections_give_the_gradient_of_their_formula(model_dir, groups, correction) -> None:
    # Stale behaviour log-probs: shifted by -1.0 / +0.3 / -0.6 token by token (weights e, e^-.3, e^.6).
    stale = []
    for g in groups:
        trajs = [
            t.replace(logprobs=t.logprobs + np.resize([-1.0, 0.3, -0.6], t.length)) for t in g.trajectories
        ]
        stale.append(g.replace(trajectories=trajs))
    cap = 2.0
    # no gradient-norm clip: the raw gradient is compared with the formula's
    learner = _learner(model_dir, off_policy_correction=correction, is_cap=cap, grad_clip=1e9)
    got, metrics = _grads(learner, stale)
    # By hand: one step per batch, so pi_prox is the learner's policy now, the ratio is 1 (no clip),
    # and the loss is -sum(w * A * logp) / tokens with w = pi_prox / pi_behav truncated or dropped.
    reference = _learner(model_dir)
    batch = group_batch(stale, reference.advantage_fn, reference.pad_id)
    logp, _ = reference._logprobs(reference.model, batch)
    w = torch.exp(logp.detach() - batch.old_logprobs)
    w = w.clamp(max=cap) if correction == "tis" else torch.where(w <= cap, w, torch.zeros_like(w))
    loss = -(w * batch.advantages * logp * batch.mask).sum() / batch.mask.sum()
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in reference.model.parameters() if p.grad is not None])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    on = batch.mask > 0
    assert metrics["behaviour_weight"] == pytest.approx(float(w[on].mean()), rel=1e-4)
    assert metrics["behaviour_dropped"] == pytest.approx(float((w[on] == 0).float().mean()), abs=1e-6)
    if correction == "decoupled":
        assert metrics["behaviour_dropped"] > 0  # the e-weighted tokens exceed the cap of 2
    # Without a correction the same stale batch gives another gradient (ratio to the engine's policy).
    plain, _ = _grads(_learner(model_dir), stale)
    assert not torch.allclose(plain, got)
