"""Where one sequence pays to go through ``kernel.bptt_one`` (three compiled loops around three BLAS products)
rather than the numpy engine with its per-step loops: the grid behind ``kernel.fused_pays``.

For every (C, H, T) of the grid, full BPTT, float64, one BLAS thread, the same call of ``engine.bptt``
timed both ways in alternation (medians); the ratio > 1 where bptt_one is faster, and whether
``kernel.fused_pays`` chooses it there. The rule was read off this table; a wrong choice shows as a
ratio below 1 with "yes", or well above 1 with "no".

    python benchmarks/bench_fused.py [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from common import interleaved, table

from service import engine, kernel
from service.runtime import tune_malloc


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    args = parser.parse_args(argv)
    tune_malloc()
    kernel.warm_up()
    engine.use_kernel("numba")
    grid_C, grid_H, grid_T = ((65, 1000), (32, 128), (25, 100)) if args.quick else (
        (32, 65, 256, 1000, 4000),
        (16, 32, 64, 100, 128),
        (10, 25, 50, 100, 200),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    rows = []
    limits = kernel.FUSED_MAX_FLOPS, kernel.FUSED_MAX_EXPS, kernel.FUSED_MAX_H
    lifted, off = (1 << 62,) * 3, (-1, *limits[1:])  # bptt_one at every shape; at none
    try:
        for C in grid_C:
            for H in grid_H:
                for T in grid_T:
                    U, V = rng.uniform(-1, 1, (H, C)) / 3, rng.uniform(-1, 1, (C, H)) / 3
                    W = rng.uniform(-1, 1, (H, H)) / np.sqrt(H)
                    x, y = rng.integers(0, C, T), rng.integers(0, C, T)

                    def way(limit: tuple[int, int, int]):
                        def run() -> None:
                            kernel.FUSED_MAX_FLOPS, kernel.FUSED_MAX_EXPS, kernel.FUSED_MAX_H = limit
                            engine.bptt(U, V, W, x, y)

                        return run

                    chosen = "yes" if kernel.fused_pays(T, H, C, None) else "no"  # the limits as shipped
                    rounds = max(5, min(101, int(4e6 / (T * H * (C + H)))))
                    times = interleaved({"fused": way(lifted), "numpy": way(off)}, repeat=rounds, shuffle=T)
                    kernel.FUSED_MAX_FLOPS, kernel.FUSED_MAX_EXPS, kernel.FUSED_MAX_H = limits
                    ratio = times["numpy"] / times["fused"]
                    rows.append([C, H, T, times["fused"] * 1e6, times["numpy"] * 1e6, ratio, chosen])
    finally:
        kernel.FUSED_MAX_FLOPS, kernel.FUSED_MAX_EXPS, kernel.FUSED_MAX_H = limits
    return table(
        "One sequence: bptt_one against the numpy engine, full BPTT, float64 (medians, interleaved rounds)",
        ["C", "H", "T", "bptt_one us", "numpy engine us", "numpy / bptt_one", "fused_pays"],
        rows,
    )


if __name__ == "__main__":
    main()
