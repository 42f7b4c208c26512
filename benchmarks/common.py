"""Shared helpers of the benchmarks: timing, problems, servers, tables.

Every benchmark measures its candidates in one run, on one machine, and
prints medians and ratios, never a lone absolute time as a verdict.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the seed's loop, tests/seed.py

import seed  # noqa: E402

from service.local import LocalServer  # noqa: E402

__all__ = [
    "ROOT",
    "Isolated",
    "add_all_cores",
    "interleaved",
    "machine",
    "median_time",
    "one_core",
    "problem",
    "seed",
    "serve",
    "table",
]


def seconds_of(fn: Callable[[], object]) -> float:
    """One call of ``fn``, timed: by the peer's own process for an ``Isolated`` peer (no pipe in the time)."""
    if isinstance(fn, Isolated):
        return fn.timed()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_PEER_CPUS: set[int] | None = None  # where an Isolated peer runs (one_core): None, anywhere


class Isolated:
    """A peer (JAX) computed in a process of its own, pinned to a CPU of its own.

    The service computes a request on one core, so its peers are timed on one core too. JAX sizes
    its thread pool from the CPU affinity (it ignores XLA_FLAGS' thread options: 1.8 cores busy
    through a call with them), and its idle threads spin after each call: in the benchmark's own
    process, pinned to the same core, they slowed the engine's calls that followed (8.4 ms against
    6.5 ms at C = 8000). Here the peer has the last CPU and the benchmark (``one_core``) the first;
    each waits, idle, while the other computes. ``make(*args)`` builds the peer's thunk in the child
    (None if its library is absent: ``available`` is then False). Calling it returns the peer's
    result (for the benchmarks' equality checks); ``timed()`` times one call in the child.
    """

    def __init__(self, make: Callable[..., Callable[[], object] | None], *args: object) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")  # the child builds the peer: JAX is never imported here
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_peer, args=(child, make, args), daemon=True)
        self._process.start()
        self.available: bool = self._conn.recv()

    def __call__(self) -> object:
        self._conn.send("result")
        return self._conn.recv()

    def timed(self) -> float:
        self._conn.send("time")
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(timeout=30)


def _serve_peer(conn: Any, make: Callable[..., Callable[[], object] | None], args: tuple[object, ...]) -> None:
    if _PEER_CPUS is not None:
        os.sched_setaffinity(0, _PEER_CPUS)
    fn = make(*args)
    conn.send(fn is not None)
    while fn is not None and (command := conn.recv()) != "stop":
        if command == "time":
            t0 = time.perf_counter()
            fn()
            conn.send(time.perf_counter() - t0)
        else:
            conn.send(fn())


def median_time(fn: Callable[[], object], *, repeat: int = 15, warmup: int = 2, budget: float = 30.0) -> float:
    """Median wall time of ``fn()`` in seconds, over ``repeat`` runs (fewer if over ``budget`` s)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        times.append(seconds_of(fn))
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return statistics.median(times)


def interleaved(
    candidates: dict[str, Callable[[], object]], *, repeat: int, shuffle: int | None = None
) -> dict[str, float]:
    """Median seconds of each candidate, timed in rounds (one call of each per round, after two warm-up
    rounds): on a shared machine every candidate sees the same background load.

    With ``shuffle`` (a seed), each round runs them in a new random order: what runs before a
    candidate matters (JAX's thread pool spins after its call; see bench_kernel.interleaved), and in
    a fixed order the one after JAX always pays for it.
    """
    names = list(candidates)
    order = None if shuffle is None else random.Random(shuffle)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeat + 2):
        if order is not None:
            order.shuffle(names)
        for name in names:
            seconds = seconds_of(candidates[name])
            if round_ >= 2:
                times[name].append(seconds)
    return {name: statistics.median(times[name]) for name in candidates}


def one_core(parser_args: object) -> str:
    """Pin this process to its first CPU, unless ``--all-cores`` was given; say how, for the tables.

    The service computes a request on one core (one BLAS thread per compute thread), and so must its
    peers, to be compared with it: PyTorch here (one thread, set by the benchmarks), JAX in a process
    of its own on the last CPU (``Isolated``). Call before PyTorch is imported.
    """
    global _PEER_CPUS
    if getattr(parser_args, "all_cores", False) or not hasattr(os, "sched_setaffinity"):
        return "every candidate free to use all cores"
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    _PEER_CPUS = {max(cpus)}
    if len(cpus) == 1:  # nowhere else to put JAX: its idle threads spin on the candidates' core
        return "one CPU only: every candidate and JAX's process on it (JAX's idle threads slow the others)"
    return "every candidate on one core, JAX in a process of its own on another (--all-cores lifts it)"


def add_all_cores(parser: object) -> None:
    """The ``--all-cores`` option of the benchmarks that compare with JAX and PyTorch (``one_core``)."""
    parser.add_argument(  # type: ignore[attr-defined]
        "--all-cores", action="store_true", help="do not pin the process to one CPU (JAX then uses them all)"
    )


def problem(C: int, H: int, T: int, *, seed_: int = 0):
    """The seed's initialisation: U, V, W uniform in +-1/sqrt(fan-in); random x, y."""
    rng = np.random.default_rng(seed_)
    U = rng.uniform(-1, 1, (H, C)) / np.sqrt(C)
    V = rng.uniform(-1, 1, (C, H)) / np.sqrt(H)
    W = rng.uniform(-1, 1, (H, H)) / np.sqrt(H)
    return U, V, W, rng.integers(0, C, T), rng.integers(0, C, T)


@contextlib.contextmanager
def serve(app: str, *, env: dict[str, str] | None = None, workers: int = 1, health: str = "/healthz") -> Iterator[str]:
    """Run ``uvicorn app`` on a free loopback port (service.local.LocalServer); yield its base URL.

    ``app`` is "service.app:create_app" (a factory), or "servers:<name>" for benchmarks/servers.py.
    """

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", app, *(["--factory"] if app.endswith("create_app") else []),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--workers", str(workers), "--no-access-log", "--app-dir", str(ROOT / "benchmarks"),
        ]  # fmt: skip

    # The service's own access log would print a line per request between the tables.
    with LocalServer(command=command, env=env, health=health, output=None, cwd=str(ROOT)) as server:
        yield server.url


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table, printed and returned."""

    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def machine() -> str:
    """One line describing where the numbers were taken."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, {platform.system()} {platform.release()}"
    )
