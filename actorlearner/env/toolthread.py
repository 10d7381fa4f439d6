"""A reusable daemon thread for an env's tool calls, with a deadline per call.

Starting a thread per call costs ~0.3 ms (thread creation and the start handshake), as much as a
whole cheap tool step; a parked thread costs ~20 us per call. A call still running at its deadline
is abandoned together with its thread (a daemon: it never blocks interpreter exit, and it exits
once the stray call returns); the next call gets a new thread. An idle thread exits after
``idle_s`` seconds, so envs that are dropped leave no threads behind.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

_Reply = queue.SimpleQueue[tuple[bool, Any]]


class CallTimeout(Exception):
    """The call was still running at its deadline (it goes on in the abandoned thread)."""


class ToolThread:
    """Runs calls one at a time in one daemon thread, each with a deadline.

    Args:
        name: Thread name (shown in stack dumps).
        idle_s: An idle thread exits after this long; the next call starts one.
    """

    def __init__(self, name: str = "tool", idle_s: float = 10.0) -> None:
        self.name = name
        self.idle_s = idle_s
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], _Reply]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._serving = False
        self.abandoned = False

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """``fn()`` in the thread, in the caller's context; its result or its exception.

        Raises:
            CallTimeout: ``fn`` still ran after ``timeout`` seconds; this thread is then abandoned
                (``abandoned`` is True) and must not be called again.
            BaseException: Whatever ``fn`` raised.
        """
        if self.abandoned:
            raise RuntimeError("this ToolThread was abandoned after a timeout; make a new one")
        reply: _Reply = queue.SimpleQueue()
        context = contextvars.copy_context()
        with self._lock:
            self._calls.put((lambda: context.run(fn), reply))
            if not self._serving:
                self._serving = True
                threading.Thread(target=self._serve, name=self.name, daemon=True).start()
        try:
            ok, value = reply.get(timeout=timeout)
        except queue.Empty:
            self.abandoned = True
            raise CallTimeout from None
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while True:
            try:
                fn, reply = self._calls.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:  # a call put after this check finds _serving False and starts a thread
                    if self._calls.empty():
                        self._serving = False
                        return
                continue
            try:
                reply.put((True, fn()))
            except BaseException as err:  # handed to the caller's thread, re-raised there
                reply.put((False, err))
            del fn, reply  # an idle thread keeps no env or arguments alive
            if self.abandoned:
                return
