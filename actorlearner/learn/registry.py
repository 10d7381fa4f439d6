"""Registries of the learner's pluggable math: advantages, policy losses, KL estimators, aggregations.

The verl ``register_adv_est`` pattern: decorate a function with a name, then select it in the
config (``training.advantage``, ``training.policy_loss``, ``training.kl_estimator``,
``training.loss_aggregation``) by that name, by a ``"package.module:function"`` path, or by the
function itself. ``{"name": ..., **options}`` binds keyword options. The built-ins live in
:mod:`actorlearner.learn.losses` and are registered lazily, so validating a config never imports
torch.

Example:
    >>> import numpy as np
    >>> @register_advantage_estimator("rank")
    ... def rank_advantages(rewards: np.ndarray) -> np.ndarray:
    ...     ranks = rewards.argsort().argsort().astype(float)
    ...     return ranks - ranks.mean()
    >>> config = AlgorithmConfig().training(advantage="rank")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from actorlearner.core.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch


F = TypeVar("F", bound=Callable[..., Any])

_LOSSES = "actorlearner.learn.losses"


class AdvantageEstimator(Protocol):
    """``fn(rewards) -> advantages``: one group's scalar rewards to one advantage per trajectory."""

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        """Advantages, float64, same shape as ``rewards``."""
        ...


class LossSettings(Protocol):
    """What the built-in policy loss reads of the training config (a user's loss may read more)."""

    clip_low: float
    clip_high: float
    dual_clip: float | None


class PolicyLoss(Protocol):
    """``fn(logprobs, old_logprobs, advantages, mask, config) -> (per_token_loss, clipped)``.

    All tensors are ``[batch, time]``; ``config`` is the training config (:class:`LossSettings` and
    any other setting the loss reads). ``clipped`` is 0/1 where clipping bound (the ``clip_frac``
    metric); return zeros if the loss does not clip. The learner multiplies the per-token loss by
    the importance-sampling weights, adds the KL term and aggregates it.
    """

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        config: LossSettings,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss and clip indicator."""
        ...


class KLEstimator(Protocol):
    """``fn(logprobs, ref_logprobs) -> per-token KL`` (the learner clamps it to [-10, 10])."""

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        """Per-token KL estimate."""
        ...


class LossAggregation(Protocol):
    """``fn(loss, mask, max_len=, total_tokens=, total_rows=) -> scalar``.

    The learner calls it once per micro-batch with the full batch's ``total_tokens`` (mask sum) and
    ``total_rows``; the micro-batch results are summed, so each call must return that micro-batch's
    share of the full-batch loss. Left None, the totals are the given batch's own.
    """

    def __call__(
        self,
        loss: torch.Tensor,
        mask: torch.Tensor,
        max_len: int | None = None,
        total_tokens: float | None = None,
        total_rows: int | None = None,
    ) -> torch.Tensor:
        """The scalar loss (or this micro-batch's share of it)."""
        ...


ADVANTAGE_ESTIMATORS: Registry[Callable[..., Any]] = Registry(
    "advantage estimator",
    lazy={"grpo": f"{_LOSSES}:grpo_advantages", "drgrpo": f"{_LOSSES}:drgrpo_advantages"},
)
POLICY_LOSSES: Registry[Callable[..., Any]] = Registry(
    "policy loss", lazy={"ppo_clip": f"{_LOSSES}:ppo_clip_loss"}
)
KL_ESTIMATORS: Registry[Callable[..., Any]] = Registry(
    "KL estimator", lazy={k: f"{_LOSSES}:kl_{k}" for k in ("k1", "k2", "k3")}
)
LOSS_AGGREGATIONS: Registry[Callable[..., Any]] = Registry(
    "loss aggregation",
    lazy={k: f"{_LOSSES}:{k}" for k in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")},
)


def register_advantage_estimator(name: str) -> Callable[[F], F]:
    """Registers an advantage estimator ``fn(rewards) -> advantages`` (see :class:`AdvantageEstimator`).

    Raises:
        RegistryError: If ``name`` is taken.
    """
    return ADVANTAGE_ESTIMATORS.register(name)  # type: ignore[return-value]


def register_policy_loss(name: str) -> Callable[[F], F]:
    """Registers a policy loss ``fn(logprobs, old_logprobs, advantages, mask, config)``.

    See :class:`PolicyLoss` for the contract.

    Raises:
        RegistryError: If ``name`` is taken.
    """
    return POLICY_LOSSES.register(name)  # type: ignore[return-value]


def register_kl_estimator(name: str) -> Callable[[F], F]:
    """Registers a KL estimator ``fn(logprobs, ref_logprobs) -> per-token KL``.

    Raises:
        RegistryError: If ``name`` is taken.
    """
    return KL_ESTIMATORS.register(name)  # type: ignore[return-value]


def register_loss_aggregation(name: str) -> Callable[[F], F]:
    """Registers a loss aggregation (see :class:`LossAggregation` for the micro-batch contract).

    Raises:
        RegistryError: If ``name`` is taken.
    """
    return LOSS_AGGREGATIONS.register(name)  # type: ignore[return-value]
