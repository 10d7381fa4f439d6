"""Token-in/token-out: the learner trains on exactly the sampled ids plus the observation ids."""

from __future__ import annotations

import asyncio
from typing import Any

import gymnasium
import numpy as np
import pytest
from transformers import AutoTokenizer

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.core.protocols import Generation, SamplingParams
from actorlearner.env.registration import make_env
from actorlearner.learn.learner import collate
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.rollout import chat
from actorlearner.rollout.engine import AsyncBatchingEngine, HFEngine
from actorlearner.rollout.episode import DemonstrationTurnPolicy, EnginePolicy, run_episode
from tests.conftest import SMALL_MODEL

SPEC = gymnasium.spec("actorlearner/Calculator-v0")


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {})), **SMALL_MODEL))


class Recorder:
    """Wraps a policy and remembers each generation and the ids it was conditioned on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[list[int], Generation]] = []

    async def __call__(self, ids, env, messages, budget) -> Generation:
        gen = await self.inner(ids, env, messages, budget)
        self.calls.append((list(ids), gen))
        return gen


def _play(model_dir: str, seed: int, policy_factory) -> tuple[Any, Recorder, Any]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    env = make_env(SPEC, {})

    async def main():
        engine = AsyncBatchingEngine(HFEngine(model_dir, seed=seed))
        recorder = Recorder(policy_factory(engine, tok))
        traj = await run_episode(env, recorder, tok, seed=seed, max_tokens=400)
        engine.close()
        return traj, recorder

    traj, recorder = asyncio.run(main())
    return traj, recorder, tok


def test_trajectory_is_sampled_ids_plus_observation_ids(model_dir: str) -> None:
    params = SamplingParams(1.0, 12, ())  # no stop ids: every turn is 12 sampled ids
    traj, rec, tok = _play(model_dir, 3, lambda engine, tok: EnginePolicy(engine, params))
    assert len(rec.calls) >= 2, "the random model should need several turns"
    ids = traj.token_ids.tolist()
    mask = traj.loss_mask.tolist()
    # Each generation was conditioned on exactly the ids so far, and its ids sit right after them.
    for (context, gen), turn in zip(rec.calls, traj.turns, strict=True):
        assert ids[: len(context)] == context
        assert ids[turn.start : turn.end] == gen.token_ids
        assert turn.start == len(context)
        np.testing.assert_allclose(traj.logprobs[turn.start : turn.end], gen.logprobs, rtol=1e-6)
    sampled_positions = {i for t in traj.turns for i in range(t.start, t.end)}
    assert {i for i, m in enumerate(mask) if m == 1.0} == sampled_positions
    # Everything that is not sampled is the prompt or an observation rendered by the chat template.
    first = rec.calls[0][0]
    assert first == chat.prompt_ids(tok, *_reset(seed=3))
    between = ids[traj.turns[0].end : traj.turns[1].start]
    assert tok.decode(between).startswith("<|im_end|>\n<|im_start|>")
    # The learner's batch holds exactly these ids, with loss weight only on sampled ids.
    batch = collate([traj])
    assert batch.input_ids[0].tolist() == ids[:-1]
    assert batch.targets[0].tolist() == ids[1:]
    assert batch.mask[0].tolist() == mask[1:]


def _reset(seed: int) -> tuple[list[dict[str, Any]], Any]:
    messages, info = make_env(SPEC, {}).reset(seed=seed)
    return messages, info["tools"]


def test_demonstration_episode_marks_post_tool_turns(model_dir: str) -> None:
    # Find a seed whose demonstration calls the tool, then play it token-in/token-out.
    for seed in range(50):
        traj, _rec, tok = _play(
            model_dir, seed, lambda engine, tok: DemonstrationTurnPolicy(tok, chat.stop_token_ids(tok))
        )
        if traj.tool_calls:
            break
    assert traj.success and traj.reward == pytest.approx(1.0)
    assert [t.index for t in traj.turns] == [0, 1]
    assert traj.turns[0].tool_calls[0].name == "calculator" and traj.turns[0].tool_calls[0].ok
    first, second = traj.turns
    assert traj.post_tool[first.start : first.end].sum() == 0
    assert traj.post_tool[second.start : second.end].tolist() == [1] * (second.end - second.start)
    assert traj.post_tool.sum() == second.end - second.start
    assert "<tool_response>" in tok.decode(traj.token_ids[first.end : second.start].tolist())
    assert traj.turn_index[: traj.prompt_length].tolist() == [-1] * traj.prompt_length


def test_token_cap_truncates_and_flags_overlong(model_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    env = make_env(SPEC, {})
    params = SamplingParams(1.0, 30, ())

    async def main():
        engine = AsyncBatchingEngine(HFEngine(model_dir, seed=0))
        traj = await run_episode(env, EnginePolicy(engine, params), tok, seed=0, max_tokens=40)
        engine.close()
        return traj

    traj = asyncio.run(main())
    assert traj.overlong and traj.truncated
    assert traj.length <= 40


def test_demonstrated_turns_end_where_generation_would(model_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    env = make_env(SPEC, {})
    messages, _ = env.reset(seed=0)
    text = env.unwrapped.demonstration(messages)
    with_stops = asyncio.run(DemonstrationTurnPolicy(tok, chat.stop_token_ids(tok))([], env, messages, 100))
    without = asyncio.run(DemonstrationTurnPolicy(tok)([], env, messages, 100))
    assert with_stops.token_ids == tok.encode(text, add_special_tokens=False)  # ends with </answer> etc.
    assert without.token_ids == [*with_stops.token_ids, tok.eos_token_id]  # no stop id: learn to stop


def test_record_step_reads_a_step_info_into_the_turn_and_the_outcome() -> None:
    from actorlearner.core.trajectory import TurnRecord
    from actorlearner.rollout.episode import EpisodeOutcome, record_step

    outcome = EpisodeOutcome()
    first = TurnRecord(index=0, text="t0", start=0, end=1)
    call = {
        "name": "calculator",
        "arguments": {"expression": "1 + 1"},
        "ok": True,
        "error": None,
        "output": "2",
    }
    record_step(
        {"tool_calls": [call], "final_answer": None, "reward_components": {"format": 0.0}, "success": False},
        0.0,
        first,
        outcome,
    )
    assert first.tool_calls[0].output == "2" and first.final_answer is None and not first.void
    second = TurnRecord(index=1, text="t1", start=1, end=2)
    record_step(  # only the required keys: void is inferred, success and scores are kept
        {"tool_calls": [], "final_answer": "2", "reward_components": {"format": -0.1, "answer": 1.0}},
        0.9,
        second,
        outcome,
    )
    assert second.final_answer == "2" and not second.void
    assert outcome.reward == pytest.approx(0.9)
    assert outcome.components == pytest.approx({"format": -0.1, "answer": 1.0})
    assert outcome.success is False and outcome.env_error is None and outcome.sub_task_scores == {}
    third = TurnRecord(index=2, text="t2", start=2, end=3)
    info = {"tool_calls": [], "final_answer": None, "reward_components": {}, "success": True}
    record_step({**info, "sub_task_scores": {"name": 1}, "env_error": "Error: boom"}, 0.0, third, outcome)
    assert third.void and outcome.success and outcome.env_error == "Error: boom"
    assert outcome.sub_task_scores == {"name": 1.0}
