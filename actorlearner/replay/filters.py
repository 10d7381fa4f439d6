"""Group filters and the chain that applies them, counting what each one drops.

A filter sees a group and returns the kept group (possibly with some trajectories' loss masks
scaled) or None to drop it (docs/algorithms.md §5). Filters never mutate their input: a filter
that masks returns a new group whose rewards are untouched, so GRPO's group statistics still include
the masked trajectories. Built in: ``zero_variance`` (DAPO), ``tool_failure_mask`` and
``uniform_tool_outcome`` (TAO-RL), ``void_turn`` (SimpleTIR) and ``overlong``; after them the chain
drops a group with no loss token left (``fully_masked``). Register your own with
:func:`actorlearner.register_filter`; options come from config as ``{name: ..., **options}``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from actorlearner.core.knobs import check_fraction
from actorlearner.core.protocols import GroupFilter
from actorlearner.core.registry import register_filter
from actorlearner.core.trajectory import Group, Trajectory


@register_filter("zero_variance")
def zero_variance(group: Group, min_std: float = 1e-3) -> Group | None:
    """Drops a group whose rewards are all (nearly) equal: its GRPO advantages are all zero.

    Args:
        group: The group.
        min_std: Groups with reward standard deviation below this are dropped (DAPO: 1e-3).
    """
    return group if float(np.std(group.rewards)) >= min_std else None


def _scale_mask(trajectory: Trajectory, factor: float) -> Trajectory:
    """A copy of ``trajectory`` whose loss mask is multiplied by ``factor`` (input untouched)."""
    mask = (trajectory.loss_mask * factor).astype(trajectory.loss_mask.dtype, copy=False)
    return trajectory.replace(loss_mask=mask)


def _mask_where(group: Group, selected: Sequence[bool], factor: float) -> Group:
    """A copy of ``group`` with the selected trajectories' loss masks scaled by ``factor``.

    Rewards are untouched, so the group's advantage statistics still include every trajectory.
    Returns ``group`` itself when nothing is selected.
    """
    if not any(selected):
        return group
    trajectories = [
        _scale_mask(t, factor) if pick else t for t, pick in zip(group.trajectories, selected, strict=True)
    ]
    return group.replace(trajectories=trajectories)


@register_filter("tool_failure_mask")
def tool_failure_mask(group: Group, strength: float = 1.0) -> Group:
    """TAO-RL tool-failure mask: trajectories whose every tool call failed stop teaching.

    A trajectory with at least one tool call and no successful one (``ToolCallRecord.ok``: the tool
    ran without error and returned output) gets its loss mask multiplied by ``1 - strength``. The
    group is never dropped and its rewards are untouched, so GRPO's group mean and std still include
    the masked trajectory's reward (docs/algorithms.md §5, arXiv 2606.03762).

    Args:
        group: The group (not modified).
        strength: 1 masks such trajectories out entirely; 0 leaves them as they are.

    Returns:
        A new group with the affected trajectories replaced, or ``group`` if none is affected.
    """
    check_fraction("strength", strength)
    failed = [bool(t.tool_calls) and not any(c.ok for c in t.tool_calls) for t in group.trajectories]
    return _mask_where(group, failed, 1.0 - strength)


def uniform_outcomes(group: Group, no_calls_uniform: bool = False) -> bool:
    """Whether every tool call of every member failed, or every one succeeded.

    Members without calls contribute none; a group without any call counts as ``no_calls_uniform``.
    """
    outcomes = [c.ok for t in group.trajectories for c in t.tool_calls]
    return (all(outcomes) or not any(outcomes)) if outcomes else no_calls_uniform


@register_filter("uniform_tool_outcome")
def uniform_tool_outcome(
    group: Group,
    min_std: float = 1e-3,
    require_uniform_outcome: bool = False,
    require_no_signal: bool = True,
    no_calls_uniform: bool = False,
) -> Group | None:
    """TAO-RL's uniform-outcome group filter; by default the reference code's rule.

    The group is dropped when *all required* conditions hold (docs/algorithms.md §5):

    * ``require_no_signal`` (on): the reward std is below ``min_std``. Alone, this is the default
      and the rule of TAO-RL's reference code (``rejection_sample``: std < 1e-3), the same rule as
      ``zero_variance``: groups whose rollouts are all correct or all incorrect teach nothing.
    * ``require_uniform_outcome`` (off): the tool outcomes are uniform (:func:`uniform_outcomes`).
      On together with the other, it is this project's earlier rule (uniform tool outcomes AND no
      reward signal), a strict subset of ``zero_variance``, kept as an option.

    With both requirements off the filter keeps everything.

    Args:
        group: The group.
        min_std: Rewards with a standard deviation below this carry no signal (TAO-RL: 1e-3).
        require_uniform_outcome: Drop only if the tool outcomes are uniform.
        require_no_signal: Drop only if the reward std is below ``min_std``.
        no_calls_uniform: Whether a group without any tool call counts as uniform (off: answering
            without a tool can be exactly right, e.g. irrelevance tasks).
    """
    conditions = []
    if require_uniform_outcome:
        conditions.append(uniform_outcomes(group, no_calls_uniform))
    if require_no_signal:
        conditions.append(not group.trajectories or float(np.std(group.rewards)) < min_std)
    return None if conditions and all(conditions) else group


@register_filter("void_turn")
def void_turn(group: Group) -> Group:
    """SimpleTIR: a trajectory with a void turn (neither a tool call nor a final answer) is masked out.

    Its loss mask becomes 0; the group is kept and its rewards still count in its statistics.

    Args:
        group: The group (not modified).

    Returns:
        A new group with the affected trajectories replaced, or ``group`` if none is affected.
    """
    void = [any(turn.void for turn in t.turns) for t in group.trajectories]
    return _mask_where(group, void, 0.0)


@register_filter("overlong")
def overlong(group: Group, min_n: int = 1, mask: bool = False) -> Group | None:
    """Drops a group where every member hit the token cap, or fewer than ``min_n`` did not.

    Args:
        group: The group (not modified).
        min_n: Fewest members that must end under the cap for the group to be kept.
        mask: Also mask out the overlong members of a kept group (DAPO's overlong filtering;
            their rewards still count in the group's statistics). Off by default.

    Returns:
        None to drop; else the group (a new one when ``mask`` scaled some loss masks).
    """
    flags = [t.overlong for t in group.trajectories]
    n_ok = len(flags) - sum(flags)
    if n_ok == 0 or n_ok < min_n:
        return None
    return _mask_where(group, flags, 0.0) if mask else group


class FilterError(RuntimeError):
    """A filter raised; the message names it."""


FULLY_MASKED = "fully_masked"
"""The chain's last check: the name its drops are counted under (``filter/fully_masked/...``)."""


def _masked_tokens(group: Group) -> float:
    return float(sum(t.loss_mask.sum() for t in group.trajectories))


def has_loss_tokens(group: Group) -> bool:
    """Whether any trajectory of ``group`` has a token with loss-mask weight > 0 (one it can teach)."""
    return any(bool((t.loss_mask > 0).any()) for t in group.trajectories)


class FilterChain:
    """Applies filters in order and counts, per filter, dropped groups, trajectories and tokens.

    After the filters, a group with no loss token left (every trajectory masked out, e.g. every
    tool call failed under ``tool_failure_mask``) is dropped too, counted under
    :data:`FULLY_MASKED`: it would take a batch slot and teach nothing, whatever its rewards.

    Args:
        filters: ``(name, filter)`` pairs in the order they run.
    """

    def __init__(self, filters: Sequence[tuple[str, GroupFilter]]) -> None:
        self.filters = list(filters)
        self.counts: dict[str, float] = defaultdict(float)
        self.last_note = ""
        """What the last call did: ``"kept"``, ``"masked by A (N tokens)"`` or ``"dropped by B"``."""

    def __call__(self, group: Group) -> Group | None:
        """Runs the chain on one group; returns the kept group or None (see :attr:`last_note`)."""
        current: Group | None = group
        notes: list[str] = []
        for name, fn in self.filters:
            assert current is not None
            before = _masked_tokens(current)
            try:
                kept = fn(current)
            except Exception as err:
                raise FilterError(f"filter {name!r} raised {err!r} on group {group.group_id}") from err
            if kept is None:
                self._count_drop(name, current, before)
                self.last_note = "; ".join([*notes, f"dropped by {name}"])
                return None
            masked = before - _masked_tokens(kept)
            if masked > 0:
                self.counts[f"{name}/tokens_masked"] += masked
                notes.append(f"masked by {name} ({masked:g} tokens)")
            current = kept
        assert current is not None
        if not has_loss_tokens(current):
            self._count_drop(FULLY_MASKED, current, _masked_tokens(current))
            self.last_note = "; ".join([*notes, f"dropped by {FULLY_MASKED}"])
            return None
        self.last_note = "; ".join(notes) or "kept"
        return current

    def _count_drop(self, name: str, group: Group, tokens: float) -> None:
        """Counts one group dropped by ``name``, with its trajectories and loss-mask weight."""
        self.counts[f"{name}/groups_dropped"] += 1
        self.counts[f"{name}/trajectories_dropped"] += len(group.trajectories)
        self.counts[f"{name}/tokens_dropped"] += tokens

    def pop_counts(self) -> dict[str, float]:
        """Returns the counts since the last call and resets them."""
        counts, self.counts = dict(self.counts), defaultdict(float)
        return counts
