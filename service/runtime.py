"""Process-wide tuning for serving: how glibc's malloc keeps freed memory.

A request at the tutorial's size (C = 8000, H = 100) allocates about 20 MB of
short-lived arrays. With glibc's defaults, freed blocks of that size go back to
the kernel (munmap, or trimming the top of the heap), and the next request
page-faults them in again: measured here, 2,400 page faults per request and
about 40% of the engine's time. Raising the mmap and trim thresholds keeps
those blocks in the process for reuse, so the steady state has no faults.
The memory kept is bounded by the largest requests served (see docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["limit_blas", "tune_malloc"]

log = logging.getLogger("service")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: blocks below this come from the heap
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top kept before returning it


def tune_malloc() -> bool:
    """Apply the thresholds above; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("malloc tuning skipped: not glibc")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def limit_blas(threads: int) -> None:
    """At most ``threads`` BLAS threads per call, process-wide (threadpoolctl; OpenBLAS, MKL, BLIS)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
