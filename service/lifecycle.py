"""The process's stop: a drain, so that an orchestrator's SIGTERM loses no request.

On SIGTERM (what Kubernetes, Docker and systemd send to stop the service)::

    ready ---SIGTERM---> draining ---BPTT_DRAIN_GRACE_SECONDS---> refusing ---work done---> stopped
    /readyz 200          /readyz 503 (liveness stays 200)         new compute work: 503    the server closes
                         new work still accepted                  Draining + Retry-After   its listener; exit 0

- At once, readiness (``/readyz``, ``/v2/health/ready``) answers 503, so load
  balancers stop sending; liveness stays 200, so nothing kills the process.
- For ``BPTT_DRAIN_GRACE_SECONDS`` new work is still accepted: what was sent
  before the balancers noticed is answered, not refused.
- Then new compute work is refused (``errors.Draining``, 503 with Retry-After),
  and the work admitted before (computing, queued, or its body arriving)
  finishes, for at most ``BPTT_REQUEST_TIMEOUT`` (the deadline it already has).
- Then the server (uvicorn) closes its listener and the process exits 0.

SIGINT (Ctrl+C) drains the same way without the grace; a second signal stops at
once. The state is ``app.state.lifecycle`` (``draining``, ``refusing``), for
every protocol's readiness to read.

The signals are taken over from the server in the app's lifespan, only in the
main thread (where a server installs them), so the drain works under
``python -m service`` with any number of workers and under
``uvicorn --factory service.app:create_app``; in-process test clients drive it
with ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any

import anyio
import anyio.abc

from .compute import Pool

__all__ = ["Lifecycle"]

log = logging.getLogger("service")

Handler = Callable[[int, FrameType | None], Any]


class Lifecycle:
    """Whether the service is draining, and the drain itself: ``stop`` begins it, ``then`` ends it.

    ``grace`` is BPTT_DRAIN_GRACE_SECONDS (SIGTERM's), ``timeout`` the longest the
    drain waits for the work admitted before (BPTT_REQUEST_TIMEOUT).
    """

    def __init__(self, pool: Pool, *, grace: float, timeout: float) -> None:
        self.pool = pool
        self.grace = grace
        self.timeout = timeout
        self.draining = False  # from the first signal: readiness answers 503
        self.stopped = False  # the drain is over: the server is told to stop
        self.on_drain: list[Callable[[], Awaitable[None]]] = []  # told at once (the gRPC health service)
        self._tasks: anyio.abc.TaskGroup | None = None

    @property
    def refusing(self) -> bool:
        """True once new compute work is refused (the grace has passed)."""
        return self.pool.closed

    def stop(self, *, grace: float, then: Callable[[], None]) -> None:
        """Begin the drain (in the event loop, inside ``running``): not ready now, new work refused after
        ``grace`` seconds, and ``then()`` once the work admitted before has finished or ``timeout`` passed."""
        if self._tasks is None:
            raise RuntimeError("Lifecycle.stop must be called inside Lifecycle.running (the app's lifespan)")
        if self.draining:
            return
        self.draining = True
        self._tasks.start_soon(self._drain, grace, then)

    async def _drain(self, grace: float, then: Callable[[], None]) -> None:
        log.info("draining: not ready; new work accepted for %g s more, then refused", grace)
        for listener in self.on_drain:
            await listener()
        await anyio.sleep(grace)
        self.pool.close()
        with anyio.move_on_after(self.timeout) as waited:
            await self.pool.idle()
        if waited.cancelled_caught:
            log.warning(
                "draining: %d requests still admitted after %g s; stopping anyway", self.pool.admitted, self.timeout
            )
        else:
            log.info("drained: no request left; stopping")
        self.stopped = True
        then()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifetime: the drain's task group, and SIGTERM and SIGINT taken over from the server."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            restore = self._take_signals() if threading.current_thread() is threading.main_thread() else {}
            try:
                yield
            finally:
                for sig, handler in restore.items():
                    signal.signal(sig, handler)
                self._tasks = None
                tasks.cancel_scope.cancel()

    def _take_signals(self) -> dict[int, Handler]:
        """Put the drain before the server's own SIGTERM and SIGINT handlers, which it calls when done.

        Only over handlers written in Python (a server's); with none (not under a server), nothing changes.
        """
        loop = asyncio.get_running_loop()
        taken: dict[int, Handler] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            server = signal.getsignal(sig)
            if not callable(server):
                continue

            def on_signal(signum: int, frame: FrameType | None, server: Handler = server) -> None:
                # A signal handler runs between two bytecodes of the loop's thread: hand over to the loop.
                loop.call_soon_threadsafe(self._on_signal, signum, server)

            signal.signal(sig, on_signal)
            taken[sig] = server
        return taken

    def _on_signal(self, signum: int, server: Handler) -> None:
        if self.draining:  # asked twice: stop now (the server still waits a little for answers being sent)
            log.warning("%s during the drain: stopping now", signal.Signals(signum).name)
            server(signum, None)
            return
        grace = self.grace if signum == signal.SIGTERM else 0.0
        self.stop(grace=grace, then=lambda: server(signum, None))
