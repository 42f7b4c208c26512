"""Growth: engine time and peak memory as T grows 10 -> 1000 and C grows 100 -> 32000.

Full BPTT must be one backward pass over time (linear in T), and nothing may
cost T x C x H. JAX (jit over lax.scan) is measured beside it when installed.
Writes docs/growth.png when matplotlib is installed.

    python benchmarks/bench_growth.py [--quick] [--plot docs/growth.png]
"""

from __future__ import annotations

import argparse
import tracemalloc

from common import ROOT, Isolated, add_all_cores, median_time, one_core, problem, table
from peers import jax_bptt

from service import engine
from service.runtime import tune_malloc


def peak_mb(fn) -> float:
    """Peak traced memory of one call (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


def sweep(points, make, repeat):
    rows = []
    for p in points:
        U, V, W, x, y = make(p)
        t = median_time(lambda: engine.bptt(U, V, W, x, y), repeat=repeat)
        j = Isolated(jax_bptt, U, V, W, x, y)
        tj = median_time(j, repeat=repeat) if j.available else None
        j.close()
        rows.append((p, t, peak_mb(lambda: engine.bptt(U, V, W, x, y)), tj))
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "growth.png"))
    add_all_cores(parser)
    args = parser.parse_args(argv)
    print(f"({one_core(args)})")
    repeat = 5 if args.quick else 11
    tune_malloc()
    Ts = [10, 30, 100, 300, 1000]
    Cs = [100, 1000, 8000, 32000]
    by_T = sweep(Ts, lambda T: problem(65, 100, T), repeat)
    by_C = sweep(Cs, lambda C: problem(C, 100, 50), repeat)

    def rows(points, unit):
        base_p, base_t = points[0][0], points[0][1]
        out = []
        for p, t, mem, tj in points:
            out.append(
                [
                    p,
                    t * 1e3,
                    (t / base_t) / (p / base_p),
                    mem,
                    f"{tj * 1e3:.3g}" if tj else "n/a",
                    f"{t / tj:.2f}" if tj else "n/a",
                ]
            )
        return out

    header = ["{}", "engine ms", "time growth / size growth", "peak MB", "JAX ms", "engine / JAX"]
    text = table("Growth in T (C = 65, H = 100, full BPTT)", [header[0].format("T"), *header[1:]], rows(by_T, "T"))
    text += "\n" + table(
        "Growth in C (H = 100, T = 50, full BPTT)", [header[0].format("C"), *header[1:]], rows(by_C, "C")
    )
    tj = by_T[-1][3]
    if tj:
        print(f"T = 1000, C = 65, H = 100: engine / JAX = {by_T[-1][1] / tj:.2f} (target <= 2)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return text
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, data, label in ((axes[0], by_T, "T (C = 65, H = 100)"), (axes[1], by_C, "C (H = 100, T = 50)")):
        xs = [p for p, *_ in data]
        ax.loglog(xs, [t * 1e3 for _, t, _, _ in data], "o-", label="engine (numpy)")
        if all(tj for *_, tj in data):
            ax.loglog(xs, [tj * 1e3 for *_, tj in data], "s--", label="JAX jit")
        ref = data[0][1] * 1e3
        ax.loglog(xs, [ref * p / xs[0] for p in xs], ":", color="gray", label="linear")
        ax.set_xlabel(label)
        ax.set_ylabel("ms per gradient (median)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Engine time grows linearly in T and in C")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")
    return text


if __name__ == "__main__":
    main()
