"""One episode of a tool env, token-in/token-out, and the policies that play it.

:func:`run_episode` appends, turn by turn, the ids the policy sampled (loss mask 1, behaviour
log-probs) and the ids of the env's observation messages (loss mask 0). The env's ``step`` runs in
a worker thread with a time limit, so a slow tool never stalls the other episodes in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import gymnasium
import numpy as np

from actorlearner.core.protocols import Generation, SamplingParams
from actorlearner.core.trajectory import ToolCallRecord, Trajectory, TurnRecord
from actorlearner.env.info import StepInfo, as_step_info
from actorlearner.rollout import chat

TIMEOUT_MESSAGE = "Error: the tool call timed out"


class TurnPolicy(Protocol):
    """Produces the next assistant turn as token ids."""

    async def __call__(
        self, ids: Sequence[int], env: gymnasium.Env, messages: list[dict[str, Any]], budget: int
    ) -> Generation:
        """Returns the next turn for the ids (and chat messages) so far, at most ``budget`` ids."""
        ...


class EnginePolicy:
    """Samples turns from an engine (through the async batcher).

    Args:
        engine: An :class:`~actorlearner.rollout.engine.AsyncBatchingEngine`.
        params: Sampling parameters (``max_new_tokens`` is capped by the episode's token budget).
        count: Whether the turns count in the engine's throughput stats (False for evaluation).
    """

    def __init__(self, engine: Any, params: SamplingParams, count: bool = True) -> None:
        self.engine = engine
        self.params = params
        self.count = count

    async def __call__(
        self, ids: Sequence[int], env: gymnasium.Env, messages: list[dict[str, Any]], budget: int
    ) -> Generation:
        """Samples one turn of at most ``min(params.max_new_tokens, budget)`` ids."""
        params = self.params
        if budget < params.max_new_tokens:
            params = dataclasses.replace(params, max_new_tokens=budget)
        if self.count:
            return await self.engine.generate(list(ids), params)  # type: ignore[no-any-return]
        return await self.engine.generate(list(ids), params, count=False)  # type: ignore[no-any-return]


class DemonstrationTurnPolicy:
    """Plays the env's own ``demonstration(messages)`` policy, tokenized (for cold-start SFT).

    A demonstrated turn ends where generation would: when its text does not end with a stop id
    (e.g. ``</answer>`` is not one token in a user's tokenizer), the end-of-turn id is appended to
    the turn (loss mask 1), so the model learns to stop. Log-probs are 0: SFT does not use them.

    Args:
        tokenizer: The policy's tokenizer.
        stop_ids: Ids that end a turn during generation.
    """

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids) | {tokenizer.eos_token_id}

    async def __call__(
        self, ids: Sequence[int], env: gymnasium.Env, messages: list[dict[str, Any]], budget: int
    ) -> Generation:
        """Tokenizes the demonstrated turn."""
        text = env.unwrapped.demonstration(messages)  # type: ignore[attr-defined]
        turn_ids = chat.encode_text(self.tokenizer, text)
        if not turn_ids or turn_ids[-1] not in self.stop_ids:
            turn_ids.append(self.tokenizer.eos_token_id)
        return Generation(token_ids=turn_ids, logprobs=[0.0] * len(turn_ids), finish_reason="stop")


@dataclass
class _Builder:
    """Accumulates the aligned per-token arrays of an episode."""

    ids: list[int] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turn_index: list[int] = field(default_factory=list)
    post_tool: list[int] = field(default_factory=list)

    def extend(
        self,
        ids: Sequence[int],
        sampled: bool,
        turn: int,
        post_tool: bool = False,
        logprobs: Sequence[float] | None = None,
    ) -> None:
        n = len(ids)
        self.ids.extend(ids)
        self.mask.extend([1.0 if sampled else 0.0] * n)
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * n)
        self.turn_index.extend([turn] * n)
        self.post_tool.extend([int(post_tool and sampled)] * n)


@dataclass
class EpisodeOutcome:
    """What an episode's step infos add up to so far (see :func:`record_step`).

    Attributes:
        reward: Sum of the step rewards.
        components: Sum of each reward component over the steps.
        success: The last ``success`` a step reported.
        env_error: Set when ``env.step`` timed out or raised.
        sub_task_scores: The last ``sub_task_scores`` a step reported.
    """

    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    success: bool = False
    env_error: str | None = None
    sub_task_scores: dict[str, float] = field(default_factory=dict)


def record_step(info: StepInfo, reward: float, turn: TurnRecord, outcome: EpisodeOutcome) -> None:
    """Reads one step's ``info`` into the turn's record and the episode's running outcome.

    The one place the rollout reads a step :class:`~actorlearner.env.info.StepInfo` (whose docstring
    documents the keys). It tolerates missing keys, so plain envs that return only the required ones
    work: the turn gets its tool calls, final answer and void flag; the outcome adds the reward and
    the reward components and takes the last ``success``, ``env_error`` and ``sub_task_scores``.

    Args:
        info: The step's info.
        reward: The step's reward.
        turn: The record of the turn just played (its tool calls, answer and void flag are set).
        outcome: The episode's running outcome (updated in place).
    """
    calls = [ToolCallRecord.from_info(cast(dict[str, Any], c)) for c in info.get("tool_calls", [])]
    answer = info.get("final_answer")
    turn.tool_calls = calls
    turn.final_answer = None if answer is None else str(answer)
    turn.void = bool(info.get("void", not calls and answer is None))
    outcome.reward += float(reward)
    for name, value in info.get("reward_components", {}).items():
        outcome.components[name] = outcome.components.get(name, 0.0) + float(value)
    outcome.success = bool(info.get("success", outcome.success))
    outcome.env_error = info.get("env_error", outcome.env_error)
    scores = info.get("sub_task_scores")
    if isinstance(scores, dict):
        outcome.sub_task_scores = {str(k): float(v) for k, v in scores.items()}


async def _step(env: gymnasium.Env, text: str, timeout_s: float) -> tuple[Any, float, bool, bool, StepInfo]:
    """Runs ``env.step(text)`` in a thread; a timeout or an escaping exception ends the episode."""
    try:
        out = await asyncio.wait_for(asyncio.to_thread(env.step, text), timeout_s)
    except TimeoutError:
        error = TIMEOUT_MESSAGE
    except Exception as err:  # an env bug must not kill the runner: contain it, end the episode
        error = f"Error: the environment raised {type(err).__name__}: {err}"
    else:
        obs, reward, terminated, truncated, info = out
        return obs, float(reward), terminated, truncated, as_step_info(info)
    failed: StepInfo = {"tool_calls": [], "env_error": error, "reward_components": {}}
    return [{"role": "tool", "content": error}], 0.0, False, True, failed


@dataclass
class _Episode:
    """An episode in play: its aligned token arrays, turn records, outcome and end flags.

    Args:
        tokenizer: The policy's tokenizer.
        max_tokens: Token cap of the episode.
        stops: Ids that end a turn.
    """

    tokenizer: Any
    max_tokens: int
    stops: set[int]
    tokens: _Builder = field(default_factory=_Builder)
    turns: list[TurnRecord] = field(default_factory=list)
    outcome: EpisodeOutcome = field(default_factory=EpisodeOutcome)
    terminated: bool = False
    truncated: bool = False
    overlong: bool = False
    after_tool: bool = False
    after_eos: bool = False

    @property
    def budget(self) -> int:
        """Ids left under the token cap."""
        return self.max_tokens - len(self.tokens.ids)

    def cut(self) -> None:
        """The runner cut the episode at the token cap."""
        self.truncated = self.overlong = True

    def add_turn(self, gen: Generation) -> tuple[TurnRecord, bool]:
        """Appends a sampled turn (cut to the budget); returns its record and whether the cap cut it."""
        ids = gen.token_ids[: self.budget]
        cut = len(ids) >= self.budget and (not ids or ids[-1] not in self.stops)
        start = len(self.tokens.ids)
        text = chat.decode_turn(self.tokenizer, ids)
        turn = TurnRecord(len(self.turns), text, start, start + len(ids), policy_version=gen.version)
        logprobs = gen.logprobs[: len(ids)]
        self.tokens.extend(ids, sampled=True, turn=turn.index, post_tool=self.after_tool, logprobs=logprobs)
        self.turns.append(turn)
        self.after_eos = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        return turn, cut

    def add_observation(self, obs: list[dict[str, Any]]) -> bool:
        """Appends the ids of the observation of the last turn; False (adding none) if they don't fit."""
        ids = chat.observation_ids(self.tokenizer, obs, after_eos=self.after_eos)
        if len(self.tokens.ids) + len(ids) >= self.max_tokens:
            return False
        turn = self.turns[-1]
        self.tokens.extend(ids, sampled=False, turn=turn.index)
        self.after_tool = bool(turn.tool_calls) or any(m.get("role") == "tool" for m in obs)
        return True

    def trajectory(self, prompt_length: int, reset_info: StepInfo, seed: int) -> Trajectory:
        """The trajectory record of the finished episode (the reset info names its prompt and task)."""
        b, outcome = self.tokens, self.outcome
        return Trajectory(
            token_ids=np.asarray(b.ids, dtype=np.int32),
            loss_mask=np.asarray(b.mask, dtype=np.float32),
            logprobs=np.asarray(b.logprobs, dtype=np.float32),
            turn_index=np.asarray(b.turn_index, dtype=np.int32),
            post_tool=np.asarray(b.post_tool, dtype=np.int8),
            prompt_length=prompt_length,
            turns=self.turns,
            reward=outcome.reward,
            reward_components=outcome.components,
            success=outcome.success,
            policy_versions=sorted({t.policy_version for t in self.turns}),
            prompt_id=str(reset_info.get("prompt_id", seed)),
            task_id=str(reset_info.get("task_id", "")),
            sub_tasks=[str(s) for s in reset_info.get("sub_tasks", [])],
            terminated=bool(self.terminated),
            truncated=bool(self.truncated),
            overlong=self.overlong,
            env_error=outcome.env_error,
            sub_task_scores=outcome.sub_task_scores,
        )


async def run_episode(
    env: gymnasium.Env,
    policy: TurnPolicy,
    tokenizer: Any,
    seed: int,
    max_tokens: int = 256,
    step_timeout_s: float = 30.0,
    stop_ids: Sequence[int] = (),
) -> Trajectory:
    """Plays one episode and returns its trajectory record.

    Args:
        env: A tool env following the actorlearner protocol.
        policy: Produces each assistant turn's ids.
        tokenizer: The policy's tokenizer (chat template included).
        seed: Reset seed; the group's G episodes share it.
        max_tokens: Token cap of the episode; hitting it truncates and flags ``overlong``.
        step_timeout_s: Time limit of one ``env.step``.
        stop_ids: Ids that end a turn; a turn cut at the token cap without one is ``overlong``.
    """
    messages, info = await asyncio.to_thread(env.reset, seed=seed)  # a slow reset never stalls the loop
    reset_info = as_step_info(info)
    conversation = list(messages)
    prompt = chat.prompt_ids(tokenizer, messages, tools=reset_info.get("tools"))
    ep = _Episode(tokenizer, max_tokens, set(stop_ids) | {tokenizer.eos_token_id})
    ep.tokens.extend(prompt, sampled=False, turn=-1)
    while ep.budget > 0:
        gen = await policy(ep.tokens.ids, env, conversation, ep.budget)
        turn, cut = ep.add_turn(gen)
        conversation.append({"role": "assistant", "content": turn.text})
        obs, reward, ep.terminated, ep.truncated, step_info = await _step(env, turn.text, step_timeout_s)
        record_step(step_info, reward, turn, ep.outcome)
        if cut and not ep.terminated:
            ep.cut()
        if ep.terminated or ep.truncated:
            return ep.trajectory(len(prompt), reset_info, seed)
        if not ep.add_observation(list(obs)):
            break
        conversation.extend(obs)
    ep.cut()
    return ep.trajectory(len(prompt), reset_info, seed)
