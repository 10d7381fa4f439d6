"""Where the parts run: in this process (one event loop) or as Ray actors, behind one interface.

The algorithm asks a runtime to :meth:`place` each part (runners, buffer, learner) and drives
everything through the returned handles with :meth:`run`; nothing else differs between the modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from actorlearner.core.errors import ConfigError
from actorlearner.core.protocols import Handle
from actorlearner.runtime.handles import LocalHandle, RayHandle

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")


RAY_CONNECT_TIMEOUT_S = 5.0
"""How long :func:`check_ray_address` waits for a cluster to answer (``ray.init`` retries for minutes)."""

PLACEMENT_TIMEOUT_S = 60.0
"""Longest :meth:`RayRuntime.pack` waits for the cluster to reserve a placement group."""

RAY_ADDRESS_FORMS = "null (start a local Ray), 'auto' or 'host:port' / 'ray://host:port' of a running cluster"


def check_ray_address(address: str | None, key: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Checks, before ``ray.init``, that a cluster address answers within ``timeout_s``.

    ``ray.init(address=...)`` to an address nobody listens on retries for many minutes, so an
    address that is not ``None`` or ``"auto"`` is first opened as a plain TCP connection.

    Raises:
        ConfigError: One line naming ``key``: a malformed address, or one that does not answer.
    """
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{key}: {address!r} is not an address; allowed: {RAY_ADDRESS_FORMS}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"{key}: no Ray cluster answers at {address} within {timeout_s:g}s ({reason}); "
            f"allowed: {RAY_ADDRESS_FORMS}"
        ) from None


class Runtime(Protocol):
    """Places parts and runs the driver's coroutines."""

    local: bool

    def place(
        self,
        cls: Callable[..., T],
        kwargs: dict[str, Any],
        *,
        threaded: bool = False,
        num_cpus: float = 0,
        num_gpus: float = 0,
        max_concurrency: int | None = None,
        max_restarts: int = 0,
        resources: dict[str, float] | None = None,
        scheduling: Any = None,
    ) -> Handle[T]:
        """Creates ``cls(**kwargs)`` somewhere and returns its handle (typed by what ``cls`` makes).

        ``max_restarts``: times the runtime restarts the part (its constructor run again) after
        its process dies; in-process parts cannot die apart from the driver and ignore it.
        ``resources`` (custom resources) and ``scheduling`` (a slot from :meth:`pack`, or
        ``"SPREAD"``) say where on a cluster; in-process parts ignore them.
        """
        ...

    def pack(self, n: int, num_cpus: float, num_gpus: float, resources: dict[str, float]) -> list[Any]:
        """``n`` slots, packed onto as few nodes as possible, to pass as ``scheduling`` to :meth:`place`."""
        ...

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Runs a driver coroutine to completion on the runtime's event loop."""
        ...

    def shutdown(self) -> None:
        """Releases what the runtime started (never raises)."""
        ...


class LocalRuntime:
    """Every part in this process, all coroutines on one event loop."""

    local = True

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def place(
        self, cls: Callable[..., T], kwargs: dict[str, Any], *, threaded: bool = False, **_: Any
    ) -> Handle[T]:
        """Instantiates the part here; ``threaded`` parts run plain methods in their own thread."""
        return LocalHandle(cls(**kwargs), self.loop, threaded=threaded)

    def pack(self, n: int, num_cpus: float, num_gpus: float, resources: dict[str, float]) -> list[Any]:
        """In-process parts have no placement: ``n`` empty slots."""
        return [None] * n

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Runs ``coro`` (and, meanwhile, every task of the parts) until it completes."""
        return self.loop.run_until_complete(coro)

    def shutdown(self) -> None:
        """Cancels the parts' leftover tasks and closes the loop."""
        if self.loop.is_closed():
            return
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


def _system_config(preallocate: bool) -> dict[str, Any]:
    """Ray settings of a local runtime this process starts (a cluster keeps its own).

    Workers start at nice 0 (Ray's default is 15), the driver's priority, so that
    ``env_runners.niceness`` puts runners below the learner and the buffer: from 15 a runner could
    go only 4 steps lower.
    """
    config: dict[str, Any] = {"worker_niceness": 0}
    if preallocate:
        config["preallocate_plasma_memory"] = True
    return config


def _start_ray(**kwargs: Any) -> None:
    """``ray.init``; where Ray finds a cluster to join without an address, without ``_system_config``.

    Ray joins a cluster named by ``RAY_ADDRESS`` (set under Ray Jobs) or started with ``ray start``
    on this host even when no address is given, and refuses settings for a runtime it does not
    start: that cluster keeps its own (its workers' niceness, its object store), which is logged.
    """
    import ray

    try:
        ray.init(**kwargs)
    except ValueError as err:
        if "_system_config" not in str(err):
            raise
        logger.warning(
            "Ray joined an existing cluster, which keeps its own settings: %s not applied "
            "(at Ray's default worker niceness of 15, runners sit at most 4 nice steps below the learner)",
            kwargs["_system_config"],
        )
        ray.init(**{**kwargs, "_system_config": None})


class RayRuntime:
    """Each part a Ray actor; starts a local Ray runtime unless one is running or an address is given.

    Args:
        address: A Ray cluster to connect to (None: start a local one).
        num_cpus: CPUs of a local Ray runtime (None: all).
        object_store_mb: Object store of a local Ray runtime, in MiB (None: Ray's default).
        preallocate: A local runtime touches all of its object store's pages at start (Ray's
            ``preallocate_plasma_memory``), so that writing a large object faults no pages.
    """

    local = False

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        object_store_mb: int | None = None,
        preallocate: bool = False,
    ) -> None:
        import ray

        self.loop = asyncio.new_event_loop()
        self.owns_ray = False
        self.groups: list[Any] = []  # placement groups this runtime made
        if not ray.is_initialized():
            _start_ray(
                address=address,
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=True,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
                object_store_memory=object_store_mb * 2**20 if object_store_mb else None,
                _system_config=None if address else _system_config(preallocate),
            )
            self.owns_ray = True

    @staticmethod
    def resources() -> dict[str, float]:
        """The cluster's resources (``CPU``, ``GPU``...)."""
        import ray

        return dict(ray.cluster_resources())

    def place(
        self,
        cls: Callable[..., T],
        kwargs: dict[str, Any],
        *,
        threaded: bool = False,
        num_cpus: float = 0,
        num_gpus: float = 0,
        max_concurrency: int | None = None,
        max_restarts: int = 0,
        resources: dict[str, float] | None = None,
        scheduling: Any = None,
    ) -> Handle[T]:
        """Starts ``cls`` as a Ray actor with the given resources, placement and restart budget."""
        import ray

        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts}
        if max_concurrency is not None:
            options["max_concurrency"] = max_concurrency
        if resources:
            options["resources"] = dict(resources)
        if scheduling is not None:
            options["scheduling_strategy"] = scheduling
        return RayHandle(ray.remote(cls).options(**options).remote(**kwargs))

    def pack(self, n: int, num_cpus: float, num_gpus: float, resources: dict[str, float]) -> list[Any]:
        """A ``PACK`` placement group of ``n`` bundles; one slot per bundle.

        Learners are packed: their all-reduce is on the critical path of every update.

        Raises:
            ConfigError: If the cluster cannot hold the bundles within ``PLACEMENT_TIMEOUT_S``.
        """
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": num_cpus, "GPU": num_gpus, **resources}
        bundle = {k: v for k, v in bundle.items() if v > 0}
        if n == 1 or not bundle:  # one part needs no group; Ray refuses empty bundles
            return [None] * n
        group = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(group)
            raise ConfigError(
                f"learners.num_learners: {n} bundles of {bundle} could not be placed within "
                f"{PLACEMENT_TIMEOUT_S:g}s; the cluster has {ray.available_resources()}"
            )
        self.groups.append(group)
        return [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(n)]

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Runs a driver coroutine (awaiting ``ObjectRef`` s) on the driver's loop."""
        return self.loop.run_until_complete(coro)

    def shutdown(self) -> None:
        """Closes the driver's loop and stops Ray if this runtime started it (never raises)."""
        import ray

        try:
            if not self.loop.is_closed():
                self.loop.close()
            for group in self.groups:
                with contextlib.suppress(Exception):  # one group's failure must not keep Ray running
                    ray.util.remove_placement_group(group)
            if self.owns_ray:
                ray.shutdown()
        except Exception:  # shutting down must not mask the error that led here
            pass
