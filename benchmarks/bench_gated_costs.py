"""The cost model against the engines, per cell: predicted seconds and bytes over measured ones.

For the vanilla cell and the gated ones, at a few shapes: the median time of
``bptt_batch`` (5 runs) and its peak traced memory (tracemalloc) against
``costs.bptt``'s estimate. A ratio under 1 would let admission take a request
that costs more than it was priced at (docs/cost-model.md, "Gated cells").

    python benchmarks/bench_gated_costs.py
"""

from __future__ import annotations

import statistics
import time
import tracemalloc

import numpy as np
from common import table

from service import costs, engine, gated

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
SHAPES = [  # H, C, T, K, B
    (100, 8000, 50, None, 1),
    (32, 65, 1000, None, 1),
    (100, 65, 1000, 4, 1),
    (64, 500, 100, None, 16),
    (256, 50, 200, None, 1),
]


def main() -> str:
    rng = np.random.default_rng(0)
    rows: list[list[object]] = []
    for cell, G in GATES.items():
        for H, C, T, K, B in SHAPES:
            stack = (G,) if G > 1 else ()
            U = rng.uniform(-0.1, 0.1, (*stack, H, C))
            V = rng.uniform(-0.1, 0.1, (C, H))
            W = rng.uniform(-0.1, 0.1, (*stack, H, H))
            xs = [rng.integers(0, C, T) for _ in range(B)]

            def run(U=U, V=V, W=W, xs=xs, K=K, cell=cell) -> object:
                if cell == "rnn":
                    return engine.bptt_batch(U, V, W, xs, xs, bptt_truncate=K)
                return gated.bptt_batch(cell, U, V, W, xs, xs, bptt_truncate=K)

            run()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            tracemalloc.start()
            result = run()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del result
            e = costs.bptt(lengths=[T] * B, H=H, C=C, K=K, cell=cell)
            seconds = statistics.median(times)
            rows.append([cell, H, C, T, "full" if K is None else K, B, seconds * 1e3, e.seconds / seconds,
                         peak / 1e6, e.bytes / peak])  # fmt: skip
    return table(
        "The cost model over the engines (medians of 5; estimate / measured, >= 1 is safe)",
        ["cell", "H", "C", "T", "K", "B", "measured ms", "time est / meas", "peak MB", "bytes est / meas"],
        rows,
    )


if __name__ == "__main__":
    main()
