"""Handing memory the C allocator keeps free back to the system.

A process that allocates many short-lived buffers from many threads (a runner: key/value caches
of every batch, tool calls in a thread pool) ends up with glibc heaps full of free holes between
live blocks. glibc returns memory to the system only from the top of a heap, so the process's
resident memory stays high although little of it is in use: in a runner whose private memory had
grown 27% in ten minutes of RL, one ``malloc_trim(0)`` gave back 200 MB (docs/faults.md, "Memory
over long runs"). ``malloc_trim`` also releases the free pages inside each heap.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where it has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_heap() -> bool:
    """Returns the free memory of this process's C heaps to the system (glibc's ``malloc_trim(0)``).

    Safe to call from any thread at any time (glibc locks each heap); it costs a walk over the
    heaps, and pages handed back are faulted in again when next used.

    Returns:
        Whether any memory was released (always False where the C library has no
        ``malloc_trim``).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
