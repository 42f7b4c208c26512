"""Request-rate quotas: a token bucket per API key, so one client cannot starve the others.

Each key's bucket holds at most ``burst`` tokens and refills at ``rate`` tokens
a second; a request takes one, and a request that finds the bucket empty is
refused (429) with the seconds until the next token as its Retry-After. A
client that keeps to ``rate`` is never refused; one that has been quiet may
send ``burst`` requests at once.

The buckets are kept per configured key (a fixed, small set: only requests
with a valid key reach them), so their memory does not grow with clients.
Standard library only.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable

from . import ops
from .errors import RateLimited

__all__ = ["Quotas", "TokenBucket", "key_id"]


def key_id(key: bytes) -> str:
    """A name for a key that reveals nothing of it (for metrics and logs): 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` a second (``clock`` in seconds, monotonic)."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is (nothing is taken)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1 - 1e-9:  # a client that keeps to the rate is not refused for rounding
            self.tokens = max(0.0, self.tokens - 1)
            return 0.0
        return (1 - self.tokens) / self.rate


class Quotas:
    """One ``TokenBucket`` per key id, made on the key's first request."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()  # a gRPC server's threads may share these buckets with the event loop

    def take(self, key: str) -> float:
        """Take a token from ``key``'s bucket: 0.0 when admitted, else the seconds to wait."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate=self.rate, burst=self.burst, clock=self.clock)
            return bucket.take()

    def refusal(self, key: str) -> RateLimited | None:
        """Take a token from ``key``'s bucket: None when admitted, else the ``RateLimited`` to answer
        (counted in ``bptt_rate_limited_total``). The HTTP middleware and the gRPC servicer both ask here."""
        wait = self.take(key)
        if not wait:
            return None
        ops.RATE_LIMITED.labels(key).inc()
        retry = max(1, math.ceil(wait))
        return RateLimited(
            f"API key {key} is over its rate of {self.rate:g} requests a second (burst "
            f"{self.burst}; settings BPTT_RATE_LIMIT_PER_KEY, BPTT_RATE_LIMIT_BURST): retry after {retry} s",
            retry_after=retry,
        )
