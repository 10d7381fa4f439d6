"""The cold-start demonstration shared by single-tool envs with integer answers (Calculator, PythonTIR).

With probability ``demo_tool_prob`` (drawn at reset from the seed) the demonstration calls the tool
and then answers what it returned; otherwise it answers a wrong integer near the right one. SFT on
such demonstrations teaches the format but not that the tool pays off, so RL has headroom.
"""

from __future__ import annotations

from typing import Any

from actorlearner.env.info import StepInfo
from actorlearner.env.toolenv import Messages, ToolEnv


class ToolOrGuessEnv(ToolEnv):
    """A :class:`ToolEnv` whose ``demonstration`` either uses its tool or guesses a wrong integer.

    A subclass sets ``demo_tool_prob`` and implements :meth:`answer_value` (the task's integer
    answer) and :meth:`demo_call` (the tool call that computes it).
    """

    demo_tool_prob: float = 0.5
    _demo_uses_tool: bool = False
    _demo_guess: int = 0

    def answer_value(self, task: dict[str, Any]) -> int:
        """The task's right answer."""
        raise NotImplementedError

    def demo_call(self, task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The tool call (name, arguments) that computes the answer."""
        raise NotImplementedError

    def reset(  # type: ignore[override]  # a typed info dict
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, StepInfo]:
        """Starts an episode (see :meth:`ToolEnv.reset`) and draws the demonstration's decisions."""
        messages, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        value = self.answer_value(self.task)
        self._demo_uses_tool = bool(self.np_random.random() < self.demo_tool_prob)
        spread = max(3, abs(value) // 5)
        offset = int(self.np_random.integers(1, spread + 1)) * (1 if self.np_random.random() < 0.5 else -1)
        self._demo_guess = value + offset
        return messages, info

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """The scripted next turn: the tool call, then the tool's output as the answer; or a wrong guess.

        Args:
            messages: The conversation so far.

        Returns:
            A tool call or an answer, in the env's tool-call format.
        """
        if self.task is None:
            raise RuntimeError("demonstration() needs reset() first")
        last = messages[-1] if messages else {}
        if last.get("role") == "tool" and not str(last.get("content", "")).startswith("Error"):
            return self.format_answer(str(last["content"]).strip())
        if self._demo_uses_tool:
            return self.format_call(*self.demo_call(self.task))
        return self.format_answer(str(self._demo_guess))
