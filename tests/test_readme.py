"""The README's and docs/' examples run, and their references match the code."""

from __future__ import annotations

import glob
import pickle
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actorlearner.config import config_reference
from actorlearner.core.history import PromptHistory
from actorlearner.core.registry import FILTERS, PRIORITIES
from actorlearner.learn.registry import ADVANTAGE_ESTIMATORS
from tests.conftest import make_group, small_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _example(name: str, page: Path = README) -> str:
    text = page.read_text()
    match = re.search(rf"<!-- (?:readme|docs)-example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"{page.name}: example {name!r} not found"
    return match.group(1)


# ---- the README's examples ---------------------------------------------------------------------


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


def test_quickstart_runs(tmp_path, capsys) -> None:
    """The quickstart as written, on a smoke budget: its config, shrunk, then every statement."""
    code = _example("quickstart")
    head, sep, tail = code.partition("algo = config.build()")
    assert sep, "the quickstart builds the algorithm with `algo = config.build()`"
    namespace: dict = {"__name__": "readme_quickstart"}
    exec(compile(head, "README:quickstart", "exec"), namespace)
    config = namespace["config"]
    assert config.environment.env == "actorlearner/Calculator-v0"
    small = small_config(tmp_path, num_env_runners=0)
    for section in ("env_runners", "sft", "model", "reporting"):
        config.update(section, **getattr(small, section).model_dump())
    config.training(num_iterations=1, train_batch_groups=2, max_wait_s=5.0)
    config.replay(filters=[])  # an untrained model scores 0 everywhere: keep its groups
    exec(compile(sep + tail, "README:quickstart", "exec"), namespace)
    success, checkpoint = capsys.readouterr().out.split()[-2:]
    assert 0.0 <= float(success) <= 1.0
    assert (Path(checkpoint) / "model").is_dir()


def test_the_quickstart_ends_within_a_screen_and_a_half() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("## Quickstart")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    assert end <= 95, f"the quickstart ends on line {end}; keep the front page short"


# ---- docs/extending.md's examples ----------------------------------------------------------------


def test_stateful_priority_example() -> None:
    page = DOCS / "extending.md"
    namespace: dict = {"__name__": "docs_priority"}
    try:
        exec(compile(_example("stateful-priority", page), "docs:stateful-priority", "exec"), namespace)
        config = namespace["config"]
        fn: Any = PRIORITIES.resolve(config.replay.priority_fn)
        assert fn.decay == 0.95
        history = PromptHistory("p0")
        low, high = make_group([0.0, 0.0]), make_group([1.0, 1.0])
        for group in (high, low):
            history.record(group.rewards)
        assert fn(high, history) >= 0 and fn(low, history) > fn.floor
        fresh: Any = PRIORITIES.resolve(config.replay.priority_fn)
        fresh.set_state(fn.get_state())
        assert fresh.average == fn.average
    finally:
        PRIORITIES.unregister("below_average")


def test_advantage_example() -> None:
    from actorlearner.learn.losses import group_advantages

    page = DOCS / "extending.md"
    namespace: dict = {"__name__": "docs_advantage"}
    try:
        exec(compile(_example("advantage", page), "docs:advantage", "exec"), namespace)
        assert namespace["config"].training.advantage == "rank"
        adv = group_advantages(np.array([0.0, 1.0, 1.0, 3.0]), "rank")
        assert adv.sum() == pytest.approx(0.0) and adv[1] == adv[2] and adv[0] < adv[1] < adv[3]
        assert not group_advantages(np.ones(4), "rank").any()
    finally:
        ADVANTAGE_ESTIMATORS.unregister("rank")


# ---- references that must match the code ---------------------------------------------------------


def test_config_reference_is_current() -> None:
    page = DOCS / "configuration.md"
    assert config_reference() in page.read_text(), (
        "regenerate it: python -m actorlearner.config docs/configuration.md"
    )


def _documented_patterns() -> list[re.Pattern[str]]:
    """The metric names in the first column of docs/metrics.md's tables, as patterns."""
    names = [
        name
        for line in (DOCS / "metrics.md").read_text().splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([a-z_]+(?:/[a-z_<>*]+)*)`", line.split(" | ")[0])
    ]
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
    assert not missing, f"undocumented metrics (add them to docs/metrics.md): {missing}"


# ---- links, paths and section numbers ------------------------------------------------------------

PATH_PREFIXES = ("actorlearner/", "envs/", "configs/", "benchmarks/", "tests/", "docs/")
ENV_ID = re.compile(r"^actorlearner/[A-Z][\w-]*-v\d+$")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mentioned_paths_exist(page: Path) -> None:
    missing = []
    for token in re.findall(r"`([^`\s]+)`", page.read_text()):
        path = token.split(":")[0].rstrip(",.")
        if not path.startswith(PATH_PREFIXES) or ENV_ID.match(path) or "<" in path:
            continue
        if not glob.glob(str(ROOT / path)):
            missing.append(token)
    assert not missing, f"{page.name}: paths that do not exist: {missing}"


def _algorithm_sections() -> set[str]:
    text = (DOCS / "algorithms.md").read_text()
    return set(re.findall(r"^#{2,3} §(\w+)\.", text, re.M))


def test_sections_the_code_cites_exist() -> None:
    sections = _algorithm_sections()
    cited: dict[str, list[str]] = {}
    for source in [*ROOT.glob("actorlearner/**/*.py"), *ROOT.glob("envs/*.py")]:
        text = source.read_text()
        for doc in re.findall(r"docs/([\w.-]+\.md)", text):
            assert (DOCS / doc).is_file(), f"{source.relative_to(ROOT)} cites docs/{doc}: no such page"
        for number in re.findall(r"docs/algorithms\.md §(\w+)", text):
            cited.setdefault(number, []).append(str(source.relative_to(ROOT)))
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/algorithms.md: {missing}"
    assert {"1", "2", "3", "4", "5", "6", "7", "7a", "7b", "8"} <= sections


def test_stateful_priority_state_survives_save_and_restore(tmp_path: Path) -> None:
    from actorlearner.core.registry import register_priority

    namespace: dict = {"__name__": "readme_stateful", "register_priority": register_priority}
    try:
        exec(compile(_example("stateful-priority"), "README:stateful-priority", "exec"), namespace)
        first = small_config(tmp_path / "a").replay(priority_fn="rarely_seen").build()
        try:
            first.train()
            ckpt = first.save(str(tmp_path / "ckpt"))
            # what the checkpoint holds: the in-process runners may push more groups after the save
            saved = pickle.loads((Path(ckpt) / "buffer.pkl").read_bytes())["priority_fn"]["seen"]
            assert set(saved) <= set(first.buffer.obj.priority_fn.seen)  # local mode: in-process
        finally:
            first.stop()
        assert saved and all(n >= 1 for n in saved.values())
        second = small_config(tmp_path / "b").replay(priority_fn="rarely_seen").build()
        try:
            assert second.buffer.obj.priority_fn.seen == {}
            second.restore(ckpt)
            assert second.buffer.obj.priority_fn.seen == saved
        finally:
            second.stop()
    finally:
        PRIORITIES.unregister("rarely_seen")
