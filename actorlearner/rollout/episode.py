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
from typing import Any, Protocol

import gymnasium
import numpy as np

from actorlearner.core.protocols import Generation, SamplingParams
from actorlearner.core.trajectory import ToolCallRecord, Trajectory, TurnRecord
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
    """

    def __init__(self, engine: Any, params: SamplingParams) -> None:
        self.engine = engine
        self.params = params

    async def __call__(
        self, ids: Sequence[int], env: gymnasium.Env, messages: list[dict[str, Any]], budget: int
    ) -> Generation:
        """Samples one turn of at most ``min(params.max_new_tokens, budget)`` ids."""
        params = self.params
        if budget < params.max_new_tokens:
            params = dataclasses.replace(params, max_new_tokens=budget)
        return await self.engine.generate(list(ids), params)  # type: ignore[no-any-return]


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
        turn_ids = list(self.tokenizer.encode(text, add_special_tokens=False))
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


async def _step(env: gymnasium.Env, text: str, timeout_s: float) -> tuple[Any, ...]:
    """Runs ``env.step(text)`` in a thread; a timeout or an escaping exception ends the episode."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(env.step, text), timeout_s)
    except TimeoutError:
        error = TIMEOUT_MESSAGE
    except Exception as err:  # an env bug must not kill the runner: contain it, end the episode
        error = f"Error: the environment raised {type(err).__name__}: {err}"
    info = {"tool_calls": [], "env_error": error, "reward_components": {}}
    return [{"role": "tool", "content": error}], 0.0, False, True, info


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
    conversation = list(messages)
    prompt = chat.prompt_ids(tokenizer, messages, tools=info.get("tools"))
    b = _Builder()
    b.extend(prompt, sampled=False, turn=-1)
    turns: list[TurnRecord] = []
    reward, components = 0.0, dict[str, float]()
    success = terminated = truncated = overlong = False
    after_tool = False
    env_error: str | None = None
    sub_task_scores: dict[str, float] = {}
    eos = tokenizer.eos_token_id
    stops = set(stop_ids) | {eos}
    while True:
        budget = max_tokens - len(b.ids)
        if budget <= 0:
            truncated = overlong = True
            break
        gen = await policy(b.ids, env, conversation, budget)
        gen_ids = gen.token_ids[:budget]
        cut = len(gen_ids) >= budget and (not gen_ids or gen_ids[-1] not in stops)
        start = len(b.ids)
        b.extend(
            gen_ids,
            sampled=True,
            turn=len(turns),
            post_tool=after_tool,
            logprobs=gen.logprobs[: len(gen_ids)],
        )
        text = chat.decode_turn(tokenizer, gen_ids)
        conversation.append({"role": "assistant", "content": text})
        obs, r, terminated, truncated, step_info = await _step(env, text, step_timeout_s)
        calls = [ToolCallRecord.from_info(c) for c in step_info.get("tool_calls", [])]
        answer = step_info.get("final_answer")
        turns.append(
            TurnRecord(
                index=len(turns),
                text=text,
                start=start,
                end=len(b.ids),
                tool_calls=calls,
                final_answer=None if answer is None else str(answer),
                void=bool(step_info.get("void", not calls and answer is None)),
                policy_version=gen.version,
            )
        )
        reward += float(r)
        for name, value in step_info.get("reward_components", {}).items():
            components[name] = components.get(name, 0.0) + float(value)
        success = bool(step_info.get("success", success))
        env_error = step_info.get("env_error", env_error)
        scores = step_info.get("sub_task_scores")
        if isinstance(scores, dict):
            sub_task_scores = {str(k): float(v) for k, v in scores.items()}
        if cut and not terminated:
            truncated = overlong = True
        if terminated or truncated:
            break
        obs_ids = chat.observation_ids(tokenizer, list(obs), after_eos=bool(gen_ids) and gen_ids[-1] == eos)
        if len(b.ids) + len(obs_ids) >= max_tokens:
            truncated = overlong = True
            break
        b.extend(obs_ids, sampled=False, turn=len(turns) - 1)
        conversation.extend(obs)
        after_tool = bool(calls) or any(m.get("role") == "tool" for m in obs)
    return Trajectory(
        token_ids=np.asarray(b.ids, dtype=np.int32),
        loss_mask=np.asarray(b.mask, dtype=np.float32),
        logprobs=np.asarray(b.logprobs, dtype=np.float32),
        turn_index=np.asarray(b.turn_index, dtype=np.int32),
        post_tool=np.asarray(b.post_tool, dtype=np.int8),
        prompt_length=len(prompt),
        turns=turns,
        reward=reward,
        reward_components=components,
        success=success,
        policy_versions=sorted({t.policy_version for t in turns}),
        prompt_id=str(info.get("prompt_id", seed)),
        task_id=str(info.get("task_id", "")),
        sub_tasks=[str(s) for s in info.get("sub_tasks", [])],
        terminated=bool(terminated),
        truncated=bool(truncated),
        overlong=overlong,
        env_error=env_error,
        sub_task_scores=sub_task_scores,
    )
