"""A learner group behind one handle: ``learners.num_learners`` data-parallel learners.

The algorithm holds one ``Handle[Learner]`` whatever the number of learners. Calls that change
the learners' state (an update, SFT steps, the RL start, demonstrations, a restored state) go to
every member, which train together (:mod:`actorlearner.learn.distributed`); calls that read it
(weights, version, state, export) go to rank 0 only, since every member holds the same weights:
the runners have one weights source. In a sharded group (``learners.sharding: fsdp2``) reading the
weights gathers the shards, a collective: those reads (:data:`GATHERS`) run on every member and
rank 0 answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from actorlearner.core.protocols import Handle
from actorlearner.core.protocols import Learner as LearnerProtocol
from actorlearner.runtime.handles import gather

READS = frozenset(
    {
        LearnerProtocol.get_weights.__name__,
        LearnerProtocol.get_version.__name__,
        LearnerProtocol.get_state.__name__,
        LearnerProtocol.save_pretrained.__name__,
        LearnerProtocol.rendezvous_address.__name__,
    }
)
"""Methods that only read a learner's state: rank 0 answers. Every other method (a custom learner
class's too) runs on every member, so that no member's state drifts from the others'."""

GATHERS = frozenset(
    {
        LearnerProtocol.get_weights.__name__,
        LearnerProtocol.get_state.__name__,
        LearnerProtocol.save_pretrained.__name__,
    }
)
"""Reads that gather the shards of a sharded group: every member runs them."""

JOIN_TIMEOUT_S = 120.0
"""Longest the members wait for each other when the group forms."""


class LearnerGroup:
    """Handles of ``N`` learners that act as one.

    Args:
        members: The learners' handles, rank 0 first.
        sharded: The members shard the model (:data:`GATHERS` run on every member).
    """

    def __init__(self, members: Sequence[Handle[LearnerProtocol]], sharded: bool = False) -> None:
        if not members:
            raise ValueError("a learner group needs at least one member")
        self.members = list(members)
        self.sharded = sharded

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Starts ``method`` on rank 0 (a reading call, :data:`READS`) or on every member.

        Returns:
            Rank 0's reference, or for a call on every member an awaitable of rank 0's result once
            every member has finished. A member's error is raised as soon as it occurs; the other
            members may then wait in a collective (up to the group's timeout): the run stops, and
            stopping kills every member. A gathering read of a sharded group (:data:`GATHERS`) runs
            on every member like a change; for ``get_weights`` the result is rank 0's reference, for
            the runners to fetch (a member that failed to take part fails its next call).
        """
        if self.sharded and method.__name__ in GATHERS:
            refs = [m.call(method, *args, **kwargs) for m in self.members]
            if method.__name__ == LearnerProtocol.get_weights.__name__:
                return refs[0]  # a reference the runners fetch; a failed member fails its next call
            return _rank0(gather(refs))
        if method.__name__ in READS:
            return self.members[0].call(method, *args, **kwargs)
        refs = [m.call(method, *args, **kwargs) for m in self.members]  # started here, awaited below
        return _rank0(gather(refs))

    @property
    def actor_ids(self) -> list[str]:
        """The members' Ray actor ids (for naming a dead member)."""
        return [str(getattr(m, "actor_id", "")) for m in self.members]

    @property
    def actor_id(self) -> str:
        """Rank 0's actor id."""
        return self.actor_ids[0]

    def kill(self, restart: bool = False) -> None:
        """Ends every member (never raises)."""
        for member in self.members:
            member.kill(restart)

    async def join(self, backend: str = "auto", timeout_s: float = JOIN_TIMEOUT_S) -> None:
        """Forms the torch.distributed group: rank 0 picks the address, all members join it.

        Raises:
            TimeoutError: If the group has not formed within ``timeout_s`` (plus a margin).
        """
        address = await self.members[0].call(LearnerProtocol.rendezvous_address)
        world = len(self.members)
        join = LearnerProtocol.join_group
        joins = [m.call(join, address, r, world, backend, timeout_s) for r, m in enumerate(self.members)]
        await asyncio.wait_for(gather(joins), timeout_s + 30)


async def _rank0(results: Awaitable[list[Any]]) -> Any:
    """Rank 0's result, once every member's call has returned."""
    return (await results)[0]
