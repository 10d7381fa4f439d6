"""Shared-prefix forward passes: a prompt that several rows share is run once, not once per row.

A group's trajectories all start with the same prompt, and every episode of an env often starts
with the same system text. In a causal model the keys and values of those leading positions are the
same in every row that shares them, so :func:`prefix_logits` runs each distinct prefix once, repeats
its KV cache to the rows that share it (a differentiable index, so gradients from every row flow
back into the one prefix pass) and runs only the rest of each row on top of it. The logits of the
rest are those of a full pass up to float rounding (docs/algorithms.md §3).

Only columns whose targets carry no loss may be shared (the prefix's own logits are never
computed), so the prefix never reaches a row's first loss token. Models whose cache does not keep
every position (sliding-window or linear-attention layers, :func:`supports_prefix`) and training
passes that draw dropout (:func:`dropout_active`) run one pass per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from actorlearner.models.loading import cache_keyword

MIN_SAVING = 0.1
"""A plan is used only when it saves at least this share of the micro-batch's token positions."""


@dataclass(frozen=True)
class PrefixPlan:
    """Which leading columns a micro-batch runs once per distinct prefix.

    Attributes:
        length: ``P``, the number of shared leading columns.
        prefixes: The distinct prefixes, ``[U, P]``.
        inverse: For each row, the index of its prefix in ``prefixes``, ``[N]``.
    """

    length: int
    prefixes: torch.Tensor
    inverse: torch.Tensor

    def saving(self) -> int:
        """Token positions not run, against one pass per row."""
        return (self.inverse.numel() - self.prefixes.shape[0]) * self.length


def _loss_free_columns(mask: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Leading columns no row needs logits for: before every row's first loss target and last id."""
    lengths = attention_mask.sum(-1)
    has_loss = (mask > 0).any(-1)
    first = torch.where(has_loss, (mask > 0).int().argmax(-1), lengths - 1)
    return int(torch.minimum(first, lengths - 1).min().item())


def _common_prefix(ids: torch.Tensor) -> int:
    """Length of the prefix every row of ``ids`` shares."""
    same = (ids == ids[:1]).all(0).int()
    return int(same.cumprod(0).sum().item())


def plan_prefix(
    input_ids: torch.Tensor, mask: torch.Tensor, attention_mask: torch.Tensor, min_saving: float = MIN_SAVING
) -> PrefixPlan | None:
    """Chooses the shared prefix that saves most, or None when none saves ``min_saving``.

    Two candidates: the prefix all rows share (run once), and the longest loss-free prefix (run
    once per distinct value, e.g. once per group's prompt).

    Args:
        input_ids: Right-padded ids, ``[N, T]``.
        mask: Loss weight of each target (column ``t`` predicts id ``t + 1``).
        attention_mask: 1 on real ids.
        min_saving: Least share of the real token positions the plan must save.

    Returns:
        The plan, or None.
    """
    if input_ids.shape[0] < 2:
        return None
    limit = _loss_free_columns(mask, attention_mask)
    if limit < 1:
        return None
    shared = min(_common_prefix(input_ids[:, :limit]), limit)
    prefixes, inverse = torch.unique(input_ids[:, :limit], dim=0, return_inverse=True)
    plans = [PrefixPlan(limit, prefixes, inverse)]
    if shared > 0:
        plans.append(PrefixPlan(shared, input_ids[:1, :shared], torch.zeros_like(inverse)))
    best = max(plans, key=PrefixPlan.saving)
    if best.saving() < min_saving * float(attention_mask.sum().item()):
        return None
    return best


def supports_prefix(model: torch.nn.Module) -> bool:
    """Whether the model's KV cache is plain full attention in every layer.

    A sliding-window or linear-attention layer does not keep every prefix position as keys and
    values, so its prefix pass cannot be repeated to the rows; such models run one pass per row.
    """
    config = getattr(model, "config", None)
    if config is None:
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config the cache cannot read
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def dropout_active(model: torch.nn.Module) -> bool:
    """Whether a training-mode pass draws dropout (rows sharing a prefix pass would share its draw)."""
    if not model.training:
        return False
    config = getattr(model, "config", None)
    rates = [getattr(config, key, 0.0) or 0.0 for key in ("attention_dropout", "hidden_dropout", "dropout")]
    modules = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    return any(float(rate) > 0 for rate in [*rates, *modules])


def prefix_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, plan: PrefixPlan | None
) -> torch.Tensor:
    """Logits of columns ``P:`` (all columns without a plan), running each distinct prefix once.

    Args:
        model: A ``transformers`` causal LM.
        input_ids: Right-padded ids, ``[N, T]``.
        attention_mask: 1 on real ids.
        plan: From :func:`plan_prefix`, or None for one plain pass.

    Returns:
        ``[N, T - P, vocab]`` logits.
    """
    if plan is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]
    p = plan.length
    out = model(input_ids=plan.prefixes, use_cache=True)
    shared = DynamicCache()
    cache = out.cache if "cache" in out else out.past_key_values  # transformers >= 5.24: cache
    for index, layer in enumerate(cache.layers):
        shared.update(layer.keys[plan.inverse], layer.values[plan.inverse], index)
    positions = torch.arange(p, input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    kwargs = {cache_keyword(model): shared}
    rest = model(input_ids=input_ids[:, p:], attention_mask=attention_mask, position_ids=positions, **kwargs)
    return rest.logits  # type: ignore[no-any-return]
