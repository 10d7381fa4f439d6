"""Config section of the group replay buffer: priorities and filters decide what trains."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from actorlearner.core.config import CustomResources, Section
from actorlearner.core.registry import FILTERS, PRIORITIES


class ReplayConfig(Section):
    """The group-level prioritized replay buffer: priorities and filters decide what trains."""

    priority_fn: Any = Field("uniform", description="Registered name, 'pkg.mod:fn' path or callable.")
    filters: list[Any] = Field(
        default_factory=lambda: ["zero_variance"],
        description="Filter chain: names, {'name': ..., **options} or callables, in order.",
    )
    resources: CustomResources = Field(
        default_factory=dict,
        description="Ray custom resources the buffer actor needs (e.g. {'learn': 1}: places it on the "
        "nodes started with that resource).",
    )
    capacity: int = Field(1024, ge=1, description="Groups the buffer holds; the oldest go first.")
    max_reuse: int = Field(1, ge=1, description="Times a group may be sampled.")
    max_staleness: int = Field(4, ge=0, description="eta: evict groups older than this many versions.")
    alpha: float = Field(0.6, ge=0, description="Priority exponent.")
    beta: float = Field(0.4, ge=0, le=1, description="Initial importance-sampling exponent.")
    beta_anneal_iters: int = Field(200, ge=1, description="Iterations over which beta anneals to 1.")
    history_window: int = Field(8, ge=1, description="Groups of history kept per prompt.")
    max_histories: int = Field(
        100_000,
        ge=1,
        description=(
            "Prompt histories kept; the least recently seen prompt's is forgotten first. About 1 KB "
            "of the buffer's memory each; keep at least the dataset's size for DSCL."
        ),
    )

    @field_validator("priority_fn")
    @classmethod
    def _known_priority(cls, value: Any) -> Any:
        PRIORITIES.resolve(value)
        return value

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: list[Any]) -> list[Any]:
        for item in value:
            FILTERS.resolve(item)
        return value
