"""FunctionCalling: a seeded, BFCL-like generator of function-calling tasks over real typed tools.

A catalogue of small tools (weather, capitals and populations, arithmetic, unit and currency
conversion, a product table, a calendar) answers from fixed local tables, so every task has exact
ground-truth calls. Each task offers a few of the tools (``info["tools"]``) and belongs to one
category (``info["sub_tasks"] == [category]``):

* ``single``: one call of the one offered tool (``Weather in Paris in celsius?``);
* ``parallel``: two independent calls, written in one turn (``Capital of Peru? Add 3 and 4.``);
* ``multiple``: one call, with distractor tools offered beside the right one;
* ``irrelevance``: no offered tool applies; the right behaviour is to answer without calling;
* ``multi_turn``: a tool result is needed for the next call
  (``Population of the capital of Japan?``: ``get_capital`` then ``get_population("Tokyo")``).

Reward (docs/algorithms.md §2): ToolRL on the calls the model made over the whole episode versus
the ground truth, given on the final step as the components ``format`` (R_format: 1 when every turn
was well formed, every call ran and the episode ended with an answer), ``name``, ``keys`` and
``values`` (the signed parts of R_correct), so the reward of an episode is in [-3, 4]; a
malformed call anywhere makes the episode unparsable (R_correct = -3). The ToolEnv per-problem
format penalty is off by default (``format_penalty=0``; R_format already charges format problems)
and, when set, adds to the same ``format`` component. With ``otc_alpha > 0`` an ``otc`` component
``otc_alpha * r_tool * score / S_max`` rewards using as few calls as needed; the env knows the
optimal count, so ``n`` is the number of ground-truth calls. ``success`` means an exact match of
the calls (order free) and an answer; the answer's text is not scored.

Tasks are split by a fixed hash of the question text: a ``test_fraction`` of all questions is held
out, ``split="train"`` never draws them and ``split="test"`` draws only them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from actorlearner.core.knobs import (
    check_choice,
    check_fraction,
    check_int,
    check_names,
    check_number,
    check_positive,
)
from actorlearner.env.info import StepInfo
from actorlearner.env.parsing import ParsedCall, parse_turn
from actorlearner.env.toolenv import Messages, ToolEnv, tool
from envs import SPLITS
from envs.calculator import format_number
from envs.rewards import otc_reward, toolrl_match, toolrl_reward

CATEGORIES = ("single", "parallel", "multiple", "irrelevance", "multi_turn")
"""Task categories, in the order of the sub-task labels."""

NO_TOOL_ANSWER = "No tool applies."
"""The demonstration's answer to an irrelevance task."""

# ---- the local tables the tools read ---------------------------------------------------------------

CITIES: dict[str, tuple[str, int, float, str]] = {
    "Paris": ("France", 18, 2.1, "sunny"),
    "Tokyo": ("Japan", 22, 14.0, "cloudy"),
    "Lima": ("Peru", 19, 10.0, "cloudy"),
    "Cairo": ("Egypt", 31, 10.1, "sunny"),
    "Oslo": ("Norway", 7, 0.7, "rainy"),
    "Nairobi": ("Kenya", 24, 4.4, "sunny"),
    "Ottawa": ("Canada", 12, 1.0, "rainy"),
    "Rome": ("Italy", 21, 2.8, "sunny"),
    "Madrid": ("Spain", 23, 3.3, "sunny"),
    "Berlin": ("Germany", 15, 3.7, "cloudy"),
}
"""City -> (country, temperature in celsius, population in millions, sky)."""
CAPITALS = {country: city for city, (country, *_rest) in CITIES.items()}
"""Country -> capital city."""
PRODUCTS = {"laptop": 999, "phone": 599, "tablet": 449, "camera": 349, "headphones": 199, "watch": 249}
"""Product -> price in USD."""
USD_RATES = {"USD": 1.0, "EUR": 0.9, "GBP": 0.8, "JPY": 150.0}
"""Currency -> units per US dollar."""
EVENTS = {
    "standup": "2026-03-04",
    "dentist": "2026-03-10",
    "review": "2026-03-17",
    "launch": "2026-04-01",
    "party": "2026-05-09",
}
"""Calendar event title -> date (ISO)."""
_LINEAR_UNITS = {"km": ("length", 1000.0), "mi": ("length", 1609.344), "m": ("length", 1.0)}
_LINEAR_UNITS |= {"ft": ("length", 0.3048), "kg": ("mass", 1.0), "lb": ("mass", 0.45359237)}
UNITS = (*_LINEAR_UNITS, "celsius", "fahrenheit")
"""Units :func:`convert_units` knows."""
_ARITHMETIC_TOOLS = {"add", "multiply"}
_NUMERIC_TOOLS = {"add", "multiply", "convert_units", "convert_currency"}
_SMALL_TALK = ("Tell me a joke.", "Who wrote Hamlet?", "Say hello in French.", "What is love?", "Hi!")


# ---- the tools' logic (pure functions; the generator computes ground truth with them) ------------


def weather(city: str, unit: str) -> str:
    """``"18 celsius, sunny"``; raises KeyError/ValueError for an unknown city or unit."""
    _, celsius, _, sky = CITIES[city]
    if unit not in ("celsius", "fahrenheit"):
        raise ValueError(f"unknown unit {unit!r}; use celsius or fahrenheit")
    temp = celsius if unit == "celsius" else celsius * 9 / 5 + 32
    return f"{format_number(temp)} {unit}, {sky}"


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Converts between units of length, mass or temperature; raises ValueError otherwise."""
    temps = ("celsius", "fahrenheit")
    if from_unit in temps and to_unit in temps:
        if from_unit == to_unit:
            return format_number(round(value, 4))
        out = value * 9 / 5 + 32 if from_unit == "celsius" else (value - 32) * 5 / 9
        return format_number(round(out, 4))
    if from_unit not in _LINEAR_UNITS or to_unit not in _LINEAR_UNITS:
        raise ValueError(f"unknown unit; units: {', '.join(UNITS)}")
    (kind_a, a), (kind_b, b) = _LINEAR_UNITS[from_unit], _LINEAR_UNITS[to_unit]
    if kind_a != kind_b:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    return format_number(round(value * a / b, 4))


def convert_currency(amount: float, from_currency: str, to_currency: str) -> str:
    """Converts money at fixed rates, to 2 decimals; raises KeyError for an unknown currency."""
    return format_number(round(amount / USD_RATES[from_currency] * USD_RATES[to_currency], 2))


def weekday(date: str) -> str:
    """The weekday of an ISO date, e.g. ``"Wednesday"``; raises ValueError on a bad date."""
    return dt.date.fromisoformat(date).strftime("%A")


def add_days(date: str, days: int) -> str:
    """The ISO date ``days`` after ``date``."""
    return (dt.date.fromisoformat(date) + dt.timedelta(days=int(days))).isoformat()


def search_products(max_price: float) -> str:
    """Comma-separated products costing at most ``max_price`` USD, cheapest first, or ``"none"``."""
    hits = sorted((p, n) for n, p in PRODUCTS.items() if p <= max_price)
    return ", ".join(n for _, n in hits) or "none"


# ---- task templates ------------------------------------------------------------------------------

Call = dict[str, Any]
Template = Callable[[np.random.Generator], tuple[str, list[Call]]]


def _call(name: str, **arguments: Any) -> Call:
    return {"name": name, "arguments": arguments}


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _num(rng: np.random.Generator) -> int:
    return int(rng.integers(2, 100))


def _t_weather(rng: np.random.Generator) -> tuple[str, list[Call]]:
    city, unit = _pick(rng, list(CITIES)), _pick(rng, ("celsius", "fahrenheit"))
    return f"Weather in {city} in {unit}?", [_call("get_weather", city=city, unit=unit)]


def _t_capital(rng: np.random.Generator) -> tuple[str, list[Call]]:
    country = _pick(rng, list(CAPITALS))
    return f"Capital of {country}?", [_call("get_capital", country=country)]


def _t_population(rng: np.random.Generator) -> tuple[str, list[Call]]:
    city = _pick(rng, list(CITIES))
    return f"Population of {city}?", [_call("get_population", city=city)]


def _t_add(rng: np.random.Generator) -> tuple[str, list[Call]]:
    a, b = _num(rng), _num(rng)
    return f"Add {a} and {b}.", [_call("add", a=a, b=b)]


def _t_multiply(rng: np.random.Generator) -> tuple[str, list[Call]]:
    a, b = _num(rng), _num(rng)
    return f"Multiply {a} by {b}.", [_call("multiply", a=a, b=b)]


def _t_units(rng: np.random.Generator) -> tuple[str, list[Call]]:
    src, dst = _pick(
        rng, (("km", "mi"), ("mi", "km"), ("kg", "lb"), ("lb", "kg"), ("m", "ft"), ("celsius", "fahrenheit"))
    )
    value = _num(rng)
    return f"Convert {value} {src} to {dst}.", [
        _call("convert_units", value=value, from_unit=src, to_unit=dst)
    ]


def _t_currency(rng: np.random.Generator) -> tuple[str, list[Call]]:
    src, dst = (str(c) for c in rng.choice(list(USD_RATES), size=2, replace=False))
    amount = _num(rng)
    question = f"Convert {amount} {src} to {dst}."
    return question, [_call("convert_currency", amount=amount, from_currency=src, to_currency=dst)]


def _t_price(rng: np.random.Generator) -> tuple[str, list[Call]]:
    product = _pick(rng, list(PRODUCTS))
    return f"Price of a {product}?", [_call("get_price", product=product)]


def _t_search(rng: np.random.Generator) -> tuple[str, list[Call]]:
    limit = int(rng.integers(2, 11)) * 100
    return f"Products under {limit} USD?", [_call("search_products", max_price=limit)]


def _t_event(rng: np.random.Generator) -> tuple[str, list[Call]]:
    title = _pick(rng, list(EVENTS))
    return f"When is the {title}?", [_call("get_event_date", title=title)]


def _t_weekday(rng: np.random.Generator) -> tuple[str, list[Call]]:
    date = add_days("2026-01-01", int(rng.integers(0, 365)))
    return f"What weekday is {date}?", [_call("get_weekday", date=date)]


SINGLE_TEMPLATES: tuple[Template, ...] = (
    _t_weather,
    _t_capital,
    _t_population,
    _t_add,
    _t_multiply,
    _t_units,
    _t_currency,
    _t_price,
    _t_search,
    _t_event,
    _t_weekday,
)
"""One-call tasks (used by ``single``, ``parallel``, ``multiple`` and ``irrelevance``)."""


def _m_capital_weather(rng: np.random.Generator) -> tuple[str, list[Call]]:
    country, unit = _pick(rng, list(CAPITALS)), _pick(rng, ("celsius", "fahrenheit"))
    city = CAPITALS[country]
    calls = [_call("get_capital", country=country), _call("get_weather", city=city, unit=unit)]
    return f"Weather in the capital of {country} in {unit}?", calls


def _m_capital_population(rng: np.random.Generator) -> tuple[str, list[Call]]:
    country = _pick(rng, list(CAPITALS))
    calls = [_call("get_capital", country=country), _call("get_population", city=CAPITALS[country])]
    return f"Population of the capital of {country}?", calls


def _m_event_weekday(rng: np.random.Generator) -> tuple[str, list[Call]]:
    title = _pick(rng, list(EVENTS))
    calls = [_call("get_event_date", title=title), _call("get_weekday", date=EVENTS[title])]
    return f"Weekday of the {title}?", calls


def _m_event_add_days(rng: np.random.Generator) -> tuple[str, list[Call]]:
    title, days = _pick(rng, list(EVENTS)), int(rng.integers(2, 31))
    calls = [_call("get_event_date", title=title), _call("add_days", date=EVENTS[title], days=days)]
    return f"Date {days} days after the {title}?", calls


def _m_price_currency(rng: np.random.Generator) -> tuple[str, list[Call]]:
    product, currency = _pick(rng, list(PRODUCTS)), _pick(rng, ("EUR", "GBP", "JPY"))
    calls = [
        _call("get_price", product=product),
        _call("convert_currency", amount=PRODUCTS[product], from_currency="USD", to_currency=currency),
    ]
    return f"Price of a {product} in {currency}?", calls


def _m_multiply_add(rng: np.random.Generator) -> tuple[str, list[Call]]:
    a, b, c = _num(rng), _num(rng), _num(rng)
    return f"{a} times {b}, plus {c}?", [_call("multiply", a=a, b=b), _call("add", a=a * b, b=c)]


MULTI_TURN_TEMPLATES: tuple[Template, ...] = (
    _m_capital_weather,
    _m_capital_population,
    _m_event_weekday,
    _m_event_add_days,
    _m_price_currency,
    _m_multiply_add,
)
"""Two-call chains: the second call's arguments come from the first call's result."""


def is_held_out(question: str, test_fraction: float) -> bool:
    """Whether ``question`` belongs to the test split (a fixed SHA-256 hash, not ``hash()``)."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


class FunctionCallingInfo(StepInfo, total=False):
    """FunctionCalling's ``info``: :class:`~actorlearner.env.info.StepInfo` and, on the final step, more.

    Attributes:
        toolrl: ToolRL's full breakdown of the episode's calls (:func:`envs.rewards.toolrl_reward`:
            ``format``, ``name``, ``keys``, ``values``, ``correct`` and ``total``).
        ground_truth: The expected calls, ``{"name", "arguments"}`` each.
    """

    toolrl: dict[str, float]
    ground_truth: list[dict[str, Any]]


def _tool_names(calls: Sequence[Call]) -> list[str]:
    return list(dict.fromkeys(c["name"] for c in calls))


class FunctionCalling(ToolEnv):
    """BFCL-like function calling over a catalogue of real tools, rewarded with ToolRL.

    See the module docstring for the categories, the reward and the split.

    Args:
        categories: Categories to draw from (uniformly): a sequence of names among
            :data:`CATEGORIES`, or a comma-separated string.
        split: ``"train"`` draws only questions outside the held-out set, ``"test"`` only inside.
        test_fraction: Fraction of questions held out, in (0, 1).
        distractors: Extra (wrong) tools offered in a ``multiple`` task, >= 1.
        otc_alpha: Weight of the OTC tool-efficiency component; 0 (default) leaves it out.
        otc_c: OTC's smoothing constant for tasks needing no call, > 0.
        **kwargs: :class:`~actorlearner.env.toolenv.ToolEnv` knobs (``max_turns``, ``format_penalty``...).

    Raises:
        ValueError: If an argument is invalid (the message names the key and its allowed values).
    """

    max_turns = 4
    format_penalty = 0.0

    def __init__(
        self,
        *,
        categories: Sequence[str] | str = CATEGORIES,
        split: str = "train",
        test_fraction: float = 0.1,
        distractors: int = 2,
        otc_alpha: float = 0.0,
        otc_c: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.categories = check_names("categories", categories, CATEGORIES)
        check_choice("split", split, SPLITS)
        check_fraction("test_fraction", test_fraction, open_interval=True)
        check_int("distractors", distractors, 1, 6)
        check_number("otc_alpha", otc_alpha, 0.0)
        check_positive("otc_c", otc_c)
        super().__init__(**kwargs)
        self.split, self.test_fraction, self.distractors = split, float(test_fraction), distractors
        self.otc_alpha, self.otc_c = float(otc_alpha), float(otc_c)
        self._episode_reset()
        self.sample_task(np.random.default_rng(0))  # fails now, not at reset, if the split is empty

    # ---- the tools -------------------------------------------------------------------------------

    @tool
    def get_weather(self, city: str, unit: str) -> str:
        """Current temperature and sky of a city.

        Args:
            city: The city, e.g. Paris.
            unit: The temperature unit. (choices: ["celsius", "fahrenheit"])
        """
        return weather(city, unit)

    @tool
    def get_capital(self, country: str) -> str:
        """Capital city of a country.

        Args:
            country: The country, e.g. France.
        """
        return CAPITALS[country]

    @tool
    def get_population(self, city: str) -> str:
        """Population of a city.

        Args:
            city: The city, e.g. Paris.
        """
        return f"{format_number(CITIES[city][2])} million"

    @tool
    def add(self, a: float, b: float) -> str:
        """Adds two numbers.

        Args:
            a: First number.
            b: Second number.
        """
        return format_number(a + b)

    @tool
    def multiply(self, a: float, b: float) -> str:
        """Multiplies two numbers.

        Args:
            a: First number.
            b: Second number.
        """
        return format_number(a * b)

    @tool
    def convert_units(self, value: float, from_unit: str, to_unit: str) -> str:
        """Converts a length, mass or temperature.

        Args:
            value: The amount.
            from_unit: Unit of value: km, mi, m, ft, kg, lb, celsius or fahrenheit.
            to_unit: Unit wanted.
        """
        return convert_units(value, from_unit, to_unit)

    @tool
    def convert_currency(self, amount: float, from_currency: str, to_currency: str) -> str:
        """Converts money between USD, EUR, GBP and JPY.

        Args:
            amount: The amount.
            from_currency: Currency code of amount, e.g. USD.
            to_currency: Currency code wanted.
        """
        return convert_currency(amount, from_currency, to_currency)

    @tool
    def get_price(self, product: str) -> str:
        """Price of a product in USD.

        Args:
            product: The product, e.g. laptop.
        """
        return format_number(PRODUCTS[product])

    @tool
    def search_products(self, max_price: float) -> str:
        """Lists the products costing at most a price.

        Args:
            max_price: Highest price in USD.
        """
        return search_products(max_price)

    @tool
    def get_event_date(self, title: str) -> str:
        """Date of a calendar event.

        Args:
            title: The event, e.g. standup.
        """
        return EVENTS[title]

    @tool
    def get_weekday(self, date: str) -> str:
        """Weekday of a date.

        Args:
            date: The date as YYYY-MM-DD.
        """
        return weekday(date)

    @tool
    def add_days(self, date: str, days: int) -> str:
        """Date some days after a date.

        Args:
            date: The date as YYYY-MM-DD.
            days: Days to add.
        """
        return add_days(date, days)

    # ---- tasks -----------------------------------------------------------------------------------

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draws a task until its question is in this env's split (at most 10,000 draws).

        Returns:
            ``category``, ``question``, ``tools`` (names offered, in order), ``turns`` (the
            ground-truth calls grouped by the turn the demonstration makes them in) and ``calls``
            (all ground-truth calls).
        """
        for _ in range(10_000):
            category = _pick(rng, self.categories)
            question, turns, tools = self._draw(category, rng)
            if is_held_out(question, self.test_fraction) == (self.split == "test"):
                calls = [c for t in turns for c in t]
                return {
                    "category": category,
                    "question": question,
                    "tools": tools,
                    "turns": turns,
                    "calls": calls,
                }
        raise ValueError(
            f"split={self.split!r} has (almost) no tasks with categories={list(self.categories)}, "
            f"test_fraction={self.test_fraction}; raise test_fraction"
        )

    def _draw(self, category: str, rng: np.random.Generator) -> tuple[str, list[list[Call]], list[str]]:
        """A question, its ground-truth calls by turn and the offered tools, for one category."""
        if category == "multi_turn":
            question, calls = _pick(rng, MULTI_TURN_TEMPLATES)(rng)
            return question, [[c] for c in calls], _tool_names(calls)
        if category == "parallel":
            first, second = _pick(rng, SINGLE_TEMPLATES), _pick(rng, SINGLE_TEMPLATES)
            (q1, c1), (q2, c2) = first(rng), second(rng)
            while q2 == q1:
                q2, c2 = second(rng)
            return f"{q1} {q2}", [c1 + c2], _tool_names(c1 + c2)
        question, calls = _pick(rng, SINGLE_TEMPLATES)(rng)
        needed = _tool_names(calls)
        others = [t for t in self.tool_names if t not in needed]
        if category == "single":
            return question, [calls], needed
        if category == "multiple":
            extra = [str(t) for t in rng.choice(others, size=self.distractors, replace=False)]
            return question, [calls], [str(t) for t in rng.permutation(needed + extra)]
        # irrelevance: a question no offered tool serves (a tool task without its tool, or small talk);
        # arithmetic tools could serve a numeric question, so they are not offered with one
        if rng.random() < 0.25:
            question = _pick(rng, _SMALL_TALK)
        elif set(needed) & _NUMERIC_TOOLS:
            others = [t for t in others if t not in _ARITHMETIC_TOOLS]
        return question, [], [str(t) for t in rng.choice(others, size=int(rng.integers(1, 3)), replace=False)]

    def prompt_messages(self, task: dict[str, Any]) -> Messages:
        """The one user message: the task's short question."""
        return [{"role": "user", "content": task["question"]}]

    def task_labels(self, task: dict[str, Any]) -> list[str]:
        """``[category]``."""
        return [task["category"]]

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        """Nothing: the episode's calls are scored when it ends (see :meth:`step`)."""
        return {}, False

    # ---- episode ---------------------------------------------------------------------------------

    def _episode_reset(self) -> None:
        self._calls: list[Call] = []
        self._num_calls = 0
        self._unparsable = False
        self._bad_format = False

    def reset(  # type: ignore[override]  # a typed info dict
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, StepInfo]:
        """Starts an episode (see :meth:`ToolEnv.reset`); ``info["tools"]`` holds the offered tools."""
        messages, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        schemas = {s["function"]["name"]: s for s in info["tools"]}
        info["tools"] = [schemas[name] for name in self.task["tools"]]
        self._episode_reset()
        return messages, info

    def step(  # type: ignore[override]  # a typed info dict
        self, action: str
    ) -> tuple[Messages, float, bool, bool, FunctionCallingInfo]:
        """Plays one turn (see :meth:`ToolEnv.step`); the final step adds the ToolRL components.

        The final step's ``info`` also holds ``sub_task_scores`` and the keys of
        :class:`FunctionCallingInfo` (``toolrl``, ``ground_truth``).
        """
        turn = parse_turn(action, self._parse)
        messages, reward, terminated, truncated, info = super().step(action)
        self._calls.extend(_as_call(c) for c in turn.calls if c.error is None)
        self._num_calls += len(turn.calls)
        self._unparsable |= any(c.error is not None for c in turn.calls)
        self._bad_format |= bool(turn.errors) or turn.void or not all(r["ok"] for r in info["tool_calls"])
        if not (terminated or truncated):
            return messages, reward, terminated, truncated, cast(FunctionCallingInfo, info)  # no extras yet
        assert self.task is not None
        truth = self.task["calls"]
        predicted = None if self._unparsable else self._calls
        parts = toolrl_reward(predicted, truth, format_ok=terminated and not self._bad_format)
        components = info["reward_components"]
        components.pop("answer", None)
        for key in ("format", "name", "keys", "values"):
            components[key] = components.get(key, 0.0) + parts[key]
        if self.otc_alpha > 0:
            m = toolrl_match(predicted or [], truth)
            fraction = 0.0 if predicted is None else m.score / m.s_max
            components["otc"] = otc_reward(self._num_calls, len(truth), self.otc_c, self.otc_alpha, fraction)
        final: FunctionCallingInfo = {
            **info,
            "success": bool(terminated and predicted is not None and parts["correct"] >= 3.0 - 1e-9),
            "toolrl": parts,
            "sub_task_scores": _sub_task_scores(predicted, truth, parts["format"]),
            "ground_truth": [dict(c) for c in truth],
        }
        return messages, float(sum(components.values())), terminated, truncated, final

    def _check_call(self, call: ParsedCall) -> str | None:
        """Also rejects a call to a tool the task does not offer (as an unknown tool)."""
        if self.task is not None and call.name in self._tools and call.name not in self.task["tools"]:
            return f"unknown tool {call.name!r}; tools: {', '.join(self.task['tools']) or 'none'}"
        return super()._check_call(call)

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        """The scripted next turn: the ground-truth calls of this turn, then an answer.

        Parallel calls go in one turn, chained calls in one turn each; the answer repeats the
        outputs of the last tool turn (or :data:`NO_TOOL_ANSWER` when no tool applies).

        Args:
            messages: The conversation so far.

        Returns:
            ``<tool_call>...</tool_call>`` blocks or ``<answer>...</answer>``.
        """
        if self.task is None:
            raise RuntimeError("demonstration() needs reset() first")
        done = sum(1 for m in messages if m.get("role") == "assistant")
        turns = self.task["turns"]
        if done < len(turns):
            return "".join(self.format_call(c["name"], c["arguments"]) for c in turns[done])
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        outputs = [str(m.get("content", "")) for m in messages[last + 1 :] if m.get("role") == "tool"]
        return self.format_answer("; ".join(outputs) if outputs and turns else NO_TOOL_ANSWER)


def _as_call(call: ParsedCall) -> Call:
    return {"name": call.name, "arguments": dict(call.arguments)}


def _sub_task_scores(
    predicted: list[dict[str, Any]] | None, truth: Any, format_score: float
) -> dict[str, float]:
    """ToolRL's parts normalized to [0, 1] (DSCL's curriculum sub-tasks); unparsable scores 0.

    With no ground-truth call (irrelevance), ``keys`` and ``values`` are 1 only when nothing was
    called: a wrong call must not count as mastery of the arguments.
    """
    if predicted is None:
        return {"format": float(format_score), "name": 0.0, "keys": 0.0, "values": 0.0}
    m = toolrl_match(predicted, truth)
    empty = 1.0 if m.max_keys else float(not predicted)  # no ground-truth call: right iff none made
    return {
        "format": float(format_score),
        "name": m.name,
        "keys": m.keys / m.max_keys if m.max_keys else empty,
        "values": m.values / m.max_values if m.max_values else empty,
    }
