"""Published weights as one contiguous buffer: what a learner sends to the runners.

A learner whose parameters live in one flat tensor (:func:`actorlearner.learn.flat.flatten_parameters`)
publishes :class:`PackedWeights`: that buffer plus a layout, read as a ``Mapping`` from parameter
name to a numpy view. Ray writes one large buffer into its object store about twice as fast as the
same bytes as a hundred separate arrays (it copies a large buffer with several threads;
``benchmarks/weight_sync.py``, docs/cluster.md), and tied parameters travel once. Readers need
nothing new: every name maps to an ``np.ndarray`` as before, a view of the one buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

Layout = tuple[tuple[str, int, tuple[int, ...]], ...]
"""``(name, offset, shape)`` per packed entry; offsets and sizes count elements of the buffer's dtype."""


class PackedWeights(Mapping[str, np.ndarray]):
    """Named weights stored in one 1-D array (plus any that are not in it).

    Args:
        flat: The buffer; every packed entry is a contiguous run of it.
        layout: Where each packed name lives in ``flat``.
        extra: Entries outside the buffer (e.g. a parameter of another dtype), as their own arrays.

    Raises:
        ValueError: If ``flat`` is not 1-D, an entry falls outside it, or a name appears twice.
    """

    def __init__(
        self, flat: np.ndarray, layout: Layout, extra: Mapping[str, np.ndarray] | None = None
    ) -> None:
        if flat.ndim != 1:
            raise ValueError(f"PackedWeights: the buffer must be 1-D, got shape {flat.shape}")
        self.flat = flat
        self.layout = tuple((str(n), int(o), tuple(int(d) for d in s)) for n, o, s in layout)
        self.extra = dict(extra or {})
        self._index = {name: (offset, _size(shape), shape) for name, offset, shape in self.layout}
        if len(self._index) != len(self.layout) or self._index.keys() & self.extra.keys():
            raise ValueError("PackedWeights: a name appears twice")
        for name, (offset, size, shape) in self._index.items():
            if offset < 0 or offset + size > flat.size:
                raise ValueError(f"PackedWeights: {name!r} at {offset} {shape} is past {flat.size} elements")

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.extra:
            return self.extra[name]
        offset, size, shape = self._index[name]
        return self.flat[offset : offset + size].reshape(shape)

    def __iter__(self) -> Iterator[str]:
        yield from self._index
        yield from self.extra

    def __len__(self) -> int:
        return len(self._index) + len(self.extra)

    def buffers(self) -> list[np.ndarray]:
        """The arrays actually published: the buffer (tied names share it), then the extras."""
        return [self.flat, *self.extra.values()]

    @property
    def nbytes(self) -> int:
        """Bytes published: the sum over :meth:`buffers`."""
        return sum(int(b.nbytes) for b in self.buffers())

    def __reduce__(self) -> tuple[Any, ...]:
        # The buffer as one pickle-5 out-of-band array: Ray stores it with one (threaded) copy.
        return (PackedWeights, (self.flat, self.layout, self.extra))

    def __repr__(self) -> str:
        return f"PackedWeights({len(self)} entries, {self.nbytes / 2**20:.1f} MiB, dtype {self.flat.dtype})"


def _size(shape: tuple[int, ...]) -> int:
    """Elements of an array of ``shape``."""
    return int(np.prod(shape, dtype=np.int64))
