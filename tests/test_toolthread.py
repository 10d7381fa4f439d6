"""The env's reusable tool thread: one thread for many calls, abandoned at a deadline, gone when idle."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from actorlearner.env.toolthread import CallTimeout, ToolThread

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_calls_share_one_thread_and_see_the_callers_context() -> None:
    worker = ToolThread("tool:test")
    WHO.set("caller")
    seen = [worker.call(lambda: (threading.get_ident(), WHO.get()), timeout=5) for _ in range(3)]
    assert len({ident for ident, _ in seen}) == 1 and seen[0][0] != threading.get_ident()
    assert {who for _, who in seen} == {"caller"}


def test_an_exception_crosses_to_the_caller() -> None:
    def boom() -> None:
        raise KeyError("kaboom")

    with pytest.raises(KeyError, match="kaboom"):
        ToolThread().call(boom, timeout=5)


def test_a_call_past_its_deadline_abandons_the_thread() -> None:
    worker = ToolThread("tool:stray")
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        worker.call(lambda: release.wait(10), timeout=0.2)
    assert time.monotonic() - start < 2 and worker.abandoned
    with pytest.raises(RuntimeError, match="abandoned"):
        worker.call(lambda: 1, timeout=1)
    stray = [t for t in threading.enumerate() if t.name == "tool:stray" and t.daemon]
    assert stray  # still running the stray call, as a daemon that never blocks exit
    release.set()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in stray) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in stray)  # it exits once the stray call returns


def test_an_idle_thread_exits_and_the_next_call_starts_one() -> None:
    worker = ToolThread("tool:idle", idle_s=0.1)
    first = worker.call(threading.get_ident, timeout=5)
    deadline = time.monotonic() + 5
    while any(t.ident == first for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.ident == first for t in threading.enumerate())
    assert worker.call(lambda: 7, timeout=5) == 7
