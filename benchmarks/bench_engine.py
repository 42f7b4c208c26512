"""Engine time against the seed's loop, PyTorch, JAX and the matrix-product floor.

C = 8000, H = 100 (the tutorial's configuration), T in {20, 50, 200}, with the
seed's truncation K = 4 and full BPTT. Prints medians and ratios from one run.

    python benchmarks/bench_engine.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import Isolated, add_all_cores, median_time, one_core, problem, seed, table
from peers import check_same, jax_bptt, torch_bptt

from service import engine


def floor(U, V, s_shape):
    """The three (T, H) x (H, C)-sized products every implementation must do."""
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, s_shape)
    d = rng.uniform(-1, 1, (s_shape[0], V.shape[0]))

    def run():
        s @ V.T  # logits
        d.T @ s  # dL/dV
        d @ V  # error into the hidden states

    return run


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, T in {20, 50}")
    add_all_cores(parser)
    args = parser.parse_args(argv)
    cores = one_core(args)
    C, H = 8000, 100
    Ts = (20, 50) if args.quick else (20, 50, 200)
    repeat = 7 if args.quick else 21
    rows = []
    notes = []
    for T in Ts:
        U, V, W, x, y = problem(C, H, T)
        full = engine.bptt(U, V, W, x, y)
        t_floor = median_time(floor(U, V, (T, H)), repeat=repeat)
        peers = {}
        for name, make in (("PyTorch", torch_bptt), ("JAX", jax_bptt)):
            fn = make(U, V, W, x, y) if name == "PyTorch" else Isolated(make, U, V, W, x, y)
            if fn is None or (isinstance(fn, Isolated) and not fn.available):
                notes.append(f"{name} is not installed: skipped (pip install -e '.[bench]')")
                continue
            check_same((full.dLdU, full.dLdV, full.dLdW), fn, name)
            peers[name] = median_time(fn, repeat=repeat)
            if isinstance(fn, Isolated):
                fn.close()
        for K in (4, None):
            t_engine = median_time(lambda: engine.bptt(U, V, W, x, y, bptt_truncate=K), repeat=repeat)
            t_seed = median_time(lambda: seed.bptt(U, V, W, x, y, T if K is None else K), repeat=3, warmup=0, budget=20)
            row = [T, "full" if K is None else K, t_engine * 1e3, t_floor * 1e3, t_engine / t_floor, t_seed / t_engine]
            for name in ("PyTorch", "JAX"):
                row.append(f"{peers[name] / t_engine:.2f}" if name in peers else "n/a")
            rows.append(row)
    text = table(
        f"Engine, C = {C}, H = {H}, float64 (medians; ratios > 1 mean the engine is faster; {cores})",
        [
            "T",
            "K",
            "engine ms",
            "floor ms",
            "engine / floor",
            "seed loop / engine",
            "PyTorch (full) / engine",
            "JAX (full) / engine",
        ],
        rows,
    )
    for note in sorted(set(notes)):
        print(note)
    return text


if __name__ == "__main__":
    main()
