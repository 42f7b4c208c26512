"""The cost model (service/costs.py) against the real calls: time and peak memory.

Draws random admissible shapes per route kind (bptt full, bptt truncated with
K up to T, a skewed batch, bptt with trace, gradient check, compare), each
predicted under ``--budget`` seconds and ``--max-bytes``; runs the real
functions in-process (``engine.bptt``, ``bptt_batch``, ``trace``,
``checks.gradient_check``, ``checks.compare``) once under tracemalloc (the
peak, and a warm-up), then 3 times for the median time; prints one table per
route kind. A short reference workload runs before each timed run: its median
time against the calibration machine's (REFERENCE_SECONDS) is the speed
factor that draw's prediction is divided by (a loaded machine is slower, a
faster one faster); the table's header prints its range.

Target: of the draws predicted at >= 20 ms, 95% or more with measured <=
predicted <= 2 x measured; the predicted peak never below the measured one.

    python benchmarks/bench_costs.py                 # check (4 to 7 minutes here)
    python benchmarks/bench_costs.py --fit           # refit service.costs.Machine's constants
    python benchmarks/bench_costs.py --checks FILE   # checks module from a file (another version)
    python benchmarks/bench_costs.py --save F.json   # keep the measurements; --load F.json reuses them

``--fit`` fits the seconds per unit by non-negative least squares on the
relative error, narrows the spread of log(predicted / measured) one constant
at a time, scales them so that the ratios sit in [1, 2] as often as possible,
and prints the constants to paste into service/costs.py's ``Machine``
(relative to REFERENCE_SECONDS here). BLAS runs on one thread unless
OPENBLAS_NUM_THREADS says otherwise (docs/cost-model.md says why).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

# One BLAS thread unless told otherwise: threaded OpenBLAS on a shared machine makes the per-step
# products 10 to 100 times slower at random (docs/cost-model.md); the constants assume one thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import costs, engine
from service.runtime import tune_malloc

# Seconds of make_reference()'s workload on the calibration machine at speed 1.0 (about idle). --fit
# expresses the constants relative to it (each draw's time times the speed measured beside it).
REFERENCE_SECONDS = 0.005
KINDS = ("bptt full", "bptt truncated", "batch skewed", "bptt + trace", "gradient check", "compare")
FLOOR = 0.020  # the check counts draws predicted at or above this


@dataclass
class Draw:
    kind: str
    shape: dict[str, Any]  # the cost function's keyword arguments (machine aside; "given": b, c, s0)
    seed: int  # of the inputs, made just before the draw is measured and dropped after
    predicted: costs.Estimate
    seconds: float = 0.0
    peak: int = 0
    speed: float = 1.0  # the machine's speed when this draw was measured (reference workload)


def log_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi], log-uniform."""
    return int(min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))))


def weights(rng: np.random.Generator, H: int, C: int, dtype: type = np.float64) -> tuple[np.ndarray, ...]:
    """The seed's initialisation, U, V, W uniform in +-1/sqrt(fan-in)."""
    U = rng.uniform(-1, 1, (H, C)) / np.sqrt(C)
    V = rng.uniform(-1, 1, (C, H)) / np.sqrt(H)
    W = rng.uniform(-1, 1, (H, H)) / np.sqrt(H)
    return tuple(a.astype(dtype) for a in (U, V, W))


def shape_of(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Random admissible shapes (the service's default limits) for one route kind."""
    if kind in ("gradient check", "compare"):
        T, H, C = log_int(rng, 1, 300), log_int(rng, 1, 120), log_int(rng, 2, 5000)
        K = None if rng.random() < 0.4 else int(rng.integers(0, T + 1))
        if kind == "compare":
            return {"T": T, "H": H, "C": C, "K": K}
        given = [name for name in ("b", "c", "s0") if rng.random() < 0.3]
        sizes = [H * C, C * H, H * H] + [C if name == "c" else H for name in given]
        return {"T": T, "H": H, "C": C, "K": K, "samples": log_int(rng, 1, 200), "sizes": sizes, "given": given}
    H, C = log_int(rng, 1, 4000), log_int(rng, 2, 40_000)  # H x H up to the 128 MB body limit
    while C * H > 10_000_000:
        C //= 2
    T = log_int(rng, 1, 10_000)
    if kind == "batch skewed":
        B = log_int(rng, 2, 1024)
        short = max(1, T // 20)
        lengths = [T] + [int(n) for n in rng.integers(1, short + 1, B - 1)]
        rng.shuffle(lengths)
    else:
        lengths = [T]
    while sum(lengths) * C > 32_000_000 or sum(lengths) > 100_000:
        lengths = [max(1, n // 2) for n in lengths]
    T = max(lengths)
    K: int | None = None
    if kind == "bptt truncated" or (kind != "bptt full" and rng.random() < 0.5):
        K = int(rng.integers(0, T + 1)) if rng.random() < 0.5 else max(0, T - log_int(rng, 1, T))
    shape: dict[str, Any] = {"lengths": lengths, "H": H, "C": C, "K": K}
    if kind == "bptt + trace":
        L = T if K is None else min(T, K + 1)
        while T * L * H > 1_000_000:  # BPTT_MAX_TRACE_VALUES
            T = max(1, T // 2)
            L = T if K is None else min(T, K + 1)
        shape.update(lengths=[T], trace=True)
    else:
        shape.update(
            itemsize=4 if rng.random() < 0.3 else 8, biases=bool(rng.random() < 0.2), clip=bool(rng.random() < 0.2)
        )
    return shape


def predict(kind: str, shape: dict[str, Any], machine: costs.Machine) -> costs.Estimate:
    if kind == "gradient check":
        return costs.gradient_check(**{k: v for k, v in shape.items() if k != "given"}, machine=machine)
    if kind == "compare":
        return costs.compare(**shape, machine=machine)
    return costs.bptt(**shape, machine=machine)


def make_run(kind: str, shape: dict[str, Any], rng: np.random.Generator, checks: ModuleType) -> Callable[[], object]:
    """The real call for these shapes, its inputs made now (they are not part of the measurement)."""
    if kind in ("gradient check", "compare"):
        T, H, C, K = shape["T"], shape["H"], shape["C"], shape["K"]
        U, V, W = weights(rng, H, C)
        arrays: dict[str, Any] = {"U": U, "V": V, "W": W, "x": rng.integers(0, C, T), "y": rng.integers(0, C, T)}
        arrays["bptt_truncate"] = K
        if kind == "compare":
            sub = {n: rng.standard_normal(a.shape) for n, a in (("dLdU", U), ("dLdV", V), ("dLdW", W))}
            return lambda: checks.compare(arrays, sub)
        for name in shape["given"]:
            arrays[name] = rng.uniform(-0.1, 0.1, C if name == "c" else H)
        return lambda: checks.gradient_check(arrays, samples=shape["samples"])
    H, C, K = shape["H"], shape["C"], shape["K"]
    dtype = np.float32 if shape.get("itemsize", 8) == 4 else np.float64
    U, V, W = weights(rng, H, C, dtype)
    extra: dict[str, Any] = {}
    if shape.get("biases"):
        extra.update(b=rng.uniform(-0.1, 0.1, H).astype(dtype), c=rng.uniform(-0.1, 0.1, C).astype(dtype))
    if shape.get("clip"):
        extra["clip"] = 0.01
    xs = [rng.integers(0, C, n) for n in shape["lengths"]]
    ys = [rng.integers(0, C, n) for n in shape["lengths"]]
    if kind == "bptt + trace":

        def bptt_then_trace() -> object:
            g = engine.bptt(U, V, W, xs[0], ys[0], K)  # held while the trace runs, as in the route
            return g, engine.trace(U, V, W, xs[0], ys[0], K)

        return bptt_then_trace
    if len(xs) == 1:
        return lambda: engine.bptt(U, V, W, xs[0], ys[0], K, **extra)
    return lambda: engine.bptt_batch(U, V, W, xs, ys, K, **extra)


def measure(draw: Draw, reference: Callable[[], object], checks: ModuleType) -> None:
    """Peak bytes under tracemalloc (one run, also the warm-up), then the median of 3 timed runs.

    The reference workload runs before each timed run: the median of its 3 times
    gives the machine's speed at that moment (the load moves within seconds).
    """
    run = make_run(draw.kind, draw.shape, np.random.default_rng(draw.seed), checks)
    tracemalloc.start()
    run()
    draw.peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times, refs = [], []
    for _ in range(3):
        refs.append(seconds(reference))
        times.append(seconds(run))
    draw.seconds = statistics.median(times)
    draw.speed = REFERENCE_SECONDS / statistics.median(refs)


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_reference() -> Callable[[], object]:
    """A short fixed workload (about 5 ms): the engine's BLAS products and loops, a Python loop of small calls."""
    rng = np.random.default_rng(0)
    U, V, W = weights(rng, 100, 2000)
    x, y = rng.integers(0, 2000, 40), rng.integers(0, 2000, 40)
    u, v, w = weights(rng, 30, 300)
    xs, ys = rng.integers(0, 300, 60), rng.integers(0, 300, 60)

    def work() -> None:
        engine.bptt(U, V, W, x, y)
        engine.bptt(u, v, w, xs, ys, 10)
        for t in range(len(xs)):  # like the checks' loops
            np.tanh(u[:, xs[t]] + w @ np.tanh(u[:, ys[t]]))

    work()
    return work


def load_checks(path: str | None) -> ModuleType:
    """service.checks, or a checks module read from ``path`` (as a module of the service package)."""
    if path is None:
        from service import checks

        return checks
    spec = importlib.util.spec_from_file_location("service._checks_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def draw_all(args: argparse.Namespace, machine: costs.Machine) -> list[Draw]:
    rng = np.random.default_rng(args.seed)
    draws = []
    for kind in KINDS:
        got = 0
        while got < args.draws:
            shape = shape_of(kind, rng)
            estimate = predict(kind, shape, machine)
            too_big = estimate.seconds > args.budget or estimate.bytes > args.max_bytes
            if too_big or (estimate.seconds < FLOOR and rng.random() < 0.6):
                continue  # too slow or large to run here, or one more of the many quick ones
            draws.append(Draw(kind, shape, int(rng.integers(2**32)), estimate))
            got += 1
    return draws


def nnls(A: np.ndarray, b: np.ndarray, iterations: int = 500) -> np.ndarray:
    """min ||A x - b|| with x >= 0 (Lawson and Hanson's active set method)."""
    n = A.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iterations):
        gradient = A.T @ (b - A @ x)
        if passive.all() or gradient[~passive].max() <= 1e-12 * np.abs(gradient).max():
            break
        passive[np.argmax(np.where(passive, -np.inf, gradient))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            bad = passive & (z <= 0)
            alpha = np.min(x[bad] / (x[bad] - z[bad]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
    return x


def fit(draws: list[Draw]) -> costs.Machine:
    """Seconds per unit from the measured draws, scaled to put predicted / measured in [1, 2].

    Non-negative least squares on the relative error first; then each constant
    in turn is scaled (or, at zero, tried at a few sizes) to narrow the spread of
    log(predicted / measured) over the draws measured at >= 10 ms (its 1.5th to
    98.5th percentile); last, one margin centres that spread in [1, 2].
    """
    units = costs.UNITS
    zero = {u: 0.0 for u in units}
    A = np.array(
        [
            [predict(d.kind, d.shape, costs.Machine(**{**zero, u: 1.0}, baseline_bytes=0)).seconds for u in units]
            for d in draws
        ]
    )
    t = np.array([d.seconds * d.speed for d in draws])  # as on the calibration machine
    scale = A.max(axis=0)
    scale[scale == 0] = 1.0
    x = nnls(A / t[:, None] / scale, np.ones(len(t))) / scale  # every draw's relative error weighs the same
    big = t >= 0.005

    def spread(x: np.ndarray) -> float:
        r = np.log(np.maximum(A[big] @ x, 1e-12) / t[big])
        return float(np.percentile(r, 98.5) - np.percentile(r, 1.5))

    for _ in range(4):
        for i in range(len(units)):
            used = A[big, i] > 0
            if not used.any():
                continue
            typical = float(np.median(t[big][used] / A[big, i][used]))
            trials = [x[i] * f for f in (0.0, 0.5, 0.7, 0.85, 1.0, 1.2, 1.4, 2.0)]
            if x[i] == 0:
                trials += [typical * f for f in (0.01, 0.03, 0.1)]
            best = min(trials, key=lambda v: spread(np.where(np.arange(len(x)) == i, v, x)))
            x[i] = best
    r = np.log(np.maximum(A[big] @ x, 1e-12) / t[big])
    centre = (np.percentile(r, 98.5) + np.percentile(r, 1.5)) / 2
    margin = float(np.exp(np.log(2) / 2 - centre))
    inside = np.mean(np.abs(r + np.log(margin) - np.log(2) / 2) <= np.log(2) / 2)
    print(f"fit: spread x{math.exp(spread(x)):.2f}, margin x{margin:.3f}, {inside:.1%} of draws >= 5 ms in [1, 2]")
    return replace(costs.DEFAULT, **{u: float(f"{v * margin:.3g}") for u, v in zip(units, x, strict=True)})


def report(draws: list[Draw], speed: float) -> str:
    header = ["route", "draws", ">= 20 ms", "in [1, 2]", "worst low", "worst high", "mem worst", "mem median"]
    rows = []
    outside_total = counted_total = below = 0
    for kind in KINDS:
        ds = [d for d in draws if d.kind == kind]
        big = [d for d in ds if d.predicted.seconds >= FLOOR]
        r = [d.predicted.seconds / d.seconds for d in big]
        inside = sum(1 <= x <= 2 for x in r)
        outside_total += len(big) - inside
        counted_total += len(big)
        mem = [d.predicted.bytes / d.peak for d in ds]
        below += sum(m < 1 for m in mem)
        rows.append(
            [
                kind,
                len(ds),
                len(big),
                f"{inside / len(big):.1%}" if big else "-",
                f"{min(r):.2f}" if r else "-",
                f"{max(r):.2f}" if r else "-",
                f"{min(mem):.3f}",
                f"{statistics.median(mem):.2f}",
            ]
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    speeds = [d.speed for d in draws]
    lines = [
        f"speed factor {speed:.2f} at the start; {min(speeds):.2f} to {max(speeds):.2f} over the run, "
        "measured beside every draw (its predictions are divided by it)",
        "",
    ]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines += [
        "",
        "in [1, 2]: predicted / measured seconds within [1, 2], of the draws predicted >= 20 ms;",
        "worst low / high: the smallest and largest predicted / measured of those;",
        "mem worst / median: predicted / measured peak bytes (tracemalloc), every draw (>= 1 is safe).",
        f"outside [1, 2]: {outside_total} of {counted_total} draws predicted >= 20 ms "
        f"({1 - outside_total / max(counted_total, 1):.1%} inside); memory above the prediction: {below} draws",
    ]
    for d in draws:
        low_memory = d.predicted.bytes < d.peak
        if low_memory or (d.predicted.seconds >= FLOOR and not 1 <= d.predicted.seconds / d.seconds <= 2):
            lines.append(
                f"  {d.kind}: predicted {d.predicted.seconds * 1e3:.1f} ms measured {d.seconds * 1e3:.1f} ms, "
                f"bytes {d.predicted.bytes:,} / {d.peak:,}  {_short(d.shape)}"
            )
    return "\n".join(lines)


def _short(shape: dict[str, Any]) -> str:
    out = dict(shape)
    if len(out.get("lengths", [])) > 3:
        lengths = out.pop("lengths")
        out["B"], out["T_max"], out["N"] = len(lengths), max(lengths), sum(lengths)
    return str(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="store_true", help="refit the constants instead of checking them")
    parser.add_argument("--draws", type=int, default=200, help="draws per route kind")
    parser.add_argument("--budget", type=float, default=0.3, help="largest predicted seconds of one draw")
    parser.add_argument("--max-bytes", type=float, default=1e9, help="largest predicted peak bytes of one draw")
    parser.add_argument("--seed", type=int, default=None, help="the draws' seed (default: 1 checking, 2 fitting)")
    parser.add_argument("--checks", default=None, help="read the checks module from this file")
    parser.add_argument("--save", default=None, help="write the draws and their measurements to this JSON file")
    parser.add_argument("--load", default=None, help="read draws measured before (--save) instead of measuring")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = 2 if args.fit else 1
    tune_malloc()  # as the service runs
    checks = load_checks(args.checks)
    started = time.perf_counter()
    reference = make_reference()
    ref = statistics.median(seconds(reference) for _ in range(15))
    speed = REFERENCE_SECONDS / ref
    machine = replace(costs.DEFAULT, speed=speed)
    print(f"reference workload: {ref * 1e3:.1f} ms (calibration: {REFERENCE_SECONDS * 1e3:.1f} ms)")
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        draws = [Draw(d["kind"], d["shape"], 0, predict(d["kind"], d["shape"], machine)) for d in saved]
        for d, m in zip(draws, saved, strict=True):
            d.seconds, d.peak, d.speed = m["seconds"], m["peak"], m.get("speed", 1.0)
    else:
        draws = draw_all(args, machine)
        order = np.random.default_rng(args.seed).permutation(len(draws))  # kinds interleaved: the load drifts
        for i, k in enumerate(order):
            measure(draws[k], reference, checks)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1} of {len(draws)} draws measured, {time.perf_counter() - started:.0f} s", flush=True)
    for d in draws:
        d.predicted = predict(d.kind, d.shape, replace(costs.DEFAULT, speed=d.speed))
    if args.save:
        saved = [
            {"kind": d.kind, "shape": d.shape, "seconds": d.seconds, "peak": d.peak, "speed": d.speed} for d in draws
        ]
        Path(args.save).write_text(json.dumps(saved))
    if args.fit:
        fitted = fit(draws)
        print(", ".join(f"{f.name}={getattr(fitted, f.name)!r}" for f in fields(fitted)))
        draws = [replace(d, predicted=predict(d.kind, d.shape, replace(fitted, speed=d.speed))) for d in draws]
    print(report(draws, speed))
    print(f"\n{len(draws)} draws in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
