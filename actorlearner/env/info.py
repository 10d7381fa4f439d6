"""The ``info`` contract between a tool env and the rollout runner: :class:`StepInfo`.

This module is the one place the keys are documented. :class:`~actorlearner.env.toolenv.ToolEnv`
returns a :class:`StepInfo` from ``reset`` and ``step``, the rollout
(:func:`actorlearner.rollout.episode.run_episode`) reads one, and
:func:`~actorlearner.env.checker.check_env` validates an env's infos against the annotations below
(plus the rules no type can say, e.g. that ``reward_components`` sum to the reward). Any
``gymnasium.Env`` that returns such dicts works; it need not subclass ``ToolEnv``.

An env may add keys of its own (e.g. FunctionCalling's ``toolrl``); the runner ignores them. To
document them, subclass :class:`StepInfo` (``class MyInfo(StepInfo, total=False): ...``).

Note: no ``from __future__ import annotations`` here; Python 3.11 only sees ``NotRequired`` in
evaluated annotations.
"""

from typing import Any, NotRequired, TypedDict, cast

TOOL_OUTPUT = "tool_output"
"""A key an env sets on a message that carries a tool's output in a role other than ``tool``
(``{"role": "user", "content": ..., "tool_output": True}``; SkyRL-Gym's envs send tool results as
``user``). Its text is then tokenized as a tool's, with the format's tags split
(docs/algorithms.md §1); the key is dropped before the chat template renders the message."""


class ToolCallInfo(TypedDict):
    """One entry of ``info["tool_calls"]``: what one tool call of the turn did.

    Attributes:
        name: Tool name the model asked for (``""`` when the call could not be parsed).
        arguments: The call's parsed keyword arguments (``{}`` when unparsable).
        ok: True when the tool ran without error and returned output.
        error: The error text shown to the model; required (a str) when ``ok`` is False, else None.
        output: The tool's output as shown to the model (clipped by the env); None when it failed.
    """

    name: str
    arguments: dict[str, Any]
    ok: bool
    error: NotRequired[str | None]
    output: NotRequired[str | None]


class StepInfo(TypedDict, total=False):
    """The ``info`` dict of ``env.reset`` and ``env.step``: every key the runner reads.

    Which keys each call must return is :data:`RESET_REQUIRED`, :data:`RESET_EXPECTED`,
    :data:`STEP_REQUIRED` and :data:`STEP_EXPECTED_AT_END` (``check_env`` raises on a missing
    required key and warns on a missing expected one). Keys not listed are free for the env.

    Attributes:
        tools: (reset) The tools offered for this task, as JSON schemas in the OpenAI function format
            ``{"type": "function", "function": {"name", "description", "parameters"}}``; the chat
            template renders them into the prompt.
        prompt_id: (reset) A stable id of the task: equal seeds give equal ids. A GRPO group's
            episodes share it; the replay buffer keys prompt histories by it.
        sub_tasks: (reset) Labels of the task's sub-tasks or category (e.g. ``["parallel"]``); the
            curriculum and the metrics group by them.
        task_id: (reset) The task family, e.g. the gymnasium id.
        tool_calls: (step) One :class:`ToolCallInfo` per tool call of the turn, in order.
        final_answer: (step) The text of the turn's final answer, or None when it gave none.
        reward_components: (step) Named parts of the step's reward, summing to it (e.g.
            ``{"format": -0.1, "answer": 1.0}``); the runner sums them over the episode.
        success: (step) Whether the episode solved the task; read on every step, the last value
            counts (expected on the step that ends the episode).
        void: (step) The turn had neither a tool call nor a final answer (SimpleTIR's void turn).
            When missing, the runner takes ``not tool_calls and final_answer is None``.
        format_errors: (step) The parser's complaints about the turn (bad JSON, unclosed tag...).
        turn: (step) 0-based index of the turn in the episode.
        sub_task_scores: (step) Already normalized scores in [0, 1] per sub-task (e.g. ToolRL's
            format/name/keys/values match fractions); the last step that has them counts. DSCL's
            curriculum prefers them to normalizing ``reward_components``.
        env_error: (step) Set by the runner, not by envs: ``env.step`` timed out or raised, and the
            episode was cut there.
    """

    # ---- from reset
    tools: list[dict[str, Any]]
    prompt_id: str
    sub_tasks: list[str]
    task_id: str
    # ---- from step
    tool_calls: list[ToolCallInfo]
    final_answer: str | None
    reward_components: dict[str, float]
    success: bool
    void: bool
    format_errors: list[str]
    turn: int
    sub_task_scores: dict[str, float]
    env_error: str


RESET_REQUIRED: tuple[str, ...] = ("tools", "prompt_id")
"""Keys ``reset`` must return."""
RESET_EXPECTED: tuple[str, ...] = ("sub_tasks", "task_id")
"""Keys ``reset`` should return (the curriculum and the metrics use them)."""
STEP_REQUIRED: tuple[str, ...] = ("tool_calls", "final_answer", "reward_components")
"""Keys every ``step`` must return."""
STEP_EXPECTED_AT_END: tuple[str, ...] = ("success",)
"""Keys the step that ends the episode should return."""


def as_step_info(info: Any) -> StepInfo:
    """Types a plain env's ``info`` dict as a :class:`StepInfo` (no check, no copy; {} for None).

    For reading an info whose env is not known to follow the contract, use ``.get`` with a default
    on the result, as the runner does; :func:`~actorlearner.env.checker.check_env` is the check.
    """
    return cast(StepInfo, info if info is not None else {})
