"""The compiled loops (service/kernel.py) against the engine's numpy loops, the reference.

numba is in the test extra: without it these tests fail (they never skip), so CI
tests both paths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import codec, engine, kernel, ops
from service.deadline import Deadline, bounded
from service.errors import Cancelled, ComputeError

# `everywhere` patches two constants, the same for every example: safe to share across them.
SLOW_AND_PATCHED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
GRADIENTS = ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses", "dLdb", "dLdc")


@pytest.fixture
def everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The compiled loops on every shape, whatever ``kernel.pays`` would choose."""
    monkeypatch.setattr(kernel, "RECUR_MAX_BH", 1 << 62)
    monkeypatch.setattr(kernel, "BACKWARD_MAX_BHH", 1 << 62)
    monkeypatch.setattr(kernel, "FUSED_MAX_FLOPS", -1)  # one sequence too: the loops, not bptt_one
    yield
    engine.use_kernel("auto")


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """The shapes of U that kernel.bptt_one computed, to show that a test went through it."""
    calls: list[tuple[int, ...]] = []
    real = kernel.bptt_one

    def counted(*args: Any, **kwargs: Any) -> kernel.OneSequence:
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel, "bptt_one", counted)
    yield calls
    engine.use_kernel("auto")


# Weights of up to 3 saturate tanh and make the recurrence ill-conditioned: there the order of a sum
# (numpy's BLAS against the kernel's loops) shows at 1.8e-12 (float64) and 1.1e-4 (float32) in the worst
# cases hypothesis found, against 5e-13 over 1,500 random draws and 3e-13 at scales up to 1. The bound is
# 1e-12 up to scale 1 and 1e-10 past it (float32: 1e-5 and 1e-3); the draws are derandomised (the same
# examples every run), so that CI does not go hunting for the worst conditioning anew each time.
RTOL_BY_SCALE = {0.5: 1e-12, 1.0: 1e-12, 3.0: 1e-10}


def _draw(data: st.DataObject, dtype: type, *, B: int | None = None) -> tuple[tuple[np.ndarray, ...], dict, int | None]:
    B = data.draw(st.integers(1, 4), label="B") if B is None else B
    H = data.draw(st.integers(1, 12), label="H")
    C = data.draw(st.integers(1, 9), label="C")
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=B, max_size=B), label="lengths")
    K = data.draw(st.one_of(st.none(), st.integers(0, 10)), label="K")
    scale = data.draw(st.sampled_from([0.5, 1.0, 3.0]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    U, V, W = (rng.uniform(-scale, scale, shape).astype(dtype) for shape in ((H, C), (C, H), (H, H)))
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    options: dict = {}
    if data.draw(st.booleans(), label="s0"):
        options["s0"] = rng.uniform(-1, 1, (B, H)).astype(dtype)
    if data.draw(st.booleans(), label="b"):
        options["b"] = rng.uniform(-1, 1, H).astype(dtype)
    if data.draw(st.booleans(), label="c"):
        options["c"] = rng.uniform(-1, 1, C).astype(dtype)
    options["scale"] = scale
    return (U, V, W, xs, ys), options, K


def _both(args: tuple, options: dict, K: int | None) -> tuple[engine.BatchGradients, engine.BatchGradients]:
    assert engine.use_kernel("numpy") == "numpy"
    want = engine.bptt_batch(*args, bptt_truncate=K, **options)
    assert engine.use_kernel("numba") == "numba"
    got = engine.bptt_batch(*args, bptt_truncate=K, **options)
    return want, got


def test_kernel_is_installed():
    """numba comes with the test extra; a missing kernel is a failure here, not a skip."""
    assert kernel.AVAILABLE, "numba is not installed: pip install -e '.[test]' (the fast extra)"


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=SLOW_AND_PATCHED)
@given(data=st.data())
def test_kernel_float64_equals_numpy(everywhere, data):
    args, options, K = _draw(data, np.float64)
    rtol = RTOL_BY_SCALE[options.pop("scale")]
    want, got = _both(args, options, K)
    assert got.loss == pytest.approx(want.loss, rel=1e-12, abs=1e-300)
    for name in GRADIENTS:
        if getattr(want, name) is None:
            assert getattr(got, name) is None
        else:
            assert_close(getattr(got, name), getattr(want, name), rtol=rtol)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=SLOW_AND_PATCHED)
@given(data=st.data())
def test_kernel_float32_within_float32_tolerance(everywhere, data):
    args, options, K = _draw(data, np.float32)
    rtol = RTOL_BY_SCALE[options.pop("scale")] * 1e7  # float32's epsilon is 5e8 times float64's; 1e-5 up to scale 1
    want, got = _both(args, options, K)
    assert got.dLdW.dtype == np.float32
    for name in GRADIENTS:
        if getattr(want, name) is not None:
            assert_close(getattr(got, name), getattr(want, name), rtol=rtol)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=SLOW_AND_PATCHED)
@given(data=st.data())
def test_fused_float64_equals_numpy(fused_calls, data):
    """One sequence in one compiled call (kernel.bptt_one), full and truncated, with and without s0, b, c."""
    args, options, K = _draw(data, np.float64, B=1)
    rtol = RTOL_BY_SCALE[options.pop("scale")]
    before = len(fused_calls)
    want, got = _both(args, options, K)
    assert len(fused_calls) == before + 1  # the numba engine's call, not the numpy one
    assert got.loss == pytest.approx(want.loss, rel=1e-12, abs=1e-300)
    for name in GRADIENTS:
        if getattr(want, name) is None:
            assert getattr(got, name) is None
        else:
            assert getattr(got, name).shape == getattr(want, name).shape, name
            assert_close(getattr(got, name), getattr(want, name), rtol=rtol)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=SLOW_AND_PATCHED)
@given(data=st.data())
def test_fused_float32_within_float32_tolerance(fused_calls, data):
    args, options, K = _draw(data, np.float32, B=1)
    rtol = RTOL_BY_SCALE[options.pop("scale")] * 1e7
    want, got = _both(args, options, K)
    assert fused_calls
    for name in GRADIENTS:
        if getattr(want, name) is not None:
            assert getattr(got, name).dtype == np.float32, name
            assert_close(getattr(got, name), getattr(want, name), rtol=rtol)


def test_fused_at_the_character_model_size(fused_calls, rng):
    """C = 65, H = 32, T = 25 (the throughput benchmark's request) goes through bptt_one; the tutorial's
    C = 8000, H = 100, T = 50 does not (BLAS's products win there); both equal the numpy engine."""
    for C, H, T, fused in ((65, 32, 25, True), (8000, 100, 50, False)):
        U, V, W = rng.uniform(-1, 1, (H, C)) / 3, rng.uniform(-1, 1, (C, H)) / 3, rng.uniform(-1, 1, (H, H)) / H
        x, y, s0 = rng.integers(0, C, T), rng.integers(0, C, T), rng.uniform(-1, 1, H)
        assert kernel.fused_pays(T, H, C, None) is fused
        for K in (None, 4):
            engine.use_kernel("numpy")
            want = engine.bptt(U, V, W, x, y, bptt_truncate=K, s0=s0)
            engine.use_kernel("numba")
            fused_calls.clear()
            got = engine.bptt(U, V, W, x, y, bptt_truncate=K, s0=s0)
            assert bool(fused_calls) is fused
            assert got.loss == pytest.approx(want.loss, rel=1e-12)
            for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state"):
                assert_close(getattr(got, name), getattr(want, name), rtol=1e-12)


def _overflow_message(dtype: type, **weights: np.ndarray) -> str:
    x, y = np.array([0, 1, 2]), np.array([1, 2, 0])
    with pytest.raises(ComputeError) as raised:
        engine.bptt(weights["U"].astype(dtype), weights["V"].astype(dtype), weights["W"].astype(dtype), x, y)
    return str(raised.value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_names_an_overflow_as_the_numpy_engine_does(fused_calls, dtype):
    """A loss that overflows (huge V), and a gradient that grows through time past the dtype's range
    (U = 0 keeps the states at 0, so tanh' = 1 and dz_k = dLds_k + W^T dz_{k+1} grows as |W|^k)."""
    H, C = 2, 3
    top = float(np.finfo(dtype).max)
    huge = top**0.5 * 4
    cases = {  # tanh(2) = 0.96: two of them times 0.9 of the largest float overflow the logits
        "the loss": {"U": np.full((H, C), 2.0), "V": np.full((C, H), top * 0.9), "W": np.zeros((H, H))},
        "the gradient flowing back through time": {
            "U": np.zeros((H, C)),
            "V": np.arange(C * H).reshape(C, H) / 3,
            "W": np.full((H, H), huge),
        },
    }
    for name, weights in cases.items():
        engine.use_kernel("numpy")
        want = _overflow_message(dtype, **weights)
        engine.use_kernel("numba")
        got = _overflow_message(dtype, **weights)
        assert fused_calls
        assert f"{name} is not finite" in want
        assert got == want


FLOAT32_OVERFLOWS = {  # each overflows only in float32's sums: its parts are finite
    # the states stay 0 (U = W = 0): dz_k = V^T delta_o = -1.2e38 at each step, and token 0 read three times
    "dLdU": (
        {"U": np.zeros((1, 2)), "V": np.array([[-1.2e38], [1.2e38]]), "W": np.zeros((1, 1))},
        [0, 0, 0],
        [1, 1, 1],
    ),
    # three finite dz of 1.5e38 / 2 each, summed into dLdb
    "dLdb": (
        {"U": np.zeros((1, 3)), "V": np.array([[-1.5e38], [1.5e38], [0.0]]), "W": np.zeros((1, 1)),
         "b": np.zeros(1), "c": np.array([-40.0, 0.0, -40.0])},
        [0, 1, 2],
        [0, 1, 2],
    ),
    # logits of +-2e38 (s = tanh(10) = 1): the target's is 4e38 below the largest, past float32's range
    "the loss": ({"U": np.full((1, 2), 10.0), "V": np.array([[-2e38], [2e38]]), "W": np.zeros((1, 1))}, [0, 0], [0, 0]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FLOAT32_OVERFLOWS))
def test_fused_float32_overflow_in_sums_is_refused_as_numpy_does(fused_calls, name):
    """The loss and the overflow test's sums are kept in the arrays' dtype: float32 sums that overflow (while
    every number summed is finite) are refused by both engines, naming the same quantity."""
    weights, x, y = FLOAT32_OVERFLOWS[name]
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    messages = []
    for loops in ("numpy", "numba"):
        engine.use_kernel(loops)
        with pytest.raises(ComputeError) as raised:
            engine.bptt(
                arrays["U"], arrays["V"], arrays["W"], np.array(x), np.array(y), b=arrays.get("b"), c=arrays.get("c")
            )
        messages.append(str(raised.value))
    assert fused_calls
    assert f"{name} is not finite" in messages[0]
    assert messages[1] == messages[0]


def test_fused_refuses_ids_out_of_range_itself():
    """bptt_one's callers check the ids (and name the bad one); its compiled loops still refuse one out of
    range instead of reading or writing past U or the logits."""
    U, V, W = np.eye(3, 4), np.eye(4, 3), np.eye(3)
    with pytest.raises(IndexError, match="token id"):
        kernel.bptt_one(U, V, W, np.array([0, 4]), np.array([1, 2]), np.zeros(3), None, None, None)
    with pytest.raises(IndexError, match="target id"):
        kernel.bptt_one(U, V, W, np.array([0, 1]), np.array([1, -1]), np.zeros(3), None, None, None)


def test_fused_compiles_nothing_for_a_request_of_one_unit(fused_calls):
    """A request's arrays are read-only (decoded from its bytes) and, at H = 1, W.T is as contiguous as W:
    bptt_one still calls the signatures warm_up compiled, instead of compiling at the request (0.2 s)."""
    kernel.warm_up()
    before = [len(f.signatures) for f in kernel._compiled()]
    rng = np.random.default_rng(0)
    for dtype in ("float64", "float32"):
        U, V, W = (codec.from_bytes(rng.uniform(-1, 1, s).astype(dtype).tobytes(), dtype, s, "A", where="A")
                   for s in ((1, 4), (4, 1), (1, 1)))  # fmt: skip
        assert not W.flags.writeable
        engine.bptt(U, V, W, np.array([0, 3, 1]), np.array([3, 1, 2]))
    assert fused_calls
    assert [len(f.signatures) for f in kernel._compiled()] == before


def test_fused_keeps_small_and_underflowing_losses_exact(fused_calls):
    """A confident model's loss (log1p of the other classes' share: 1e-16 keeps its digits) and a target
    whose probability underflows (ln z - (a_y - max a): 900 nats, finite) equal the numpy engine's."""
    x, y = np.array([0, 1]), np.array([0, 0])
    U, W = np.array([[5.0, 5.0]]), np.zeros((1, 1))  # s_t = tanh(5), both steps
    s = np.tanh(5.0)
    for V, loss in (
        (np.array([[40.0], [0.0]]), 2 * np.log1p(np.exp(-40 * s))),
        (np.array([[-900.0], [0.0]]), 1800 * s),
    ):
        engine.use_kernel("numpy")
        want = engine.bptt(U, V, W, x, y)
        engine.use_kernel("numba")
        fused_calls.clear()
        got = engine.bptt(U, V, W, x, y)
        assert fused_calls
        assert want.loss == pytest.approx(loss, rel=1e-12)
        assert got.loss == pytest.approx(want.loss, rel=1e-12)
        assert_close(got.dLdV, want.dLdV, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_loops_equal_numpy_loops_at_dispatch_sizes(rng, dtype):
    """The loops themselves, at the sizes where the engine picks them, past one chunk of steps."""
    T, B, H = 300, 1, 100  # backward: 1 x 100 x 100 <= 20,000; chunks of 419 steps
    S = rng.uniform(-1, 1, (T, B, H)).astype(dtype)
    W = (rng.uniform(-1, 1, (H, H)) / np.sqrt(H)).astype(dtype)
    S0 = rng.uniform(-1, 1, (B, H)).astype(dtype)
    WT = np.ascontiguousarray(W.T)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert_close(kernel.recur(S.copy(), WT, S0), engine._recur(S.copy(), WT, S0), rtol=rtol)
    dtanh = 1 - S * S
    assert_close(kernel.backward_full(W, S, dtanh), engine._backward_full(W, S, dtanh), rtol=rtol)


def test_kernel_takes_read_only_and_strided_arrays(rng):
    """Arrays from a request body are read-only (np.frombuffer) and may be transposed views."""
    T, B, H = 5, 2, 3
    S = rng.uniform(-1, 1, (T, B, H))
    W = rng.uniform(-1, 1, (H, H))
    W_strided = np.asfortranarray(W)
    W_strided.flags.writeable = False
    dtanh = 1 - S * S
    assert_close(kernel.backward_full(W_strided, S, dtanh), engine._backward_full(W, S, dtanh))


def test_kernel_chosen_where_measured_faster():
    engine.use_kernel("numba")
    S = np.zeros((3, 1, 32))
    assert engine._loops(S) == (kernel.recur, kernel.backward_full)
    assert engine._loops(np.zeros((3, 1, 100))) == (engine._recur, kernel.backward_full)
    assert engine._loops(np.zeros((3, 64, 100))) == (engine._recur, engine._backward_full)
    engine.use_kernel("numpy")
    assert engine._loops(S) == (engine._recur, engine._backward_full)
    engine.use_kernel("auto")


def test_engine_falls_back_to_numpy_without_numba(monkeypatch, rng):
    monkeypatch.setattr(kernel, "AVAILABLE", False)
    try:
        assert engine.use_kernel("auto") == "numpy"
        assert engine._loops(np.zeros((3, 1, 4))) == (engine._recur, engine._backward_full)
        with pytest.raises(
            ValueError,
            match=r"^the numba kernel is not installed: pip install 'bptt-service\[fast\]', or use \"numpy\"$",
        ):
            engine.use_kernel("numba")
        U, V, W = rng.uniform(-1, 1, (4, 5)), rng.uniform(-1, 1, (5, 4)), rng.uniform(-1, 1, (4, 4))
        g = engine.bptt(U, V, W, np.array([1, 2]), np.array([3, 4]))
        assert np.isfinite(g.loss)
    finally:
        monkeypatch.undo()
        engine.use_kernel("auto")


def test_use_kernel_refuses_an_unknown_name():
    with pytest.raises(ValueError, match='"auto", "numba" or "numpy", got \'jax\''):
        engine.use_kernel("jax")


def test_kernel_stops_at_the_deadline(rng):
    """The compiled loops check the deadline between chunks of steps, as the numpy loops do between steps."""
    S = rng.uniform(-1, 1, (10, 1, 4))
    deadline = Deadline(60)
    with bounded(deadline):
        deadline.cancel()
        with pytest.raises(Cancelled):
            kernel.recur(S, np.eye(4), np.zeros((1, 4)))
        with pytest.raises(Cancelled):
            kernel.backward_full(np.eye(4), S, S)
        with pytest.raises(Cancelled):
            kernel.bptt_one(np.eye(4), np.eye(4), np.eye(4), np.arange(4), np.arange(4), S[0, 0], None, None, None)


@pytest.fixture
def service_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The "service" logger's records (it does not propagate once configure_logging ran)."""
    logger = logging.getLogger("service")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="service"):
        yield caplog
    logger.removeHandler(caplog.handler)


def test_self_check_compiles_the_kernel(service_log):
    engine.use_kernel("auto")
    assert ops.self_check() is None
    for compiled in kernel._compiled():
        dtypes = {str(sig[0].dtype) for sig in compiled.signatures}
        assert {"float64", "float32"} <= dtypes, compiled.signatures
    assert any(r.getMessage().startswith("engine loops: numba (compiled in") for r in service_log.records)
    metrics = ops.metrics_payload()
    assert b'bptt_engine_kernel{kernel="numba"} 1.0' in metrics
    assert b'bptt_engine_kernel{kernel="numpy"} 0.0' in metrics


def test_self_check_says_numpy_when_the_kernel_is_off(service_log):
    engine.use_kernel("numpy")
    try:
        assert ops.self_check() is None
        assert any(r.getMessage() == "engine loops: numpy" for r in service_log.records)
        assert b'bptt_engine_kernel{kernel="numpy"} 1.0' in ops.metrics_payload()
    finally:
        engine.use_kernel("auto")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_add_columns_sums_repeated_ids_as_numpy_does(rng, dtype):
    """kernel.add_columns against engine._sum_into_columns's numpy path: repeated ids, strided inputs."""
    dz = rng.uniform(-1, 1, (40, 6)).astype(dtype)
    x = rng.integers(0, 5, 40)  # many repeats
    engine.use_kernel("numpy")
    try:
        want = engine._sum_into_columns(dz, x, 7)
    finally:
        engine.use_kernel("auto")
    got = engine._sum_into_columns(dz, x, 7)
    assert got.dtype == dtype
    assert_close(got, want, rtol=1e-12 if dtype == np.float64 else 1e-5)
    strided = kernel.add_columns(np.zeros((6, 7), dtype), x[::2], dz[::2])
    assert_close(strided, engine._sum_into_columns(dz[::2], x[::2], 7))
    with pytest.raises(IndexError, match="out of range"):
        kernel.add_columns(np.zeros((6, 7), dtype), np.array([0, 7]), dz[:2])
