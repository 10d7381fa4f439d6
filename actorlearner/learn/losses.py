"""Advantages and policy losses of the GRPO family, as plain functions (docs/algorithms.md §3).

Everything here is pure math over numpy arrays or torch tensors, unit-tested on CPU without Ray.
Token tensors are ``[batch, time]`` with a float ``mask`` that is 1 on tokens the loss covers.

The built-in advantage estimators, policy loss, KL estimators and loss aggregations are registered
under their config names in :mod:`actorlearner.learn.registry` (grpo, drgrpo; ppo_clip; k1, k2,
k3; token_mean, seq_mean_token_mean, seq_mean_token_sum_norm).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from actorlearner.learn.registry import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS, LossSettings

Spec = str | Callable[..., Any] | Mapping[str, Any]
"""A registered name, a ``"package.module:function"`` path, a callable or ``{"name": ..., **options}``."""

ZERO_STD = 1e-6
"""Below this group std the advantages are set exactly to 0 (float noise is not a signal)."""


def _centered(rewards: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``(rewards - mean, std)``, or None when the group carries no signal (size < 2 or std ~ 0)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    std = float(rewards.std())
    if rewards.size < 2 or std < ZERO_STD:
        return None
    return rewards - rewards.mean(), std


def grpo_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """GRPO: ``(r - mean) / (std + eps)``; exactly 0 when the group's std is below :data:`ZERO_STD`.

    Args:
        rewards: Scalar rewards of one group's trajectories.
        eps: Added to the std in the denominator.
    """
    centered = _centered(rewards)
    if centered is None:
        return np.zeros(np.shape(rewards), dtype=np.float64)
    return centered[0] / (centered[1] + eps)


def drgrpo_advantages(rewards: np.ndarray) -> np.ndarray:
    """Dr. GRPO: ``r - mean``; exactly 0 when the group's std is below :data:`ZERO_STD`."""
    centered = _centered(rewards)
    return np.zeros(np.shape(rewards), dtype=np.float64) if centered is None else centered[0]


def group_advantages(rewards: np.ndarray, estimator: Spec = "grpo") -> np.ndarray:
    """Per-trajectory advantages of one group.

    Both built-ins are exactly 0 when the group's std is below :data:`ZERO_STD`, or AdamW would
    turn float noise into full-size steps.

    Args:
        rewards: Scalar rewards of the group's trajectories.
        estimator: A registered advantage estimator ("grpo", "drgrpo", ...), a path or a callable.

    Returns:
        Advantages, float64, same shape as ``rewards``.

    Raises:
        RegistryError: If ``estimator`` is unknown (the message lists the known ones).
    """
    fn = ADVANTAGE_ESTIMATORS.resolve(estimator)
    return np.asarray(fn(np.asarray(rewards, dtype=np.float64)), dtype=np.float64)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss ``-min(rho*A, clip(rho, 1-lo, 1+hi)*A)``.

    Args:
        logprobs: Current policy log-probs of the taken tokens.
        old_logprobs: Log-probs of the policy that sampled them.
        advantages: Per-token advantages (broadcastable).
        clip_low: Lower clip range (ratio floor ``1 - clip_low``).
        clip_high: Upper clip range (DAPO clip-higher uses 0.28).
        dual_clip: If set (e.g. 3), caps the loss of negative-advantage tokens at ``-c*A``.

    Returns:
        ``(loss, clipped)``: per-token loss and a 0/1 tensor marking tokens where clipping bound.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss, (clipped > unclipped).float()


OFF_POLICY_CORRECTIONS = ("none", "tis", "decoupled")
"""Ways to correct for data sampled by other weights than the learner's (docs/algorithms.md §4)."""


def off_policy_weights(
    proximal_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, correction: str, cap: float
) -> torch.Tensor:
    """Per-token weights ``w = pi_prox / pi_behav`` that correct for off-policy data (no gradient).

    ``pi_prox`` is the learner's policy at the start of the update and ``pi_behav`` the engine's
    policy that sampled the token (stale weights, or a different numerical path).

    Args:
        proximal_logprobs: The learner's log-probs before the update (detached).
        behaviour_logprobs: The engine's recorded log-probs.
        correction: ``"none"`` (all weights 1), ``"tis"`` (truncated importance sampling,
            ``min(w, cap)``) or ``"decoupled"`` (AReaL's decoupled PPO: ``w``, and 0 where ``w``
            exceeds ``cap``, its ``behav_imp_weight_cap``).
        cap: The truncation (``tis``) or masking (``decoupled``) threshold.

    Returns:
        The weights, shaped like the inputs.
    """
    if correction == "none":
        return torch.ones_like(proximal_logprobs)
    weights = torch.exp(proximal_logprobs.detach() - behaviour_logprobs)
    if correction == "tis":
        return weights.clamp(max=cap)
    if correction == "decoupled":
        return torch.where(weights <= cap, weights, torch.zeros_like(weights))
    raise ValueError(f"off_policy_correction: {correction!r}; allowed: {list(OFF_POLICY_CORRECTIONS)}")


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The registered "ppo_clip" policy loss: :func:`clipped_policy_loss` with the config's clips.

    Reads ``config.clip_low``, ``config.clip_high`` (clip-higher) and ``config.dual_clip``; the
    mask is not needed by a per-token loss.
    """
    return clipped_policy_loss(
        logprobs, old_logprobs, advantages, config.clip_low, config.clip_high, config.dual_clip
    )


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k1: ``l - l_ref``."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k2: ``0.5 (l - l_ref)^2``."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3: ``exp(l_ref - l) - (l_ref - l) - 1``."""
    diff = logprobs - ref_logprobs
    return torch.exp(-diff) + diff - 1.0


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Spec = "k3") -> torch.Tensor:
    """Per-token KL estimate between the policy and a reference (Schulman's k1, k2, k3).

    Args:
        logprobs: Policy log-probs ``l``.
        ref_logprobs: Reference log-probs ``l_ref``.
        estimator: A registered KL estimator (k1 ``l - l_ref``; k2 ``0.5 (l - l_ref)^2``;
            k3 ``exp(l_ref - l) - (l_ref - l) - 1``), a path or a callable.

    Returns:
        Per-token KL, clamped to [-10, 10].

    Raises:
        RegistryError: If ``estimator`` is unknown (the message lists the known ones).
    """
    return torch.clamp(KL_ESTIMATORS.resolve(estimator)(logprobs, ref_logprobs), -10.0, 10.0)


def token_mean(
    loss: torch.Tensor,
    mask: torch.Tensor,
    max_len: int | None = None,
    total_tokens: float | None = None,
    total_rows: int | None = None,
) -> torch.Tensor:
    """DAPO: the sum over all tokens / the total tokens of the (full) batch."""
    if total_tokens is None:
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)
    return (loss * mask).sum() / max(total_tokens, 1.0)


def seq_mean_token_mean(
    loss: torch.Tensor,
    mask: torch.Tensor,
    max_len: int | None = None,
    total_tokens: float | None = None,
    total_rows: int | None = None,
) -> torch.Tensor:
    """GRPO paper: the mean per sequence, then the mean over the (full batch's) sequences."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return per_seq.mean() * _row_share(per_seq, total_rows)


def seq_mean_token_sum_norm(
    loss: torch.Tensor,
    mask: torch.Tensor,
    max_len: int | None = None,
    total_tokens: float | None = None,
    total_rows: int | None = None,
) -> torch.Tensor:
    """Dr. GRPO: each sequence's token sum / ``max_len`` (default: the time dimension), mean over rows."""
    norm = float(max_len if max_len is not None else loss.shape[-1])
    per_seq = (loss * mask).sum(-1) / norm
    return per_seq.mean() * _row_share(per_seq, total_rows)


def _row_share(per_seq: torch.Tensor, total_rows: int | None) -> float:
    """The micro-batch's fraction of the full batch's rows (1 when it is the full batch)."""
    return 1.0 if total_rows is None else per_seq.shape[0] / total_rows


def aggregate_loss(
    loss: torch.Tensor, mask: torch.Tensor, mode: Spec, max_len: int | None = None
) -> torch.Tensor:
    """Reduces a per-token loss ``[batch, time]`` to a scalar.

    Args:
        loss: Per-token loss.
        mask: Per-token weight (1 on tokens the loss covers; may be fractional).
        mode: A registered loss aggregation: "token_mean" (DAPO: sum over all tokens / total tokens
            in the batch), "seq_mean_token_mean" (GRPO paper: mean per sequence, then over
            sequences), "seq_mean_token_sum_norm" (Dr. GRPO: token sum / ``max_len``, mean over
            sequences); or a path or a callable.
        max_len: The constant of Dr. GRPO; defaults to the time dimension.

    Returns:
        The scalar loss.

    Raises:
        RegistryError: If ``mode`` is unknown (the message lists the known ones).
    """
    return LOSS_AGGREGATIONS.resolve(mode)(loss, mask, max_len=max_len)  # type: ignore[no-any-return]


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO soft overlong shaping: 0 up to ``max_len - cache_len``, linear to -1 at ``max_len``.

    Args:
        length: Response length in tokens.
        max_len: ``L_max``.
        cache_len: ``L_cache``, the width of the soft band.
    """
    start = max_len - cache_len
    if length <= start:
        return 0.0
    if length <= max_len:
        return (start - length) / cache_len
    return -1.0


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``targets`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``[batch, time, vocab]``.
        targets: ``[batch, time]`` token ids.
        temperature: The sampling temperature the behaviour policy used.
    """
    logp = torch.log_softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` > 0."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


ENTROPY_ADVANTAGE_SCOPES = ("post_tool", "post_tool_else_all", "all")
"""Which tokens TAO-RL's entropy-guided advantage shapes (``training.entropy_advantage_scope``).

``post_tool``: the valid tokens with ``post_tool = 1`` (the paper's text); none when the micro-batch
has none. ``post_tool_else_all``: the same, but every valid token when the micro-batch has no
post-tool token (the reference code's ``tool_aware_only: True``). ``all``: every valid token (the
reference's shipped config, ``tool_aware_only: False``).
"""


def entropy_shaping_mask(
    valid: torch.Tensor, post_tool: torch.Tensor, scope: str = "post_tool"
) -> torch.Tensor:
    """The tokens the entropy-guided advantage shapes, as a bool tensor (docs/algorithms.md §6).

    Args:
        valid: Bool, the valid response tokens (``mask > 0``).
        post_tool: 1 on tokens of an assistant turn that directly follows a tool result.
        scope: One of :data:`ENTROPY_ADVANTAGE_SCOPES`.

    Raises:
        ValueError: If ``scope`` is unknown.
    """
    if scope not in ENTROPY_ADVANTAGE_SCOPES:
        known = ", ".join(ENTROPY_ADVANTAGE_SCOPES)
        raise ValueError(f"unknown entropy advantage scope {scope!r}; known: {known}")
    if scope == "all":
        return valid
    shaped = valid & (post_tool > 0)
    if scope == "post_tool_else_all" and not bool(shaped.any()):
        return valid
    return shaped


def entropy_guided_advantages(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    post_tool: torch.Tensor,
    mask: torch.Tensor,
    coef: float = 0.01,
    detach: bool = True,
    scope: str = "post_tool",
) -> tuple[torch.Tensor, torch.Tensor]:
    """TAO-RL entropy-guided advantage, at post-tool tokens by default (docs/algorithms.md §6).

    ``z_t = (H_t - mean(H)) / (std(H) + 1e-8)`` with the mean and (population) std over the valid
    response tokens of the micro-batch (``mask > 0``); on the tokens ``scope`` selects
    (:func:`entropy_shaping_mask`; by default the valid tokens with ``post_tool = 1``),
    ``A'_t = A_t * (1 + coef * z_t)``; every other token keeps ``A_t``. As in the reference code the
    std is taken as 1 when fewer than two tokens are valid, and nothing changes when none is.

    Our choice: ``H`` is detached by default (the coefficient shapes the advantage; it is not a
    gradient path). ``detach=False`` reproduces the reference, where gradient flows through ``H``.

    Args:
        advantages: Per-token advantages ``[batch, time]``, or anything broadcastable to
            ``entropy`` (e.g. ``[batch, 1]``).
        entropy: Policy token entropy ``H_t``, ``[batch, time]``.
        post_tool: 1 on tokens of an assistant turn that directly follows a tool result.
        mask: Loss mask; tokens with ``mask > 0`` are the valid response tokens.
        coef: ``c`` (TAO-RL: 0.01).
        detach: Stop gradients through ``entropy``.
        scope: Which tokens are shaped, one of :data:`ENTROPY_ADVANTAGE_SCOPES`: ``post_tool`` (the
            paper's text; a micro-batch without a post-tool token is left as it is),
            ``post_tool_else_all`` (then every valid token, as the reference code falls back) or
            ``all`` (every valid token, the reference's shipped config).

    Returns:
        ``(new_advantages, mean_abs_change)``: advantages with ``entropy``'s shape, and the mean of
        ``|A' - A|`` over valid tokens as a detached scalar tensor (log it as a metric).

    Raises:
        ValueError: If ``scope`` is unknown.
    """
    h = entropy.detach() if detach else entropy
    adv = torch.broadcast_to(advantages, h.shape).to(h.dtype)
    valid = mask > 0
    shaped = entropy_shaping_mask(valid, post_tool, scope)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return adv.clone(), torch.zeros((), dtype=h.dtype, device=h.device)
    values = h[valid]
    mean = values.mean()
    std = values.std(unbiased=False) if n_valid > 1 else torch.ones((), dtype=h.dtype, device=h.device)
    z = (h - mean) / (std + 1e-8)
    new = torch.where(shaped, adv * (1.0 + coef * z), adv)
    change = ((new - adv).abs().detach() * valid).sum() / n_valid
    return new, change
