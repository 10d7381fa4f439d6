"""The trajectory record: the one contract between rollout actors and the learner.

Token-in/token-out: ``token_ids`` is the concatenation, turn by turn, of the prompt ids, the ids the
engine sampled and the ids of each observation the env returned. Nothing is ever re-tokenized from
the chat text, so the learner trains on exactly the ids the policy produced (docs/algorithms.md §1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ToolCallRecord:
    """What one tool call in one assistant turn did.

    Attributes:
        name: Tool name the model asked for ("" when the call could not be parsed).
        arguments: Parsed arguments (empty when unparsable).
        ok: True when the tool ran without error and returned output.
        error: Error text shown to the model when ``ok`` is False, else None.
        output: The tool's output as shown to the model (truncated by the env).
    """

    name: str
    arguments: dict[str, Any]
    ok: bool
    error: str | None = None
    output: str | None = None

    @classmethod
    def from_info(cls, d: dict[str, Any]) -> ToolCallRecord:
        """Builds a record from an env's ``info["tool_calls"]`` entry, tolerating missing keys."""
        args = d.get("arguments")
        return cls(
            name=str(d.get("name", "")),
            arguments=args if isinstance(args, dict) else {},
            ok=bool(d.get("ok", False)),
            error=None if d.get("error") is None else str(d.get("error")),
            output=None if d.get("output") is None else str(d.get("output")),
        )


@dataclass
class TurnRecord:
    """One assistant turn and what the env did with it.

    Attributes:
        index: Turn number, 0 for the first assistant turn.
        text: The model's raw turn, decoded from the sampled ids.
        start: Offset of the turn's first sampled token in ``Trajectory.token_ids``.
        end: Offset one past the turn's last sampled token.
        tool_calls: Each tool call of the turn, in order.
        final_answer: The final answer the turn gave, or None.
        void: True when the turn had neither a tool call nor a final answer (SimpleTIR).
        policy_version: Weights version that sampled this turn.
    """

    index: int
    text: str
    start: int
    end: int
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    final_answer: str | None = None
    void: bool = False
    policy_version: int = 0


@dataclass
class Trajectory:
    """One episode, as token arrays aligned index by index, plus per-turn and per-episode facts.

    Attributes:
        token_ids: Prompt ids, then sampled ids and observation ids turn by turn (int32).
        loss_mask: 1 on ids the policy sampled, 0 on prompt and observation ids (float32, so a
            filter may scale it, e.g. TAO-RL's tool-failure mask).
        logprobs: Behaviour log-probability of each sampled id under the engine that sampled it,
            at the sampling temperature; 0 where ``loss_mask`` is 0 (float32).
        turn_index: Assistant turn each id belongs to; -1 on the prompt (int32).
        post_tool: 1 on every sampled id of an assistant turn that directly follows a tool
            result (int8).
        prompt_length: Number of prompt ids before the first sampled id.
        turns: One record per assistant turn.
        reward: Scalar reward of the episode (sum of the env's rewards).
        reward_components: Named parts of the reward, from ``info["reward_components"]``.
        success: Whether the env judged the episode solved (``info["success"]``).
        policy_versions: Distinct weights versions that sampled the turns, ascending.
        prompt_id: Identifies the task (the reset seed and env), shared by the group.
        group_id: Identifies the group of G episodes of the same prompt.
        task_id: Task family of the env (e.g. the env id).
        sub_tasks: Labels of the task's sub-tasks or category (curriculum reads these).
        terminated: The env ended the episode (answered).
        truncated: The env or the runner cut the episode (turn or token limit).
        overlong: The episode hit the token cap ``max_tokens``.
        env_error: Set when ``env.step`` timed out or raised; the episode was cut there.
        sub_task_scores: Per-sub-task scores in [0, 1] from the env's last ``info["sub_task_scores"]``
            (e.g. ToolRL's format/name/keys/values normalized); DSCL's curriculum reads them.
    """

    token_ids: np.ndarray
    loss_mask: np.ndarray
    logprobs: np.ndarray
    turn_index: np.ndarray
    post_tool: np.ndarray
    prompt_length: int
    turns: list[TurnRecord] = field(default_factory=list)
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    success: bool = False
    policy_versions: list[int] = field(default_factory=list)
    prompt_id: str = ""
    group_id: str = ""
    task_id: str = ""
    sub_tasks: list[str] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    overlong: bool = False
    env_error: str | None = None
    sub_task_scores: dict[str, float] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Total number of ids (prompt, sampled and observation)."""
        return int(self.token_ids.shape[0])

    @property
    def num_sampled(self) -> int:
        """Number of ids the policy sampled."""
        return int(sum(t.end - t.start for t in self.turns))

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        """All tool calls of all turns, in order."""
        return [c for t in self.turns for c in t.tool_calls]

    @property
    def min_version(self) -> int:
        """Oldest weights version that contributed a turn (0 when there is none)."""
        return min(self.policy_versions) if self.policy_versions else 0

    def replace(self, **changes: Any) -> Trajectory:
        """Returns a copy with some fields replaced (filters use it to mask without mutating)."""
        return dataclasses.replace(self, **changes)


@dataclass
class Group:
    """The G trajectories of one prompt: the unit the replay buffer stores and samples.

    Attributes:
        group_id: Unique id of the group.
        prompt_id: Prompt the trajectories share (same env seed).
        trajectories: The G episodes.
        task_id: Task family (env id).
        sub_tasks: Sub-task labels of the prompt.
        created_at: Wall-clock time (seconds since the epoch) the group was completed.
        is_weight: Importance-sampling weight the buffer attached when it sampled the group.
        filter_note: What the replay filters did to the group (``"kept"``, ``"masked by NAME (N
            tokens)"``, ``"dropped by NAME"``); empty before the buffer saw it.
    """

    group_id: str
    prompt_id: str
    trajectories: list[Trajectory]
    task_id: str = ""
    sub_tasks: list[str] = field(default_factory=list)
    created_at: float = 0.0
    is_weight: float = 1.0
    filter_note: str = ""

    @property
    def rewards(self) -> np.ndarray:
        """Scalar rewards of the trajectories (float64)."""
        return np.array([t.reward for t in self.trajectories], dtype=np.float64)

    @property
    def min_version(self) -> int:
        """Oldest weights version among the group's trajectories (those with sampled turns)."""
        return min((t.min_version for t in self.trajectories if t.policy_versions), default=0)

    @property
    def num_tokens(self) -> int:
        """Total ids over the group's trajectories."""
        return int(sum(t.length for t in self.trajectories))

    def replace(self, **changes: Any) -> Group:
        """Returns a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)
