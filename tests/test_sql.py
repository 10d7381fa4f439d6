"""The SQL env on a real sqlite database (no mocks): tasks, safety limits, scoring, demos, a CLI run."""

from __future__ import annotations

import asyncio
import inspect
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from actorlearner.envs import register_envs
from actorlearner.envs.sql import (
    CITIES,
    TEMPLATES,
    SQLEnv,
    answer_from_output,
    is_correct,
    is_held_out,
    shop_rows,
)
from actorlearner.parsing import format_answer, format_tool_call
from actorlearner.toolenv import ToolEnv
from tests.conftest import train_cli

ENV_ID = "actorlearner/SQL-v0"
register_envs()
if ENV_ID not in gym.registry:  # until the registration line lands in actorlearner.envs
    gym.register(id=ENV_ID, entry_point="actorlearner.envs.sql:SQLEnv")

TABLES = ("customers", "products", "orders")


def make(**kwargs: Any) -> SQLEnv:
    """The env through gymnasium.make, unwrapped (its tools and task are public)."""
    env = gym.make(ENV_ID, disable_env_checker=True, **kwargs).unwrapped
    assert isinstance(env, SQLEnv)
    return env


def query(sql: str) -> str:
    return format_tool_call("query", {"sql": sql})


def play(env: SQLEnv, seed: int) -> tuple[list[str], float, dict[str, Any]]:
    """Plays the demonstration; returns its turns, total reward and last info."""
    messages, _ = env.reset(seed=seed)
    turns, total = [], 0.0
    for _ in range(env.max_turns):
        text = env.demonstration(messages)
        turns.append(text)
        obs, reward, terminated, truncated, info = env.step(text)
        assert sum(info["reward_components"].values()) == pytest.approx(reward)
        total += reward
        messages = [*messages, {"role": "assistant", "content": text}, *obs]
        if terminated or truncated:
            return turns, total, info
    raise AssertionError("episode did not end")


def snapshot(env: SQLEnv) -> dict[str, str]:
    """Every table's rows and the schema, read through the tool."""
    tables = {t: env.query(f"SELECT * FROM {t}") for t in TABLES}
    return {**tables, "master": env.query("SELECT type, name, sql FROM sqlite_master")}


# ---- the database --------------------------------------------------------------------------------


def test_database_is_deterministic_from_its_seed() -> None:
    a, b, c = make(db_seed=3, max_rows=1000), make(db_seed=3, max_rows=1000), make(db_seed=4, max_rows=1000)
    assert snapshot(a) == snapshot(b) != snapshot(c)
    assert shop_rows(3, 60) == shop_rows(3, 60)
    assert a.query("SELECT COUNT(*) FROM orders") == "COUNT(*)\n60"
    assert a.schema() == (
        "customers(id, name, city)\nproducts(id, name, category, price)\n"
        "orders(id, customer_id, product_id, qty, status)"
    )


def _oracle(rows: dict[str, list[tuple[Any, ...]]], template: str, x: str) -> str | None:
    """Independent Python answers for some templates (None for the others)."""
    customers = {i: (name, city) for i, name, city in rows["customers"]}
    products = {i: (name, cat, price) for i, name, cat, price in rows["products"]}
    by_name = {name: i for i, (name, _) in customers.items()}
    if template == "price":
        return str(next(p for n, _, p in products.values() if n == x))
    if template == "count_city":
        return str(sum(city == x for _, city in customers.values()))
    if template == "orders_of":
        return str(sum(o[1] == by_name[x] for o in rows["orders"]))
    if template == "spent_by":
        return str(sum(q * products[p][2] for _, c, p, q, _ in rows["orders"] if c == by_name[x]))
    if template == "buyers_of":
        names = {customers[c][0] for _, c, p, _, _ in rows["orders"] if products[p][0] == x}
        return ", ".join(sorted(names))
    return None


def test_reference_answers_are_what_the_queries_return() -> None:
    env = make(db_seed=7)
    rows = shop_rows(7, 60)
    checked: Counter[str] = Counter()
    for seed in range(150):
        env.reset(seed=seed)
        task = env.task
        assert task is not None
        assert task["sql"] == TEMPLATES[task["template"]].sql.format(x=_param(task))
        assert answer_from_output(env.query(task["sql"])) == task["answer"]
        expected = _oracle(rows, task["template"], _param(task))
        if expected is not None:
            assert task["answer"] == expected, task
            checked[task["template"]] += 1
    assert len(checked) == 5


def _param(task: dict[str, Any]) -> str:
    """The template parameter of a task, read back from its question."""
    template = TEMPLATES[task["template"]].question
    head, tail = template.split("{x}")
    return task["question"][len(head) : len(task["question"]) - len(tail)]


def test_tasks_need_joins_aggregates_and_ordering() -> None:
    env = gym.make(ENV_ID, disable_env_checker=True)
    labels: Counter[str] = Counter()
    for seed in range(200):
        _, info = env.reset(seed=seed)
        labels.update(info["sub_tasks"])
        assert info["sub_tasks"][0] in TEMPLATES
    assert labels["join"] > 40 and labels["aggregate"] > 40 and labels["order"] > 0
    assert {"orders_of", "spent_by", "buyers_of", "units_of"} <= set(labels)


def test_split_is_disjoint_and_follows_the_hash() -> None:
    train, test = make(), make(split="test")
    questions: dict[str, set[str]] = {}
    for name, env in (("train", train), ("test", test)):
        questions[name] = set()
        for seed in range(300):
            env.reset(seed=seed)
            assert env.task is not None
            questions[name].add(env.task["question"])
    assert questions["train"].isdisjoint(questions["test"])
    assert all(is_held_out(q, 0.2) for q in questions["test"])
    assert not any(is_held_out(q, 0.2) for q in questions["train"])
    assert len(questions["test"]) >= 5


# ---- demonstrations and scoring ------------------------------------------------------------------


def test_demonstrations_that_query_succeed_and_guesses_fail() -> None:
    env = make()
    queried = schema_first = 0
    for seed in range(80):
        turns, total, info = play(env, seed)
        assert env.task is not None
        if any('"query"' in t for t in turns):
            queried += 1
            assert query(env.task["sql"]) in turns
            assert turns[-1] == format_answer(env.task["answer"])
            assert info["success"] and total == pytest.approx(1.1)  # answer + tool bonus
        else:
            assert not info["success"] and total == 0.0
        schema_first += turns[0] == format_tool_call("schema", {})
    assert 20 < queried < 60 and 20 < schema_first < 60  # both probabilities are 0.5


def test_wrong_answers_score_zero() -> None:
    env = make()
    for seed in range(30):
        env.reset(seed=seed)
        assert env.task is not None
        truth = env.task["answer"]
        wrong = "Nobody" if env.task["kind"] != "number" else str(float(truth) + 1)
        _, reward, terminated, _, info = env.step(format_answer(wrong))
        assert terminated and reward == 0.0 and not info["success"]
        assert info["reward_components"] == {"format": 0.0, "answer": 0.0}


@pytest.mark.parametrize(
    "kind, truth, answer, correct",
    [
        ("number", "266.67", "266.6667", True),
        ("number", "266.67", " 266.67. ", True),
        ("number", "12", "12.0", True),
        ("number", "12", "13", False),
        ("number", "12", "12 orders", False),
        ("name", "laptop", "'Laptop'", True),
        ("name", "laptop", "phone", False),
        ("list", "Ana, Ben, Kim", "kim\nAna and Ben", True),
        ("list", "Ana, Ben, Kim", "Ana, Ben", False),
        ("list", "Ana, Ben", "Ana, Ben, Kim", False),
    ],
)
def test_answer_matching(kind: str, truth: str, answer: str, correct: bool) -> None:
    assert is_correct(kind, truth, answer) is correct


def test_tool_bonus_is_paid_once_and_can_be_turned_off() -> None:
    env = make()
    env.reset(seed=0)
    rewards = [env.step(query("SELECT 1"))[1] for _ in range(3)]
    assert rewards == [pytest.approx(0.1), 0.0, 0.0]
    env.reset(seed=0)
    assert env.step(query("SELEC 1"))[4]["reward_components"] == {"format": -0.1}  # failed: no bonus
    off = make(tool_bonus=0.0)
    off.reset(seed=0)
    assert off.step(query("SELECT 1"))[4]["reward_components"] == {"format": 0.0}


# ---- safety --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, fragment",
    [
        ("INSERT INTO orders VALUES (999, 1, 1, 1, 'paid')", "read-only"),
        ("UPDATE products SET price = 1", "read-only"),
        ("DELETE FROM customers", "read-only"),
        ("DROP TABLE orders", "read-only"),
        ("CREATE TABLE t (x)", "read-only"),
        ("CREATE TEMP TABLE t (x)", "read-only"),
        ("ALTER TABLE orders ADD COLUMN y", "read-only"),
        ("PRAGMA query_only = OFF", "read-only"),
        ("PRAGMA writable_schema = ON", "read-only"),
        ("BEGIN", "read-only"),
        ("SELECT 1; DROP TABLE orders", "one statement"),
        ("SELECT * FROM orders; DELETE FROM orders", "one statement"),
        ("WITH x AS (SELECT 1) DELETE FROM orders", "read-only"),
        ("SELECT load_extension('libc')", "read-only"),
    ],
)
def test_writes_are_refused(sql: str, fragment: str) -> None:
    env = make()
    before = snapshot(env)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(query(sql))
    assert obs[0]["content"].startswith("Error: query:") and fragment in obs[0]["content"]
    assert reward == pytest.approx(-0.1)  # a failed call is a format problem
    assert not (terminated or truncated) and not info["tool_calls"][0]["ok"]
    assert snapshot(env) == before


def test_attach_and_vacuum_into_write_no_file(tmp_path: Path) -> None:
    env = make()
    before = snapshot(env)
    env.reset(seed=0)
    for sql in (f"ATTACH '{tmp_path / 'a.db'}' AS a", f"VACUUM INTO '{tmp_path / 'b.db'}'"):
        obs, *_ = env.step(query(sql))
        assert "read-only" in obs[0]["content"]
    assert list(tmp_path.iterdir()) == []
    assert snapshot(env) == before


def test_endless_recursive_query_stops_at_the_time_limit() -> None:
    env = make(time_limit_s=0.3)
    env.reset(seed=0)
    endless = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r"
    start = time.monotonic()
    obs, _, terminated, truncated, _ = env.step(query(endless))
    assert time.monotonic() - start < 3.0
    assert obs[0]["content"] == "Error: query: query exceeded the 0.3 s time limit"
    assert not (terminated or truncated)
    assert env.step(query("SELECT COUNT(*) FROM orders"))[0][0]["content"] == "COUNT(*)\n60"


@pytest.mark.skipif(
    "tool_timeout_s" not in inspect.signature(ToolEnv.__init__).parameters,
    reason="ToolEnv lacks tool timeouts",
)
def test_a_query_outliving_the_tool_timeout_is_interrupted() -> None:
    env = make(time_limit_s=30.0, tool_timeout_s=0.3)
    env.reset(seed=0)
    endless = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r"
    start = time.monotonic()
    obs, *_ = env.step(query(endless))
    assert "timed out" in obs[0]["content"]
    assert env.step(query("SELECT COUNT(*) FROM orders"))[0][0]["content"] == "COUNT(*)\n60"
    assert time.monotonic() - start < 5.0  # the stray query was stopped, not left running for 30 s


def test_huge_results_are_truncated() -> None:
    env = make(max_rows=5, max_chars=2000)
    cross = "SELECT a.id, b.id FROM orders a, orders b, orders c, orders d"
    lines = env.query(cross).splitlines()
    assert lines[0] == "id | id" and len(lines) == 7
    assert lines[-1] == "[5 of more than 10005 rows shown]"
    assert env.query("SELECT id FROM customers").splitlines()[-1] == "[5 of 12 rows shown]"
    narrow = make(max_chars=60)
    out = narrow.query("SELECT * FROM orders")
    assert "characters cut]" in out and "[2 of 60 rows shown]" in out and len(out) < 120
    blobs = env.query("SELECT a.id, zeroblob(99999) FROM orders a, orders b")  # rows stop at max_chars
    assert blobs.splitlines() == [
        "id | zeroblob(99999)",
        "1 | <blob of 99999 bytes>",
        "[1 of 3600 rows shown]",
    ]


@pytest.mark.parametrize(
    "sql, fragment",
    [
        ("SELECT zeroblob(100000000)", "string or blob too big"),
        ("SELECT group_concat(a.status) FROM orders a, orders b, orders c", "string or blob too big"),
        ("SELECT " + ", ".join(["zeroblob(99999)"] * 65), "too many columns"),
    ],
)
def test_memory_bombs_are_errors(sql: str, fragment: str) -> None:
    env = make()
    env.reset(seed=0)
    obs = env.step(query(sql))[0]
    assert obs[0]["content"].startswith("Error: query: ") and fragment in obs[0]["content"]


@pytest.mark.parametrize(
    "sql, fragment",
    [
        ("SELEC name FROM customers", "syntax error"),
        ("SELECT * FROM nope", "no such table: nope"),
        ("SELECT nope FROM customers", "no such column: nope"),
        ("", "not a query"),
        ("-- a comment", "not a query"),
        ("SELECT 'x' || ", "incomplete input"),
    ],
)
def test_bad_sql_is_an_error_and_the_episode_goes_on(sql: str, fragment: str) -> None:
    env = make(demo_tool_prob=1.0, demo_schema_prob=0.0)
    messages, _ = env.reset(seed=2)
    obs, reward, terminated, truncated, _ = env.step(query(sql))
    assert obs[0]["content"].startswith("Error: query:") and fragment in obs[0]["content"]
    assert reward == pytest.approx(-0.1) and not (terminated or truncated)
    messages = [*messages, {"role": "assistant", "content": query(sql)}, *obs]
    for _ in range(2):
        text = env.demonstration(messages)
        obs, _, terminated, _, info = env.step(text)
        messages = [*messages, {"role": "assistant", "content": text}, *obs]
    assert terminated and info["success"]


def test_steps_run_in_worker_threads() -> None:
    """The rollout runs env.step in asyncio.to_thread; the connection must allow that."""
    env = make()
    env.reset(seed=0)
    obs, *_ = asyncio.run(asyncio.to_thread(env.step, query("SELECT city FROM customers WHERE id = 1")))
    assert obs[0]["content"].splitlines()[1] in CITIES


# ---- the env's API -------------------------------------------------------------------------------


def test_registered_and_passes_check_env() -> None:
    env = gym.make(ENV_ID)
    messages, info = env.reset(seed=0)
    assert info["task_id"] == ENV_ID and messages[0]["content"].startswith("Shop database: ")
    assert [t["function"]["name"] for t in info["tools"]] == ["query", "schema"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"db_seed": -1}, "db_seed"),
        ({"num_orders": 5}, "num_orders"),
        ({"templates": ["price", "nope"]}, "templates"),
        ({"templates": "price,price"}, "templates"),
        ({"split": "val"}, "split"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"demo_tool_prob": 1.5}, "demo_tool_prob"),
        ({"demo_schema_prob": -0.1}, "demo_schema_prob"),
        ({"tool_bonus": -1}, "tool_bonus"),
        ({"time_limit_s": 0}, "time_limit_s"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_chars": 8}, "max_chars"),
    ],
)
def test_bad_knobs_raise(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        SQLEnv(**kwargs)


def test_templates_knob_restricts_the_questions() -> None:
    env = make(templates="orders_of, spent_by")
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert info["sub_tasks"][:2] in (["orders_of", "join"], ["spent_by", "join"])


# ---- training through the CLI --------------------------------------------------------------------


@pytest.mark.slow
def test_train_from_the_command_line(tmp_path: Path) -> None:
    records = train_cli(
        "configs/sql.yaml", tmp_path, "sql", "env_runners.max_new_tokens=32", "env_runners.max_tokens=128"
    )
    assert [r["step"] for r in records if r["phase"] == "rl"] == [1, 2]
    assert all(r["learner/tokens"] > 0 for r in records if r["phase"] == "rl")
