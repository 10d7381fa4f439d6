"""Any plain gymnasium.Env that follows the protocol trains, registered only in this (driver) process."""

from __future__ import annotations

import gymnasium
import pytest

from actorlearner.rollout.runner import EnvRunner
from tests.conftest import small_config


class EchoEnv(gymnasium.Env):
    """Not a ToolEnv: repeat the secret word, which only the `reveal` tool tells you."""

    WORDS = ("apple", "river", "stone", "cloud")

    def __init__(self) -> None:
        self.word = ""

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.word = self.WORDS[int(self.np_random.integers(len(self.WORDS)))]
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "reveal",
                    "description": "Says the word.",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ]
        info = {"tools": tools, "prompt_id": f"echo:{self.word}", "task_id": "echo", "sub_tasks": ["echo"]}
        return [{"role": "user", "content": "Say the secret word."}], info

    def step(self, text):
        if "reveal" in text:
            call = {"name": "reveal", "arguments": {}, "ok": True, "error": None, "output": self.word}
            info = {"tool_calls": [call], "final_answer": None, "reward_components": {"answer": 0.0}}
            return [{"role": "tool", "content": self.word}], 0.0, False, False, info
        reward = float(self.word in text)
        info = {
            "tool_calls": [],
            "final_answer": text,
            "reward_components": {"answer": reward},
            "success": bool(reward),
        }
        return [], reward, True, False, info


@pytest.mark.ray
def test_plain_gymnasium_env_registered_in_the_driver_trains_on_ray(ray_session, tmp_path) -> None:
    gymnasium.register("test/Echo-v0", entry_point=EchoEnv)
    try:
        config = small_config(tmp_path, num_env_runners=1).environment(
            "test/Echo-v0", env_config={}, eval_env_config={}
        )
        algo = config.build()
        try:
            assert not algo.pretrain()  # no demonstration(): SFT is skipped
            metrics = algo.train()
            assert metrics["learner/version"] == 1
            group = algo.runtime.run(algo.runners[0].call(EnvRunner.run_group, 3))
        finally:
            algo.stop()
    finally:
        gymnasium.registry.pop("test/Echo-v0")
    assert group.prompt_id.startswith("echo:") and group.task_id == "echo"
    assert all(t.loss_mask.sum() > 0 for t in group.trajectories)
