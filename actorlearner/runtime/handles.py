"""Handles: one way to call a part's method, whether it lives in this process or on Ray.

``handle.call(Protocol.method, *args)`` returns an awaitable reference at once (a Ray ``ObjectRef``
or an asyncio task); a reference passed as an argument of another call is resolved where the call
runs, so data goes from actor to actor without passing through the driver. The method is named by
the protocol's function, so mypy checks the arguments and the result against the protocol.

In-process (``num_env_runners=0``) the same coroutines run on the driver's one event loop, as Ray
runs them on each async actor's loop: coroutine methods are awaited on the loop, plain methods of
a *threaded* part (the learner, which computes for seconds) run in its own single worker thread,
like a Ray actor's thread, and plain methods of other parts run inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class LocalHandle(Generic[T]):
    """A part in this process, called on the driver's event loop.

    Args:
        obj: The part.
        loop: The event loop every in-process part shares.
        threaded: Run plain (non-async) methods in the part's own worker thread.
    """

    def __init__(self, obj: T, loop: asyncio.AbstractEventLoop, threaded: bool = False) -> None:
        self.obj = obj
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="part") if threaded else None

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Schedules the call as a task on the loop (it runs while the loop runs)."""
        return self._loop.create_task(self._run(method.__name__, args, kwargs))

    async def _run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args = tuple([await a if inspect.isawaitable(a) else a for a in args])  # as Ray: top-level refs
        kwargs = {k: await v if inspect.isawaitable(v) else v for k, v in kwargs.items()}
        fn = getattr(self.obj, name)
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        if self._executor is not None:
            return await self._loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        return fn(*args, **kwargs)

    def kill(self, restart: bool = False) -> None:
        """Releases the part's thread (an in-process part is never restarted)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class RayHandle(Generic[T]):
    """A Ray actor; picklable, so a runner can hold the buffer's handle.

    Args:
        actor: The Ray actor handle.
    """

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """``actor.<method>.remote(*args)``: an ``ObjectRef``, awaitable on any event loop."""
        return getattr(self.actor, method.__name__).remote(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def actor_id(self) -> str:
        """The actor's id in hex, as Ray's actor errors name it."""
        return str(self.actor._actor_id.hex())

    def kill(self, restart: bool = False) -> None:
        """``ray.kill`` (never raises); with ``restart``, Ray restarts the actor if it has restarts left."""
        import ray

        with contextlib.suppress(Exception):  # already dead, or Ray is down
            ray.kill(self.actor, no_restart=not restart)


async def gather(refs: list[Awaitable[R]]) -> list[R]:
    """Awaits references in order."""
    return list(await asyncio.gather(*refs))


def is_part_death(err: BaseException) -> bool:
    """Whether ``err`` says a part's process died or cannot be reached (Ray's actor errors)."""
    try:
        from ray.exceptions import RayActorError
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return isinstance(err, RayActorError)


def is_part_unavailable(err: BaseException) -> bool:
    """Whether ``err`` says a part is being restarted (Ray's ``ActorUnavailableError``): try later."""
    try:
        from ray.exceptions import ActorUnavailableError
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return isinstance(err, ActorUnavailableError)
