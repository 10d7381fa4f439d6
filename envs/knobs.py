"""Validation of the knobs the built-in envs share: one-line ``ValueError`` naming the key."""

from __future__ import annotations

from typing import Any

SPLITS = ("train", "test")


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_split(split: Any, test_fraction: Any) -> None:
    """Checks ``split`` (``"train"`` or ``"test"``) and ``test_fraction`` (a number in (0, 1))."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not is_number(test_fraction) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")


def check_probability(key: str, value: Any) -> None:
    """Checks that knob ``key`` is a number in [0, 1]."""
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be a number in [0, 1], got {value!r}")
