"""The learner's gradient against a hand-written GRPO loss, and the direction of its updates.

The oracle is written from the formulas (docs/algorithms.md §3), not from ``losses.py``: per row
``-min(rho * A, clip(rho, 1 - lo, 1 + hi) * A) * w`` on the loss mask, with GRPO advantages per
group and the group's importance-sampling weight ``w``, aggregated three ways. The batch is built to
make shortcuts visible: rows of different lengths, unequal IS weights, a fractional mask, and a
masked-out sampled turn whose behaviour log-probs are kept (as ``void_turn`` leaves them), so its
per-token loss is far from zero outside the mask.
"""

from __future__ import annotations

import copy

import gymnasium
import numpy as np
import pytest
import torch

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.config import LearnerConfig, TrainingConfig
from actorlearner.core.trajectory import Group, Trajectory, TurnRecord
from actorlearner.env.registration import make_env
from actorlearner.learn import losses
from actorlearner.learn.learner import Learner
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from tests.conftest import SMALL_MODEL

SPEC = gymnasium.spec("actorlearner/Calculator-v0")
TEMPERATURE = 0.8
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
MAX_TOKENS = 40
LENGTHS = [[9, 14, 6, 11], [7, 12, 10, 5]]
REWARDS = [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.2]]
IS_WEIGHTS = [0.35, 1.0]
AGGREGATIONS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
PROMPT = 3
LOGPROB_SHIFTS = np.array([-0.4, -0.21, -0.1, 0.0, 0.1, 0.3, 0.5])
"""Behaviour minus current log-prob: ratios 1.49 and 1.23 (clipped only by 1 + clip_low), 1.1, 1,
0.9, 0.74 and 0.61 (clipped below)."""


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {})), **SMALL_MODEL))


def _learner(model_dir: str, **training: object) -> Learner:
    cfg = TrainingConfig(**{"lr": 1e-3, "clip_low": CLIP_LOW, "clip_high": CLIP_HIGH, **training})
    learner = Learner(
        model_dir, cfg, LearnerConfig(device="cpu"), temperature=TEMPERATURE, seed=0, max_tokens=MAX_TOKENS
    )
    learner.start_rl()
    return learner


def _target_logprobs(
    model: torch.nn.Module, token_ids: np.ndarray, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Log-prob of each id given the ones before it, at the rollout temperature (one row, no padding)."""
    ids = torch.from_numpy(token_ids.astype(np.int64))
    logits = model(input_ids=ids[None, :-1]).logits[0].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[1:, None]).squeeze(-1)


def _layout(n: int, row: int) -> tuple[np.ndarray, np.ndarray, list[TurnRecord]]:
    """Prompt, sampled turn 1, one observation id, sampled turn 2: the mask and the sampled flags.

    Row 1 (mod 3) has turn 2 at mask 0.5 (a partial tool-failure mask); row 2 (mod 3) has turn 1
    masked out entirely (a void turn) while its ids stay sampled ids with behaviour log-probs.
    """
    split = PROMPT + (n - PROMPT) // 2
    sampled = np.ones(n, dtype=bool)
    sampled[:PROMPT] = False
    sampled[split] = False  # the observation id
    mask = sampled.astype(np.float32)
    if row % 3 == 1:
        mask[split + 1 :] *= 0.5
    if row % 3 == 2:
        mask[PROMPT:split] = 0.0
    turns = [
        TurnRecord(index=0, text="a", start=PROMPT, end=split),
        TurnRecord(index=1, text="b", start=split + 1, end=n),
    ]
    return mask, sampled, turns


def _trajectory(
    model: torch.nn.Module, rng: np.random.Generator, n: int, row: int, reward: float
) -> Trajectory:
    vocab = int(model.config.vocab_size)
    ids = rng.integers(4, vocab, size=n).astype(np.int32)
    mask, sampled, turns = _layout(n, row)
    with torch.no_grad():
        current = _target_logprobs(model, ids).numpy()
    behaviour = np.zeros(n, dtype=np.float32)  # 0 on prompt and observation ids, as the contract says
    noisy = current + rng.choice(LOGPROB_SHIFTS, size=n - 1)
    behaviour[1:] = np.where(sampled[1:], noisy, 0.0)
    return Trajectory(
        token_ids=ids,
        loss_mask=mask,
        logprobs=behaviour,
        turn_index=np.where(sampled, 0, -1).astype(np.int32),
        post_tool=np.zeros(n, dtype=np.int8),
        prompt_length=PROMPT,
        turns=turns,
        reward=reward,
        policy_versions=[0],
    )


def _groups(model: torch.nn.Module) -> list[Group]:
    rng = np.random.default_rng(7)
    groups = []
    for g, (lengths, rewards, weight) in enumerate(zip(LENGTHS, REWARDS, IS_WEIGHTS, strict=True)):
        trajs = [
            _trajectory(model, rng, n, 4 * g + i, r)
            for i, (n, r) in enumerate(zip(lengths, rewards, strict=True))
        ]
        groups.append(Group(group_id=f"g{g}", prompt_id=f"p{g}", trajectories=trajs, is_weight=weight))
    return groups


def _grpo_advantages(rewards: list[float]) -> list[float]:
    r = np.asarray(rewards, dtype=np.float64)
    return ((r - r.mean()) / (r.std() + 1e-6)).tolist()


def _oracle_loss(model: torch.nn.Module, groups: list[Group], aggregation: str) -> torch.Tensor:
    """The GRPO clipped loss, written out row by row from the formulas."""
    sums, counts = [], []
    for group in groups:
        for traj, adv in zip(group.trajectories, _grpo_advantages(group.rewards.tolist()), strict=True):
            logp = _target_logprobs(model, traj.token_ids)
            ratio = torch.exp(logp - torch.from_numpy(traj.logprobs[1:]))
            surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH) * adv)
            per_token = -surrogate * group.is_weight
            mask = torch.from_numpy(traj.loss_mask[1:])
            sums.append((per_token * mask).sum())
            counts.append(mask.sum())
    row_sums, row_counts = torch.stack(sums), torch.stack(counts)
    if aggregation == "token_mean":
        return row_sums.sum() / row_counts.sum()
    if aggregation == "seq_mean_token_mean":
        return (row_sums / row_counts).mean()
    return (row_sums / MAX_TOKENS).mean()


def _update_gradient(learner: Learner, groups: list[Group]) -> dict[str, torch.Tensor]:
    """Runs ``learner.update`` and returns the gradients it hands the optimizer (weights unchanged)."""
    captured: dict[str, torch.Tensor] = {}

    def capture(*args: object, **kwargs: object) -> None:
        for name, p in learner.model.named_parameters():
            captured[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()

    learner.optimizer.step = capture  # type: ignore[method-assign]
    learner.update(groups)
    assert captured, "update() never reached the optimizer step"
    return captured


def _flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].flatten() for n in names])


def _oracle_setup(model_dir: str, aggregation: str) -> tuple[Learner, list[Group], torch.nn.Module]:
    learner = _learner(model_dir, loss_aggregation=aggregation, micro_batch_size=3, grad_clip=1e9)
    return learner, _groups(learner.model), copy.deepcopy(learner.model)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_update_gradient_equals_autograd_of_the_hand_written_loss(model_dir: str, aggregation: str) -> None:
    learner, groups, reference = _oracle_setup(model_dir, aggregation)
    names = [n for n, p in reference.named_parameters() if p.requires_grad]
    params = [dict(reference.named_parameters())[n] for n in names]
    expected = torch.autograd.grad(_oracle_loss(reference, groups, aggregation), params)
    expected_flat = torch.cat([g.flatten() for g in expected])
    actual_flat = _flat(_update_gradient(learner, groups), names)
    scale = float(expected_flat.abs().max())
    assert scale > 1e-4, "the oracle batch carries no gradient"
    torch.testing.assert_close(actual_flat, expected_flat, rtol=1e-3, atol=1e-4 * scale)


def test_the_oracle_batch_is_sensitive_to_the_mask_and_the_is_weights(model_dir: str) -> None:
    """Guards the oracle itself: masks and IS weights must each move the gradient a lot."""
    _, groups, reference = _oracle_setup(model_dir, "token_mean")
    params = list(reference.parameters())

    def grad(gs: list[Group]) -> torch.Tensor:
        return torch.cat(
            [g.flatten() for g in torch.autograd.grad(_oracle_loss(reference, gs, "token_mean"), params)]
        )

    base = grad(groups)
    unmasked = [
        g.replace(trajectories=[t.replace(loss_mask=np.ones_like(t.loss_mask)) for t in g.trajectories])
        for g in groups
    ]
    unweighted = [g.replace(is_weight=1.0) for g in groups]
    for variant in (unmasked, unweighted):
        assert float((grad(variant) - base).norm()) > 0.05 * float(base.norm())


# -- aggregate_loss on its own: a nonzero loss everywhere, a fractional ragged mask ----------------


def _ragged() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    loss = torch.rand((3, 6), generator=gen) + 0.5  # nonzero on every position, padding included
    mask = torch.tensor(
        [[0, 1, 1, 0.5, 1, 1], [0, 0, 1, 1, 0, 0], [1, 0.25, 0, 0, 0, 0]], dtype=torch.float32
    )
    return loss, mask


def test_aggregate_loss_matches_hand_sums_and_ignores_loss_outside_the_mask() -> None:
    loss, mask = _ragged()
    rows = [[(float(loss[i, t]), float(mask[i, t])) for t in range(6)] for i in range(3)]
    sums = [sum(v * m for v, m in row) for row in rows]
    counts = [sum(m for _, m in row) for row in rows]
    token_mean = sum(sums) / sum(counts)
    seq_mean = float(np.mean([s / max(c, 1.0) for s, c in zip(sums, counts, strict=True)]))
    sum_norm = float(np.mean([s / 10 for s in sums]))
    assert losses.aggregate_loss(loss, mask, "token_mean").item() == pytest.approx(token_mean, rel=1e-6)
    assert losses.aggregate_loss(loss, mask, "seq_mean_token_mean").item() == pytest.approx(
        seq_mean, rel=1e-6
    )
    assert losses.aggregate_loss(loss, mask, "seq_mean_token_sum_norm", 10).item() == pytest.approx(
        sum_norm, rel=1e-6
    )
    assert losses.aggregate_loss(loss, mask, "seq_mean_token_sum_norm").item() == pytest.approx(
        float(np.mean([s / 6 for s in sums])), rel=1e-6
    )


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_loss_gradient_is_zero_outside_the_mask(mode: str) -> None:
    loss, mask = _ragged()
    loss.requires_grad_(True)
    losses.aggregate_loss(loss, mask, mode, 10).backward()
    assert loss.grad is not None
    assert torch.all(loss.grad[mask == 0] == 0)
    assert torch.all(loss.grad[mask > 0] > 0)


# -- the direction of learning ---------------------------------------------------------------------


def _masked_mean_logprob(model: torch.nn.Module, traj: Trajectory, temperature: float = TEMPERATURE) -> float:
    with torch.no_grad():
        logp = _target_logprobs(model, traj.token_ids, temperature)
    mask = torch.from_numpy(traj.loss_mask[1:])
    return float((logp * mask).sum() / mask.sum())


def test_one_update_raises_positive_and_lowers_negative_advantage_tokens(model_dir: str) -> None:
    learner = _learner(model_dir, lr=1e-3)
    rng = np.random.default_rng(3)
    good = _trajectory(learner.model, rng, 12, 0, 1.0)
    bad = _trajectory(learner.model, rng, 12, 0, 0.0)
    group = Group(group_id="g", prompt_id="p", trajectories=[good, bad])
    before = [_masked_mean_logprob(learner.model, t) for t in (good, bad)]
    learner.update([group])
    after = [_masked_mean_logprob(learner.model, t) for t in (good, bad)]
    assert after[0] > before[0] + 1e-3, "positive advantage must raise the sampled tokens' log-prob"
    assert after[1] < before[1] - 1e-3, "negative advantage must lower the sampled tokens' log-prob"


def test_sft_loss_falls_over_steps(model_dir: str) -> None:
    learner = Learner(model_dir, TrainingConfig(), LearnerConfig(device="cpu"), seed=0)
    rng = np.random.default_rng(5)
    demos = [_trajectory(learner.model, rng, 10, 0, 1.0) for _ in range(4)]
    assert learner.set_demonstrations(demos) == 4
    before = [_masked_mean_logprob(learner.model, t, 1.0) for t in demos]
    history = learner.sft_steps(0, 12, 12, batch_size=4, lr=1e-2)
    after = [_masked_mean_logprob(learner.model, t, 1.0) for t in demos]
    first, last = history[0]["sft/loss"], history[-1]["sft/loss"]
    assert first == pytest.approx(-float(np.mean(before)), rel=0.05)  # the masked token NLL
    assert 0 < last < 0.7 * first, f"SFT did not learn: {first:.3f} -> {last:.3f}"
    assert all(a > b + 0.5 for a, b in zip(after, before, strict=True))
    assert learner.version == 1
