"""The compute pool: requests compute in worker threads, a bounded number at once, a bounded number waiting,
each within its deadline.

At most ``threads`` requests compute at once (numpy releases the GIL in its
kernels, so the event loop keeps answering probes meanwhile); past
``max_queue`` waiting ones, a new request is refused with 503 and Retry-After.
A slot is taken at admission, before the body is read, in the event loop with
no ``await`` between the check and the count: simultaneous arrivals cannot all
pass the bound, and uploads in progress count as queued.

Every request has a deadline once its body has arrived (queue wait + compute,
BPTT_REQUEST_TIMEOUT; the upload has BPTT_BODY_TIMEOUT): the
work checks it between steps (``service.deadline``) and stops with 504; a client
that disconnects has its queued or running work cancelled the same way.

A request the cost model prices cheaper than the hand-off to a thread
(``Slot.run_priced``, BPTT_INLINE_SECONDS) computes in the event loop instead:
it still holds its slot (admitted, counted against the bound), and its deadline
and tracing are the same.

A server that stops closes the pool (``service.lifecycle``): new requests are
refused with 503 (``Draining``), and ``idle`` waits for the admitted ones.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.to_thread

from .deadline import Deadline, bounded
from .errors import Busy, Cancelled, DeadlineExceeded, Draining
from .tracing import Work

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["Pool", "Priced", "Slot"]

log = logging.getLogger("service")

Result = TypeVar("Result")


@dataclass(frozen=True)
class Priced(Generic[Result]):
    """Work the cost model has priced: its estimated ``seconds``, and the work itself."""

    seconds: float
    run: Callable[[], Result]


class Slot:
    """One admitted request: its deadline, and whether its work started."""

    def __init__(self, pool: Pool, seconds: float) -> None:
        self.pool = pool
        self.seconds = seconds

    async def run(
        self, work: Callable[[], Result], *, disconnected: Callable[[], Awaitable[None]] | None = None
    ) -> Result:
        """Run ``work`` in a compute thread within the deadline; stop it if ``disconnected`` returns first.

        The deadline starts here, once the body has arrived (its upload has its own
        timeout): it covers the wait for a compute thread and the computation.
        """
        deadline = Deadline(self.seconds)
        traced = Work(self.pool.tracer) if self.pool.tracer is not None else None  # service/tracing.py

        def job() -> Result:
            with bounded(deadline), traced.running() if traced else contextlib.nullcontext():
                return work()

        try:
            return await self._run(job, deadline, disconnected)
        finally:
            if traced:
                traced.close()

    async def run_priced(
        self,
        price: Callable[[], float],
        plan: Callable[[], Priced[Result]],
        *,
        inline: float,
        disconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> Result:
        """Price the parse (``price()``, which may refuse), parse and price the work (``plan()``), then
        compute it (``Priced.run``): each step in the event loop while the estimates so far stay within
        ``inline`` seconds, the rest in a compute thread as ``run`` does (all of it when ``inline`` is 0).

        Below about half a millisecond the hand-off to a thread (and the GIL passed back and forth)
        costs more than the work. Work in the event loop cannot be stopped by a disconnect, which is
        why only requests priced this small take it; it runs within the same deadline and spans.
        """
        if inline <= 0:  # all of it in a thread, pricing included

            def whole() -> Result:
                price()
                return plan().run()

            return await self.run(whole, disconnected=disconnected)
        deadline = Deadline(self.seconds)
        traced = Work(self.pool.tracer) if self.pool.tracer is not None else None
        try:
            with bounded(deadline), traced.running() if traced else contextlib.nullcontext():
                spent = price()
                priced = plan() if spent <= inline else None
                if priced is not None and spent + priced.seconds <= inline:
                    self.pool.inline_runs += 1
                    return priced.run()
            rest = priced.run if priced is not None else lambda: plan().run()

            def job() -> Result:
                with bounded(deadline), traced.running() if traced else contextlib.nullcontext():
                    return rest()

            return await self._run(job, deadline, disconnected)
        finally:
            if traced:
                traced.close()

    async def _run(
        self, job: Callable[[], Result], deadline: Deadline, disconnected: Callable[[], Awaitable[None]] | None
    ) -> Result:
        """``job`` in a compute thread, or ``Cancelled`` / ``DeadlineExceeded`` when it never finished."""
        result: list[Result] = []
        failure: list[BaseException] = []
        async with anyio.create_task_group() as group:
            if disconnected is not None:

                async def watch() -> None:
                    await disconnected()
                    deadline.cancel()  # a running thread stops at its next checkpoint
                    group.cancel_scope.cancel()  # a request still queued leaves the queue

                group.start_soon(watch)
            # Past the deadline a request still waiting for a thread leaves the queue; a running
            # one stops itself at its next checkpoint (run_sync waits for the thread either way).
            with anyio.CancelScope(deadline=anyio.current_time() + max(0.0, deadline.at - time.monotonic())):
                try:
                    result.append(await anyio.to_thread.run_sync(job, limiter=self.pool.limiter))
                except Exception as exc:  # raised in the thread: re-raised below, outside the task group
                    failure.append(exc)
            group.cancel_scope.cancel()  # the answer (or its error) is ready: stop watching
        if failure:
            raise failure[0]
        if result:
            return result[0]
        if deadline.cancelled:
            raise Cancelled("the client disconnected; the work was stopped")
        raise DeadlineExceeded(
            f"the request waited longer than its deadline of {deadline.seconds:g} s for a compute thread "
            "(setting BPTT_REQUEST_TIMEOUT); retry shortly"
        )


class Pool:
    """``threads`` compute threads and a queue of ``max_queue``; the limiter is made inside the event loop."""

    def __init__(self, *, threads: int, max_queue: int, timeout: float) -> None:
        self.threads = threads
        self.max_queue = max_queue
        self.timeout = timeout
        self.admitted = 0  # computing + waiting (+ bodies being read)
        self.closed = False  # the server is stopping: no new request is admitted
        self.inline_runs = 0  # requests computed in the event loop (Slot.run_priced), since start
        self.tracer: Tracer | None = None  # set by service.tracing.install when BPTT_TRACING is on
        self._limiter: anyio.CapacityLimiter | None = None
        self._idle: anyio.Event | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # made on first use: it needs the running event loop
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter

    @contextlib.asynccontextmanager
    async def slot(self, seconds: float | None = None) -> AsyncIterator[Slot]:
        """Admit one request, or raise ``Busy`` (or ``Draining`` once closed); the slot is held until the
        block ends.

        Its deadline is the pool's (BPTT_REQUEST_TIMEOUT), or ``seconds`` when shorter
        (a gRPC client's own deadline).
        """
        if self.closed:
            raise Draining(
                "the server is shutting down and takes no new work; retry (another replica answers)",
            )
        if self.admitted >= self.threads + self.max_queue:
            waiting = self.admitted - self.threads
            raise Busy(
                f"the server is at capacity: {self.threads} requests computing and {waiting} waiting "
                "(settings BPTT_THREADS, BPTT_MAX_QUEUE); retry shortly"
            )
        self.admitted += 1  # no await since the check: the bound holds under simultaneous arrivals
        try:
            yield Slot(self, self.timeout if seconds is None else max(0.0, min(self.timeout, seconds)))
        finally:
            self.admitted -= 1
            if self.admitted == 0 and self._idle is not None:
                self._idle.set()

    def close(self) -> None:
        """Admit no new request (``Draining``); those admitted carry on."""
        self.closed = True

    async def idle(self) -> None:
        """Return once no request is admitted (computing, waiting, or its body arriving)."""
        while self.admitted:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def run(self, work: Callable[[], Result]) -> Result:
        """Admit and run ``work`` at once (for callers with nothing to read first)."""
        async with self.slot() as slot:
            return await slot.run(work)
