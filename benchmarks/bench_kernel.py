"""The engine with its compiled loops (service/kernel.py) against its numpy loops, JAX and the floor.

The sizes of issue 15's targets: C = 65, H = 32, T = 25 (a small model); T = 1000,
C = 65, H = 100 (a long sequence); C = 8000, H = 100, T = 50, full and K = 4 (the
tutorial's size, with the matrix-product floor); and float32 against float64 at
the tutorial's size. One BLAS thread and the malloc tuning, as the service runs
(BPTT_BLAS_THREADS=1, BPTT_TUNE_MALLOC). The candidates are timed in interleaved
rounds, one call of each per round in a random order, so that all see the same
background load; medians over the rounds, ratios from the same run.

    python benchmarks/bench_kernel.py [--rounds 21 | --quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable

import numpy as np
from bench_engine import floor
from common import Isolated, add_all_cores, machine, one_core, problem, seconds_of, table
from peers import check_same, jax_bptt

from service import engine, kernel, runtime


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each candidate over ``rounds`` rounds, one call of each per round.

    Each round runs them in a new random order: what runs before a candidate matters (JAX's
    thread pool spins after its call; the floor's products evict the engine's arrays from the
    caches), and in a fixed order the candidate after them measured 10% slower than the same
    code after itself.
    """
    for fn in candidates.values():  # warm-up
        fn()
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            times[name].append(seconds_of(candidates[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def with_loops(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        engine.use_kernel(name)
        return fn()

    return run


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds (medians over them)")
    parser.add_argument("--quick", action="store_true", help="7 rounds")
    add_all_cores(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 7
    cores = one_core(args)
    runtime.tune_malloc()
    runtime.limit_blas(1)
    kernel.warm_up()
    print(machine())
    rows = []
    for C, H, T, K in ((65, 32, 25, None), (65, 100, 1000, None), (8000, 100, 50, None), (8000, 100, 50, 4)):
        U, V, W, x, y = problem(C, H, T)
        want = engine.bptt(U, V, W, x, y)
        candidates = {
            "numba": with_loops("numba", lambda: engine.bptt(U, V, W, x, y, bptt_truncate=K)),
            "numpy": with_loops("numpy", lambda: engine.bptt(U, V, W, x, y, bptt_truncate=K)),
        }
        jax = Isolated(jax_bptt, U, V, W, x, y)
        if jax.available:
            check_same((want.dLdU, want.dLdV, want.dLdW), jax, "JAX")
            candidates["JAX"] = jax
        if C == 8000:
            candidates["floor"] = floor(U, V, (T, H))
        t = interleaved(candidates, args.rounds)
        engine.use_kernel("auto")
        jax.close()

        def ratio(a: str, b: str) -> str:
            return f"{t[a] / t[b]:.2f}" if a in t and b in t else "n/a"

        rows.append(
            [
                f"C = {C}, H = {H}, T = {T}, K = {'full' if K is None else K}",
                t["numba"] * 1e3,
                t["numpy"] * 1e3,
                ratio("numpy", "numba"),
                ratio("numba", "JAX"),
                ratio("numpy", "JAX"),
                ratio("numba", "floor"),
            ]
        )
    text = table(
        f"Engine with compiled loops (numba) and numpy loops, against JAX and the floor, float64 "
        f"(medians of {args.rounds} interleaved rounds; {cores})",
        ["size", "numba ms", "numpy ms", "numpy / numba", "numba / JAX", "numpy / JAX", "numba / floor"],
        rows,
    )
    U, V, W, x, y = problem(8000, 100, 50)
    U32, V32, W32 = (a.astype(np.float32) for a in (U, V, W))
    t = interleaved(
        {
            "float64": lambda: engine.bptt(U, V, W, x, y),
            "float32": lambda: engine.bptt(U32, V32, W32, x, y),
        },
        args.rounds,
    )
    text += table(
        "float32 against float64, C = 8000, H = 100, T = 50, full, default loops",
        ["float64 ms", "float32 ms", "float64 / float32"],
        [[t["float64"] * 1e3, t["float32"] * 1e3, f"{t['float64'] / t['float32']:.2f}"]],
    )
    return text


if __name__ == "__main__":
    main()
