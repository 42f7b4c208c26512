"""The compute pool: requests compute in worker threads, a bounded number at once, a bounded number waiting.

At most ``threads`` requests compute at once (numpy releases the GIL in its
kernels, so the event loop keeps answering probes meanwhile); past
``max_queue`` waiting ones, a new request is refused with 503 and Retry-After.
The bound is counted at admission, in the event loop, with no ``await``
between the check and the count: simultaneous arrivals cannot all pass it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from .errors import Busy

__all__ = ["Pool"]

Result = TypeVar("Result")


class Pool:
    """``threads`` compute threads and a queue of ``max_queue``; made inside the running event loop."""

    def __init__(self, *, threads: int, max_queue: int) -> None:
        self.threads = threads
        self.max_queue = max_queue
        self.admitted = 0  # computing + waiting
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # made on first use: it needs the running event loop
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter

    async def run(self, work: Callable[[], Result]) -> Result:
        """Run ``work`` in a compute thread; ``Busy`` when every thread is taken and the queue is full."""
        if self.admitted >= self.threads + self.max_queue:
            waiting = self.admitted - self.threads
            raise Busy(
                f"the server is at capacity: {self.threads} requests computing and {waiting} waiting "
                "(settings BPTT_THREADS, BPTT_MAX_QUEUE); retry shortly"
            )
        self.admitted += 1
        try:
            return await anyio.to_thread.run_sync(work, limiter=self.limiter)
        finally:
            self.admitted -= 1
