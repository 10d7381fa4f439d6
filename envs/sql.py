"""SQL: answer questions about a small shop by querying a real, read-only sqlite database.

Each env instance builds an in-memory sqlite database from ``db_seed`` (three tables: ``customers``,
``products`` and ``orders``; the same seed gives the same rows). The agent inspects the tables with
``schema()``, runs ``query(sql)`` as often as it likes and ends with ``<answer>...</answer>``.

Questions come from templates (:data:`TEMPLATES`): lookups, filters, counts and averages, ordering,
and joins of two or three tables. The ground truth of a task is computed by running the template's
reference SQL on the database, so it is always right; the demonstration runs the same SQL.

Safety of ``query``. The agent queries its own copy of the database; the reference answers come from
a private copy, so ``reset`` never waits for an agent's query. The agent's copy is locked before the
agent sees it: ``PRAGMA query_only`` and an authorizer that allows reading statements over the
shop's tables and ``sqlite_master``, the schema pragmas (``table_info``, ``foreign_key_list``...,
also as table-valued functions like ``pragma_table_info('orders')``) and an allowlist of SQL
functions (:data:`FUNCTIONS`: aggregate, window, text, number, date and NULL functions; not
``printf``, ``zeroblob``, ``fts3_tokenizer``...); a refusal says what was refused. One statement runs
per call. Strings and blobs a query builds are capped at 4 KB, ``LIKE`` patterns at 200 bytes,
results at 64 columns and SQL at 4,000 characters. A progress handler stops a statement after
``time_limit_s`` (an endless recursive CTE ends with ``query exceeded the 1 s time limit``); it runs
where the query loops, so one row's expressions run to their end (with the caps above, at most ~0.3 s
was measured). Rows are fetched one at a time: at most ``max_rows`` rows and ``max_chars`` characters
of table are shown, with notes of how many rows and characters were cut. SQL errors are tool errors.
Should ToolEnv's ``tool_timeout_s`` fire first, :meth:`SQLEnv.on_tool_timeout` interrupts the
statement; the next query waits at most ``time_limit_s + 1`` s for a stray one, and ``close``
interrupts a running statement before closing the connection under it. Not bounded: a sort too big
for memory spills to a temporary file (deleted when the statement ends; ~0.5 GB in a 1 s limit).

Reward: ``answer`` 1.0 for a correct answer (numbers within 0.01, names case-free,
lists in any order) and ``tool`` ``tool_bonus`` once, for the episode's first successful query.
Tasks are split by a fixed hash of the question text: a ``test_fraction`` of all questions is held
out, ``split="train"`` never draws them and ``split="test"`` draws only them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actorlearner.core.knobs import (
    check_choice,
    check_fraction,
    check_int,
    check_names,
    check_number,
    check_probability,
)
from actorlearner.env.info import StepInfo
from actorlearner.env.toolenv import Messages, ToolEnv, tool
from envs import SPLITS
from envs.calculator import format_number

# ---- the shop's data -----------------------------------------------------------------------------

CUSTOMERS = ("Ana", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ida", "Jon", "Kim", "Leo")
"""Customer names (every database has all of them; their cities vary with the seed)."""
CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo")
"""Cities customers live in."""
PRODUCTS = {
    "laptop": "tech",
    "phone": "tech",
    "camera": "tech",
    "tablet": "tech",
    "lamp": "home",
    "chair": "home",
    "desk": "home",
    "sofa": "home",
    "ball": "sport",
    "bike": "sport",
    "tent": "sport",
    "skates": "sport",
}
"""Product name -> category (prices vary with the seed and are distinct)."""
CATEGORIES = ("tech", "home", "sport")
"""Product categories."""
STATUSES = ("paid", "shipped", "returned")
"""Order statuses."""

_DDL = (
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL)",
    "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, "
    "price INTEGER NOT NULL)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), "
    "product_id INTEGER NOT NULL REFERENCES products(id), qty INTEGER NOT NULL, status TEXT NOT NULL)",
)


def shop_rows(db_seed: int, num_orders: int) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of each table, a pure function of the seed.

    Args:
        db_seed: Seed of the cities, prices and orders.
        num_orders: Rows of ``orders``.

    Returns:
        Table name -> rows in column order.
    """
    rng = np.random.default_rng(db_seed)
    customers = [(i + 1, name, CITIES[int(rng.integers(len(CITIES)))]) for i, name in enumerate(CUSTOMERS)]
    prices = rng.choice(np.arange(10, 1000), size=len(PRODUCTS), replace=False)
    products = [
        (i + 1, n, c, int(p)) for i, ((n, c), p) in enumerate(zip(PRODUCTS.items(), prices, strict=True))
    ]
    orders = [
        (
            i + 1,
            int(rng.integers(1, len(customers) + 1)),
            int(rng.integers(1, len(products) + 1)),
            int(rng.integers(1, 5)),
            STATUSES[int(rng.integers(len(STATUSES)))],
        )
        for i in range(num_orders)
    ]
    return {"customers": customers, "products": products, "orders": orders}


# ---- the read-only database ----------------------------------------------------------------------

FUNCTIONS = frozenset(
    {
        # aggregates
        *("avg", "count", "group_concat", "max", "min", "sum", "total"),
        # window functions
        *("row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile"),
        *("lag", "lead", "first_value", "last_value", "nth_value"),
        # text
        *("length", "lower", "upper", "substr", "substring", "trim", "ltrim", "rtrim", "instr", "replace"),
        *("like", "glob", "unicode"),
        # numbers
        *("abs", "round", "sign", "ceil", "ceiling", "floor", "trunc", "mod", "sqrt", "pow", "power"),
        *("exp", "ln", "log", "log10", "log2", "pi", "random"),
        # NULLs, types and conditions
        *("coalesce", "ifnull", "nullif", "iif", "typeof"),
        # dates and times
        *("date", "time", "datetime", "julianday", "strftime", "unixepoch"),
        *("current_date", "current_time", "current_timestamp"),
    }
)
"""The SQL functions a query may call; the authorizer refuses every other one.

Left out on purpose: ``printf``/``format`` (a huge width runs for seconds inside one call, where
neither the time limit nor an interrupt reaches), ``zeroblob``/``randomblob``/``hex``/``char`` (blob
and text builders nobody needs here), ``fts3_tokenizer`` (returns a pointer), ``load_extension``,
the JSON, FTS and R-tree functions and the introspection ones (``sqlite_version``, ``changes``...).
"""
_READ_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
"""Schema pragmas a query may run, as ``PRAGMA table_info(orders)`` or as a table-valued function,
``SELECT * FROM pragma_table_info('orders')``."""
_READ_TABLES = frozenset(
    {"customers", "products", "orders", "sqlite_master", "sqlite_temp_master"}
    | {f"pragma_{name}" for name in _READ_PRAGMAS}
)
"""Tables and table-valued functions whose columns a query may read (not ``dbstat``, ``json_each``,
``pragma_compile_options``...)."""
_MAX_VALUE_BYTES = 4_000
"""Longest string or blob a query may build (``SQLITE_LIMIT_LENGTH``), e.g. with ``||`` or ``group_concat``.

It bounds the functions whose cost grows with the product of their arguments' lengths (``trim(x, y)``,
``LIKE``, ``GLOB``, ``instr``, ``replace``). The time limit is checked only where a query loops, never
inside one row's expressions, so a row packing ~140 such calls into the 4,000 characters of SQL runs to
its end: measured, such a row takes ~0.3 s at 4 KB but 3.3 s at 10 KB, and at the 100 KB used before,
a single ``trim(x, y)`` call took 0.75 s."""
_MAX_LIKE_PATTERN = 200
"""Longest ``LIKE``/``GLOB`` pattern in bytes (``SQLITE_LIMIT_LIKE_PATTERN_LENGTH``, default 50,000)."""
_MAX_COLUMNS = 64
"""Most columns of a result (``SQLITE_LIMIT_COLUMN``)."""
_MAX_SQL_CHARS = 4_000
"""Longest SQL text ``query`` runs, in characters (sqlite's limit is set to the 4 bytes each may take)."""
_COUNT_CAP = 10_000
"""Rows counted past the shown ones to say how many were cut."""
_PROGRESS_EVERY = 100
"""Virtual-machine instructions between two time-limit checks (made where a query loops).

Measured on queries that run 1-100 ms, checks every 100 instructions add 20-30% (every 1,000: 3-5%), and
stop a loop of costly calls up to ~0.4 s sooner than every 1,000 did with 10 KB values."""
_WAIT_GRACE_S = 1.0
"""How much longer than ``time_limit_s`` a query waits for the previous one (a stray call) to end."""
_ACTIONS = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        *("CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER"),
        *("CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "CREATE_VTABLE", "DELETE", "DROP_INDEX"),
        *("DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW"),
        *("DROP_TRIGGER", "DROP_VIEW", "DROP_VTABLE", "INSERT", "PRAGMA", "READ", "SELECT", "TRANSACTION"),
        *("UPDATE", "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE", "FUNCTION", "SAVEPOINT"),
        "RECURSIVE",
    )
}
"""Authorizer action code -> its name, for refusal messages."""


def _refusal(action: int, arg1: str | None, arg2: str | None) -> str:
    """What the authorizer refused, as the model should read it."""
    if action == sqlite3.SQLITE_FUNCTION:
        return f"not allowed: SQL function {arg2}() is not available here"
    if action == sqlite3.SQLITE_READ:
        what = f"reading {arg1}"
    elif action == sqlite3.SQLITE_PRAGMA:
        what = f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 else "")
    elif (arg1 or "").lower() in ("sqlite_master", "sqlite_temp_master"):
        what = "changing the schema"
        if action == sqlite3.SQLITE_UPDATE:  # sqlite 3.40 also asks this on a virtual table's first use
            what += ", or a table-valued function other than the schema pragmas"
    else:
        what = " ".join([_ACTIONS.get(action, str(action)), *(a for a in (arg1, arg2) if a)])
    return f"not allowed: the database is read-only; only reading statements run (refused: {what})"


HEAP_LIMIT_BYTES = 512 << 20
"""SQLite's heap cap for the whole process (``PRAGMA hard_heap_limit``): temp storage lives in memory,
so a huge sort fails with ``out of memory`` (an error observation) instead of filling a disk."""
MAX_TIME_LIMIT_S = 10.0
"""Largest ``time_limit_s`` a SQL env accepts."""


def _connect() -> sqlite3.Connection:
    """An in-memory connection that any thread may use (steps run in worker threads, one at a time).

    Statements are not cached: each query is prepared, hence authorized, afresh.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, cached_statements=0)
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
    conn.execute("PRAGMA temp_store = MEMORY")  # sorts and temp tables never spill to the host's disk
    limit = conn.execute("PRAGMA hard_heap_limit").fetchone()[0]
    if limit == 0 or limit > HEAP_LIMIT_BYTES:  # process-wide: caps what in-memory temp storage takes
        conn.execute(f"PRAGMA hard_heap_limit = {HEAP_LIMIT_BYTES}")
    return conn


@dataclass
class QueryResult:
    """What a query returned, within the limits.

    Attributes:
        columns: Column names.
        rows: The first rows (at most the row limit).
        total: Rows counted in all (``rows`` plus those cut), up to a cap.
        more: Whether there were rows beyond ``total`` (the count hit its cap or the time limit).
    """

    columns: list[str]
    rows: list[tuple[Any, ...]]
    total: int
    more: bool = False


class ShopDatabase:
    """An in-memory sqlite shop, filled from a seed, in two copies: a private one and a locked one.

    The private copy answers the reference queries (:meth:`reference`); the agent's queries
    (:meth:`run`) go to the copy locked read-only and bounded in time and size.

    Args:
        db_seed: Seed of the rows (see :func:`shop_rows`).
        num_orders: Rows of ``orders``.
        time_limit_s: A statement running longer is interrupted.
    """

    def __init__(self, db_seed: int, num_orders: int, time_limit_s: float) -> None:
        self.time_limit_s = time_limit_s
        self._running = threading.Lock()  # one agent query at a time (a stray one finishes first)
        self._closed = False
        self._deadline = math.inf
        self._refused: str | None = None
        self._ref = _connect()  # trusted SQL only: reset never waits for the agent's query
        for ddl in _DDL:
            self._ref.execute(ddl)
        for table, rows in shop_rows(db_seed, num_orders).items():
            marks = ", ".join("?" * len(rows[0]))
            self._ref.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        self.schema = self._describe()
        self._conn = _connect()
        self._ref.backup(self._conn)
        self._lock()

    def _describe(self) -> str:
        """One line per table: ``customers(id, name, city)``."""
        tables = [r[0] for r in self._ref.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        lines = []
        for table in tables:
            columns = [r[1] for r in self._ref.execute(f"PRAGMA table_info({table})")]
            lines.append(f"{table}({', '.join(columns)})")
        return "\n".join(lines)

    def _lock(self) -> None:
        """Makes the agent's connection read-only, bounds values, and arms the time limit."""
        for pragma in _READ_PRAGMAS:  # a virtual table's first use asks to write sqlite_master: do it now
            self._conn.execute(f"SELECT * FROM pragma_{pragma}('orders') LIMIT 0").fetchall()
        self._conn.execute("PRAGMA query_only = ON")
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, _MAX_LIKE_PATTERN)
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 4 * _MAX_SQL_CHARS)
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, _MAX_COLUMNS)
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self._conn.set_authorizer(self._authorize)
        self._conn.set_progress_handler(self._over_time, _PROGRESS_EVERY)

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, *_: str | None) -> int:
        """The authorizer: reading the shop's tables and schema, with the allowed functions and pragmas."""
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ and (arg2 == "" or (arg1 or "").lower() in _READ_TABLES):
            return sqlite3.SQLITE_OK  # "" is no column: a CTE's name, a table's for COUNT(*)
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in FUNCTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
            return sqlite3.SQLITE_OK
        if self._refused is None:  # the first refusal is the one the model reads
            self._refused = _refusal(action, arg1, arg2)
        return sqlite3.SQLITE_DENY

    def _over_time(self) -> int:
        return int(time.monotonic() > self._deadline)

    def reference(self, sql: str, max_rows: int) -> QueryResult:
        """Runs trusted SQL (a template's reference query) on the private copy, without limits.

        It never waits for the agent's query, even a stray one still running after a tool timeout.
        """
        cursor = self._ref.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
        columns = [d[0] for d in cursor.description]
        return QueryResult(columns, rows[:max_rows], len(rows), more=len(rows) > max_rows)

    def run(self, sql: str, max_rows: int, max_chars: int) -> QueryResult:
        """Runs one agent statement, keeps its first rows and counts the rest, one row at a time.

        Args:
            sql: One SQL statement.
            max_rows: Rows to keep.
            max_chars: Rows stop being kept once the rendered table holds this many characters.

        Returns:
            The columns, kept rows and row count.

        Raises:
            ValueError: On any SQL error, a refused statement or function, several statements, the
                time limit, or a previous (stray) query still running ``time_limit_s + 1`` s later.
        """
        if len(sql) > _MAX_SQL_CHARS:
            raise ValueError(f"SQL longer than {_MAX_SQL_CHARS} characters")
        if not self._running.acquire(timeout=self.time_limit_s + _WAIT_GRACE_S):
            raise ValueError("the previous query is still running; try again")
        try:
            if self._closed:
                raise ValueError("the database is closed")
            return self._run(sql, max_rows, max_chars)
        finally:
            if self._closed:  # close() gave up waiting for this query: the connection ends with it
                self._conn.close()
            self._running.release()

    def _run(self, sql: str, max_rows: int, max_chars: int) -> QueryResult:
        self._refused = None
        self._deadline = time.monotonic() + self.time_limit_s
        cursor = None
        try:
            cursor = self._conn.execute(sql)
            if cursor.description is None:
                raise ValueError("not a query: write one SELECT statement")
            columns = [d[0] for d in cursor.description]
            rows: list[tuple[Any, ...]] = []
            size = len(" | ".join(columns))  # characters of the table so far, as render() writes it
            while len(rows) < max_rows and size < max_chars and (row := cursor.fetchone()) is not None:
                rows.append(row)
                size += len(_line(row)) + 1
            total, more = self._count_rest(cursor, len(rows))
        except sqlite3.Error as err:
            raise ValueError(self._explain(err)) from None
        finally:
            self._deadline = math.inf
            if cursor is not None:
                cursor.close()  # frees the statement (and a sort's temp file) now
        return QueryResult(columns, rows, total, more)

    def _count_rest(self, cursor: sqlite3.Cursor, shown: int) -> tuple[int, bool]:
        """Counts the rows left in ``cursor`` (one at a time) up to a cap, the time limit or an error."""
        total = shown
        try:
            while total < shown + _COUNT_CAP:
                if cursor.fetchone() is None:
                    return total, False
                total += 1
        except sqlite3.Error:  # the time limit hit while counting: the shown rows stand
            pass
        return total, True

    def _explain(self, err: sqlite3.Error) -> str:
        """An sqlite error as the model should read it."""
        text = str(err)
        if text == "interrupted" and time.monotonic() > self._deadline:
            return f"query exceeded the {format_number(self.time_limit_s)} s time limit"
        if self._refused is not None:  # the authorizer refused something (sqlite's error may not say so)
            return self._refused
        if any(s in text for s in ("not authorized", "authorization denied", "readonly", "not be modified")):
            return "not allowed: the database is read-only; only reading statements run"
        if "one statement at a time" in text:
            return "write one statement per query (no ';' between statements)"
        return text or type(err).__name__

    def interrupt(self) -> None:
        """Stops the running agent statement, if any (safe to call from another thread)."""
        with contextlib.suppress(sqlite3.ProgrammingError):  # already closed
            self._conn.interrupt()

    def close(self) -> None:
        """Closes both connections; a running agent statement is interrupted first, never freed under it."""
        self._closed = True
        self.interrupt()
        if self._running.acquire(timeout=self.time_limit_s + _WAIT_GRACE_S):
            try:
                self._conn.close()
            finally:
                self._running.release()
        self._ref.close()


def render(result: QueryResult, max_chars: int) -> str:
    """A result as text: a header line, one ``a | b`` line per row, and notes of what was cut.

    The table is cut after ``max_chars`` characters (Python characters, i.e. code points: a cut never
    splits a UTF-8 sequence) and the note says exactly how many characters were cut.

    Args:
        result: What the query returned.
        max_chars: Characters of the table kept (the notes come after).

    Returns:
        The header line (``COUNT(*)``), then the rows (``3``), or ``(no rows)``.
    """
    lines = [" | ".join(result.columns)]
    lines += [_line(row) for row in result.rows]
    if not result.rows:
        lines.append("(no rows)")
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = f"{text[:max_chars]}\n[{len(text) - max_chars} characters cut]"
    if result.total > len(result.rows) or result.more:
        of = f"more than {result.total}" if result.more else str(result.total)
        text += f"\n[{len(result.rows)} of {of} rows shown]"
    return text


def _line(row: tuple[Any, ...]) -> str:
    return " | ".join(_cell(v) for v in row)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<blob of {len(value)} bytes>"
    if isinstance(value, float):
        return format_number(value) if math.isfinite(value) else str(value)
    return str(value)


# ---- task templates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A question family.

    Attributes:
        question: The question, with ``{x}`` for the parameter.
        sql: The reference SQL, with ``{x}`` for the parameter.
        param: What ``{x}`` ranges over: a key of :data:`PARAMS`.
        kind: How answers are compared: ``"number"``, ``"name"`` or ``"list"`` (of names).
        tags: Skill labels among ``filter``, ``aggregate``, ``order``, ``join``.
        pool: For name and list answers, the names a wrong guess draws from (a key of :data:`PARAMS`).
    """

    question: str
    sql: str
    param: str
    kind: str
    tags: tuple[str, ...]
    pool: str = ""


PARAMS: dict[str, tuple[str, ...]] = {
    "product": tuple(PRODUCTS),
    "customer": CUSTOMERS,
    "city": CITIES,
    "category": CATEGORIES,
    "status": STATUSES,
    "threshold": tuple(str(n) for n in range(100, 1000, 100)),
}
"""The values each template parameter ranges over."""

TEMPLATES: dict[str, Template] = {
    "price": Template(
        "What is the price of the {x}?",
        "SELECT price FROM products WHERE name = '{x}'",
        "product",
        "number",
        ("filter",),
    ),
    "count_city": Template(
        "How many customers live in {x}?",
        "SELECT COUNT(*) FROM customers WHERE city = '{x}'",
        "city",
        "number",
        ("filter", "aggregate"),
    ),
    "count_status": Template(
        "How many orders are {x}?",
        "SELECT COUNT(*) FROM orders WHERE status = '{x}'",
        "status",
        "number",
        ("filter", "aggregate"),
    ),
    "pricier": Template(
        "Which products cost more than {x}?",
        "SELECT name FROM products WHERE price > {x} ORDER BY name",
        "threshold",
        "list",
        ("filter",),
        "product",
    ),
    "priciest": Template(
        "Which {x} product costs the most?",
        "SELECT name FROM products WHERE category = '{x}' ORDER BY price DESC LIMIT 1",
        "category",
        "name",
        ("filter", "order"),
        "product",
    ),
    "average": Template(
        "What is the average price of {x} products?",
        "SELECT ROUND(AVG(price), 2) FROM products WHERE category = '{x}'",
        "category",
        "number",
        ("filter", "aggregate"),
    ),
    "orders_of": Template(
        "How many orders did {x} place?",
        "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.name = '{x}'",
        "customer",
        "number",
        ("join", "aggregate"),
    ),
    "units_of": Template(
        "How many units of {x} were ordered?",
        "SELECT SUM(o.qty) FROM orders o JOIN products p ON p.id = o.product_id WHERE p.name = '{x}'",
        "product",
        "number",
        ("join", "aggregate"),
    ),
    "spent_by": Template(
        "What is the total value of the orders of {x}?",
        "SELECT SUM(o.qty * p.price) FROM orders o JOIN products p ON p.id = o.product_id "
        "JOIN customers c ON c.id = o.customer_id WHERE c.name = '{x}'",
        "customer",
        "number",
        ("join", "aggregate"),
    ),
    "buyers_of": Template(
        "Who ordered the {x}?",
        "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
        "JOIN products p ON p.id = o.product_id WHERE p.name = '{x}' ORDER BY c.name",
        "product",
        "list",
        ("join",),
        "customer",
    ),
}
"""Question templates by name (the name is the task's first label)."""

MAX_LIST_ANSWER = 6
"""Longest list answer a task may have (tasks with longer or empty answers are redrawn)."""


def is_held_out(question: str, test_fraction: float) -> bool:
    """Whether ``question`` belongs to the test split (a fixed SHA-256 hash, not ``hash()``)."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def answer_of(result: QueryResult) -> str:
    """The answer a result gives: its first column's values, comma-separated."""
    return ", ".join(_cell(row[0]) for row in result.rows)


def answer_from_output(output: str) -> str:
    """The answer the rendered output of ``query`` gives (the inverse of :func:`render`)."""
    lines = [line for line in output.splitlines()[1:] if line and not line.startswith(("[", "(no rows)"))]
    return ", ".join(line.split(" | ")[0] for line in lines)


def _norm(text: str) -> str:
    return text.strip().strip("'\"`.").strip().lower()


def _items(text: str) -> set[str]:
    return {_norm(p) for p in re.split(r",|\n|\||\band\b", text) if _norm(p)}


_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def is_correct(kind: str, truth: str, answer: str) -> bool:
    """Whether ``answer`` matches ``truth``.

    Numbers match within 0.01 (averages are rounded to cents), names ignoring case and quotes,
    lists as sets of names (separated by commas, newlines, ``|`` or ``and``).
    """
    if kind == "number":
        text = answer.strip().rstrip(".").lstrip("$")
        if _NUMBER_RE.fullmatch(text) is None:
            return False
        return math.isclose(float(text), float(truth), rel_tol=1e-12, abs_tol=0.01)
    if kind == "list":
        return _items(answer) == _items(truth)
    return _norm(answer) == _norm(truth)


# ---- the env -------------------------------------------------------------------------------------


class SQLEnv(ToolEnv):
    """Questions about a shop, answered by querying a real read-only sqlite database.

    See the module docstring for the database, the safety limits, the reward and the split.

    Args:
        db_seed: Seed of the database's rows; every instance with the same seed has the same data.
        num_orders: Rows of the ``orders`` table, in [10, 10000].
        templates: Question templates to draw from (uniformly): names among :data:`TEMPLATES`, as a
            sequence or a comma-separated string.
        split: ``"train"`` draws only questions outside the held-out set, ``"test"`` only inside.
        test_fraction: Fraction of questions held out, in (0, 1).
        demo_tool_prob: Probability that the demonstration queries the reference SQL; otherwise it
            answers a wrong guess. Decided at reset from the seed.
        demo_schema_prob: Probability that the demonstration calls ``schema`` first.
        tool_bonus: The ``tool`` reward of the episode's first successful query (>= 0; 0 turns it off).
        time_limit_s: A query running longer is stopped with an error, in (0, 10].
        max_rows: Rows of a result shown to the model, >= 1.
        max_chars: Characters of a result shown to the model, >= 16.
        **kwargs: :class:`~actorlearner.env.toolenv.ToolEnv` knobs (``max_turns``, ``format_penalty``...).

    Raises:
        ValueError: If an argument is invalid (the message names the key and its allowed values).
    """

    max_turns = 5

    def __init__(
        self,
        *,
        db_seed: int = 0,
        num_orders: int = 60,
        templates: Sequence[str] | str = tuple(TEMPLATES),
        split: str = "train",
        test_fraction: float = 0.2,
        demo_tool_prob: float = 0.5,
        demo_schema_prob: float = 0.5,
        tool_bonus: float = 0.1,
        time_limit_s: float = 1.0,
        max_rows: int = 20,
        max_chars: int = 1000,
        **kwargs: Any,
    ) -> None:
        check_int("db_seed", db_seed, 0, 2**63 - 1)
        check_int("num_orders", num_orders, 10, 10_000)
        self.templates = check_names("templates", templates, TEMPLATES)
        check_choice("split", split, SPLITS)
        check_fraction("test_fraction", test_fraction, open_interval=True)
        check_probability("demo_tool_prob", demo_tool_prob)
        check_probability("demo_schema_prob", demo_schema_prob)
        check_number("tool_bonus", tool_bonus, 0.0)
        check_number("time_limit_s", time_limit_s, 0.0, MAX_TIME_LIMIT_S, open_low=True)
        check_int("max_rows", max_rows, 1, 10_000)
        check_int("max_chars", max_chars, 16, 1_000_000)
        super().__init__(**kwargs)
        self.db_seed, self.split, self.test_fraction = db_seed, split, float(test_fraction)
        self.demo_tool_prob, self.demo_schema_prob = float(demo_tool_prob), float(demo_schema_prob)
        self.tool_bonus, self.max_rows, self.max_chars = float(tool_bonus), max_rows, max_chars
        self.db = ShopDatabase(db_seed, num_orders, float(time_limit_s))
        self._demo_uses_tool = self._demo_schema = self._bonus_paid = False
        self._demo_guess = ""
        self._answers: dict[str, str | None] = {}
        self.sample_task(np.random.default_rng(0))  # fails now, not at reset, if the split is empty

    # ---- the tools -------------------------------------------------------------------------------

    @tool
    def schema(self) -> str:
        """Lists the tables of the shop database and their columns."""
        return self.db.schema

    @tool
    def query(self, sql: str) -> str:
        """Runs one read-only SQL query (sqlite) on the shop database.

        Args:
            sql: One SELECT statement, e.g. SELECT COUNT(*) FROM orders.
        """
        return render(self.db.run(sql, self.max_rows, self.max_chars), self.max_chars)

    # ---- tasks -----------------------------------------------------------------------------------

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draws a question until it is in this env's split and has a usable answer (10,000 draws).

        Returns:
            ``template``, ``question``, ``sql`` (the reference query), ``kind`` and ``answer`` (what
            the reference query returns, as text).
        """
        for _ in range(10_000):
            name = self.templates[int(rng.integers(len(self.templates)))]
            template = TEMPLATES[name]
            values = PARAMS[template.param]
            x = values[int(rng.integers(len(values)))]
            question = template.question.format(x=x)
            if is_held_out(question, self.test_fraction) != (self.split == "test"):
                continue
            sql = template.sql.format(x=x)
            answer = self._reference_answer(sql)
            if answer is not None:
                task = {"template": name, "question": question, "sql": sql, "kind": template.kind}
                return {**task, "answer": answer}
        raise ValueError(
            f"split={self.split!r} has (almost) no questions with templates={list(self.templates)}, "
            f"test_fraction={self.test_fraction}; add templates or raise test_fraction"
        )

    def _reference_answer(self, sql: str) -> str | None:
        """What a reference query answers (memoized); None for no row, a NULL or too many rows."""
        if sql not in self._answers:
            result = self.db.reference(sql, MAX_LIST_ANSWER)
            usable = bool(result.rows) and not result.more and result.rows[0][0] is not None
            self._answers[sql] = answer_of(result) if usable else None
        return self._answers[sql]

    def prompt_messages(self, task: dict[str, Any]) -> Messages:
        """The one user message, e.g. ``Shop database: How many orders are paid?``."""
        return [{"role": "user", "content": f"Shop database: {task['question']}"}]

    def task_labels(self, task: dict[str, Any]) -> list[str]:
        """The template's name, then its skills, e.g. ``["orders_of", "join", "aggregate"]``."""
        return [task["template"], *TEMPLATES[task["template"]].tags]

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        """``{"answer": 1.0}`` and success when the answer matches (see :func:`is_correct`), else 0.0."""
        correct = is_correct(task["kind"], task["answer"], answer)
        return {"answer": 1.0 if correct else 0.0}, correct

    # ---- episode ---------------------------------------------------------------------------------

    def reset(  # type: ignore[override]  # a typed info dict
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, StepInfo]:
        """Starts an episode (see :meth:`ToolEnv.reset`) and draws the demonstration's decisions."""
        messages, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        self._bonus_paid = False
        self._demo_uses_tool = bool(self.np_random.random() < self.demo_tool_prob)
        self._demo_schema = bool(self.np_random.random() < self.demo_schema_prob)
        self._demo_guess = self._wrong_guess(self.task, self.np_random)
        return messages, info

    def step(self, action: str) -> tuple[Messages, float, bool, bool, StepInfo]:  # type: ignore[override]
        """Plays one turn (see :meth:`ToolEnv.step`); adds ``tool`` for the first successful query."""
        messages, reward, terminated, truncated, info = super().step(action)
        queried = any(r["ok"] and r["name"] == "query" for r in info["tool_calls"])
        if queried and not self._bonus_paid and self.tool_bonus > 0:
            self._bonus_paid = True
            info["reward_components"]["tool"] = self.tool_bonus
            reward = float(sum(info["reward_components"].values()))
        return messages, reward, terminated, truncated, info

    def on_tool_timeout(self, name: str) -> None:
        """Stops a query that outlived ToolEnv's ``tool_timeout_s`` (set above ``time_limit_s``)."""
        if name == "query":
            self.db.interrupt()

    def close(self) -> None:
        """Closes the database."""
        self.db.close()
        super().close()

    # ---- the scripted policy ---------------------------------------------------------------------

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """The scripted next turn: maybe ``schema``, then the reference query and its result or a guess.

        Whether it calls ``schema`` and whether it queries (else it answers a plausible wrong guess)
        was drawn at reset.

        Args:
            messages: The conversation so far.

        Returns:
            ``<tool_call>...</tool_call>`` or ``<answer>...</answer>``.
        """
        if self.task is None:
            raise RuntimeError("demonstration() needs reset() first")
        last = messages[-1] if messages else {}
        if last.get("role") == "tool" and last.get("name") == "query":
            return self.format_answer(answer_from_output(str(last.get("content", ""))))
        seen_schema = any(m.get("role") == "tool" and m.get("name") == "schema" for m in messages)
        if self._demo_schema and not seen_schema:
            return self.format_call("schema", {})
        if self._demo_uses_tool:
            return self.format_call("query", {"sql": self.task["sql"]})
        return self.format_answer(self._demo_guess)

    def _wrong_guess(self, task: dict[str, Any], rng: np.random.Generator) -> str:
        """A plausible wrong answer: a number off by a little, another name, a list with one error."""
        truth, template = task["answer"], TEMPLATES[task["template"]]
        if template.kind == "number":
            value = float(truth)
            offset = int(rng.integers(1, max(3, int(abs(value)) // 5) + 1))
            return format_number(
                value + offset if value - offset < 0 or rng.random() < 0.5 else value - offset
            )
        others = [n for n in PARAMS[template.pool] if _norm(n) not in _items(truth)]
        other = others[int(rng.integers(len(others)))]
        if template.kind == "name":
            return other
        items = truth.split(", ")
        if len(items) > 1 and rng.random() < 0.5:
            return ", ".join(items[:-1])
        return ", ".join([*items, other])
