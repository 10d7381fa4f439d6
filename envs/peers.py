"""Peers' tasks as actorlearner envs: reasoning-gym's generators and SkyRL-Gym's text envs.

* :class:`ReasoningGym` turns any of reasoning-gym's procedural generators (``pip install
  actorlearner[peers]``) into a tool env: the question is the prompt, the answer comes in
  ``<answer>...</answer>`` and is scored by the generator's own ``score_answer`` (reward
  ``"answer"`` in [0, 1], success at 1.0). Two tools are offered by two registered ids:
  ``actorlearner/ReasoningGym-Python-v0`` (the sandboxed ``python`` tool of PythonTIR) and
  ``actorlearner/ReasoningGym-Calculator-v0`` (the Calculator's ``calculator``).
* :class:`SkyRLText` plays a SkyRL-Gym ``BaseTextEnv`` (``skyrl_gym.make(env_class, extras=...)``)
  as a plain Gymnasium env of this framework: each task is a row ``{"prompt": [messages],
  "env_class": "gsm8k", "extras": {...}}`` as SkyRL's own datasets hold them, read from a JSON-lines
  file; the env's ``step`` output (observations, reward, done, metadata) becomes the step tuple.

Both split their tasks into train and test by a fixed hash, like the built-in envs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from actorlearner.core.errors import ConfigError
from actorlearner.core.knobs import check_choice, check_fraction, check_int, check_probability
from actorlearner.env.info import TOOL_OUTPUT
from actorlearner.env.toolenv import ChatMessages, Messages, ToolEnv, tool
from envs import SPLITS
from envs.calculator import format_number, safe_eval
from envs.python_tir import SandboxedPython, check_isolator

INSTRUCTION = "Solve the task. You may use the {tool} tool. Give the final answer as <answer>...</answer>."


def _held_out(key: str, test_fraction: float) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


class ReasoningGym(ToolEnv):
    """reasoning-gym's procedural tasks with a tool; reward ``"answer"`` from the generator's scorer.

    Args:
        datasets: Generator names (reasoning-gym's registry, e.g. ``"basic_arithmetic"``), a list
            or a comma-separated string; each episode draws one uniformly (they are the sub-task
            labels).
        size: Tasks made per generator (``create_dataset(name, size=..., seed=...)``), >= 10.
        seed: The generators' seed.
        dataset_config: Keyword arguments per generator name, e.g. ``{"basic_arithmetic":
            {"min_terms": 2, "max_terms": 2}}``.
        split: ``"train"`` draws only tasks outside the held-out set, ``"test"`` only inside.
        test_fraction: Fraction of tasks held out, in (0, 1).
        demo_answer_prob: Probability that the cold-start demonstration answers right (otherwise
            it answers ``unknown``); it never calls the tool, so RL has that to discover.
        **kwargs: :class:`~actorlearner.env.toolenv.ToolEnv` knobs.

    Raises:
        ValueError: If a knob is invalid or a generator is unknown (the message names it).
        ImportError: If reasoning-gym is not installed (``pip install actorlearner[peers]``).
    """

    tool_name = "tool"

    def __init__(
        self,
        *,
        datasets: Sequence[str] | str = "basic_arithmetic",
        size: int = 1000,
        seed: int = 0,
        dataset_config: dict[str, dict[str, Any]] | None = None,
        split: str = "train",
        test_fraction: float = 0.1,
        demo_answer_prob: float = 0.5,
        **kwargs: Any,
    ) -> None:
        import reasoning_gym

        names = [n.strip() for n in datasets.split(",")] if isinstance(datasets, str) else list(datasets)
        known = sorted(reasoning_gym.factory.DATASETS)
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise ConfigError(
                f"datasets: unknown reasoning-gym generators {unknown or names}; known: {known}"
            )
        check_int("size", size, 10)
        check_choice("split", split, SPLITS)
        check_fraction("test_fraction", test_fraction, open_interval=True)
        check_probability("demo_answer_prob", demo_answer_prob)
        super().__init__(**kwargs)
        config = dataset_config or {}
        self.generators = {
            n: reasoning_gym.create_dataset(n, size=size, seed=seed, **config.get(n, {})) for n in names
        }
        self.names, self.split, self.test_fraction = names, split, float(test_fraction)
        self.demo_answer_prob = float(demo_answer_prob)
        self.indices = {
            n: [i for i in range(size) if _held_out(f"{n}:{seed}:{i}", test_fraction) == (split == "test")]
            for n in names
        }
        empty = [n for n, found in self.indices.items() if not found]
        if empty:
            raise ConfigError(
                f"split={split!r} has no tasks of {empty} at size={size}; raise size or test_fraction"
            )

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        """A generator, then one of its tasks in this env's split."""
        name = self.names[int(rng.integers(len(self.names)))]
        index = self.indices[name][int(rng.integers(len(self.indices[name])))]
        entry = self.generators[name][index]
        return {
            "dataset": name,
            "index": index,
            "question": entry["question"],
            "answer": str(entry["answer"]),
        }

    def prompt_messages(self, task: dict[str, Any]) -> Messages:
        """The instruction and the generator's question."""
        return [
            {"role": "system", "content": INSTRUCTION.format(tool=self.tool_name)},
            {"role": "user", "content": task["question"]},
        ]

    def task_labels(self, task: dict[str, Any]) -> list[str]:
        """The generator's name."""
        return [task["dataset"]]

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        """The generator's own score of ``answer`` (in [0, 1]); success at 1.0."""
        generator = self.generators[task["dataset"]]
        score = float(generator.score_answer(answer.strip(), generator[task["index"]]) or 0.0)
        return {"answer": score}, score >= 1.0

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """The scripted turn: the right answer with probability ``demo_answer_prob``, else ``unknown``."""
        if self.task is None:
            raise RuntimeError("demonstration() needs reset() first")
        key = int.from_bytes(hashlib.sha256(self.task["question"].encode()).digest()[:4], "big")
        right = np.random.default_rng(key).random() < self.demo_answer_prob
        return f"<answer>{self.task['answer'] if right else 'unknown'}</answer>"


class ReasoningGymPython(ReasoningGym, SandboxedPython):
    """:class:`ReasoningGym` with the sandboxed ``python`` tool (``allow_weak_sandbox`` as in PythonTIR)."""

    tool_name = "python"
    tool_timeout_s = float("inf")  # the sandbox's wall time is the hard limit
    turn_time_s = 10.0

    def __init__(self, *, allow_weak_sandbox: bool = False, **kwargs: Any) -> None:
        check_isolator(allow_weak_sandbox)
        super().__init__(**kwargs)
        self.allow_weak_sandbox = allow_weak_sandbox


class ReasoningGymCalculator(ReasoningGym):
    """:class:`ReasoningGym` with the Calculator's ``calculator`` tool."""

    tool_name = "calculator"

    @tool
    def calculator(self, expression: str) -> str:
        """Evaluates arithmetic.

        Args:
            expression: The expression, e.g. 37 * 52.
        """
        return format_number(safe_eval(expression))


class SkyRLText(gymnasium.Env[list[dict[str, Any]], str]):
    """A SkyRL-Gym text env played through this framework's env protocol.

    Args:
        tasks: A JSON-lines file of SkyRL dataset rows: ``prompt`` (chat messages), ``env_class``
            (a registered SkyRL-Gym env id, e.g. ``gsm8k``) and ``extras`` (what the env's
            constructor takes, e.g. ``{"reward_spec": {"ground_truth": "42"}}``).
        env_config: Passed to every SkyRL env as ``env_config``.
        split: ``"train"`` or ``"test"``: rows are split by a fixed hash of their JSON.
        test_fraction: Fraction of rows held out, in (0, 1).
        max_turns: Turns before the episode is truncated.
        demo_answer_prob: Probability that the cold-start demonstration gives a row's
            ``extras.reward_spec.ground_truth`` as ``#### <answer>`` (otherwise ``#### 0``).

    Raises:
        ValueError: If the file is missing or holds no usable row (the message names it).
        ImportError: If skyrl-gym is not installed (``pip install actorlearner[peers]``).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (gymnasium's convention)

    def __init__(
        self,
        *,
        tasks: str,
        env_config: dict[str, Any] | None = None,
        split: str = "train",
        test_fraction: float = 0.1,
        max_turns: int = 4,
        demo_answer_prob: float = 0.5,
    ) -> None:
        import skyrl_gym  # noqa: F401  (fail at construction when it is missing)

        check_probability("demo_answer_prob", demo_answer_prob)
        self.demo_answer_prob = float(demo_answer_prob)
        self._row: dict[str, Any] = {}
        check_choice("split", split, SPLITS)
        check_fraction("test_fraction", test_fraction, open_interval=True)
        check_int("max_turns", max_turns, 1)
        self.rows = [
            r
            for r in _read_rows(tasks)
            if _held_out(json.dumps(r, sort_keys=True), test_fraction) == (split == "test")
        ]
        if not self.rows:
            raise ConfigError(f"tasks: {tasks} has no rows in split {split!r}")
        self.env_config, self.max_turns = env_config or {}, max_turns
        self.action_space = gymnasium.spaces.Text(max_length=16_384, min_length=0, charset=string.printable)
        self.observation_space = ChatMessages(max_messages=64)
        self._env: Any = None
        self._turn = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Draws a row by ``seed`` and starts its SkyRL env (``init``)."""
        import skyrl_gym

        super().reset(seed=seed)
        row = self.rows[int(self.np_random.integers(len(self.rows)))]
        self._row = row
        self.close()
        self._env = skyrl_gym.make(row["env_class"], env_config=self.env_config, extras=row.get("extras", {}))
        prompt, _ = self._env.init([dict(m) for m in row["prompt"]])
        self._turn = 0
        key = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]
        info = {
            "tools": [],
            "prompt_id": f"{row['env_class']}:{key}",
            "task_id": f"skyrl/{row['env_class']}",
            "sub_tasks": [row["env_class"]],
        }
        return [dict(m) for m in prompt], info

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """The scripted turn: ``#### <ground truth>`` with probability ``demo_answer_prob``, else ``#### 0``.

        Args:
            messages: The conversation so far (unused: one turn answers).
        """
        truth = self._row.get("extras", {}).get("reward_spec", {}).get("ground_truth")
        key = int.from_bytes(
            hashlib.sha256(json.dumps(self._row, sort_keys=True).encode()).digest()[:4], "big"
        )
        right = truth is not None and np.random.default_rng(key).random() < self.demo_answer_prob
        return f"#### {truth if right else 0}"

    def step(self, action: str) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """One SkyRL ``step``: its observations, marked as tool output, reward and ``done``.

        Truncated at ``max_turns``.
        """
        if self._env is None:
            raise RuntimeError("step() called before reset()")
        out = self._env.step(action)
        self._turn += 1
        reward, done = float(out["reward"]), bool(out["done"])
        truncated = not done and self._turn >= self.max_turns
        info = {
            "tool_calls": [],
            "final_answer": action if done else None,
            "reward_components": {"answer": reward},
            "success": done and reward >= 1.0,
            "metadata": out.get("metadata", {}),
        }
        # SkyRL's envs send tool results (search hits, SQL rows) as user messages: mark them
        observations = [{**m, TOOL_OUTPUT: True} for m in out["observations"]]
        return observations, reward, done, truncated, info

    def close(self) -> None:
        """Closes the current SkyRL env; never raises."""
        if self._env is not None:
            with contextlib.suppress(Exception):  # a peer env's close must not end the run
                self._env.close()
            self._env = None


def _read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines task file; a bad file or row fails with a line naming it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"tasks: cannot read {path} ({err.strerror})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"tasks: {path} line {number} is not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), list) or "env_class" not in row:
            raise ConfigError(f"tasks: {path} line {number} needs 'prompt' (messages) and 'env_class'")
        rows.append(row)
    return rows
