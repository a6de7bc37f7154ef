"""What the worker asks of glibc's allocator, so that its RSS follows its state rather
than the peaks of its batches.

No library exposes ``mallopt`` or ``malloc_trim``: both are called through ctypes, on the
interpreter's own C library, and only where that is glibc (elsewhere they do nothing).
"""

from __future__ import annotations

import ctypes
import functools
import platform
from typing import Any

__all__ = ["trim_malloc", "tune_malloc"]

#: glibc's mallopt parameter for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> Any | None:
    """The interpreter's C library, if it is glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return libc


def tune_malloc(mmap_threshold: int) -> bool:
    """Fix glibc's mmap threshold at ``mmap_threshold`` bytes; False where that cannot
    be done (another C library, or 0: leave it).

    Why: glibc starts at 128 KiB but raises the threshold to the size of each mapped
    block freed (up to 32 MiB), so after the first fetch response or batch is freed the
    next ones come from the heap. Table values written meanwhile land above them, and
    the freed space stays resident. Measured on the bench (README, "Benchmarks"): at the
    end of a 10,000-customer run the worker's heap held 114 MB of free space, 34 MB with
    the threshold fixed, and its RSS fell by 56-79 MiB (10,000 and 20,000 customers).
    Fixing it also fixes glibc's trim threshold, so free space at the heap's top is
    given back."""
    libc = _glibc()
    if mmap_threshold <= 0 or libc is None:
        return False
    return libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1


def trim_malloc() -> bool:
    """Give the free pages inside glibc's heap back to the system; False off glibc.

    Why: glibc returns only the free space at the top of its heap. A batch's transients
    (decoded journeys, rows, fetched records) are freed between table values written
    meanwhile, so the free space lies in holes, resident until a later batch reuses it.
    ``malloc_trim`` releases every free page of those holes (``madvise``), and the next
    batch that needs them faults them in again. Measured at the end of the
    10,000-customer bench run: 3.3 ms, RSS 298 → 266 MB. It holds the event loop while
    it runs, longer on a larger heap: 79 ms giving back 730 MB of a 781 MB heap."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
