import numpy as np
import pytest
import torch

from actorlearner.learn import losses


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
    with pytest.raises(ValueError, match=r"^unknown advantage estimator 'ppo'; known: drgrpo, grpo$"):
        losses.group_advantages(np.array([0.0, 1.0]), "ppo")


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: losses.kl_penalty(torch.zeros(1), torch.zeros(1), "k9"),
            r"KL estimator 'k9'; known: k1, k2, k3$",
        ),
        (
            lambda: losses.aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum"),
            r"loss aggregation 'sum'; known: seq_mean_token_mean, seq_mean_token_sum_norm, token_mean$",
        ),
    ],
)
def test_unknown_kl_estimator_and_aggregation_name_the_known_ones(call, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        call()
    assert "\n" not in str(info.value)


def test_micro_batch_aggregation_shares_sum_to_the_full_batch_loss():
    loss = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        fn = getattr(losses, mode)
        full = fn(loss, mask, max_len=5)
        parts = sum(
            fn(loss[rows], mask[rows], max_len=5, total_tokens=float(mask.sum()), total_rows=3)
            for rows in (slice(0, 1), slice(1, 3))
        )
        assert float(parts) == pytest.approx(float(full)), mode


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


def test_entropy_guided_advantages_match_hand_computed_values():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 9.0 is not a response token: not in the stats
    post_tool = torch.tensor([[0, 1, 1, 1]])
    adv = torch.full((1, 4), 2.0)
    new, change = losses.entropy_guided_advantages(adv, entropy, post_tool, mask, coef=0.1)
    # mean 2, population std sqrt(2/3); z = [-1.2247, 0, 1.2247]
    z3 = 1.0 / np.sqrt(2.0 / 3.0)
    expected = [2.0, 2.0, 2.0 * (1 + 0.1 * z3), 2.0]  # token 0 is not post-tool, token 3 is masked
    np.testing.assert_allclose(new.numpy()[0], expected, rtol=1e-6)
    assert change.item() == pytest.approx(2.0 * 0.1 * z3 / 3, rel=1e-6)
    assert not change.requires_grad


def test_entropy_guided_advantages_broadcast_and_default_coef():
    entropy = torch.tensor([[0.0, 2.0], [4.0, 2.0]])
    mask = torch.ones(2, 2)
    post_tool = torch.tensor([[1, 0], [1, 0]])
    adv = torch.tensor([[1.0], [-1.0]])  # one advantage per sequence
    new, _ = losses.entropy_guided_advantages(adv, entropy, post_tool, mask)
    # mean 2, std sqrt(2): z = -sqrt(2), +sqrt(2) on the post-tool tokens
    s = np.sqrt(2.0)
    np.testing.assert_allclose(new.numpy(), [[1 - 0.01 * s, 1.0], [-(1 + 0.01 * s), -1.0]], rtol=1e-6)


def test_entropy_guided_advantages_edge_cases():
    adv = torch.ones(1, 3)
    post = torch.ones(1, 3)
    new, change = losses.entropy_guided_advantages(adv, torch.rand(1, 3), post, torch.zeros(1, 3))
    assert torch.equal(new, adv) and change.item() == 0.0
    one = torch.tensor([[1.0, 0.0, 0.0]])  # a single valid token: std taken as 1, z = 0
    new, change = losses.entropy_guided_advantages(adv, torch.tensor([[5.0, 1.0, 2.0]]), post, one)
    assert torch.equal(new, adv) and change.item() == 0.0


# One micro-batch: row 0 has a post-tool turn (tokens 2-3), row 1 none; token 3 of row 1 is padding.
SCOPE_ENTROPY = torch.tensor([[1.0, 2.0, 3.0, 4.5], [5.0, 6.0, 7.0, 9.0]])  # no token at the mean: z != 0
SCOPE_MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
SCOPE_POST = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])


def _changed(scope: str, post_tool: torch.Tensor) -> list[list[bool]]:
    adv = torch.ones(2, 4)
    new, _ = losses.entropy_guided_advantages(adv, SCOPE_ENTROPY, post_tool, SCOPE_MASK, 0.1, scope=scope)
    return (new != adv).tolist()


def test_entropy_advantage_scope_post_tool_shapes_only_post_tool_tokens():
    assert _changed("post_tool", SCOPE_POST) == [[False, False, True, True], [False] * 4]


def test_entropy_advantage_scope_all_shapes_every_loss_token():
    assert _changed("all", SCOPE_POST) == [[True] * 4, [True, True, True, False]]


@pytest.mark.parametrize(
    ("scope", "shaped"),
    [("post_tool", False), ("post_tool_else_all", True), ("all", True)],
)
def test_entropy_advantage_scope_without_any_post_tool_token(scope, shaped):
    # post_tool: nothing changes (the paper's text); post_tool_else_all falls back to every loss
    # token, as the reference code's tool_aware_only does; all shapes every loss token anyway
    expected = [[shaped] * 4, [shaped, shaped, shaped, False]]
    assert _changed(scope, torch.zeros_like(SCOPE_POST)) == expected


def test_entropy_advantage_scope_post_tool_else_all_keeps_post_tool_scope_when_there_is_one():
    assert _changed("post_tool_else_all", SCOPE_POST) == _changed("post_tool", SCOPE_POST)


def test_entropy_advantage_scope_values_and_unknown_scope():
    adv = torch.ones(2, 4)
    full, change = losses.entropy_guided_advantages(
        adv, SCOPE_ENTROPY, SCOPE_POST, SCOPE_MASK, 0.1, scope="all"
    )
    valid = SCOPE_MASK > 0
    h = SCOPE_ENTROPY[valid]
    z = (SCOPE_ENTROPY - h.mean()) / (h.std(unbiased=False) + 1e-8)
    torch.testing.assert_close(full[valid], (1 + 0.1 * z)[valid])
    assert change.item() == pytest.approx(float((0.1 * z[valid]).abs().mean()), rel=1e-6)
    assert losses.ENTROPY_ADVANTAGE_SCOPES == ("post_tool", "post_tool_else_all", "all")
    with pytest.raises(ValueError, match="scope"):
        losses.entropy_guided_advantages(adv, SCOPE_ENTROPY, SCOPE_POST, SCOPE_MASK, scope="post-tool")


def test_entropy_guided_advantages_detach_flag_controls_the_gradient_path():
    entropy = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    mask = torch.ones(1, 3)
    post = torch.tensor([[1, 1, 0]])
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    detached, _ = losses.entropy_guided_advantages(adv, entropy, post, mask, coef=0.5)
    assert not detached.requires_grad
    attached, _ = losses.entropy_guided_advantages(adv, entropy, post, mask, coef=0.5, detach=False)
    assert attached.requires_grad
    attached.sum().backward()
    assert entropy.grad is not None and entropy.grad.abs().sum() > 0
    torch.testing.assert_close(attached.detach(), detached)


def test_entropy_shaping_mask_per_scope():
    valid = torch.tensor([[True, True, False], [True, True, True]])
    post = torch.tensor([[0, 1, 1], [0, 0, 0]])
    assert losses.entropy_shaping_mask(valid, post).tolist() == [[False, True, False], [False] * 3]
    assert losses.entropy_shaping_mask(valid, post, "post_tool_else_all").tolist() == (
        losses.entropy_shaping_mask(valid, post).tolist()
    )
    assert torch.equal(losses.entropy_shaping_mask(valid, post, "all"), valid)
    none = torch.zeros_like(post)
    assert not losses.entropy_shaping_mask(valid, none).any()
    assert torch.equal(losses.entropy_shaping_mask(valid, none, "post_tool_else_all"), valid)
    with pytest.raises(ValueError, match=r"known: post_tool, post_tool_else_all, all"):
        losses.entropy_shaping_mask(valid, post, "tool")


def test_off_policy_weights_follow_each_correction_by_hand() -> None:
    prox = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    behaviour = torch.tensor([[0.0, -2.0, -0.5, -3.0]])  # w = 1, e, e^-1.5, e^2.5
    w = torch.exp(prox - behaviour)
    torch.testing.assert_close(losses.off_policy_weights(prox, behaviour, "none", 2.0), torch.ones_like(w))
    torch.testing.assert_close(
        losses.off_policy_weights(prox, behaviour, "tis", 2.0), torch.tensor([[1.0, 2.0, w[0, 2], 2.0]])
    )
    # decoupled (AReaL): tokens whose weight exceeds the cap are dropped, the others keep w
    torch.testing.assert_close(
        losses.off_policy_weights(prox, behaviour, "decoupled", 5.0),
        torch.tensor([[1.0, w[0, 1], w[0, 2], 0.0]]),
    )
    with pytest.raises(ValueError, match="allowed"):
        losses.off_policy_weights(prox, behaviour, "vtrace", 2.0)


def test_off_policy_weights_carry_no_gradient() -> None:
    prox = torch.tensor([-1.0, -0.2], requires_grad=True)
    weights = losses.off_policy_weights(prox, torch.tensor([-1.5, -0.1]), "tis", 2.0)
    assert not weights.requires_grad
