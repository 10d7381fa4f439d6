"""Checks of constructor knobs (env options, filter and priority options): one line naming the knob.

Every check raises :class:`~actorlearner.core.errors.ConfigError` (a ``ValueError``) whose message
names the knob, says what is allowed and shows the value given, e.g.
``test_fraction must be a number in (0, 1), got 1.0``. Config sections are validated by pydantic
(:mod:`actorlearner.config`); these checks are for the options that reach a constructor as keywords
(``environment.env_config``, ``{name: ..., **options}`` of filters and priority functions).

Numbers are ints and floats (numpy scalars too), never bools. A bound is inclusive unless
``open_low`` / ``open_high`` says otherwise; ``None`` means unbounded.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np

from actorlearner.core.errors import ConfigError


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (int, float or numpy scalar) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (int or numpy integer) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def describe_range(
    low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> str:
    """How a range reads in a message: ``>= 1``, ``> 0``, ``in [0, 1]``, ``in (0, 1)``."""
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{_fmt(low)}, {_fmt(high)}{')' if open_high else ']'}"
    if low is not None:
        return f"{'>' if open_low else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if open_high else '<='} {_fmt(high)}"
    return "finite"


def _fmt(bound: float) -> str:
    """A bound as written in a message: ints exactly, floats shortest (``0``, ``0.5``, ``inf``)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _within(value: float, low: float | None, high: float | None, open_low: bool, open_high: bool) -> bool:
    if low is not None and not (value > low if open_low else value >= low):
        return False
    return high is None or (value < high if open_high else value <= high)


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = False,
) -> float:
    """Checks that knob ``key`` is a number in a range; returns it as a float.

    Args:
        key: The knob's name, for the message.
        value: What was given.
        low: Lower bound (None: none).
        high: Upper bound (None: none; ``math.inf`` is a bound like any other).
        open_low: Whether ``low`` itself is excluded.
        open_high: Whether ``high`` itself is excluded.
        finite: Whether infinities are refused too (NaN always is).

    Raises:
        ConfigError: If the value is not a number or out of range.
    """
    ok = is_number(value) and not math.isnan(value) and (not finite or math.isfinite(value))
    if not (ok and _within(float(value), low, high, open_low, open_high)):
        what = "a finite number" if finite else "a number"
        where = describe_range(low, high, open_low=open_low, open_high=open_high)
        raise ConfigError(f"{key} must be {what}{'' if where == 'finite' else ' ' + where}, got {value!r}")
    return float(value)


def check_int(key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Checks that knob ``key`` is an int in ``[low, high]``; returns it.

    Raises:
        ConfigError: If the value is not an int (a bool or a float is not) or out of range.
    """
    if not (is_int(value) and _within(int(value), low, high, False, False)):
        where = describe_range(low, high)
        raise ConfigError(f"{key} must be an int{'' if where == 'finite' else ' ' + where}, got {value!r}")
    return int(value)


def check_positive(key: str, value: Any) -> float:
    """Checks that knob ``key`` is a number > 0 (``math.inf`` included); returns it as a float."""
    return check_number(key, value, 0.0, open_low=True)


def check_non_negative(key: str, value: Any) -> float:
    """Checks that knob ``key`` is a finite number >= 0; returns it as a float."""
    return check_number(key, value, 0.0, finite=True)


def check_fraction(key: str, value: Any, *, open_interval: bool = False) -> float:
    """Checks that knob ``key`` is a number in [0, 1] (in (0, 1) with ``open_interval``)."""
    return check_number(key, value, 0.0, 1.0, open_low=open_interval, open_high=open_interval)


def check_probability(key: str, value: Any) -> float:
    """Checks that knob ``key`` is a probability: a number in [0, 1]."""
    return check_fraction(key, value)


def check_choice(key: str, value: Any, choices: Collection[Any]) -> Any:
    """Checks that knob ``key`` is one of ``choices``; returns it.

    Raises:
        ConfigError: ``key must be one of 'a', 'b', got 'c'``.
    """
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_names(
    key: str, value: Any, choices: Iterable[str], *, comma_separated: bool = True
) -> tuple[str, ...]:
    """Checks a knob that names distinct items among ``choices``; returns the names in order.

    Args:
        key: The knob's name, for the message.
        value: A non-empty sequence of names, or (with ``comma_separated``) one string of
            comma-separated names.
        choices: The allowed names.
        comma_separated: Whether a string is split at commas (else a string is refused).

    Raises:
        ConfigError: If a name is unknown or repeated, or there is none.
    """
    allowed = list(choices)
    names = value
    if isinstance(value, str) and comma_separated:
        names = [n.strip() for n in value.split(",")]
    if (
        isinstance(names, (str, bytes))
        or not isinstance(names, Sequence)
        or not names
        or any(n not in allowed for n in names)
        or len(set(names)) != len(names)
    ):
        raise ConfigError(f"{key} must be distinct names among {allowed}, got {value!r}")
    return tuple(names)


def check_range(key: str, value: Any) -> tuple[float, float]:
    """Checks that knob ``key`` is a pair ``[low, high]`` of finite numbers with ``high > low``.

    Raises:
        ConfigError: If it is not such a pair.
    """
    try:
        low, high = value
    except (TypeError, ValueError):
        low = high = None
    ok = is_number(low) and is_number(high) and math.isfinite(low) and math.isfinite(high) and high > low
    if not ok:
        raise ConfigError(f"{key} must be a finite [low, high] with high > low, got {value!r}")
    return float(low), float(high)
