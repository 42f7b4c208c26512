"""Cooperative deadlines and cancellation for work running in compute threads.

A thread cannot be stopped from outside, so long loops call ``checkpoint()``
between steps (between time steps, between the evaluations of a check): past
the request's deadline it raises ``DeadlineExceeded`` (504), and once the
client has gone it raises ``Cancelled``. A single matrix product cannot be
interrupted; the cost model bounds the largest one. Outside a ``bounded``
block (the engine used as a library) ``checkpoint`` does nothing.

Standard library only: the engine imports this module.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from .errors import Cancelled, DeadlineExceeded

__all__ = ["Deadline", "bounded", "checkpoint"]

_local = threading.local()


class Deadline:
    """The time by which a request's work must end, and whether its client has gone."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.cancelled = False

    def cancel(self) -> None:
        """The client disconnected: the work stops at its next checkpoint."""
        self.cancelled = True

    def check(self) -> None:
        """Raise if the deadline passed or the work was cancelled."""
        if self.cancelled:
            raise Cancelled("the client disconnected; the work was stopped")
        if time.monotonic() > self.at:
            raise DeadlineExceeded(
                f"the request took longer than its deadline of {self.seconds:g} s (setting "
                "BPTT_REQUEST_TIMEOUT) and was stopped; send smaller requests, or ask "
                "POST /bptt/cost how long one takes"
            )


@contextlib.contextmanager
def bounded(deadline: Deadline) -> Iterator[Deadline]:
    """Make ``checkpoint()`` in this thread check ``deadline`` until the block ends."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = deadline
    try:
        deadline.check()  # it may have passed while the request waited in the queue
        yield deadline
    finally:
        _local.deadline = previous


def checkpoint() -> None:
    """Raise ``DeadlineExceeded`` or ``Cancelled`` if this thread's work must stop; else nothing."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.check()
