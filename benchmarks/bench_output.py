"""The output layer of a large batch in chunks of rows (engine.OUTPUT_CHUNK_BYTES) against all rows at once.

``engine.bptt_batch`` at C = 8000, H = 100, T = 50, B sequences, full BPTT, float64, one BLAS thread, the
two ways in interleaved rounds (medians): "all rows" sets the chunk size past any batch, which is how the
engine ran before the chunks (one (N, C) array, mapped fresh at every call past glibc's 32 MiB).

    python benchmarks/bench_output.py [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from common import interleaved, problem, table

from service import engine, kernel
from service.runtime import tune_malloc


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args(argv)
    tune_malloc()
    kernel.warm_up()
    C, H, T = 8000, 100, 50
    U, V, W, _, _ = problem(C, H, T)
    rng = np.random.default_rng(0)
    chunk = engine.OUTPUT_CHUNK_BYTES
    rows = []
    try:
        for B in (10, 40, 80):
            xs = [rng.integers(0, C, T) for _ in range(B)]
            ys = [rng.integers(0, C, T) for _ in range(B)]

            def way(size: int):
                def run() -> None:
                    engine.OUTPUT_CHUNK_BYTES = size
                    engine.bptt_batch(U, V, W, xs, ys)

                return run

            times = interleaved({"all": way(1 << 62), "chunks": way(chunk)}, repeat=3 if args.quick else 7, shuffle=B)
            rows.append([B * T, times["all"] * 1e3, times["chunks"] * 1e3, times["all"] / times["chunks"]])
    finally:
        engine.OUTPUT_CHUNK_BYTES = chunk
    return table(
        f"bptt_batch, C = {C}, H = {H}, T = {T}: the output layer all rows at once or in chunks of "
        f"{chunk >> 20} MiB (medians, interleaved rounds)",
        ["tokens", "all rows ms", "chunks ms", "all rows / chunks"],
        rows,
    )


if __name__ == "__main__":
    main()
