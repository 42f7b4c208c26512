"""Batch: tokens/s of one POST /bptt/batch with B = 64 against 64 single POST /bptt calls.

C = 8000, H = 100 (the tutorial's model), sentence lengths 5..30 like the
tutorial's corpus; full BPTT; base64 both ways; the engine alone too.

    python benchmarks/bench_batch.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import median_time, problem, serve, table

from service import engine
from service.client import Client
from service.runtime import tune_malloc


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-B", type=int, default=64)
    args = parser.parse_args(argv)
    C, H, B = 8000, 100, args.B
    U, V, W, _, _ = problem(C, H, 1)
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 31, B)
    xs = [rng.integers(0, C, T) for T in lengths]
    ys = [rng.integers(0, C, T) for T in lengths]
    tokens = int(lengths.sum())
    repeat = 3 if args.quick else 7
    tune_malloc()

    def singles_local():
        return [engine.bptt(U, V, W, x, y) for x, y in zip(xs, ys, strict=False)]

    t_local_single = median_time(singles_local, repeat=repeat)
    t_local_batch = median_time(lambda: engine.bptt_batch(U, V, W, xs, ys), repeat=repeat)
    with serve("service.app:create_app") as url, Client(url) as client:
        g = client.bptt_batch(U, V, W, xs, ys)
        total = sum(s.dLdW for s in singles_local())
        assert np.allclose(g.dLdW, total, rtol=1e-12, atol=1e-15), "batch must equal the sum of singles"
        t_http_single = median_time(
            lambda: [client.bptt(U, V, W, x, y) for x, y in zip(xs, ys, strict=False)], repeat=repeat, warmup=1
        )
        t_http_batch = median_time(lambda: client.bptt_batch(U, V, W, xs, ys), repeat=repeat)
    rows = [
        ["HTTP, 64 single /bptt calls", tokens / t_http_single, 1.0],
        ["HTTP, one /bptt/batch", tokens / t_http_batch, t_http_single / t_http_batch],
        ["engine, 64 bptt calls", tokens / t_local_single, t_http_single / t_local_single],
        ["engine, one bptt_batch", tokens / t_local_batch, t_http_single / t_local_batch],
    ]
    return table(
        f"Batch, C = {C}, H = {H}, B = {B}, {tokens} tokens (T = 5..30), full BPTT (medians)",
        ["how", "tokens/s", "speed-up over HTTP singles (target: batch >= 5)"],
        rows,
    )


if __name__ == "__main__":
    main()
