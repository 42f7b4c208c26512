"""service.engine at its edges: the cases mutation testing (scripts/mutate.sh) found untested.

Each docstring says which change it catches (docs/testing.md maps the bugs to the
tests). Oracles: the seed's loop (tests/seed.py), and a few lines of numpy written
here. Tolerances as in tests/test_engine.py: 1e-12 relative against the loop in
float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import seed
from helpers import assert_close, make_problem

from service import engine
from service.errors import ComputeError, InputError

pytestmark = pytest.mark.usefixtures("both_loops")  # the compiled paths and the numpy reference (conftest)


def test_clip_clips_every_gradient_and_counts_each(rng):
    """Clipping skipped for dLdU, dLdb or dLdc (or counted wrong) is caught for each of the five."""
    p = make_problem(rng, H=5, C=6, T=12, scale=3.0, s0=True)
    b, c = rng.uniform(-1, 1, 5), rng.uniform(-1, 1, 6)
    full = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c)
    grads = {name: getattr(full, name) for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdc")}
    # A bound below the largest entry of every gradient, so each has something to clip.
    clip = 0.5 * min(float(np.abs(g).max()) for g in grads.values())
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c, clip=clip)
    assert g.clipped is not None and set(g.clipped) == set(grads)
    for name, unclipped in grads.items():
        np.testing.assert_array_equal(getattr(g, name), np.clip(unclipped, -clip, clip), err_msg=name)
        assert g.clipped[name] == np.count_nonzero(np.abs(unclipped) > clip) > 0, name
    np.testing.assert_array_equal(g.dLds0, full.dLds0)  # not a parameter: never clipped
    assert g.loss == full.loss


def test_clip_in_batch_and_float32(rng):
    p = make_problem(rng, H=4, C=5, T=1, scale=3.0)
    xs = [rng.integers(0, 5, T) for T in (3, 8)]
    ys = [rng.integers(0, 5, T) for T in (3, 8)]
    full = engine.bptt_batch(p.U, p.V, p.W, xs, ys)
    clip = float(np.abs(full.dLdU).max()) / 3
    g = engine.bptt_batch(p.U, p.V, p.W, xs, ys, clip=clip)
    np.testing.assert_array_equal(g.dLdU, np.clip(full.dLdU, -clip, clip))
    assert g.clipped == {
        name: int(np.count_nonzero(np.abs(getattr(full, name)) > clip)) for name in ("dLdU", "dLdV", "dLdW")
    }
    U32, V32, W32 = (a.astype(np.float32) for a in (p.U, p.V, p.W))
    g32 = engine.bptt(U32, V32, W32, xs[1], ys[1], clip=clip)
    assert g32.dLdW.dtype == np.float32 and np.abs(g32.dLdW).max() <= np.float32(clip)


@pytest.mark.parametrize("clip", [-1.0, float("nan"), float("inf"), True])
def test_clip_must_be_a_positive_number(rng, clip):
    p = make_problem(rng, H=2, C=3, T=3)
    with pytest.raises(InputError, match=r"clip must be a number > 0 or None, got ") as info:
        engine.bptt(p.U, p.V, p.W, p.x, p.y, clip=clip)
    assert info.value.field == "clip"


def test_final_state_is_the_state_after_the_last_token(rng):
    """final_state one step early (s_{T-2}) is caught: it is s_{T-1} of the seed's forward pass."""
    p = make_problem(rng, H=4, C=5, T=7, scale=2.0, s0=True)
    _, s = seed.forward_propagation(p.U, p.V, p.W, p.x, p.s0)  # s[-1] holds s0
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0)
    np.testing.assert_allclose(g.final_state, s[len(p.x) - 1], rtol=1e-12)
    assert np.abs(g.final_state - s[len(p.x) - 2]).max() > 1e-3
    # Batched, each sequence's own last state, whatever its length.
    xs = [p.x, p.x[:3], p.x[:1]]
    ys = [p.y, p.y[:3], p.y[:1]]
    gb = engine.bptt_batch(p.U, p.V, p.W, xs, ys, s0=[p.s0, None, p.s0])
    for b, (x, s0) in enumerate(zip(xs, [p.s0, None, p.s0], strict=True)):
        _, s = seed.forward_propagation(p.U, p.V, p.W, x, s0)
        np.testing.assert_allclose(gb.final_state[b], s[len(x) - 1], rtol=1e-12)


def test_batch_mean_loss_is_per_token_not_per_sequence(rng):
    """mean_loss divided by B (or by T of one sequence) is caught: it is the loss over N = sum T_b tokens."""
    p = make_problem(rng, H=3, C=4, T=1)
    lengths = (2, 5, 9)
    xs = [rng.integers(0, 4, T) for T in lengths]
    ys = [rng.integers(0, 4, T) for T in lengths]
    g = engine.bptt_batch(p.U, p.V, p.W, xs, ys)
    losses = [seed.calculate_total_loss(p.U, p.V, p.W, x, y) for x, y in zip(xs, ys, strict=True)]
    assert g.tokens == 16
    np.testing.assert_array_equal(g.lengths, lengths)
    assert g.loss == pytest.approx(sum(losses), rel=1e-12)
    assert g.mean_loss == pytest.approx(sum(losses) / 16, rel=1e-12)
    single = engine.bptt(p.U, p.V, p.W, xs[2], ys[2])
    assert single.tokens == 9 and single.mean_loss == pytest.approx(losses[2] / 9, rel=1e-12)


def test_large_weights_without_overflow_give_the_seeds_gradients(rng):
    """Weights of 1e7 that cannot overflow anything: no ComputeError, and gradients that are not all zero.

    U = 0 keeps every state at 0 (tanh not saturated, dtanh = 1), so a W of 1e7
    reaches dLds0 = W^T dz_0 without overflowing; V of 1e7 makes logits up to 1e7,
    which the max-shifted softmax handles. A spurious "overflowed" for large
    weights, or a check that reads the weights instead of the results, fails here.
    """
    p = make_problem(rng, H=3, C=4, T=2, s0=False)
    p.x[:] = [0, 1]
    p.U[:] = 0.0
    p.W *= 1e7
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y)
    ref = seed.bptt(p.U, p.V, p.W, p.x, p.y, 2)
    for got, want in zip((g.dLdU, g.dLdV, g.dLdW), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert np.abs(g.dLdU).max() > 1e5  # dz_0 = W^T dz_1 + ..., about 1e7
    # dLds0 = W^T dz_0, about 1e14: finite, and dz_0 is dLdU's column of x_0 = 0.
    np.testing.assert_allclose(g.dLds0, g.dLdU[:, 0] @ p.W, rtol=1e-12)
    assert 1e10 < np.abs(g.dLds0).max() < 1e18
    # Large V: logits of size 1e7 around a state that is not saturated.
    q = make_problem(rng, H=3, C=4, T=6, scale=0.3)
    q.V *= 1e7
    g = engine.bptt(q.U, q.V, q.W, q.x, q.y)
    ref = seed.bptt(q.U, q.V, q.W, q.x, q.y, 6)
    for got, want in zip((g.dLdU, g.dLdV, g.dLdW), ref, strict=True):
        assert_close(got, want, rtol=1e-9)
    assert np.abs(g.dLdW).max() > 1.0
    logits = q.V @ seed.forward_propagation(q.U, q.V, q.W, q.x)[1][:6].T  # (C, T)
    shifted = logits - logits.max(axis=0)
    loss = float(np.sum(np.log(np.exp(shifted).sum(axis=0)) - shifted[q.y, np.arange(6)]))
    assert g.loss == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rows_beyond_the_unshifted_softmax_match_the_seed(rng, dtype):
    """Logits too large or too small for the unshifted exp (engine._scaled_delta_o) in some rows only.

    In every other row one logit is pushed to +-(2 limit + 20), with the limit of the dtype (ln of
    tiny**-0.5: about 354 in float64, 44 in float32), where exp overflows or underflows to 0:
    those rows take the max-shifted path, the rest the unshifted one. A row mixed up between the two (its
    normaliser, its loss, its target's entry) fails here, against the seed's loop in float64.
    """
    limit = float(np.log(1 / np.sqrt(np.finfo(dtype).tiny)))
    H, C, T = 4, 6, 8
    p = make_problem(rng, H=H, C=C, T=T)
    p.U *= 50  # saturated states: s_t = +-1, so V s_t is known to the sign
    S = seed.forward_propagation(p.U, p.V, p.W, p.x)[1][:T]  # (T, H)
    sign = np.sign(S)
    for t in range(0, T, 2):  # logit y_t (or another) of row t far out; p.V's row reached through s_t
        c = int(p.y[t]) if t % 4 == 0 else (int(p.y[t]) + 1) % C
        p.V[c] = sign[t] * (2 * limit + 20) / H * (1 if t % 8 == 0 else -1)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    g = engine.bptt(*(a.astype(dtype) for a in (p.U, p.V, p.W)), p.x, p.y)
    ref = seed.bptt(p.U, p.V, p.W, p.x, p.y, T)
    for got, want in zip((g.dLdU, g.dLdV, g.dLdW), ref, strict=True):
        assert_close(got.astype(np.float64), want, rtol=tol)
    logits = p.V @ S.T  # (C, T); the seed's own loss takes the log of a subnormal o[y] here
    shifted = logits - logits.max(axis=0)
    loss = float(np.sum(np.log(np.exp(shifted).sum(axis=0)) - shifted[p.y, np.arange(T)]))
    assert g.loss == pytest.approx(loss, rel=tol)


def test_small_losses_keep_their_relative_precision(rng):
    """C = 1 gives a loss of exactly 0; a confident prediction, a loss of about 1e-9 to 1e-12 relative.

    The unshifted softmax computes each loss as log1p((z - E[y]) / E[y]) with the target's
    own term left out of the sum: ln z - a_y instead would leave an error of about 1e-16
    absolute, 1e-4 relative to a loss of 1e-12.
    """
    p = make_problem(rng, H=3, C=1, T=5)
    assert engine.bptt(p.U, p.V, p.W, p.x, p.y).loss == 0.0
    q = make_problem(rng, H=3, C=4, T=1)
    s = seed.forward_propagation(q.U, q.V, q.W, q.x)[1][0]  # (H,)
    y = int(q.y[0])
    q.V[y] = s * 30 / (s @ s)  # logit 30 for the target, about 1 for the 3 others
    a = q.V @ s  # (C,)
    want = float(np.log1p(np.exp(np.delete(a, y) - a[y]).sum()))  # about 1e-12
    assert 1e-14 < want < 1e-11
    assert engine.bptt(q.U, q.V, q.W, q.x, q.y).loss == pytest.approx(want, rel=1e-12, abs=0)


def test_overflow_where_only_the_loss_is_infinite_float32():
    """float32 logits of +-3e38 whose difference overflows: the loss is infinite, every gradient finite.

    s = (1, 1) exactly (tanh(100) in float32), V rows (1.5e38, 1.5e38) and minus that:
    logits 3e38 and -3e38 (finite), o = (1, 0); for y = 1 the loss is 3e38 - (-3e38) = inf,
    while dLds = V_0 - V_1 = (3e38, 3e38) is finite and dtanh = 0 makes dz = 0.
    """
    U = np.full((2, 2), 100.0, dtype=np.float32)
    V = np.array([[1.5e38, 1.5e38], [-1.5e38, -1.5e38]], dtype=np.float32)
    W = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ComputeError) as info:
        engine.bptt(U, V, W, np.array([0]), np.array([1]))
    assert info.value.message == (
        "the computation overflowed in float32: the loss is not finite (the largest weight is V, magnitude 1.5e+38); "
        "scale V down, or compute in float64"
    )
    assert info.value.field == "V"


def test_overflow_where_only_dLdW_is_infinite():
    """W = 0 and s0 = 1e308: the states stay small, dLdW = outer(dz_0, s0) overflows, dLds0 = W^T dz_0 = 0."""
    rng = np.random.default_rng(7)
    p = make_problem(rng, H=3, C=4, T=3, scale=2.0)
    p.W[:] = 0.0
    p.V *= 20  # |dz_0| of about 10: 10 x 1e308 overflows
    s0 = np.full(3, 1e308)
    with pytest.raises(ComputeError) as info:
        engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=s0)
    assert ": dLdW is not finite (" in info.value.message


def test_overflow_where_only_dLdU_is_infinite():
    """Each dz_k is finite but one column of dLdU sums seven of about 6e307: only dLdU overflows.

    H = 2 with U[1] = 0 and W = [[0, 3e307], [0, 0]]: s_k[1] = 0 at every step, so W s = 0
    and the forward pass never sees the large entry; backward, dz_k[1] = 3e307 dz_{k+1}[0],
    with dz_{k+1}[0] about 2. dLdW = sum_k outer(dz_k, s_{k-1}) stays finite as |s_k[0]| = 0.01.
    """
    U = np.array([[0.01, 0.5], [0.0, 0.0]])
    V = np.array([[2.0, 0.0], [-2.0, 0.0]])
    W = np.array([[0.0, 3e307], [0.0, 0.0]])
    x, y = np.zeros(8, dtype=int), np.ones(8, dtype=int)
    _, S = engine.forward(U, V, W, x)
    assert not S[:, 1].any()
    with pytest.raises(ComputeError) as info:
        engine.bptt(U, V, W, x, y)
    assert ": dLdU is not finite (the largest weight is W, magnitude 3e+307); scale W down" in info.value.message
    assert info.value.field == "W"


def test_overflow_where_only_dLds0_is_infinite():
    """U = 0, s0 = 0: s = 0, dtanh = 1, dz_0 = V^T delta_o = -3; W = 1e308 makes dLds0 = W^T dz_0 = -3e308."""
    U = np.zeros((1, 2))
    V = np.array([[3.0], [-3.0]])
    W = np.array([[1e308]])
    with pytest.raises(ComputeError) as info:
        engine.bptt(U, V, W, np.array([0]), np.array([0]))
    assert ": dLds0 is not finite (" in info.value.message


def test_overflow_is_silent_before_the_compute_error(rng):
    """No RuntimeWarning from numpy on the way to a ComputeError or to a NaN probability (np.errstate)."""
    p = make_problem(rng, H=3, C=4, T=4)
    p.U[:], p.W[:] = 50.0, 0.0  # s = tanh(50) = 1 exactly
    p.V = rng.uniform(0.5, 1, p.V.shape) * 1e308  # V s overflows to inf, and inf - inf is NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ComputeError):
            engine.bptt(p.U, p.V, p.W, p.x, p.y)
        with pytest.raises(ComputeError):
            engine.bptt_batch(p.U, p.V, p.W, [p.x, p.x[:2]], [p.y, p.y[:2]])
        o, _ = engine.forward(p.U, p.V, p.W, p.x)
        assert not np.isfinite(o).all()
        assert not np.isfinite(engine.loss(p.U, p.V, p.W, p.x, p.y))
        tr = engine.trace(p.U, p.V, p.W, p.x, p.y)
        assert not np.isfinite(tr.delta_o).all()


def test_forward_and_trace_with_both_biases_match_the_seed(rng):
    p = make_problem(rng, H=4, C=5, T=7, scale=2.0, s0=True)
    b, c = rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 5)
    o, s = engine.forward(p.U, p.V, p.W, p.x, s0=p.s0, b=b, c=c)
    o_ref, s_ref = seed.forward_propagation(p.U, p.V, p.W, p.x, p.s0, b, c)
    assert_close(o, o_ref)
    assert_close(s, s_ref[:-1])
    assert engine.loss(p.U, p.V, p.W, p.x, p.y, p.s0, b=b, c=c) == pytest.approx(
        seed.calculate_total_loss(p.U, p.V, p.W, p.x, p.y, p.s0, b, c), rel=1e-12
    )
    tr = engine.trace(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c)
    o_ref[np.arange(7), p.y] -= 1.0
    assert_close(tr.delta_o, o_ref)
    record: list = []
    seed.bptt(p.U, p.V, p.W, p.x, p.y, 7, s0=p.s0, b=b, c=c, record=record)
    for t, step, delta in record:
        assert_close(tr.deltas[t][t - step], delta)


def test_lag_summary_keys_and_values(rng):
    p = make_problem(rng, H=3, C=4, T=5, scale=2.0)
    tr = engine.trace(p.U, p.V, p.W, p.x, p.y, bptt_truncate=2)
    summary = tr.lag_summary()
    assert [set(row) for row in summary] == [{"lag", "outputs", "mean_norm", "max_norm"}] * 3
    for j, row in enumerate(summary):
        norms = [np.linalg.norm(tr.deltas[t][j]) for t in range(j, 5)]
        assert row["lag"] == j and row["outputs"] == 5 - j
        assert row["mean_norm"] == pytest.approx(np.mean(norms), rel=1e-12)
        assert row["max_norm"] == pytest.approx(max(norms), rel=1e-12)


def test_weights_of_other_dtypes_are_converted(rng):
    """Integer weights compute in float64; float32 U makes V, W, b, s0 float32 too (and every result)."""
    p = make_problem(rng, H=3, C=4, T=6, s0=True)
    Ui, Vi, Wi = (np.round(a * 2).astype(np.int64) for a in (p.U, p.V, p.W))
    g = engine.bptt(Ui, Vi, Wi, p.x, p.y)
    ref = seed.bptt(*(a.astype(float) for a in (Ui, Vi, Wi)), p.x, p.y, 6)
    for got, want in zip((g.dLdU, g.dLdV, g.dLdW), ref, strict=True):
        assert got.dtype == np.float64
        assert_close(got, want)
    U32 = p.U.astype(np.float32)
    g = engine.bptt_batch(U32, p.V, p.W, [p.x, p.x[:2]], [p.y, p.y[:2]], s0=[p.s0, p.s0])
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses"):
        assert getattr(g, name).dtype == np.float32, name
    ref64 = engine.bptt_batch(p.U, p.V, p.W, [p.x, p.x[:2]], [p.y, p.y[:2]], s0=[p.s0, p.s0])
    assert_close(g.dLdW.astype(np.float64), ref64.dLdW, rtol=1e-5)


def _problem(rng):
    return make_problem(rng, H=4, C=6, T=5)


# (change to a valid problem, the exact message, the field): every InputError names its field.
BAD = [
    (lambda p: setattr(p, "U", p.U[:, :0]), "U must be H x C with H >= 1 and C >= 1, got 4 x 0", "U"),
    (lambda p: setattr(p, "U", p.U[:0]), "U must be H x C with H >= 1 and C >= 1, got 0 x 6", "U"),
    (lambda p: setattr(p, "U", p.U[0]), "U must be a matrix (2 dimensions), got 1", "U"),
    (lambda p: setattr(p, "V", p.V[0]), "V must be a matrix (2 dimensions), got 1", "V"),
    (lambda p: setattr(p, "W", p.W[None]), "W must be a matrix (2 dimensions), got 3", "W"),
    (lambda p: setattr(p, "V", p.V[:, :-1]), "V must be C x H = 6 x 4 (U is H x C = 4 x 6), got 6 x 3", "V"),
    (lambda p: setattr(p, "V", p.V.T), "is V transposed? V must be C x H = 6 x 4, got 4 x 6", "V"),
    (
        lambda p: setattr(p, "U", p.U.T),
        "is U transposed? U must be H x C = 4 x 6 (V is C x H = 6 x 4, W is H x H = 4 x 4), got 6 x 4",
        "U",
    ),
    (lambda p: setattr(p, "W", p.W[:, :-1]), "W must be H x H = 4 x 4, got 4 x 3", "W"),
    (lambda p: setattr(p, "x", p.x[None]), "x must be a list of token ids, got 2 dimensions", "x"),
    (lambda p: setattr(p, "x", p.x[:0]), "x must hold at least one token id, got an empty list", "x"),
    (lambda p: setattr(p, "x", p.x + 0.5), "x must hold integer token ids, got dtype float64", "x"),
    (lambda p: p.x.__setitem__(2, 6), "x[2] = 6 is out of range: token ids must be in [0, C) = [0, 6)", "x[2]"),
    (lambda p: setattr(p, "y", p.y[:-1]), "y must have one target per input token: len(x) = 5, got len(y) = 4", "y"),
    (lambda p: setattr(p, "s0", np.zeros(3)), "s0 must have H = 4 numbers, got 3", "s0"),
    (lambda p: setattr(p, "s0", np.float64(1.0)), "s0 must have H = 4 numbers, got a scalar", "s0"),
]


@pytest.mark.parametrize(("change", "message", "field"), BAD, ids=[b[2] + ":" + b[1][:24] for b in BAD])
def test_input_errors_name_the_field_and_say_what_arrived(rng, change, message, field):
    p = _problem(rng)
    change(p)
    with pytest.raises(InputError) as info:
        engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0)
    assert (info.value.message, info.value.field) == (message, field)
    assert str(info.value) == message


def test_check_inputs_without_a_prefix_names_plain_fields(rng):
    p = _problem(rng)
    assert engine.check_inputs(p.U, p.V, p.W, p.x, p.y) == (4, 6)
    p.x[1] = -2
    with pytest.raises(InputError) as info:
        engine.check_inputs(p.U, p.V, p.W, p.x)
    assert info.value.field == "x[1]"
    assert info.value.message == "x[1] = -2 is out of range: token ids must be in [0, C) = [0, 6)"
    with pytest.raises(InputError) as info:
        engine.check_inputs(p.U, p.V, p.W, p.y, p.y[:2], where="sequences[4].")
    assert info.value.field == "sequences[4].y"
    with pytest.raises(InputError) as info:
        engine.check_inputs(p.U, p.V, p.W, p.y, s0=np.zeros(2), where="sequences[4].")
    assert (info.value.field, info.value.message) == (
        "sequences[4].s0",
        "sequences[4].s0 must have H = 4 numbers, got 2",
    )


@pytest.mark.parametrize(
    ("kwargs", "message", "field"),
    [
        ({"b": np.zeros(3)}, "b must have H = 4 numbers, got 3", "b"),
        ({"c": np.zeros((6, 1))}, "c must have C = 6 numbers, got 6 x 1", "c"),
        ({"bptt_truncate": -1}, "bptt_truncate must be an integer >= 0 or None, got -1", "bptt_truncate"),
        ({"bptt_truncate": 2.5}, "bptt_truncate must be an integer >= 0 or None, got 2.5", "bptt_truncate"),
        ({"clip": 0.0}, "clip must be a number > 0 or None, got 0.0", "clip"),
    ],
)
def test_option_errors_name_the_field(rng, kwargs, message, field):
    p = _problem(rng)
    with pytest.raises(InputError) as info:
        engine.bptt(p.U, p.V, p.W, p.x, p.y, **kwargs)
    assert (info.value.message, info.value.field) == (message, field)


def test_batch_errors_name_the_field(rng):
    p = _problem(rng)
    cases = [
        (([], []), "sequences must hold at least one sequence, got none", "sequences"),
        (([p.x, p.x], [p.y]), "ys must hold one target sequence per input sequence: 2, got 1", "ys"),
        (([p.x], [p.y], [None, None]), "s0 must hold one state per sequence, B = 1, got 2", "s0"),
    ]
    for args, message, field in cases:
        with pytest.raises(InputError) as info:
            engine.bptt_batch(p.U, p.V, p.W, *args[:2], s0=args[2] if len(args) > 2 else None)
        assert (info.value.message, info.value.field) == (message, field)


def test_compute_error_message_and_field(rng):
    p = make_problem(rng, H=3, C=4, T=3)
    p.U[:], p.W[:] = 50.0, 0.0  # s = tanh(50) = 1 exactly
    p.V = np.full(p.V.shape, 1e308)  # V s = 3e308 overflows
    with pytest.raises(ComputeError) as info:
        engine.bptt(p.U, p.V, p.W, p.x, p.y)
    assert info.value.field == "V"
    assert info.value.message == (
        "the computation overflowed in float64: the loss is not finite (the largest weight is V, magnitude 1e+308); "
        "scale V down"
    )


def test_overflow_in_the_backward_pass_is_named():
    """W = [[0, 1e308], [0, 0]] as in the dLdU case: dz_k[1] = 1e308 dz_{k+1}[0] itself overflows."""
    U = np.array([[0.01, 0.5], [0.0, 0.0]])
    V = np.array([[2.0, 0.0], [-2.0, 0.0]])
    W = np.array([[0.0, 1e308], [0.0, 0.0]])
    with pytest.raises(ComputeError) as info:
        engine.bptt(U, V, W, np.zeros(8, dtype=int), np.ones(8, dtype=int))
    assert info.value.message == (
        "the computation overflowed in float64: the gradient flowing back through time is not finite "
        "(the largest weight is W, magnitude 1e+308); scale W down"
    )


def test_overflow_names_U_when_U_is_the_largest_weight():
    """U = 1e308 saturates s at 1; twenty V entries of 1e307 then sum past the float64 range."""
    U = np.full((20, 3), 1e308)
    V = np.full((3, 20), 1e307)
    W = np.zeros((20, 20))
    with pytest.raises(ComputeError) as info:
        engine.bptt(U, V, W, np.array([0, 1]), np.array([1, 2]))
    assert info.value.field == "U"
    assert info.value.message.endswith("(the largest weight is U, magnitude 1e+308); scale U down")
