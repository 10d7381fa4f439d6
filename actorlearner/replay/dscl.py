"""DSCL: dual dynamic sampling with curriculum, as a priority function (docs/algorithms.md §7).

DSCL (arXiv 2509.14718) decides which prompts the learner trains on in two ways:

* **Reward-based dynamic sampling** (7a). Per prompt: ``M`` the group's mean reward, ``V_sample``
  its within-group variance, ``V_epoch`` the variance of the prompt's group means over a window.
  Groups fall in three categories (:func:`categorize`): *mastered* (at the reward maximum with no
  variance), *hard* (below ``t_mean`` with no variance) and *informative*; a prompt whose newest
  group is informative keeps the category most of its recent groups had (:func:`prompt_category`),
  so the categories still act behind a ``zero_variance`` filter. The priority is
  :func:`dscl_priority`; mastered prompts are excluded (priority 0) except with probability
  ``p_revisit``; hard ones are down-weighted. All of it stays off until the warm-up gate opens
  (:class:`WarmupGate`: the batch mean reward above ``t_warm`` for K consecutive batches).
* **Task-based curriculum** (7b). Sub-tasks are the reward components (in the paper ToolRL's
  format, tool name, keys and values) and the env's task categories (``group.sub_tasks``). Mastery
  ``mu_s`` is an EMA of the normalized sub-task score per batch; focus
  ``w_s = softmax((1 - mu_s) / tau)`` (:func:`focus_weights`); a prompt's priority is multiplied by
  ``1 + kappa * sum_s w_s (1 - score_s)`` (:func:`curriculum_multiplier`). :func:`reweight_reward`
  is the optional second use (scalar reward reweighted by focus), for the reward side to call.

The pure math is in plain functions; :class:`DSCLPriority` (registered as ``"dscl"``) holds the state
that spans groups (warm-up, mastery) and is what the buffer calls as ``fn(group, history)``.
Everything marked *our choice* fills a detail the paper leaves open and is a constructor knob.

DSCL knows no particular reward: the reward's range and the range of each reward component come
from the options (``reward_range``, ``component_ranges``), or the env reports normalized
``sub_task_scores``. configs/function_calling.yaml sets ToolRL's scale
(``envs.rewards.TOOLRL_REWARD_RANGE``), on which the paper's thresholds (``t_warm``) are given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from actorlearner.core.history import PromptHistory
from actorlearner.core.knobs import (
    check_fraction,
    check_int,
    check_non_negative,
    check_positive,
    check_probability,
    check_range,
)
from actorlearner.core.registry import register_priority
from actorlearner.core.trajectory import Group, Trajectory

log = logging.getLogger(__name__)

Category = Literal["mastered", "hard", "informative"]
CATEGORIES: tuple[Category, ...] = ("mastered", "hard", "informative")

DEFAULT_RANGE = (0.0, 1.0)
"""The default ``reward_range``, and the range of each reward component without ``component_ranges``."""

T_WARM_FRACTION = 4 / 7
"""Where the paper's ``t_warm`` (1.0 on ToolRL's [-3, 4]) sits on a reward range: the default on any range."""

T_MEAN_FRACTION = 3 / 7
"""Where our ``t_mean`` (0.0 on [-3, 4]) sits on a reward range: the default on any range."""

FORMAT_COMPONENT = "format"
"""The tool envs' format-penalty component, which :meth:`DSCLPriority.reweight_group` leaves alone."""

PENALTY_FORMAT_RANGES: dict[str, tuple[float, float]] = {"answer": (0.0, 1.0), FORMAT_COMPONENT: (-1.0, 0.0)}
"""``component_ranges`` for a tool env whose ``"format"`` is a penalty (``ToolEnv``: down to
``-max_format_penalty``, 1.0 by default) beside an ``"answer"`` on [0, 1], as Calculator, SQL and
Python have. Read on the default [0, 1], a clean episode's format (0) would be never mastered and
draw almost all of the curriculum's focus; DSCL warns when it sees such a value.
"""


def penalty_format_yaml() -> str:
    """:data:`PENALTY_FORMAT_RANGES` as a config value, ``{answer: [0, 1], format: [-1, 0]}``."""
    return "{" + ", ".join(f"{k}: [{lo:g}, {hi:g}]" for k, (lo, hi) in PENALTY_FORMAT_RANGES.items()) + "}"


TASK_PREFIX = "task/"
"""Sub-tasks from ``group.sub_tasks`` are named ``task/<label>`` beside the reward components."""


def normalize(value: float, value_range: tuple[float, float]) -> float:
    """Maps ``value`` from ``value_range`` to [0, 1], clipped."""
    lo, hi = value_range
    return float(np.clip((value - lo) / (hi - lo), 0.0, 1.0))


def categorize(mean: float, var: float, reward_max: float, t_mean: float, atol: float = 1e-6) -> Category:
    """DSCL's category of one group from its rewards (docs/algorithms.md §7a).

    Args:
        mean: ``M``, the group's mean reward.
        var: ``V_sample``, the within-group reward variance.
        reward_max: The top of the reward range.
        t_mean: Below this mean (with no variance) a prompt is hard.
        atol: Tolerance of "no variance" (std below it) and "at the maximum".

    Returns:
        "mastered" (``M`` at the maximum, no variance), "hard" (``M < t_mean``, no variance) or
        "informative".
    """
    if math.sqrt(max(var, 0.0)) < atol:
        if mean >= reward_max - atol:
            return "mastered"
        if mean < t_mean:
            return "hard"
    return "informative"


def prompt_category(
    means: Sequence[float],
    variances: Sequence[float],
    reward_max: float,
    t_mean: float,
    atol: float = 1e-6,
    share: float = 0.5,
) -> Category:
    """DSCL's category of a prompt from its recent groups, newest last (docs/algorithms.md §7a).

    The newest group's own category (:func:`categorize`) decides when it is mastered or hard, as in
    the paper. A newest group with reward spread is *informative* by itself; it then takes the
    category (mastered or hard) that more than ``share`` of the window's groups have, newest
    included (our choice). This is what lets the categories act when a ``zero_variance`` filter
    drops every zero-spread group before it is stored: a prompt that was at the maximum in most of
    its recent groups stays mastered when one group shows a slip, and one that mostly failed stays
    hard when one rollout gets lucky.

    Args:
        means: Group mean rewards of the window, oldest first (the newest group last).
        variances: The same groups' within-group reward variances.
        reward_max: The top of the reward range.
        t_mean: Below this mean (with no variance) a group is hard.
        atol: Tolerance of "no variance" and "at the maximum".
        share: The share of the window a category needs to hold to override an informative newest
            group; 1 turns the history rule off (the category of the newest group alone).

    Returns:
        "mastered", "hard" or "informative"; "informative" for an empty window.
    """
    cats = [categorize(m, v, reward_max, t_mean, atol) for m, v in zip(means, variances, strict=True)]
    if not cats:
        return "informative"
    if cats[-1] != "informative":
        return cats[-1]
    for category in ("mastered", "hard"):
        if cats.count(category) > share * len(cats):
            return category
    return "informative"


def dscl_priority(
    m: float, v_sample: float, v_epoch: float, eps: float = 0.01, lambda_s: float = 1.0, lambda_e: float = 1.0
) -> float:
    """``eps + (1 - m) + lambda_s * sqrt(V_sample) + lambda_e * sqrt(V_epoch)`` (our choice, section 7a).

    Low mean and high variance rise; mastered prompts sink to ``eps``.

    Args:
        m: Mean reward normalized to [0, 1].
        v_sample: Within-group variance (on the scale the caller chose; :class:`DSCLPriority` uses
            normalized rewards).
        v_epoch: Variance of the prompt's group means over the window (same scale).
        eps: Floor, so no informative prompt reaches 0.
        lambda_s: Weight of the within-group spread.
        lambda_e: Weight of the across-epoch spread.
    """
    return (
        eps + (1.0 - m) + lambda_s * math.sqrt(max(v_sample, 0.0)) + lambda_e * math.sqrt(max(v_epoch, 0.0))
    )


def focus_weights(mastery: Mapping[str, float], tau: float = 0.2) -> dict[str, float]:
    """Curriculum focus ``w_s = softmax((1 - mu_s) / tau)`` (tau = 0.2 is our choice, section 7b).

    Args:
        mastery: ``mu_s`` per sub-task, in [0, 1].
        tau: Softmax temperature; smaller focuses harder on the most lagging sub-task.

    Returns:
        Weights summing to 1 (empty when ``mastery`` is).
    """
    if not mastery:
        return {}
    names = list(mastery)
    logits = np.array([(1.0 - mastery[s]) / tau for s in names], dtype=np.float64)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return {s: float(w) for s, w in zip(names, weights, strict=True)}


def curriculum_multiplier(
    focus: Mapping[str, float], scores: Mapping[str, float], kappa: float = 1.0
) -> float:
    """``1 + kappa * sum_s w_s * (1 - score_s)`` over the sub-tasks the prompt has a score for.

    Args:
        focus: ``w_s`` per sub-task.
        scores: The prompt's normalized score per sub-task (sub-tasks without focus are ignored).
        kappa: Strength of the curriculum.
    """
    return 1.0 + kappa * sum(focus[s] * (1.0 - score) for s, score in scores.items() if s in focus)


def ema_update(
    mastery: Mapping[str, float], batch_scores: Mapping[str, float], decay: float
) -> dict[str, float]:
    """``mu_s <- decay * mu_s + (1 - decay) * batch_score_s``; a new sub-task starts at its score.

    Args:
        mastery: Current ``mu_s``.
        batch_scores: The batch's mean normalized score per sub-task.
        decay: EMA decay (our choice: 0.8 per batch).

    Returns:
        The updated mastery (sub-tasks absent from the batch keep their value).
    """
    out = dict(mastery)
    for s, score in batch_scores.items():
        out[s] = decay * out[s] + (1.0 - decay) * score if s in out else score
    return out


def trajectory_component_scores(
    trajectory: Trajectory, component_ranges: Mapping[str, tuple[float, float]] | None
) -> dict[str, float]:
    """A trajectory's normalized score in [0, 1] per component sub-task.

    If the trajectory carries ``sub_task_scores`` (a mapping of already normalized scores, e.g.
    match fractions whose signed parts in ``reward_components`` depend on the prompt), those are
    used, clipped to [0, 1]. Otherwise each component named in ``component_ranges`` is read from
    ``reward_components`` and normalized by its range; with ``component_ranges=None`` every
    component is, by :data:`DEFAULT_RANGE`. Non-finite values are skipped.
    """
    given = getattr(trajectory, "sub_task_scores", None)
    if isinstance(given, Mapping) and given:
        items = [(str(k), float(v), (0.0, 1.0)) for k, v in given.items()]
    else:
        items = _ranged_components(trajectory, component_ranges)
    return {name: normalize(value, r) for name, value, r in items if math.isfinite(value)}


def out_of_range_components(
    trajectory: Trajectory, component_ranges: Mapping[str, tuple[float, float]] | None
) -> list[tuple[str, float, tuple[float, float]]]:
    """The components :func:`trajectory_component_scores` reads whose value lies outside their range.

    Their score is clipped, which is right for an outlier and wrong for a range that does not fit
    the env (a format penalty read on [0, 1] always scores 0). Trajectories with
    ``sub_task_scores`` report none.
    """
    given = getattr(trajectory, "sub_task_scores", None)
    if isinstance(given, Mapping) and given:
        return []
    return [
        (name, value, (low, high))
        for name, value, (low, high) in _ranged_components(trajectory, component_ranges)
        if math.isfinite(value) and not low - 1e-9 <= value <= high + 1e-9
    ]


def _ranged_components(
    trajectory: Trajectory, component_ranges: Mapping[str, tuple[float, float]] | None
) -> list[tuple[str, float, tuple[float, float]]]:
    """(name, value, range) of each reward component ``component_ranges`` names (None: all, on [0, 1])."""
    ranges = component_ranges
    if ranges is None:
        ranges = dict.fromkeys(trajectory.reward_components, DEFAULT_RANGE)
    return [
        (name, float(trajectory.reward_components[name]), value_range)
        for name, value_range in ranges.items()
        if name in trajectory.reward_components
    ]


def group_sub_task_scores(
    group: Group,
    component_ranges: Mapping[str, tuple[float, float]] | None,
    reward_range: tuple[float, float],
    use_task_labels: bool = True,
) -> dict[str, float]:
    """A prompt's normalized score per sub-task, from one group (``score_{i,s}`` of section 7b).

    Component sub-tasks: the mean over the trajectories that report the component. Task-label
    sub-tasks (``task/<label>`` for each of ``group.sub_tasks``): the group's normalized mean reward
    (our choice: a task category is scored by the reward on tasks of that category).
    """
    sums: dict[str, list[float]] = {}
    for t in group.trajectories:
        for name, score in trajectory_component_scores(t, component_ranges).items():
            sums.setdefault(name, []).append(score)
    scores = {name: float(np.mean(values)) for name, values in sums.items()}
    if use_task_labels and group.sub_tasks:
        rewards = _finite(group.rewards)
        if rewards.size:
            m = normalize(float(rewards.mean()), reward_range)
            scores.update({TASK_PREFIX + str(label): m for label in group.sub_tasks})
    return scores


def reweight_reward(
    components: Mapping[str, float],
    focus: Mapping[str, float],
    correctness: Sequence[str] | None = None,
) -> float:
    """The optional second use of the curriculum (7b): correctness components reweighted by focus.

    Each correctness component present in both ``components`` and ``focus`` is multiplied by
    ``n * w_s / sum(w)`` over those n components (our choice of normalization: uniform focus gives
    back the plain sum); every other component is added as it is.

    Args:
        components: The trajectory's reward components.
        focus: Focus weights from :meth:`DSCLPriority.focus`.
        correctness: Which components are reweighted; None: every one but :data:`FORMAT_COMPONENT`.
    """
    names = [c for c in components if c != FORMAT_COMPONENT] if correctness is None else correctness
    chosen = [c for c in names if c in components and c in focus]
    total = sum(focus[c] for c in chosen)
    out = sum(float(v) for k, v in components.items() if k not in chosen)
    if chosen and total > 0:
        out += sum(len(chosen) * focus[c] / total * float(components[c]) for c in chosen)
    else:
        out += sum(float(components[c]) for c in chosen)
    return out


@dataclass
class WarmupGate:
    """DSCL's warm-up gate: once open, dynamic sampling stays on.

    Closed until the batch mean reward exceeds ``threshold`` for ``patience`` consecutive batches
    (paper: > 1.0 for 7 batches on the [-3, 4] scale); a batch at or below it resets the streak.

    Attributes:
        threshold: ``t_warm``.
        patience: K; 0 opens the gate at once.
        streak: Consecutive batches above the threshold so far.
        is_open: Whether dynamic sampling is on.
    """

    threshold: float = 1.0
    patience: int = 7
    streak: int = 0
    is_open: bool = False

    def __post_init__(self) -> None:
        if self.patience <= 0:
            self.is_open = True

    def update(self, batch_mean: float) -> bool:
        """Records one batch's mean reward; returns whether the gate is open."""
        if not self.is_open:
            self.streak = self.streak + 1 if batch_mean > self.threshold else 0
            self.is_open = self.streak >= self.patience
        return self.is_open


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


@register_priority("dscl")
class DSCLPriority:
    """The DSCL priority function, stateful across groups: ``DSCLPriority(**knobs)(group, history)``.

    Resolving ``"dscl"`` or ``{name: dscl, **knobs}`` from config builds a fresh instance (a
    registered class is a factory, see :mod:`actorlearner.core.registry`). The buffer calls it on each kept
    group with the prompt's history (which already holds this group). It always returns a finite
    float >= 0: non-finite rewards and components are ignored.

    Batches: the warm-up gate and the mastery EMA update once per batch. By default (our choice) a
    batch is every ``batch_groups`` consecutive groups the instance is called on, since the buffer
    computes priorities as groups arrive; set ``batch_groups=0`` and call :meth:`observe_batch` to
    define batches yourself (or ``auto_observe=False`` and :meth:`observe` per group, e.g. to see
    groups before the filters drop them).

    Args:
        reward_range: Range that normalizes rewards to [0, 1] (default [0, 1]); its top is "the
            reward maximum" of the mastered category. ToolRL-rewarded envs use [-3, 4]
            (``envs.rewards.TOOLRL_REWARD_RANGE``), the scale of the paper's ``t_warm``.
        eps: Priority floor of :func:`dscl_priority`.
        lambda_s: Weight of ``sqrt(V_sample)``.
        lambda_e: Weight of ``sqrt(V_epoch)``.
        normalize_variance: Our choice: take both variances on normalized rewards, so the three
            terms share the [0, 1] scale of ``1 - m``; False uses raw reward units.
        epoch_window: W, the group means ``V_epoch`` is over (our choice 8; the buffer's
            ``history_window`` caps it).
        t_warm: Warm-up threshold on the batch mean reward, in reward units. Default: the paper's 1.0
            on [-3, 4] carried to ``reward_range`` (4/7 of the way up it: 0.571 on [0, 1]).
        warmup_batches: K consecutive batches above ``t_warm`` (paper: 7; 0 disables warm-up).
        batch_groups: Groups per batch for the automatic batching (0: call :meth:`observe_batch`).
        auto_observe: Whether each call also feeds the group to :meth:`observe`.
        t_mean: Below this group mean (with no variance) a prompt is hard, in reward units. Default
            (our choice): 0.0 on [-3, 4] carried to ``reward_range`` (3/7 of the way up it).
        history_share: A prompt whose newest group has reward spread takes the category (mastered
            or hard) held by more than this share of its last ``epoch_window`` groups
            (:func:`prompt_category`; our choice 0.5). 1 uses the newest group alone, as the paper.
        atol: Tolerance of "no variance" and "at the maximum".
        p_revisit: Chance that a mastered prompt keeps its priority instead of 0 (our choice: 0.05).
        hard_weight: Factor on the priority of hard prompts (our choice: 0.5).
        uniform_priority: Priority of every group before the warm-up gate opens (still times the
            curriculum multiplier when the curriculum is on).
        curriculum: Whether to multiply priorities by the curriculum multiplier (on by default).
        kappa: Curriculum strength (our choice: 1.0).
        tau: Focus softmax temperature (our choice: 0.2).
        mastery_decay: EMA decay of the sub-task mastery per batch (our choice: 0.8).
        component_ranges: Reward components that are sub-tasks and the range normalizing each
            (default None: every component, each in [0, 1]; ``{}``: none; a tool env's format
            penalty needs its own range, :data:`PENALTY_FORMAT_RANGES`). Used only for
            trajectories without ``sub_task_scores`` (see :func:`trajectory_component_scores`):
            an env whose components have no fixed range (ToolRL's signed parts scale with the
            prompt) reports normalized ``sub_task_scores`` instead.
        correctness_components: The components :meth:`reweight_group` reweights (default None:
            every component sub-task but :data:`FORMAT_COMPONENT`).
        use_task_labels: Whether ``group.sub_tasks`` labels are sub-tasks too.
        reweight_rewards: The optional second use of the curriculum (7b, off by default): the
            buffer stores the group :meth:`reweight_group` returns for each kept group (after its
            priority), so the learner's advantages come from rewards whose correctness components
            are reweighted by focus (:func:`reweight_reward`). Categories, priorities and the
            ``rollout/*`` metrics use the env's rewards.
        seed: Seeds the revisit draws.
    """

    def __init__(
        self,
        reward_range: Sequence[float] = DEFAULT_RANGE,
        eps: float = 0.01,
        lambda_s: float = 1.0,
        lambda_e: float = 1.0,
        normalize_variance: bool = True,
        epoch_window: int = 8,
        t_warm: float | None = None,
        warmup_batches: int = 7,
        batch_groups: int = 32,
        auto_observe: bool = True,
        t_mean: float | None = None,
        history_share: float = 0.5,
        atol: float = 1e-6,
        p_revisit: float = 0.05,
        hard_weight: float = 0.5,
        uniform_priority: float = 1.0,
        curriculum: bool = True,
        kappa: float = 1.0,
        tau: float = 0.2,
        mastery_decay: float = 0.8,
        component_ranges: Mapping[str, Sequence[float]] | None = None,
        correctness_components: Sequence[str] | None = None,
        use_task_labels: bool = True,
        reweight_rewards: bool = False,
        seed: int = 0,
    ) -> None:
        self.reward_range = check_range("reward_range", reward_range)
        self.component_ranges: dict[str, tuple[float, float]] | None = None
        if component_ranges is not None:
            self.component_ranges = {
                str(k): check_range(f"component_ranges[{k!r}]", v) for k, v in component_ranges.items()
            }
        self.correctness_components = None if correctness_components is None else list(correctness_components)
        self.eps = check_non_negative("eps", eps)
        self.lambda_s = check_non_negative("lambda_s", lambda_s)
        self.lambda_e = check_non_negative("lambda_e", lambda_e)
        self.kappa = check_non_negative("kappa", kappa)
        self.hard_weight = check_non_negative("hard_weight", hard_weight)
        self.uniform_priority = check_non_negative("uniform_priority", uniform_priority)
        self.epoch_window = check_int("epoch_window", epoch_window, 0)
        self.batch_groups = check_int("batch_groups", batch_groups, 0)
        self.p_revisit = check_probability("p_revisit", p_revisit)
        self.mastery_decay = check_fraction("mastery_decay", mastery_decay)
        self.tau = check_positive("tau", tau)
        self.normalize_variance, self.auto_observe = bool(normalize_variance), bool(auto_observe)
        self.t_mean = self._on_scale(t_mean, T_MEAN_FRACTION)
        self.atol = float(atol)
        self.history_share = check_probability("history_share", history_share)
        self.curriculum, self.use_task_labels = bool(curriculum), bool(use_task_labels)
        self.reweight_rewards = bool(reweight_rewards)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.gate = WarmupGate(
            self._on_scale(t_warm, T_WARM_FRACTION), check_int("warmup_batches", warmup_batches, 0)
        )
        self.mastery: dict[str, float] = {}
        self.num_batches = 0
        self._batch: dict[str, float] = {}  # running sums of the open batch
        self._counts: dict[str, float] = {}  # metrics since the last metrics() call
        self._warned: set[str] = set()  # components already reported out of their range

    def _on_scale(self, value: float | None, fraction: float) -> float:
        """``value``, or the point ``fraction`` of the way up ``reward_range`` when it is None."""
        if value is not None:
            return float(value)
        low, high = self.reward_range
        return low + fraction * (high - low)

    def __repr__(self) -> str:
        return (
            f"DSCLPriority(reward_range={self.reward_range}, lambda_s={self.lambda_s}, "
            f"lambda_e={self.lambda_e}, kappa={self.kappa}, tau={self.tau})"
        )

    # -- the priority ---------------------------------------------------------------------------

    def __call__(self, group: Group, history: PromptHistory) -> float:
        """The group's priority (>= 0, finite); also observes the group when ``auto_observe``."""
        priority, _ = self.priority(group, history)
        self._count("priority_sum", priority)
        self._count("priority_n")
        self._counts["priority_min"] = min(self._counts.get("priority_min", math.inf), priority)
        self._counts["priority_max"] = max(self._counts.get("priority_max", -math.inf), priority)
        if self.auto_observe:
            self.observe(group)
        return priority

    def priority(self, group: Group, history: PromptHistory) -> tuple[float, Category]:
        """The group's priority and category, without observing the group (no batch state changes).

        Before the warm-up gate opens the base priority is ``uniform_priority``; after, it is
        :func:`dscl_priority`, 0 for a mastered prompt (unless the ``p_revisit`` draw revisits it)
        and times ``hard_weight`` for a hard one. With the curriculum on it is then multiplied by
        :func:`curriculum_multiplier` under the current focus.
        """
        rewards = _finite(group.rewards)
        with np.errstate(over="ignore", invalid="ignore"):  # absurd rewards end in the eps fallback
            mean = float(rewards.mean()) if rewards.size else self.reward_range[0]
            var = float(rewards.var()) if rewards.size else 0.0
        category = self.category(history, mean, var)
        if self.gate.is_open:
            base = self._dynamic_priority(mean, var, history, category)
        else:
            base = self.uniform_priority
        if self.curriculum and base > 0:
            scores = group_sub_task_scores(
                group, self.component_ranges, self.reward_range, self.use_task_labels
            )
            base *= curriculum_multiplier(self.focus(), scores, self.kappa)
        return (base if math.isfinite(base) and base >= 0 else self.eps), category

    def category(
        self, history: PromptHistory | None, mean: float | None = None, var: float | None = None
    ) -> Category:
        """The prompt's category (:func:`prompt_category`) over its last ``epoch_window`` groups.

        Args:
            history: The prompt's history; the buffer records the current group in it first, so
                it is the newest entry.
            mean: The newest group's mean reward, used alone when ``history`` is None or empty.
            var: Its within-group variance.
        """
        means: list[float] = list(history.group_means) if history is not None else []
        variances: list[float] = list(history.group_vars) if history is not None else []
        if not means and mean is not None and var is not None:
            means, variances = [mean], [var]
        window = max(self.epoch_window, 1)
        return prompt_category(
            means[-window:],
            variances[-window:],
            self.reward_range[1],
            self.t_mean,
            self.atol,
            self.history_share,
        )

    def _dynamic_priority(self, mean: float, var: float, history: PromptHistory, category: Category) -> float:
        if category == "mastered":
            revisit = self.p_revisit > 0 and float(self.rng.random()) < self.p_revisit
            self._count("revisited" if revisit else "excluded")
            if not revisit:
                return 0.0
        v_epoch = history.epoch_variance_over(self.epoch_window) if history is not None else 0.0
        v_epoch = v_epoch if math.isfinite(v_epoch) else 0.0
        if self.normalize_variance:
            width = self.reward_range[1] - self.reward_range[0]
            var, v_epoch = var / width**2, v_epoch / width**2
        p = dscl_priority(
            normalize(mean, self.reward_range), var, v_epoch, self.eps, self.lambda_s, self.lambda_e
        )
        if category == "hard":
            self._count("down_weighted")
            return p * self.hard_weight
        return p

    def skip_prompt(self, history: PromptHistory) -> bool:
        """Whether runners should rarely re-issue this prompt: mastered, once warm-up is over.

        Runners skip such a prompt unless a draw below ``p_revisit`` revisits it.
        """
        if not self.gate.is_open or not history.group_means:
            return False
        return self.category(history) == "mastered"

    def focus(self) -> dict[str, float]:
        """Current focus weights ``w_s`` over the sub-tasks with a mastery estimate."""
        return focus_weights(self.mastery, self.tau)

    def reweight_group(self, group: Group) -> Group:
        """The group with each trajectory's reward reweighted by focus, if ``reweight_rewards`` is on.

        Groups are values: the input and its trajectories are never modified (the buffer's arrival
        list, from which ``rollout/*`` is computed, shares them), and the buffer stores the group
        returned. Only the correctness components change: ``reward += reweight_reward(c) - sum(c)``
        over the correctness components ``c`` the trajectory has (``correctness_components``; by
        default its components with a focus weight but ``format``), so any other term of the reward
        (format, penalties, components that are no sub-task) stays as the env gave it.

        Returns:
            A new group with the affected trajectories replaced; ``group`` itself when nothing
            changes (reweighting off, no mastery estimate yet, or no trajectory affected).
        """
        focus = self.focus()
        if not self.reweight_rewards or not focus:
            return group
        deltas = [self._reward_delta(t, focus) for t in group.trajectories]
        if all(d is None for d in deltas):
            return group
        trajectories = [
            t if d is None else t.replace(reward=float(t.reward) + d)
            for t, d in zip(group.trajectories, deltas, strict=True)
        ]
        return group.replace(trajectories=trajectories)

    def _reward_delta(self, trajectory: Trajectory, focus: Mapping[str, float]) -> float | None:
        """The change of one trajectory's reward by :func:`reweight_reward`, counted; None: none."""
        comps = trajectory.reward_components
        names = self.correctness_components
        if names is None:
            names = [c for c in comps if c != FORMAT_COMPONENT and c in focus]
        parts = {c: float(comps[c]) for c in names if c in comps}
        if not parts or not all(math.isfinite(v) for v in parts.values()):
            return None
        delta = reweight_reward(parts, focus, list(parts)) - sum(parts.values())
        self._count("reweight_delta_sum", abs(delta))
        self._count("reweight_n")
        return delta

    # -- batch-level state ------------------------------------------------------------------------

    def observe(self, group: Group) -> None:
        """Counts the group's category and adds it to the open batch.

        The batch closes after ``batch_groups`` groups (if > 0). The buffer calls this for every
        arriving group, before its filters drop any, so category counts cover all groups.
        """
        rewards = _finite(group.rewards)
        if rewards.size:
            mean, var = float(rewards.mean()), float(rewards.var())
            self._count(f"category/{categorize(mean, var, self.reward_range[1], self.t_mean, self.atol)}")
        self._accumulate(group)
        if self.batch_groups and self._batch["groups"] >= self.batch_groups:
            self.close_batch()

    def observe_batch(self, groups: Iterable[Group]) -> None:
        """Treats ``groups`` (plus any group observed since the last batch closed) as one batch."""
        for group in groups:
            self._accumulate(group)
        self.close_batch()

    def _accumulate(self, group: Group) -> None:
        b = self._batch
        rewards = _finite(group.rewards)
        b["reward_sum"] = b.get("reward_sum", 0.0) + float(rewards.sum())
        b["reward_n"] = b.get("reward_n", 0.0) + float(rewards.size)
        b["groups"] = b.get("groups", 0.0) + 1
        scores: list[tuple[str, float]] = [
            item
            for t in group.trajectories
            for item in trajectory_component_scores(t, self.component_ranges).items()
        ]
        if self.use_task_labels and group.sub_tasks and rewards.size:
            m = normalize(float(rewards.mean()), self.reward_range)
            scores += [(TASK_PREFIX + str(label), m) for label in group.sub_tasks]
        self._warn_out_of_range(group)
        for name, score in scores:
            b[f"sum/{name}"] = b.get(f"sum/{name}", 0.0) + score
            b[f"n/{name}"] = b.get(f"n/{name}", 0.0) + 1

    def _warn_out_of_range(self, group: Group) -> None:
        """Warns once per component whose values fall outside the range that normalizes them."""
        for t in group.trajectories:
            for name, value, (low, high) in out_of_range_components(t, self.component_ranges):
                if name in self._warned:
                    continue
                self._warned.add(name)
                log.warning(
                    "DSCL: reward component %r = %g is outside its range [%g, %g], so its curriculum "
                    "score is clipped; set the dscl priority's component_ranges to the env's ranges "
                    "(a ToolEnv's format penalty: %s), docs/algorithms.md §7b",
                    name,
                    value,
                    low,
                    high,
                    penalty_format_yaml(),
                )

    def close_batch(self) -> None:
        """Updates the warm-up gate and the sub-task mastery from the open batch, then empties it."""
        b, self._batch = self._batch, {}
        if not b.get("groups"):
            return
        if b.get("reward_n"):
            self.gate.update(b["reward_sum"] / b["reward_n"])
        scores = {k[4:]: v / b["n/" + k[4:]] for k, v in b.items() if k.startswith("sum/")}
        self.mastery = ema_update(self.mastery, scores, self.mastery_decay)
        self.num_batches += 1

    # -- metrics and state ------------------------------------------------------------------------

    def _count(self, key: str, value: float = 1.0) -> None:
        self._counts[key] = self._counts.get(key, 0.0) + value

    def metrics(self, reset: bool = True) -> dict[str, float]:
        """DSCL's metrics, keys prefixed ``dscl/``.

        ``category/<mastered|hard|informative>`` count the observed groups (in the buffer: every
        arriving group), ``excluded``, ``revisited`` (mastered groups sent to priority 0 / kept by
        the revisit draw), ``down_weighted`` (hard prompts' groups given ``hard_weight``) and
        ``priority_mean|min|max`` the priorities given since the last reset;
        ``mastery/<sub_task>``, ``focus/<sub_task>``, ``warm`` (1 once the warm-up gate is open),
        ``warmup_streak`` and ``batches`` are the current state.

        Args:
            reset: Start the counts afresh after reading them.
        """
        c = self._counts
        n = c.get("priority_n", 0.0)
        out = {f"dscl/category/{k}": c.get(f"category/{k}", 0.0) for k in CATEGORIES}
        out["dscl/excluded"] = c.get("excluded", 0.0)
        out["dscl/revisited"] = c.get("revisited", 0.0)
        out["dscl/down_weighted"] = c.get("down_weighted", 0.0)
        if n:
            out["dscl/priority_mean"] = c["priority_sum"] / n
            out["dscl/priority_min"] = c["priority_min"]
            out["dscl/priority_max"] = c["priority_max"]
        out.update({f"dscl/mastery/{s}": mu for s, mu in self.mastery.items()})
        out.update({f"dscl/focus/{s}": w for s, w in self.focus().items()})
        if c.get("reweight_n"):
            out["dscl/reweight_abs_delta"] = c["reweight_delta_sum"] / c["reweight_n"]
        out["dscl/warm"] = float(self.gate.is_open)
        out["dscl/warmup_streak"] = float(self.gate.streak)
        out["dscl/batches"] = float(self.num_batches)
        if reset:
            self._counts = {}
        return out

    def get_state(self) -> dict[str, Any]:
        """The state that spans groups (warm-up, mastery, open batch, RNG), for checkpoints."""
        return {
            "gate": (self.gate.streak, self.gate.is_open),
            "mastery": dict(self.mastery),
            "num_batches": self.num_batches,
            "batch": dict(self._batch),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        self.gate.streak, self.gate.is_open = state["gate"]
        self.mastery = dict(state["mastery"])
        self.num_batches = int(state["num_batches"])
        self._batch = dict(state["batch"])
        self.rng.bit_generator.state = state["rng"]
