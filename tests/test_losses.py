import numpy as np
import pytest
import torch

from actorlearner import losses


def test_grpo_advantages_match_hand_computed_values():
    adv = losses.group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), "grpo")
    # mean 0.5, population std 0.5 -> +-1 (up to eps)
    np.testing.assert_allclose(adv, [1, -1, -1, 1], atol=1e-5)


def test_drgrpo_advantages_are_centered_not_scaled():
    adv = losses.group_advantages(np.array([3.0, 1.0]), "drgrpo")
    np.testing.assert_allclose(adv, [1.0, -1.0])


def test_identical_float_rewards_give_exactly_zero_advantage():
    rewards = np.array([0.1 + 0.2, 0.3, 0.30000000000000004, 0.3])
    assert np.all(losses.group_advantages(rewards, "grpo") == 0.0)


def test_unknown_estimator_names_the_known_ones():
    with pytest.raises(ValueError, match="grpo, drgrpo"):
        losses.group_advantages(np.array([0.0, 1.0]), "ppo")  # type: ignore[arg-type]


def test_clipped_loss_clips_positive_advantage_above_one_plus_eps():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5]))
    adv = torch.ones(3)
    loss, clipped = losses.clipped_policy_loss(new, old, adv, 0.2, 0.28)
    np.testing.assert_allclose(loss.numpy(), [-1.0, -1.28, -0.5], rtol=1e-6)
    assert clipped.tolist() == [0.0, 1.0, 0.0]


def test_clipped_loss_negative_advantage_and_dual_clip():
    old = torch.zeros(2)
    new = torch.log(torch.tensor([0.5, 10.0]))
    adv = -torch.ones(2)
    loss, _ = losses.clipped_policy_loss(new, old, adv, 0.2, 0.2)
    np.testing.assert_allclose(loss.numpy(), [0.8, 10.0], rtol=1e-6)
    loss_dc, _ = losses.clipped_policy_loss(new, old, adv, 0.2, 0.2, dual_clip=3.0)
    np.testing.assert_allclose(loss_dc.numpy(), [0.8, 3.0], rtol=1e-6)


def test_kl_estimators():
    lp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([-1.0, -1.0])
    np.testing.assert_allclose(losses.kl_penalty(lp, ref, "k1").numpy(), [1.0, 0.0])
    np.testing.assert_allclose(losses.kl_penalty(lp, ref, "k2").numpy(), [0.5, 0.0])
    np.testing.assert_allclose(losses.kl_penalty(lp, ref, "k3").numpy(), [np.exp(-1) + 1 - 1, 0.0], rtol=1e-6)
    assert losses.kl_penalty(torch.tensor([100.0]), torch.tensor([0.0]), "k1").item() == 10.0


def test_aggregations():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert losses.aggregate_loss(loss, mask, "token_mean").item() == pytest.approx(6 / 5)
    assert losses.aggregate_loss(loss, mask, "seq_mean_token_mean").item() == pytest.approx(1.5)
    assert losses.aggregate_loss(loss, mask, "seq_mean_token_sum_norm", 4).item() == pytest.approx(
        (4 / 4 + 2 / 4) / 2
    )


def test_overlong_penalty_band():
    assert losses.overlong_penalty(10, 20, 5) == 0.0
    assert losses.overlong_penalty(15, 20, 5) == 0.0
    assert losses.overlong_penalty(18, 20, 5) == pytest.approx(-0.6)
    assert losses.overlong_penalty(21, 20, 5) == -1.0


def test_token_logprobs_uses_temperature():
    logits = torch.tensor([[[2.0, 0.0]]])
    t = torch.tensor([[0]])
    lp1 = losses.token_logprobs(logits, t, 1.0).item()
    lp2 = losses.token_logprobs(logits, t, 2.0).item()
    assert lp1 == pytest.approx(np.log(np.exp(2) / (np.exp(2) + 1)))
    assert lp2 == pytest.approx(np.log(np.exp(1) / (np.exp(1) + 1)))
