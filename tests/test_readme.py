"""The README's examples run, and its references match the code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from actorlearner.config import config_reference
from actorlearner.core.registry import FILTERS, PRIORITIES
from tests.conftest import small_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


def test_tool_env_example_is_at_most_30_lines_of_env() -> None:
    code = _example("tool-env")
    env_part = code[: code.index("gymnasium.register")]
    assert len([line for line in env_part.splitlines() if line.strip()]) <= 30


@pytest.mark.ray
def test_tool_env_example_trains(ray_session, capsys) -> None:
    exec(compile(_example("tool-env"), "README:tool-env", "exec"), {"__name__": "readme_example"})
    losses = [float(x) for x in capsys.readouterr().out.split()]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_priority_example_registers_and_configures() -> None:
    namespace: dict = {"__name__": "readme_priority"}
    try:
        exec(compile(_example("priority"), "README:priority", "exec"), namespace)
        config = namespace["config"]
        assert config.replay.priority_fn == "hard_first"
        assert config.replay.filters == ["needs_a_tool_call", "zero_variance"]
    finally:
        PRIORITIES.unregister("hard_first")
        FILTERS.unregister("needs_a_tool_call")


def test_config_reference_is_current() -> None:
    assert config_reference() in README.read_text(), "regenerate it: python -m actorlearner.config README.md"


def _documented_patterns() -> list[re.Pattern[str]]:
    section = README.read_text().split("## Metrics reference")[1].split("## Results")[0]
    names = re.findall(r"`([a-z_]+(?:/[a-z_<>*]+)*)`", section)
    return [
        re.compile(
            "^"
            + re.escape(n)
            .replace(r"<component>", "[a-z_]+")
            .replace(r"<name>", "[a-z_]+")
            .replace(r"\*", ".+")
            + "$"
        )
        for n in names
    ]


def test_every_emitted_metric_is_documented(tmp_path) -> None:
    algo = small_config(tmp_path, num_env_runners=0).replay(filters=["zero_variance"]).build()
    try:
        algo.pretrain()
        metrics = {**algo.train(), **algo.evaluate(num_episodes=4)}
    finally:
        algo.stop()
    patterns = _documented_patterns()
    missing = [k for k in metrics if not any(p.match(k) for p in patterns)]
    assert not missing, f"undocumented metrics: {missing}"
