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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the seed's loop, tests/seed.py

import seed  # noqa: E402

from service.local import LocalServer  # noqa: E402

__all__ = ["ROOT", "interleaved", "machine", "median_time", "problem", "seed", "serve", "table"]


def median_time(fn: Callable[[], object], *, repeat: int = 15, warmup: int = 2, budget: float = 30.0) -> float:
    """Median wall time of ``fn()`` in seconds, over ``repeat`` runs (fewer if over ``budget`` s)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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
            t0 = time.perf_counter()
            candidates[name]()
            if round_ >= 2:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(times[name]) for name in candidates}


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
