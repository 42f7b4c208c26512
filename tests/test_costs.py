"""service.costs: the estimates move the right way, count what the engine does, and cover its memory.

Timing is checked by benchmarks/bench_costs.py, never here: these tests are
deterministic. The memory tests run the real engine under tracemalloc and
compare its peak with the predicted bytes.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from service import checks, costs, engine
from service.errors import InputError

BASE: dict[str, Any] = {"lengths": [200], "H": 50, "C": 300, "K": None}


def unit(name: str) -> costs.Machine:
    """A machine on which one unit of ``name`` takes a second and everything else nothing: seconds count it."""
    return costs.Machine(**{u: 0.0 for u in costs.UNITS if u != name}, **{name: 1.0})


def estimate(**changes: Any) -> costs.Estimate:
    return costs.bptt(**{**BASE, **changes})


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes numpy (and Python) allocated while fn ran, by tracemalloc; after one untraced call, which
    compiles the engine's loops (service/kernel.py) when this test runs first: start-up work, which the
    service does in its self-check, not a request's memory."""
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def weights(rng: np.random.Generator, H: int, C: int, dtype: type = np.float64) -> tuple[np.ndarray, ...]:
    U = rng.uniform(-1, 1, (H, C)) / np.sqrt(C)
    V = rng.uniform(-1, 1, (C, H)) / np.sqrt(H)
    W = rng.uniform(-1, 1, (H, H)) / np.sqrt(H)
    return tuple(a.astype(dtype) for a in (U, V, W))


# -- direction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("lengths", [[1], [10], [100], [1000], [5000]]),
        ("H", [1, 10, 50, 200, 800]),
        ("C", [1, 10, 300, 3000, 30000]),
        ("K", [0, 1, 10, 100, 198]),  # truncated; K >= T - 1 is the full pass
    ],
)
def test_bptt_monotone_in_each_dimension(name: str, values: list[Any]) -> None:
    """More of any dimension never costs less time or memory, and costs more time."""
    estimates = [estimate(**{name: v}) for v in values]
    for small, large in itertools.pairwise(estimates):
        assert large.seconds > small.seconds
        assert large.bytes >= small.bytes


def test_bptt_monotone_in_batch_and_options() -> None:
    """Another sequence, float64 over float32, biases, clipping, a trace, a gated cell: each adds."""
    pairs = [
        ({"lengths": [200, 50]}, {"lengths": [200, 50, 50]}),
        ({"lengths": [200, 50]}, {"lengths": [200, 200]}),
        ({"itemsize": 4}, {"itemsize": 8}),
        ({}, {"biases": True}),
        ({}, {"clip": True}),
        ({}, {"trace": True}),
        ({"cell": "rnn"}, {"cell": "gru"}),
        ({"cell": "gru"}, {"cell": "lstm"}),
    ]
    for less, more in pairs:
        a, b = estimate(**less), estimate(**more)
        assert b.seconds > a.seconds, (less, more)
        assert b.bytes >= a.bytes, (less, more)


def test_checks_monotone() -> None:
    """The gradient check grows with samples and T; compare with T and C."""
    sizes = [50 * 300, 300 * 50, 50 * 50]
    check = [costs.gradient_check(T=20, H=50, C=300, K=None, samples=n, sizes=sizes) for n in (1, 10, 100, 1000)]
    assert [e.seconds for e in check] == sorted({e.seconds for e in check})
    longer = costs.gradient_check(T=40, H=50, C=300, K=None, samples=10, sizes=sizes)
    assert longer.seconds > check[1].seconds
    base = costs.compare(T=20, H=50, C=300, K=None)
    assert costs.compare(T=40, H=50, C=300, K=None).seconds > base.seconds
    assert costs.compare(T=20, H=50, C=3000, K=None).seconds > base.seconds
    assert costs.compare(T=20, H=50, C=3000, K=None).bytes > base.bytes


# -- what the engine does -----------------------------------------------------------


def test_bptt_skewed_batch_costs_its_padding() -> None:
    """One sequence of T = 10,000 and a thousand of one token: the recurrence runs over T_max x B."""
    H, C = 100, 50
    skewed = costs.bptt(lengths=[10_000] + [1] * 1000, H=H, C=C, K=None)
    padded = costs.bptt(lengths=[10_000] * 1001, H=H, C=C, K=None)
    alone = costs.bptt(lengths=[10_000], H=H, C=C, K=None)
    # The recurrence does the work of the fully padded batch, whatever the lengths.
    assert skewed.terms["recurrence"] == pytest.approx(padded.terms["recurrence"])
    assert skewed.terms["recurrence"] > 20 * alone.terms["recurrence"]
    # S, dtanh, dz, s_prev (and dLds, padded) are T_max x B x H float64 each: several at once.
    state = 10_000 * 1001 * H * 8
    assert skewed.bytes > 5 * state
    # The output layer's three products have N = 11,000 rows, not T_max x B.
    products = costs.bptt(lengths=[10_000] + [1] * 1000, H=H, C=C, K=None, machine=unit("large_madd"))
    assert products.terms["output layer"] == 3 * 11_000 * H * C


def test_bptt_truncation_close_to_T_is_quadratic() -> None:
    """K = T - 2 runs T - 2 lags of up to T rows each: far more than the one backward pass."""
    T, H, C = 2000, 100, 100
    full = costs.bptt(lengths=[T], H=H, C=C, K=None)
    near = costs.bptt(lengths=[T], H=H, C=C, K=T - 2)
    short = costs.bptt(lengths=[T], H=H, C=C, K=5)
    assert near.seconds > 20 * full.seconds
    assert near.terms["recurrence"] > 100 * short.terms["recurrence"] > 0
    assert costs.bptt(lengths=[T], H=H, C=C, K=T - 1).seconds == pytest.approx(full.seconds)  # the full pass


def test_bptt_counts_W_with_C_1() -> None:
    """H = 3000, C = 1: C x H is tiny, but T steps of a 3000 x 3000 product take seconds."""
    e = costs.bptt(lengths=[1000], H=3000, C=1, K=None)
    assert e.seconds > 1.0
    assert e.terms["recurrence"] > 0.7 * e.seconds
    assert e.bytes > 2 * 3000 * 3000 * 8  # WT in the forward pass, dLdW


def test_bptt_default_size_request_in_sane_range() -> None:
    """The tutorial's model (C = 8000, H = 100) on a 50-token sentence: milliseconds, tens of MB."""
    e = costs.bptt(lengths=[50], H=100, C=8000, K=None)
    assert 1e-3 < e.seconds < 0.2
    # dLdU and dLdV (6.4 MB each), the (50, 8000) delta_o: above 12.8 MB, below 64 MB.
    assert 12_800_000 < e.bytes < 64_000_000
    assert e.terms["output layer"] > e.terms["recurrence"]
    truncated = costs.bptt(lengths=[50], H=100, C=8000, K=4)
    assert 1e-3 < truncated.seconds < 0.2


def test_estimate_terms_sum_to_seconds_and_speed_divides() -> None:
    e = estimate(K=20, biases=True, trace=True)
    assert sum(e.terms.values()) == pytest.approx(e.seconds)
    assert set(e.terms) >= {"setup", "recurrence", "output layer", "gradients", "trace"}
    fast = estimate(K=20, biases=True, trace=True, machine=replace(costs.DEFAULT, speed=2.0))
    assert fast.seconds == pytest.approx(e.seconds / 2)
    assert fast.bytes == e.bytes
    for part in ("gradient_check", "compare"):
        plain = getattr(costs, part)(
            T=30, H=20, C=100, K=None, **({"samples": 5, "sizes": [1]} if part[0] == "g" else {})
        )
        assert sum(plain.terms.values()) == pytest.approx(plain.seconds)


def test_estimate_add_sums_time_and_takes_the_larger_peak() -> None:
    a = costs.Estimate(seconds=1.0, bytes=100, terms={"x": 1.0})
    b = costs.Estimate(seconds=0.5, bytes=300, terms={"x": 0.25, "y": 0.25})
    c = a + b
    assert c == costs.Estimate(seconds=1.5, bytes=300, terms={"x": 1.25, "y": 0.25})
    assert a.holding(50).bytes == 150


def test_machine_seconds_is_linear_in_the_work() -> None:
    m = costs.Machine(step=2.0, op=3.0, speed=4.0)
    assert m.seconds({"step": 10, "op": 1}) == pytest.approx((20 + 3) / 4)
    assert set(costs.UNITS) >= {"step", "small_madd", "large_madd", "element", "page_byte"}
    assert all(getattr(costs.DEFAULT, u) >= 0 for u in costs.UNITS)


@pytest.mark.parametrize(
    ("call", "field", "words"),
    [
        (lambda: costs.bptt(lengths=[], H=5, C=5, K=None), "lengths", "got none"),
        (lambda: costs.bptt(lengths=[3, 0], H=5, C=5, K=None), "lengths[1]", "got 0"),
        (lambda: costs.bptt(lengths=[3], H=0, C=5, K=None), "H", ">= 1, got 0"),
        (lambda: costs.bptt(lengths=[3], H=5, C=5, K=-1), "bptt_truncate", "got -1"),
        (lambda: costs.bptt(lengths=[3], H=5, C=5, K=None, itemsize=2), "itemsize", "got 2"),
        (lambda: costs.bptt(lengths=[3], H=5, C=5, K=None, cell="gru2"), "cell", "'gru2'"),
        (lambda: costs.bptt(lengths=[3, 4], H=5, C=5, K=None, trace=True), "trace", "got 2"),
        (lambda: costs.gradient_check(T=3, H=5, C=5, K=None, samples=0, sizes=[1]), "samples", "got 0"),
    ],
)
def test_costs_refuse_impossible_shapes(call: Callable[[], object], field: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        call()
    assert info.value.field == field
    assert words in info.value.message


# -- memory against tracemalloc -------------------------------------------------------

SHAPES = [
    # (lengths, H, C, K, itemsize, biases, clip)
    ([60], 30, 400, None, 8, False, False),
    ([60], 30, 400, 7, 8, False, False),
    ([60], 30, 400, 58, 4, True, True),
    ([3], 300, 20, None, 8, False, True),  # H x H is the largest array
    ([80, 5, 3, 1, 12], 40, 200, None, 8, False, False),  # padded
    ([80, 5, 3, 1, 12], 40, 200, 10, 4, True, False),
    ([1] * 40, 16, 2000, None, 8, False, False),  # many one-token sequences
    ([500], 8, 50, 499, 8, False, False),
    ([2] + [1] * 80, 1505, 565, None, 8, False, True),  # clip with the batch's (B, H) S0 still alive
    ([400, 300, 500], 16, 12000, None, 8, True, False),  # the output layer in chunks of 174 rows (16 MiB)
    ([1500], 8, 6000, 3, 4, False, False),  # float32: chunks of 699 rows
]


@pytest.mark.parametrize(("lengths", "H", "C", "K", "itemsize", "biases", "clip"), SHAPES)
def test_bptt_predicted_bytes_cover_measured_peak(
    lengths: list[int], H: int, C: int, K: int | None, itemsize: int, biases: bool, clip: bool
) -> None:
    """The engine's peak under tracemalloc is at most the prediction, and not far below it."""
    rng = np.random.default_rng(sum(lengths) + H + C)
    dtype = np.float32 if itemsize == 4 else np.float64
    U, V, W = weights(rng, H, C, dtype)
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    extra: dict[str, Any] = {"clip": 0.01 if clip else None}
    if biases:
        extra.update(b=np.zeros(H, dtype), c=np.zeros(C, dtype))
    if len(lengths) == 1:
        measured = peak_bytes(lambda: engine.bptt(U, V, W, xs[0], ys[0], K, **extra))
    else:
        measured = peak_bytes(lambda: engine.bptt_batch(U, V, W, xs, ys, K, **extra))
    predicted = costs.bptt(lengths=lengths, H=H, C=C, K=K, itemsize=itemsize, biases=biases, clip=clip).bytes
    assert measured <= predicted
    assert predicted <= 1.5 * measured + costs.DEFAULT.baseline_bytes


@pytest.mark.parametrize(("T", "H", "C", "K"), [(40, 20, 300, None), (40, 20, 300, 5), (120, 6, 40, None)])
def test_trace_predicted_bytes_cover_measured_peak(T: int, H: int, C: int, K: int | None) -> None:
    """bptt, then trace with bptt's gradients held (as the route does)."""
    rng = np.random.default_rng(T + H)
    U, V, W = weights(rng, H, C)
    x, y = rng.integers(0, C, T), rng.integers(0, C, T)

    def route() -> object:
        g = engine.bptt(U, V, W, x, y, K)
        return g, engine.trace(U, V, W, x, y, K)

    measured = peak_bytes(route)
    predicted = costs.bptt(lengths=[T], H=H, C=C, K=K, trace=True).bytes
    assert measured <= predicted <= 1.5 * measured + costs.DEFAULT.baseline_bytes


@pytest.mark.parametrize(
    ("T", "H", "C", "K", "samples", "given"), [(10, 8, 300, None, 20, ()), (6, 30, 40, 3, 5, ("b", "c"))]
)
def test_gradient_check_predicted_bytes_cover_measured_peak(
    T: int, H: int, C: int, K: int | None, samples: int, given: tuple[str, ...]
) -> None:
    rng = np.random.default_rng(T * H)
    U, V, W = weights(rng, H, C)
    arrays: dict[str, Any] = {"U": U, "V": V, "W": W, "x": rng.integers(0, C, T), "y": rng.integers(0, C, T)}
    arrays["bptt_truncate"] = K
    sizes = [H * C, C * H, H * H]
    for name in given:
        arrays[name] = rng.uniform(-0.1, 0.1, C if name == "c" else H)
        sizes.append(C if name == "c" else H)
    measured = peak_bytes(lambda: checks.gradient_check(arrays, samples=samples))
    predicted = costs.gradient_check(T=T, H=H, C=C, K=K, samples=samples, sizes=sizes).bytes
    assert measured <= predicted


@pytest.mark.parametrize(("T", "H", "C", "K"), [(12, 10, 500, None), (12, 10, 500, 3), (5, 40, 30, 1)])
def test_compare_predicted_bytes_cover_measured_peak(T: int, H: int, C: int, K: int | None) -> None:
    """A failing submission: the report and every candidate mistake run."""
    rng = np.random.default_rng(T * C)
    U, V, W = weights(rng, H, C)
    arrays = {"U": U, "V": V, "W": W, "x": rng.integers(0, C, T), "y": rng.integers(0, C, T), "bptt_truncate": K}
    submitted = {n: rng.standard_normal(a.shape) for n, a in (("dLdU", U), ("dLdV", V), ("dLdW", W))}
    measured = peak_bytes(lambda: checks.compare(arrays, submitted))
    assert measured <= costs.compare(T=T, H=H, C=C, K=K).bytes
