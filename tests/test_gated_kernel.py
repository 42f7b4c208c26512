"""The gated engine's compiled loops (service/gated_kernel.py) against its numpy loops, the reference.

numba is in the test extra: without it these tests fail (they never skip), as in tests/test_kernel.py.
tests/test_gated.py checks whichever loops the engine chooses (the compiled ones at its sizes) against
PyTorch; here the two paths are held to each other on every shape, batched and masked.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import engine, gated, gated_kernel, kernel
from service.deadline import Deadline, bounded
from service.errors import Cancelled

SLOW_AND_PATCHED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
RESULTS = ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses", "dLdb", "dLdb_hh", "dLdc", "dLdc0", "final_cell")
CELLS = [("gru", False), ("gru", True), ("lstm", False)]  # (cell, reset_after)


@pytest.fixture
def everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The compiled loops on every shape, whatever ``gated_kernel.pays`` would choose."""
    monkeypatch.setattr(gated_kernel, "GATED_MAX_BGHH", 1 << 62)
    monkeypatch.setattr(gated_kernel, "GATED_MAX_GHH_ONE", 1 << 62)
    yield
    engine.use_kernel("auto")


def _draw(data: st.DataObject, dtype: type) -> tuple[str, tuple, dict, int | None]:
    cell, reset_after = data.draw(st.sampled_from(CELLS), label="cell")
    G = len(gated.GATES[cell])
    B = data.draw(st.integers(1, 4), label="B")
    H = data.draw(st.integers(1, 10), label="H")
    C = data.draw(st.integers(1, 9), label="C")
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=B, max_size=B), label="lengths")
    K = data.draw(st.one_of(st.none(), st.integers(0, 10)), label="K")
    scale = data.draw(st.sampled_from([0.5, 1.0, 2.0]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    U, V, W = (rng.uniform(-scale, scale, shape).astype(dtype) for shape in ((G, H, C), (C, H), (G, H, H)))
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    options: dict = {"reset_after": reset_after}
    if data.draw(st.booleans(), label="s0"):
        options["s0"] = rng.uniform(-1, 1, (B, H)).astype(dtype)
    if cell == "lstm" and data.draw(st.booleans(), label="c0"):
        options["c0"] = rng.uniform(-1, 1, (B, H)).astype(dtype)
    for name, shape in (("b", (G, H)), ("b_hh", (G, H)), ("c", (C,))):
        if data.draw(st.booleans(), label=name):
            options[name] = rng.uniform(-1, 1, shape).astype(dtype)
    return cell, (U, V, W, xs, ys), options, K


def _both(cell: str, args: tuple, options: dict, K: int | None):
    assert engine.use_kernel("numpy") == "numpy"
    want = gated.bptt_batch(cell, *args, bptt_truncate=K, **options)
    assert engine.use_kernel("numba") == "numba"
    got = gated.bptt_batch(cell, *args, bptt_truncate=K, **options)
    return want, got


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=SLOW_AND_PATCHED)
@given(data=st.data())
def test_gated_kernel_float64_equals_numpy(everywhere, data):
    """GRU (both forms) and LSTM, full and truncated, batched with masks, with and without s0, c0, biases."""
    cell, args, options, K = _draw(data, np.float64)
    want, got = _both(cell, args, options, K)
    assert got.loss == pytest.approx(want.loss, rel=1e-12, abs=1e-300)
    for name in RESULTS:
        if getattr(want, name) is None:
            assert getattr(got, name) is None, name
        else:
            assert_close(getattr(got, name), getattr(want, name), rtol=1e-12)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=SLOW_AND_PATCHED)
@given(data=st.data())
def test_gated_kernel_float32_within_float32_tolerance(everywhere, data):
    cell, args, options, K = _draw(data, np.float32)
    want, got = _both(cell, args, options, K)
    assert got.dLdW.dtype == np.float32 and got.dLdU.dtype == np.float32
    for name in RESULTS:
        if getattr(want, name) is not None:
            assert_close(getattr(got, name), getattr(want, name), rtol=1e-4)


@pytest.mark.parametrize(("cell", "reset_after"), CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gated_kernel_at_dispatch_size_past_one_chunk(rng, cell, reset_after, dtype):
    """The tutorial's H = 100, one sequence, T past one chunk of steps (the deadline is checked between),
    C = 4,000: dLdU (4.8 MB and more) streamed (gated_kernel.STREAM_MIN_BYTES)."""
    G, H, C = len(gated.GATES[cell]), 100, 4000
    assert G * H * C * np.dtype(dtype).itemsize >= gated_kernel.STREAM_MIN_BYTES
    T = 3 * gated_kernel._steps(1, G, H) + 5
    U, W = (rng.uniform(-1, 1, s) / np.sqrt(H) for s in ((G, H, C), (G, H, H)))
    V = rng.uniform(-1, 1, (C, H)) / np.sqrt(H)
    x, y = rng.integers(0, C, T), rng.integers(0, C, T)
    args = [a.astype(dtype) for a in (U, V, W)]
    assert gated._compiled((T, 1, G, H))  # the engine chooses the compiled loops at this size
    engine.use_kernel("numpy")
    try:
        want = gated.bptt(cell, *args, x, y, reset_after=reset_after)
    finally:
        engine.use_kernel("auto")
    got = gated.bptt(cell, *args, x, y, reset_after=reset_after)
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state"):
        assert_close(getattr(got, name), getattr(want, name), rtol=rtol)


def test_gated_kernel_takes_read_only_and_strided_arrays(rng):
    """Arrays from a request body are read-only (np.frombuffer) and may be transposed views."""
    G, H, C, T = 4, 3, 5, 6
    U, W = rng.uniform(-1, 1, (G, H, C)), rng.uniform(-1, 1, (G, H, H))
    V = np.asfortranarray(rng.uniform(-1, 1, (C, H)))
    x, y = rng.integers(0, C, T), rng.integers(0, C, T)
    s0 = rng.uniform(-1, 1, H)
    for a in (U, V, W, s0):
        a.flags.writeable = False
    got = gated.bptt("lstm", U, V, W, x, y, s0=s0)
    engine.use_kernel("numpy")
    try:
        want = gated.bptt("lstm", U, V, W, x, y, s0=s0)
    finally:
        engine.use_kernel("auto")
    assert_close(got.dLdW, want.dLdW, rtol=1e-12)
    assert_close(got.dLds0, want.dLds0, rtol=1e-12)


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gated_kernel_columns_equal_numpy_scatter(rng, dtype, streamed):
    """dLdU from the column sums: zeros but for the tokens' columns, at every offset from a 64-byte line
    (the streamed form writes whole lines, the entries before the first and after the last one by one)."""
    L = 64 // np.dtype(dtype).itemsize
    for offset in range(L + 1):
        for R, C in ((3, 50), (1, 7), (5, 1), (2, 40), (13, 33), (4, 8)):
            D = int(rng.integers(1, min(C, 10) + 1))
            tokens = np.sort(rng.choice(C, D, replace=False)).astype(np.intp)
            sums = rng.standard_normal((R, D)).astype(dtype)
            raw = np.full(R * C + 2 * L, 7, dtype)
            out = raw[offset : offset + R * C].reshape(R, C)
            gated_kernel._fill_columns(out, tokens, sums, streamed=streamed)
            want = np.zeros((R, C), dtype)
            want[:, tokens] = sums
            np.testing.assert_array_equal(out, want)
            assert (raw[:offset] == 7).all() and (raw[offset + R * C :] == 7).all()  # nothing outside


def test_gated_kernel_columns_streams_from_its_size(monkeypatch, rng):
    tokens, sums = np.array([1, 4], dtype=np.intp), rng.standard_normal((3, 2))
    for size in (0, 1 << 62):
        monkeypatch.setattr(gated_kernel, "STREAM_MIN_BYTES", size)
        got = gated_kernel.columns(tokens, sums, 6)
        want = np.zeros((3, 6))
        want[:, tokens] = sums
        np.testing.assert_array_equal(got, want)


def test_gated_kernel_chosen_where_measured_faster():
    engine.use_kernel("numba")
    assert gated._compiled((50, 1, 4, 100))
    assert gated._compiled((50, 1, 3, 100))
    assert gated._compiled((50, 4, 3, 100))
    assert gated._compiled((50, 1, 4, 256))
    assert not gated._compiled((50, 4, 4, 100))
    assert not gated._compiled((50, 1, 4, 300))
    assert not gated._compiled((50, 64, 4, 100))
    engine.use_kernel("numpy")
    assert not gated._compiled((50, 1, 4, 100))
    engine.use_kernel("auto")


def test_gated_engine_falls_back_to_numpy_without_numba(monkeypatch, rng):
    monkeypatch.setattr(kernel, "AVAILABLE", False)
    monkeypatch.setattr(gated_kernel, "AVAILABLE", False)
    try:
        assert engine.use_kernel("auto") == "numpy"
        assert not gated._compiled((5, 1, 3, 4))
        U, V, W = rng.uniform(-1, 1, (3, 4, 5)), rng.uniform(-1, 1, (5, 4)), rng.uniform(-1, 1, (3, 4, 4))
        g = gated.bptt("gru", U, V, W, np.array([1, 2]), np.array([3, 4]))
        assert np.isfinite(g.loss)
    finally:
        monkeypatch.undo()
        engine.use_kernel("auto")


def test_gated_kernel_warm_up_compiles_through_kernel_warm_up():
    kernel.warm_up()  # the readiness self-check's call: compiles the gated loops too
    compiled = gated_kernel._compiled()
    assert all(len(loop.signatures) >= 2 for loop in compiled)  # float64 and float32, the streamed columns too


def test_gated_kernel_stops_at_the_deadline():
    """The compiled loops check the deadline between chunks of steps, as the numpy loops do between steps."""
    A3, A4, S = np.zeros((10, 1, 3, 4)), np.zeros((10, 1, 4, 4)), np.zeros((10, 1, 4))
    deadline = Deadline(60)
    with bounded(deadline):
        deadline.cancel()
        for call in (
            lambda: gated_kernel.gru_forward(A3, np.zeros((3, 4, 4)), S[0], False, None),
            lambda: gated_kernel.lstm_forward(A4, np.zeros((4, 4, 4)), S[0], S[0]),
            lambda: gated_kernel.gru_backward_full(np.zeros((3, 4, 4)), A3, S, None, S),
            lambda: gated_kernel.lstm_backward_full(np.zeros((4, 4, 4)), A4, S, S, S),
        ):
            with pytest.raises(Cancelled):
                call()
