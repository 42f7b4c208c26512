"""service.gated against PyTorch (nn.GRU, nn.LSTM, autograd loops in tests/gated_loops.py) and central differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gated_loops import (
    GatedProblem,
    make_gated_problem,
    numpy_loss,
    torch_grads,
    torch_module_grads,
    torch_state_grads,
)
from helpers import assert_close, numerical_gradient
from hypothesis import given, settings
from hypothesis import strategies as st

from service import engine, gated
from service.errors import ComputeError, InputError

torch.set_num_threads(1)  # the machine is shared; these graphs are tiny

RTOL = 1e-10  # float64, against PyTorch: max|a - b| <= RTOL max|b|, per array
CELLS = [("gru", False), ("gru", True), ("lstm", False)]  # (cell, reset_after)
CELL_IDS = ["gru", "gru-reset-after", "lstm"]


def run(p: GatedProblem, K: int | None = None, **extra: Any) -> gated.GatedGradients:
    return gated.bptt(p.cell, p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **p.kwargs(), **extra)


def assert_matches(g: gated.GatedGradients, ref: dict[str, Any], rtol: float = RTOL) -> None:
    """Every gradient the reference has, and nothing more, per array to rtol; the loss to rtol."""
    assert g.loss == pytest.approx(ref["loss"], rel=rtol)
    names = ("dLdU", "dLdV", "dLdW", "dLds0", "dLdb", "dLdb_hh", "dLdc", "dLdc0")
    for name in names:
        got = getattr(g, name)
        if name in ref:
            assert got is not None, name
            assert_close(got, ref[name], rtol=rtol)
        else:
            assert got is None, name


# --- PyTorch's own cells ---


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bptt_matches_torch_nn_cells(cell, batch_first):
    """nn.GRU (the reset-after form) and nn.LSTM: every gradient, h0's and c0's included, to 1e-10."""
    rng = np.random.default_rng(20151027)
    for H, C, T, scale in ((5, 7, 15, 2.0), (1, 1, 1, 1.0), (8, 3, 30, 3.0)):
        p = make_gated_problem(rng, cell, H, C, T, scale=scale, biases=True, states=True, reset_after=cell == "gru")
        ref = torch_module_grads(p, batch_first)
        g = run(p)
        assert_matches(g, {k: v for k, v in ref.items() if not k.startswith("final")})
        assert_close(g.final_state, ref["final_state"])
        if cell == "lstm":
            assert_close(g.final_cell, ref["final_cell"])
        else:
            assert g.final_cell is None and g.dLdc0 is None


# --- Hand-written autograd loops (tests/gated_loops.py) ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("extras", [False, True], ids=["bare", "biases-and-states"])
def test_bptt_full_matches_autograd_loop(cell, reset_after, extras):
    """The tutorial's GRU (reset before the product) and the others, against autograd through torch ops."""
    rng = np.random.default_rng(7)
    p = make_gated_problem(rng, cell, 6, 5, 20, scale=2.5, biases=extras, states=extras, reset_after=reset_after)
    assert_matches(run(p), torch_grads(p))


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("K", [0, 1, 3, 10, 11, 40])
def test_bptt_truncated_matches_per_output_loop(cell, reset_after, K):
    """Output t's error through steps t .. max(0, t-K) only, through s and c: one detached graph per output."""
    rng = np.random.default_rng(K)
    p = make_gated_problem(rng, cell, 4, 6, 12, scale=3.0, biases=True, states=True, reset_after=reset_after)
    assert_matches(run(p, K), torch_grads(p, K))


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_bptt_truncated_differs_from_full(cell, reset_after):
    """Truncation changes dLdU, dLdW (a test that could not fail would not notice), not dLdV or the loss."""
    rng = np.random.default_rng(3)
    p = make_gated_problem(rng, cell, 6, 5, 15, scale=3.0, reset_after=reset_after)
    full, trunc = run(p), run(p, 2)
    assert np.abs(full.dLdW - trunc.dLdW).max() > 1e-6
    assert np.abs(full.dLdU - trunc.dLdU).max() > 1e-6
    np.testing.assert_array_equal(full.dLdV, trunc.dLdV)  # dL/dV has no time recursion
    assert full.loss == trunc.loss
    np.testing.assert_array_equal(run(p, 14).dLdW, full.dLdW)  # K >= T - 1 is exact BPTT


gated_problems = st.builds(
    lambda seed_, cell, H, C, T, scale, biases, states: make_gated_problem(
        np.random.default_rng(seed_), cell[0], H, C, T, scale=scale, biases=biases, states=states, reset_after=cell[1]
    ),
    seed_=st.integers(0, 2**32 - 1),
    cell=st.sampled_from(CELLS),
    H=st.integers(1, 6),
    C=st.integers(1, 7),
    T=st.integers(1, 12),
    scale=st.sampled_from([0.1, 1.0, 3.0]),
    biases=st.booleans(),
    states=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(p=gated_problems, K=st.one_of(st.none(), st.integers(0, 13)))
def test_bptt_matches_autograd_any_shape(p, K):
    """Shapes H 1..6, C 1..7, T 1..12, exact and truncated, with and without biases and states, every cell."""
    g = run(p, K)
    assert_matches(g, torch_grads(p, K))
    assert g.tokens == len(p.x)
    assert g.mean_loss == pytest.approx(g.loss / len(p.x))


# --- Central differences ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_bptt_full_matches_central_differences(cell, reset_after):
    """The gradient of the summed loss, every parameter and initial state, by (f(a + h) - f(a - h)) / 2h."""
    rng = np.random.default_rng(11)
    for H, C, T in ((3, 4, 6), (2, 5, 9)):
        p = make_gated_problem(rng, cell, H, C, T, scale=2.0, biases=True, states=True, reset_after=reset_after)
        g = run(p)
        for name in ("U", "V", "W", "b", "b_hh", "c", "s0") + (("c0",) if cell == "lstm" else ()):
            num = numerical_gradient(lambda p=p: numpy_loss(p), getattr(p, name))
            assert_close(getattr(g, f"dLd{name}"), num, rtol=1e-7)


# --- Batches ---


@settings(max_examples=60, deadline=None)
@given(
    seed_=st.integers(0, 2**32 - 1),
    cell=st.sampled_from(CELLS),
    H=st.integers(1, 5),
    C=st.integers(1, 6),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    K=st.one_of(st.none(), st.integers(0, 5)),
    with_states=st.lists(st.booleans(), min_size=5, max_size=5),
    biases=st.booleans(),
)
def test_bptt_batch_equals_sum_of_singles(seed_, cell, H, C, lengths, K, with_states, biases):
    """Sequences of different lengths at once: the sum of single calls, per-sequence states and their gradients."""
    rng = np.random.default_rng(seed_)
    name, reset_after = cell
    p = make_gated_problem(rng, name, H, C, 1, scale=2.0, biases=biases, reset_after=reset_after)
    xs = [rng.integers(0, C, T) for T in lengths]
    ys = [rng.integers(0, C, T) for T in lengths]
    s0s = [rng.uniform(-1, 1, H) if with_states[i] else None for i in range(len(lengths))]
    c0s = [rng.uniform(-1, 1, H) if with_states[i] else None for i in range(len(lengths))] if name == "lstm" else None
    common = {"bptt_truncate": K, "b": p.b, "b_hh": p.b_hh, "c": p.c, "reset_after": reset_after}
    g = gated.bptt_batch(name, p.U, p.V, p.W, xs, ys, s0=s0s, c0=c0s, **common)
    singles = [
        gated.bptt(name, p.U, p.V, p.W, x, y, s0=s0s[i], c0=None if c0s is None else c0s[i], **common)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
    ]
    for attr in ("dLdU", "dLdV", "dLdW") + (("dLdb", "dLdb_hh", "dLdc") if biases else ()):
        assert_close(getattr(g, attr), sum(getattr(s, attr) for s in singles), rtol=1e-12)
    np.testing.assert_allclose(g.losses, [s.loss for s in singles], rtol=1e-12)
    assert g.tokens == sum(lengths)
    per_sequence = ("dLds0", "final_state") + (("dLdc0", "final_cell") if name == "lstm" else ())
    for attr in per_sequence:
        np.testing.assert_allclose(getattr(g, attr), [getattr(s, attr) for s in singles], rtol=1e-12, atol=1e-15)
    if name == "gru":
        assert g.dLdc0 is None and g.final_cell is None


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("K", [None, 1])
def test_bptt_batch_padding_never_leaks(cell, reset_after, K):
    """A NaN in U's column for token 0, the padding id, which no sequence reads: finite, equal to the singles."""
    rng = np.random.default_rng(5)
    p = make_gated_problem(rng, cell, 3, 4, 1, reset_after=reset_after)
    p.U[:, :, 0] = np.nan
    xs = [rng.integers(1, 4, T) for T in (2, 6, 3)]
    ys = [rng.integers(0, 4, T) for T in (2, 6, 3)]
    g = gated.bptt_batch(cell, p.U, p.V, p.W, xs, ys, bptt_truncate=K, reset_after=reset_after)
    singles = [
        gated.bptt(cell, p.U, p.V, p.W, x, y, bptt_truncate=K, reset_after=reset_after)
        for x, y in zip(xs, ys, strict=True)
    ]
    assert_close(g.dLdW, sum(s.dLdW for s in singles), rtol=1e-12)
    assert np.isfinite(g.dLdU).all() and not g.dLdU[:, :, 0].any()


def test_bptt_batch_accepts_a_state_matrix():
    rng = np.random.default_rng(2)
    p = make_gated_problem(rng, "lstm", 3, 4, 1)
    xs, ys = [np.array([1, 2]), np.array([3, 0, 1])], [np.array([0, 1]), np.array([2, 2, 3])]
    S0, C0 = rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, (2, 3))
    g = gated.bptt_batch("lstm", p.U, p.V, p.W, xs, ys, s0=S0, c0=C0)
    h = gated.bptt_batch("lstm", p.U, p.V, p.W, xs, ys, s0=list(S0), c0=list(C0))
    np.testing.assert_array_equal(g.dLdW, h.dLdW)
    assert g.dLds0.shape == g.dLdc0.shape == g.final_cell.shape == (2, 3)


# --- dtypes, clipping, overflow ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("K", [None, 3])
def test_bptt_float32_close_to_float64(cell, reset_after, K):
    rng = np.random.default_rng(13)
    p = make_gated_problem(rng, cell, 8, 10, 20, biases=True, states=True, reset_after=reset_after)
    g64 = run(p, K)
    p32 = GatedProblem(**{k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v
                          for k, v in vars(p).items()})  # fmt: skip
    g32 = run(p32, K)
    assert g32.dLdU.dtype == g32.dLds0.dtype == g32.dLdc.dtype == np.float32
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc", "dLds0", "final_state"):
        assert_close(getattr(g32, name).astype(np.float64), getattr(g64, name), rtol=1e-5)
    assert g32.loss == pytest.approx(g64.loss, rel=1e-5)


@pytest.mark.parametrize("loops", ["numpy", "auto"])
@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_bptt_float32_one_unit_batch_rows_agree(cell, reset_after, loops):
    """H = 1, B = 2 equal sequences in float32: equal rows. numpy 2.4's in-place np.negative reads a
    float32 (B, 1) view with stride (16, 4) at the wrong stride; the numpy loops' sigmoid must not use it."""
    rng = np.random.default_rng(4)
    p = make_gated_problem(rng, cell, 1, 3, 4, biases=True, reset_after=reset_after)
    U, V, W, b = (a.astype(np.float32) for a in (p.U, p.V, p.W, p.b))
    engine.use_kernel(loops)
    try:
        g = gated.bptt_batch(cell, U, V, W, [p.x, p.x], [p.y, p.y], b=b, reset_after=reset_after)
    finally:
        engine.use_kernel("auto")
    np.testing.assert_allclose(g.final_state[1], g.final_state[0], rtol=1e-6)
    np.testing.assert_allclose(g.dLds0[1], g.dLds0[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_bptt_clip_clips_and_counts(cell, reset_after):
    rng = np.random.default_rng(17)
    p = make_gated_problem(rng, cell, 5, 6, 12, scale=3.0, biases=True, reset_after=reset_after)
    full = run(p)
    clip = float(np.median(np.abs(full.dLdW)))
    g = run(p, clip=clip)
    np.testing.assert_array_equal(g.dLdW, np.clip(full.dLdW, -clip, clip))
    assert g.clipped is not None
    assert g.clipped["dLdW"] == np.count_nonzero(np.abs(full.dLdW) > clip) > 0
    assert set(g.clipped) == {"dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc"}
    np.testing.assert_array_equal(g.dLds0, full.dLds0)  # a state's gradient is not a parameter's: not clipped
    assert full.clipped is None
    with pytest.raises(InputError, match="clip must be a number > 0"):
        run(p, clip=0)


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_bptt_overflow_raises_compute_error(cell, reset_after):
    """Overflow is reported in the user's terms: which result, which cell, which dtype, what to do."""
    rng = np.random.default_rng(19)
    p = make_gated_problem(rng, cell, 3, 4, 3, reset_after=reset_after)
    p.V = rng.choice([-1.0, 1.0], p.V.shape) * 1.7e308  # finite logits, gradients V^T delta_o beyond float64
    with pytest.raises(ComputeError, match=rf"dLdU is not finite: the {cell.upper()} computation overflowed in float64 "
                       r"\(largest weight magnitude 1.7e\+308\); scale the weights down$") as info:  # fmt: skip
        run(p)
    assert info.value.field == "dLdU"
    # Logits beyond float64: V's rows +-1.7e308 (all of one sign) and c = 1.7e308 overflow one of them.
    p.V = np.outer([1.0, -1.0, 0.0, 0.0], np.full(3, 1.7e308))
    p.c = np.full(4, 1.7e308)
    with pytest.raises(ComputeError, match=r"loss is not finite") as info:
        run(p)
    assert info.value.field == "loss"
    p32 = make_gated_problem(rng, cell, 3, 4, 3, reset_after=reset_after)
    p32.V, p32.c = np.outer([1.0, -1.0, 0.0, 0.0], np.full(3, 3e38)), np.full(4, 3e38)  # as above, in float32
    p32.U, p32.W, p32.V, p32.c = (a.astype(np.float32) for a in (p32.U, p32.W, p32.V, p32.c))
    with pytest.raises(ComputeError, match=r"is not finite: .* overflowed in float32 .* or compute in float64$"):
        run(p32)


def test_bptt_overflow_in_dLdV_alone_raises_compute_error():
    """dLdV is read only when the bound N max(1, max|s0|) does not settle it: a state s0 of 1e307 kept by
    a shut update gate (z = 1) and a tiny V give finite logits but sum_t delta_o[t] s_t beyond float64."""
    rng = np.random.default_rng(23)
    p = make_gated_problem(rng, "gru", 2, 3, 80, biases=True, states=True)
    p.s0 = np.array([1e307, 1e307])
    p.U[1] = 0.0
    p.b[1], p.b_hh[1] = 1e3, 0.0  # z = 1: s_t = s0 at every step
    p.W[1] = 0.0
    p.V = np.array([[1e-300, 0.0], [0.0, 0.0], [-1e-300, 0.0]])  # logits 1e7, 0, -1e7: o_t = (1, 0, 0)
    with pytest.raises(ComputeError, match=r"^dLdV is not finite") as info:
        run(p)
    assert info.value.field == "dLdV"


@settings(max_examples=100, deadline=None)
@given(p=gated_problems, exponent=st.integers(0, 308), K=st.one_of(st.none(), st.integers(0, 3)))
def test_bptt_large_weights_finite_or_compute_error(p, exponent, K):
    """Never NaN or infinity in a result: finite numbers, or ComputeError."""
    scale = 10.0**exponent
    with np.errstate(over="ignore"):  # weights of infinity are allowed too
        p.U, p.V, p.W = p.U * scale, p.V * scale, p.W * scale
    try:
        g = run(p, K)
    except ComputeError:
        return
    assert np.isfinite(g.loss)
    for a in (g.dLdU, g.dLdV, g.dLdW, g.dLds0, g.final_state, g.dLdb, g.dLdb_hh, g.dLdc, g.dLdc0, g.final_cell):
        assert a is None or np.isfinite(a).all()


# --- Input checks ---


def _set(name: str, value: Any) -> Any:
    return lambda p: setattr(p, name, value(p))


@pytest.mark.parametrize(
    ("cell", "change", "message", "field"),
    [
        ("gru", _set("W", lambda p: p.W[0]), r"W must be G x H x H = 3 x 4 x 4 for cell 'gru', got 4 x 4", "W"),
        ("lstm", _set("W", lambda p: p.W[:3]), r"W must be G x H x H = 4 x 4 x 4 for cell 'lstm', got 3 x 4 x 4", "W"),
        (
            "gru",
            _set("U", lambda p: p.U[0]),
            r"U must be G x H x C with G = 3 gates \(r, z, n\) for cell 'gru', got 4 x 6",
            "U",
        ),
        (
            "lstm",
            _set("U", lambda p: p.U[:3]),
            r"U must be G x H x C with G = 4 gates \(i, f, g, o\) for cell 'lstm', got 3 x 4 x 6",
            "U",
        ),
        (
            "gru",
            _set("V", lambda p: p.V.T),
            r"V must be C x H = 6 x 4 \(U is G x H x C = 3 x 4 x 6 for cell 'gru'\), got 4 x 6",
            "V",
        ),
        ("lstm", _set("b", lambda p: np.zeros((3, 4))), r"b must be G x H = 4 x 4 for cell 'lstm', got 3 x 4", "b"),
        ("gru", _set("b_hh", lambda p: np.zeros(12)), r"b_hh must be G x H = 3 x 4 for cell 'gru', got 12", "b_hh"),
        ("gru", _set("c", lambda p: np.zeros(4)), r"c must have C = 6 numbers, got 4", "c"),
        ("lstm", _set("s0", lambda p: np.zeros(3)), r"s0 must have H = 4 numbers for cell 'lstm', got 3", "s0"),
        (
            "lstm",
            _set("c0", lambda p: np.zeros((1, 4))),
            r"c0 must have H = 4 numbers for cell 'lstm', got 1 x 4",
            "c0",
        ),
        ("gru", _set("c0", lambda p: np.zeros(4)), r"c0 is the LSTM's initial cell state: cell 'gru' has none", "c0"),
        ("lstm", _set("reset_after", lambda p: True), r"reset_after is an option of cell 'gru' only", "reset_after"),
        (
            "gru",
            _set("y", lambda p: p.y[:-1]),
            r"y must have one target per input token: len\(x\) = 5, got len\(y\) = 4",
            "y",
        ),
        (
            "gru",
            lambda p: p.x.__setitem__(2, 6),
            r"x\[2\] = 6 is out of range: token ids must be in \[0, C\) = \[0, 6\)",
            "x[2]",
        ),
        ("lstm", _set("x", lambda p: p.x[:0]), r"x must hold at least one token id", "x"),
        ("rnn", lambda p: None, r"cell must be 'gru' or 'lstm', got 'rnn'", "cell"),
    ],
)
def test_bptt_bad_input_raises_input_error(cell, change, message, field):
    rng = np.random.default_rng(23)
    p = make_gated_problem(rng, "gru" if cell == "rnn" else cell, 4, 6, 5, states=True)
    p.cell = cell
    change(p)
    with pytest.raises(InputError, match=message) as info:
        run(p)
    assert info.value.field == field


def test_bptt_batch_names_the_bad_sequence():
    rng = np.random.default_rng(29)
    p = make_gated_problem(rng, "lstm", 3, 4, 5)
    with pytest.raises(InputError, match=r"sequences\[1\]\.x\[2\] = 9 is out of range") as info:
        gated.bptt_batch("lstm", p.U, p.V, p.W, [p.x, np.array([0, 1, 9])], [p.y, np.array([0, 1, 2])])
    assert info.value.field == "sequences[1].x[2]"
    with pytest.raises(InputError, match=r"sequences\[1\]\.c0 must have H = 3 numbers for cell 'lstm', got 2"):
        gated.bptt_batch("lstm", p.U, p.V, p.W, [p.x, p.x], [p.y, p.y], c0=[None, np.zeros(2)])
    with pytest.raises(InputError, match=r"s0 must hold one state per sequence, B = 2, got 3"):
        gated.bptt_batch("lstm", p.U, p.V, p.W, [p.x, p.x], [p.y, p.y], s0=np.zeros((3, 3)))
    with pytest.raises(InputError, match="at least one sequence"):
        gated.bptt_batch("lstm", p.U, p.V, p.W, [], [])
    with pytest.raises(InputError, match="bptt_truncate must be an integer >= 0"):
        gated.bptt_batch("lstm", p.U, p.V, p.W, [p.x], [p.y], bptt_truncate=-1)


# --- trace ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_trace_matches_autograd(cell, reset_after):
    """dL/ds_k and dL/dc_k (retain_grad) and ||dE_t/ds_{t-j}|| (one backward per output) to 1e-10."""
    rng = np.random.default_rng(31)
    p = make_gated_problem(rng, cell, 4, 5, 10, scale=2.0, biases=True, states=True, reset_after=reset_after)
    tr = gated.trace(cell, p.U, p.V, p.W, p.x, p.y, **p.kwargs())
    dLds, dLdc, norms = torch_state_grads(p)
    assert_close(tr.dLds, dLds)
    if cell == "lstm":
        assert_close(tr.dLdc, dLdc)
    else:
        assert tr.dLdc is None
    np.testing.assert_array_equal(np.isnan(tr.norms), np.isnan(norms))
    assert_close(np.nan_to_num(tr.norms), np.nan_to_num(norms))
    summary = tr.lag_summary()
    assert [s["outputs"] for s in summary] == list(range(10, 0, -1))
    assert summary[0]["max_norm"] == pytest.approx(np.nanmax(norms[:, 0]), rel=1e-12)
    assert gated.trace(cell, p.U, p.V, p.W, p.x, p.y, **p.kwargs(), norms=False).norms is None
