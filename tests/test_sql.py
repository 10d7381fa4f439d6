"""The SQL env on a real sqlite database (no mocks): tasks, safety limits, scoring, demos, a CLI run."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from actorlearner.env.parsing import format_answer, format_tool_call
from actorlearner.env.toolenv import ToolEnv
from envs import register_envs
from envs.sql import (
    CITIES,
    TEMPLATES,
    SQLEnv,
    answer_from_output,
    is_correct,
    is_held_out,
    shop_rows,
)
from tests.conftest import train_cli

ENV_ID = "actorlearner/SQL-v0"
register_envs()
if ENV_ID not in gym.registry:  # until the registration line lands in envs
    gym.register(id=ENV_ID, entry_point="envs.sql:SQLEnv")

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

READ_ONLY = "not allowed: the database is read-only; only reading statements run"
ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r"
"""A query that runs until something stops it."""


def assert_error(env: SQLEnv, sql: str, message: str) -> None:
    """``query(sql)`` fails with exactly ``message``."""
    with pytest.raises(ValueError) as err:
        env.query(sql)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "sql, refused",
    [
        ("INSERT INTO orders VALUES (999, 1, 1, 1, 'paid')", "INSERT orders"),
        ("UPDATE products SET price = 1", "UPDATE products price"),
        ("DELETE FROM customers", "DELETE customers"),
        ("DROP TABLE orders", "changing the schema"),
        ("CREATE TABLE t (x)", "changing the schema"),
        ("CREATE TEMP TABLE t (x)", "changing the schema"),
        ("ALTER TABLE orders ADD COLUMN y", "ALTER TABLE main orders"),
        ("PRAGMA query_only = OFF", "PRAGMA query_only = OFF"),
        ("PRAGMA writable_schema = ON", "PRAGMA writable_schema = ON"),
        ("BEGIN", "TRANSACTION BEGIN"),
        ("WITH x AS (SELECT 1) DELETE FROM orders", "DELETE orders"),
    ],
)
def test_writes_are_refused_saying_what_was_refused(sql: str, refused: str) -> None:
    env = make()
    before = snapshot(env)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(query(sql))
    assert obs[0]["content"] == f"Error: query: {READ_ONLY} (refused: {refused})"
    assert reward == pytest.approx(-0.1)  # a failed call is a format problem
    assert not (terminated or truncated) and not info["tool_calls"][0]["ok"]
    assert snapshot(env) == before


@pytest.mark.parametrize("sql", ["SELECT 1; DROP TABLE orders", "SELECT * FROM orders; DELETE FROM orders"])
def test_one_statement_per_query(sql: str) -> None:
    env = make()
    before = snapshot(env)
    assert_error(env, sql, "write one statement per query (no ';' between statements)")
    assert snapshot(env) == before


def test_attach_and_vacuum_into_write_no_file(tmp_path: Path) -> None:
    env = make()
    before = snapshot(env)
    env.reset(seed=0)
    for sql in (f"ATTACH '{tmp_path / 'a.db'}' AS a", f"VACUUM INTO '{tmp_path / 'b.db'}'"):
        obs, *_ = env.step(query(sql))
        assert "read-only" in obs[0]["content"] and "(refused: ATTACH " in obs[0]["content"]
    assert list(tmp_path.iterdir()) == []
    assert snapshot(env) == before


@pytest.mark.parametrize(
    "sql, function",
    [
        ("SELECT " + ", ".join(["length(printf('%.*c', 1000000000, 'x'))"] * 3), "printf"),
        ("SELECT length(format('%2000000000d', 1))", "format"),
        ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),  # returned a pointer (an ASLR leak)
        ("SELECT load_extension('libc')", "load_extension"),
        ("SELECT length(zeroblob(9999))", "zeroblob"),
        ("SELECT randomblob(16)", "randomblob"),
        ("SELECT char(65)", "char"),
        ("SELECT sqlite_version()", "sqlite_version"),
        ("SELECT json_extract('{\"a\": 1}', '$.a')", "json_extract"),
    ],
)
def test_functions_outside_the_allowlist_are_refused(sql: str, function: str) -> None:
    env = make(time_limit_s=1.0)
    start = time.monotonic()
    assert_error(env, sql, f"not allowed: SQL function {function}() is not available here")
    assert time.monotonic() - start < 0.5  # 3 printf calls ran ~5 s: no time limit reaches inside one call
    assert env.query("SELECT COUNT(*) FROM orders") == "COUNT(*)\n60"


def test_the_usual_functions_are_allowed() -> None:
    env = make()
    scalar = env.query(
        "SELECT abs(-2), round(2.567, 1), length('abc'), lower('A'), upper('a'), substr('abc', 2), "
        "trim(' a '), coalesce(NULL, 1), ifnull(NULL, 2), nullif(1, 1), instr('abc', 'c'), "
        "replace('ab', 'b', 'c'), typeof(1.5), iif(1 > 0, 'y', 'n'), date('2024-01-31', '+1 day'), "
        "strftime('%Y', '2024-01-02'), CAST(3.7 AS INTEGER), 'a' LIKE 'A', 'a' GLOB 'a', floor(2.5), "
        "sqrt(16), ltrim('xa', 'x'), rtrim('ax', 'x')"
    )
    assert scalar.splitlines()[1] == (
        "2 | 2.6 | 3 | a | A | bc | a | 1 | 2 | NULL | 3 | ac | real | y | 2024-02-01 | 2024 | 3 | 1 | 1 | 2 "
        "| 4 | a | a"
    )
    aggregates = env.query(
        "SELECT category, COUNT(*), MIN(price) < AVG(price), MAX(price) > 0, SUM(price) = TOTAL(price), "
        "length(group_concat(name)) > 0 FROM products GROUP BY category ORDER BY category"
    )
    assert aggregates.splitlines()[1:] == [f"{c} | 4 | 1 | 1 | 1 | 1" for c in ("home", "sport", "tech")]
    window = env.query(
        "SELECT name, row_number() OVER w, rank() OVER w, dense_rank() OVER w, "
        "lag(name) OVER w IS NULL, ntile(2) OVER w FROM products WINDOW w AS (ORDER BY price DESC) LIMIT 1"
    )
    assert window.splitlines()[1].endswith(" | 1 | 1 | 1 | 1 | 1")


@pytest.mark.parametrize(
    "sql, output",
    [
        ("SELECT name FROM pragma_table_info('customers')", "name\nid\nname\ncity"),
        ("PRAGMA table_info(customers)", "cid | name | type | notnull | dflt_value | pk\n0 | id | INTEGER"),
        ("SELECT name, pk FROM pragma_table_xinfo('products') WHERE pk", "name | pk\nid | 1"),
        (
            'SELECT "table", "from" FROM pragma_foreign_key_list(\'orders\') ORDER BY 1',
            "table | from\ncustomers | customer_id\nproducts | product_id",
        ),
        ("PRAGMA foreign_key_list(orders)", "id | seq | table | from | to"),
        ("SELECT COUNT(*) FROM pragma_index_list('orders')", "COUNT(*)\n0"),
        (
            "SELECT m.name, COUNT(*) FROM sqlite_master m, pragma_table_info(m.name) p GROUP BY 1 ORDER BY 1",
            "name | COUNT(*)\ncustomers | 3\norders | 5\nproducts | 4",
        ),
    ],
)
def test_schema_pragmas_run_as_statements_and_table_valued_functions(sql: str, output: str) -> None:
    assert make().query(sql).startswith(output)


@pytest.mark.parametrize(
    "sql, refused",
    [
        ("SELECT * FROM pragma_compile_options", "(refused: changing the schema, or a table-valued function"),
        ("SELECT * FROM json_each('[1, 2]')", "(refused: "),
        ("SELECT * FROM dbstat", "(refused: "),
    ],
)
def test_other_table_valued_functions_are_refused_saying_so(sql: str, refused: str) -> None:
    with pytest.raises(ValueError, match=READ_ONLY) as err:
        make().query(sql)
    assert refused in str(err.value)


def test_endless_recursive_query_stops_at_the_time_limit() -> None:
    env = make(time_limit_s=0.3)
    env.reset(seed=0)
    start = time.monotonic()
    obs, _, terminated, truncated, _ = env.step(query(ENDLESS))
    assert time.monotonic() - start < 3.0
    assert obs[0]["content"] == "Error: query: query exceeded the 0.3 s time limit"
    assert not (terminated or truncated)
    assert env.step(query("SELECT COUNT(*) FROM orders"))[0][0]["content"] == "COUNT(*)\n60"


def _costly_calls(length: int, chars: int, calls: int) -> str:
    """An endless query whose every step makes ``calls`` calls of ``rtrim(s, t)``, each costing
    ``length * chars`` comparisons inside sqlite (where no time limit reaches)."""
    call = " + ".join(["length(rtrim(s, t))"] * calls)
    return (
        f"WITH RECURSIVE d(s) AS (SELECT 'a' UNION ALL SELECT s || s FROM d WHERE length(s) < {length}), "
        f"x(s, t) AS (SELECT max(s), replace(substr(max(s), 1, {chars - 1}), 'a', 'b') || 'a' FROM d), "
        f"loop(i) AS (SELECT 0 UNION ALL SELECT i + {call} FROM loop, x) SELECT COUNT(*) FROM loop"
    )


@pytest.mark.parametrize("length, chars, calls", [(2048, 256, 20), (32768, 2048, 3)])
def test_costly_function_calls_stop_near_the_time_limit(length: int, chars: int, calls: int) -> None:
    """Values are capped at 4 KB and the time limit is checked every 100 VM steps (with values of 100 KB
    and 1,000 steps, the second query ran 5 s past a 0.5 s limit)."""
    env = make(time_limit_s=0.5)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"query exceeded the 0\.5 s time limit|string or blob too big"):
        env.query(_costly_calls(length, chars, calls))
    assert time.monotonic() - start < 1.5


def test_the_costliest_row_is_short() -> None:
    """No time limit reaches inside one row's expressions: a row of as many costly calls as 4,000
    characters of SQL hold must end soon on its own (143 such calls over 10 KB values took 3.3 s)."""
    cte = (
        "WITH RECURSIVE d(s) AS (SELECT 'a' UNION ALL SELECT s || s FROM d WHERE length(s) * 2 < 3999), "
        "x(s, t) AS (SELECT max(s) || substr(max(s), 1, 3999 - length(max(s))), "
        "replace(substr(max(s), 1, 300), 'a', 'b') || 'a' FROM d) SELECT "
    )
    sql = cte + " + ".join(["length(rtrim(s, t))"] * 170) + " FROM x"
    assert 3900 < len(sql) <= 4000
    env = make(time_limit_s=0.5)
    start = time.monotonic()
    with contextlib.suppress(ValueError):  # the time limit may hit in the CTEs
        env.query(sql)
    assert time.monotonic() - start < 2.0  # ~0.3 s on an idle core


@pytest.mark.skipif(
    "tool_timeout_s" not in inspect.signature(ToolEnv.__init__).parameters,
    reason="ToolEnv lacks tool timeouts",
)
def test_a_query_outliving_the_tool_timeout_is_interrupted() -> None:
    env = make(time_limit_s=10.0, tool_timeout_s=0.3)
    env.reset(seed=0)
    start = time.monotonic()
    obs, *_ = env.step(query(ENDLESS))
    assert "timed out" in obs[0]["content"]
    assert env.step(query("SELECT COUNT(*) FROM orders"))[0][0]["content"] == "COUNT(*)\n60"
    assert time.monotonic() - start < 5.0  # the stray query was stopped, not left running for 10 s


def test_a_running_query_never_stalls_reset() -> None:
    """Reference queries run on a private copy of the database, not behind the agent's query."""
    env = make(time_limit_s=2.0)
    env.reset(seed=0)
    errors: list[str] = []
    stray = threading.Thread(target=lambda: errors.append(_error_of(env.query, ENDLESS)))
    stray.start()
    time.sleep(0.2)
    start = time.monotonic()
    for seed in range(1, 4):
        env.reset(seed=seed)
    assert time.monotonic() - start < 0.5
    stray.join()
    assert errors == ["query exceeded the 2 s time limit"]


def _error_of(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
    except ValueError as err:
        return str(err)
    return "no error"


_CLOSE_WHILE_RUNNING = f"""
import threading, time
from envs.sql import SQLEnv
env = SQLEnv(time_limit_s=5.0)
errors = []
def run():
    try:
        env.query({ENDLESS!r})
    except ValueError as err:
        errors.append(str(err))
stray = threading.Thread(target=run)
stray.start()
time.sleep(0.3)
start = time.monotonic()
env.close()
took = time.monotonic() - start
stray.join()
print(round(took, 2), errors)
"""


def test_closing_during_a_query_interrupts_it_without_crashing() -> None:
    """In a subprocess: closing the connection under a running query crashed Python (SIGSEGV)."""
    command = [sys.executable, "-c", _CLOSE_WHILE_RUNNING]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    took, errors = done.stdout.split(" ", 1)
    assert float(took) < 1.0 and errors.strip() == "['interrupted']"


def test_huge_results_are_truncated() -> None:
    env = make(max_rows=5, max_chars=2000)
    cross = "SELECT a.id, b.id FROM orders a, orders b, orders c, orders d"
    lines = env.query(cross).splitlines()
    assert lines[0] == "id | id" and len(lines) == 7
    assert lines[-1] == "[5 of more than 10005 rows shown]"
    assert env.query("SELECT id FROM customers").splitlines()[-1] == "[5 of 12 rows shown]"
    narrow = make(max_chars=60)
    out = narrow.query("SELECT * FROM orders")
    assert out.splitlines()[-2:] == ["[8 characters cut]", "[1 of 60 rows shown]"] and len(out) < 120
    long = "WITH RECURSIVE d(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM d WHERE length(s) < 1500) "
    wide = env.query(long + "SELECT a.id, (SELECT MAX(s) FROM d) AS s FROM orders a")  # rows stop here
    assert wide.splitlines() == ["id | s", "1 | " + "x" * 1989, "[59 characters cut]", "[1 of 60 rows shown]"]
    blobs = env.query("SELECT CAST('abc' AS BLOB) AS b")
    assert blobs == "b\n<blob of 3 bytes>"


def test_cuts_count_characters_and_never_split_one() -> None:
    """Multi-byte characters: the cut and its note count characters, and so does the SQL limit."""
    text = "é€😀" * 400  # 1,200 characters, 3,600 bytes of UTF-8
    out = make(max_chars=100).query(f"SELECT '{text}' AS s")
    assert out.splitlines() == ["s", text[:98], "[1102 characters cut]"]
    assert out.encode("utf-8").decode("utf-8") == out
    euros = "€" * 1300  # 3,900 bytes each
    sql = f"SELECT length('{euros}') + length('{euros}') AS n"  # 2,633 characters, 7,833 bytes
    assert make().query(sql) == "n\n2600"


@pytest.mark.parametrize(
    "sql, fragment",
    [
        ("WITH RECURSIVE d(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM d) SELECT max(s) FROM d", "big"),
        ("SELECT group_concat(a.status) FROM orders a, orders b, orders c", "string or blob too big"),
        ("SELECT " + ", ".join(["1"] * 65), "too many columns"),
        ("SELECT 1 WHERE 'a' LIKE '" + "%a" * 501 + "'", "pattern too complex"),
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
