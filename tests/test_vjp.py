"""service.vjp against PyTorch autograd, central differences, service.engine and loops written here.

Dimension letters as in service/vjp.py: N examples, T steps, D inputs, H hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from helpers import make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from service import engine, vjp
from service.errors import ComputeError, InputError
from service.vjp import MISTAKES, Layout, Mistake

TORCH_RTOL = 1e-10  # float64, per array: max|a - b| <= 1e-10 max|b|
GRADS = ("dx", "dh0", "dWx", "dWh", "db")


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = TORCH_RTOL) -> None:
    """helpers.assert_close at the tolerance against PyTorch."""
    helpers.assert_close(np.asarray(actual), np.asarray(expected), rtol)


def numerical_gradient(f: Callable[[], float], a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """helpers.numerical_gradient with this file's step."""
    return helpers.numerical_gradient(f, a, h)


# --------------------------------------------------------------------------- problems


def rnn_problem(rng: np.random.Generator, N: int, T: int, D: int, H: int, layout: str) -> dict[str, np.ndarray]:
    """Random arrays in the layout's shapes; Wh scaled so the states do not saturate."""
    if layout == "cs231n":
        shapes = {"x": (N, T, D), "h0": (N, H), "Wx": (D, H), "Wh": (H, H), "b": (H,), "dh": (N, T, H)}
    else:
        shapes = {"x": (D, N, T), "h0": (H, N), "Wx": (H, D), "Wh": (H, H), "b": (H, 1), "dh": (H, N, T)}
    p = {k: rng.normal(size=s) for k, s in shapes.items()}
    p["Wx"] /= np.sqrt(D)
    p["Wh"] /= np.sqrt(H)
    return p


def lstm_problem(
    rng: np.random.Generator, N: int, T: int, D: int, H: int, layout: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(x, h0, c0, dh) and the weights, random, in the layout's shapes."""
    if layout == "cs231n":
        arrays = {"x": (N, T, D), "h0": (N, H), "c0": (N, H), "dh": (N, T, H)}
        weights = {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)}
    else:
        arrays = {"x": (D, N, T), "h0": (H, N), "c0": (H, N), "dh": (H, N, T)}
        weights = {f"W{k}": (H, H + D) for k in "fico"} | {f"b{k}": (H, 1) for k in "fico"}
    p = {k: rng.normal(size=s) for k, s in arrays.items()}
    w = {k: rng.normal(size=s) / np.sqrt(D + H) for k, s in weights.items()}
    return p, w


# --------------------------------------------------------------------------- torch oracles


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def torch_rnn(p: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """The recurrence with torch ops in the layout's own orientation; its VJP by autograd."""
    x, h0, Wx, Wh, b = (_t(p[k]) for k in ("x", "h0", "Wx", "Wh", "b"))
    hs = []
    h = h0
    if layout == "cs231n":
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ Wx + h @ Wh + b)
            hs.append(h)
        states = torch.stack(hs, dim=1)  # (N, T, H)
    else:
        for t in range(x.shape[2]):
            h = torch.tanh(Wx @ x[:, :, t] + Wh @ h + b)  # a_t = tanh(Wax x_t + Waa a_prev + ba)
            hs.append(h)
        states = torch.stack(hs, dim=2)  # (H, N, T)
    grads = torch.autograd.grad(states, (x, h0, Wx, Wh, b), grad_outputs=torch.tensor(p["dh"]))
    return {"h": states.detach().numpy()} | {k: g.numpy() for k, g in zip(GRADS, grads, strict=True)}


def torch_lstm(p: dict[str, np.ndarray], w: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    x, h0, c0 = _t(p["x"]), _t(p["h0"]), _t(p["c0"])
    tw = {k: _t(v) for k, v in w.items()}
    hs, cs = [], []
    h, c = h0, c0
    if layout == "cs231n":
        H = h0.shape[1]
        for t in range(x.shape[1]):
            a = x[:, t] @ tw["Wx"] + h @ tw["Wh"] + tw["b"]
            i, f, o = (torch.sigmoid(a[:, k * H : (k + 1) * H]) for k in range(3))
            g = torch.tanh(a[:, 3 * H :])
            c = f * c + i * g
            h = o * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        states, cells = torch.stack(hs, dim=1), torch.stack(cs, dim=1)
    else:
        for t in range(x.shape[2]):
            concat = torch.cat([h, x[:, :, t]], dim=0)  # [a_prev; x_t]
            ft = torch.sigmoid(tw["Wf"] @ concat + tw["bf"])
            it = torch.sigmoid(tw["Wi"] @ concat + tw["bi"])
            cct = torch.tanh(tw["Wc"] @ concat + tw["bc"])
            c = ft * c + it * cct
            ot = torch.sigmoid(tw["Wo"] @ concat + tw["bo"])
            h = ot * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        states, cells = torch.stack(hs, dim=2), torch.stack(cs, dim=2)
    names = ["dx", "dh0", "dc0", *(f"d{k}" for k in w)]
    grads = torch.autograd.grad(states, (x, h0, c0, *tw.values()), grad_outputs=torch.tensor(p["dh"]))
    out = {"h": states.detach().numpy(), "c": cells.detach().numpy()}
    return out | {k: g.numpy() for k, g in zip(names, grads, strict=True)}


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("layout", ["cs231n", "coursera"])
@pytest.mark.parametrize(("N", "T", "D", "H"), [(1, 6, 3, 4), (3, 5, 2, 5), (4, 1, 1, 1)])
def test_rnn_vjp_matches_torch_autograd(rng, layout, N, T, D, H):
    p = rnn_problem(rng, N, T, D, H, layout)
    got = vjp.rnn_vjp(**p, layout=layout).as_dict()
    want = torch_rnn(p, layout)
    for name in ("h", *GRADS):
        assert_close(got[name], want[name])


@pytest.mark.parametrize("layout", ["cs231n", "coursera"])
@pytest.mark.parametrize(("N", "T", "D", "H"), [(1, 6, 3, 4), (3, 5, 2, 5), (2, 1, 1, 1)])
@pytest.mark.parametrize("with_c0", [False, True])
def test_lstm_vjp_matches_torch_autograd(rng, layout, N, T, D, H, with_c0):
    p, w = lstm_problem(rng, N, T, D, H, layout)
    if not with_c0:
        p["c0"] = np.zeros_like(p["c0"])
    got = vjp.lstm_vjp(p["x"], p["h0"], w, p["dh"], layout=layout, c0=p["c0"] if with_c0 else None)
    want = torch_lstm(p, w, layout)
    assert set(got.as_dict()) == set(want)
    for name, value in got.as_dict().items():
        assert_close(value, want[name])
    assert list(got.dW) == (["dWx", "dWh", "db"] if layout == "cs231n" else [f"d{k}" for k in w])


@settings(max_examples=25, deadline=None)
@given(
    seed_=st.integers(0, 2**32 - 1),
    dims=st.tuples(*(st.integers(1, 4) for _ in range(4))),
    layout=st.sampled_from(["cs231n", "coursera"]),
    scale=st.sampled_from([0.3, 1.0, 3.0]),
)
def test_rnn_and_lstm_match_torch_for_any_sizes(seed_, dims, layout, scale):
    rng = np.random.default_rng(seed_)
    p = rnn_problem(rng, *dims, layout)
    p["Wh"] *= scale
    got, want = vjp.rnn_vjp(**p, layout=layout).as_dict(), torch_rnn(p, layout)
    for name in ("h", *GRADS):
        assert_close(got[name], want[name])
    q, w = lstm_problem(rng, *dims, layout)
    w = {k: v * scale for k, v in w.items()}
    got_l, want_l = (
        vjp.lstm_vjp(q["x"], q["h0"], w, q["dh"], layout=layout, c0=q["c0"]).as_dict(),
        torch_lstm(q, w, layout),
    )
    for name, value in got_l.items():
        assert_close(value, want_l[name])


# --------------------------------------------------------------------------- the layouts agree


def to_coursera(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same vanilla problem written the Coursera way (column vectors)."""
    return {
        "x": p["x"].transpose(2, 0, 1),  # (N, T, D) -> (D, N, T)
        "h0": p["h0"].T,
        "Wx": p["Wx"].T,  # Wax
        "Wh": p["Wh"].T,  # Waa: a_prev Wh = (Wh^T a_prev)^T
        "b": p["b"][:, None],
        "dh": p["dh"].transpose(2, 0, 1),
    }


def test_rnn_layouts_agree(rng):
    p = rnn_problem(rng, 3, 7, 4, 5, "cs231n")
    a = vjp.rnn_vjp(**p)
    b = vjp.rnn_vjp(**to_coursera(p), layout="coursera")
    assert a.layout is Layout.CS231N and b.layout is Layout.COURSERA
    assert_close(b.h, a.h.transpose(2, 0, 1), 1e-14)
    assert_close(b.dx, a.dx.transpose(2, 0, 1), 1e-14)
    assert_close(b.dh0, a.dh0.T, 1e-14)
    assert_close(b.dWx, a.dWx.T, 1e-14)
    assert_close(b.dWh, a.dWh.T, 1e-14)
    assert_close(b.db, a.db[:, None], 1e-14)
    assert set(b.as_dict(layout_names=True)) == {"a", "dx", "da0", "dWax", "dWaa", "dba"}


def test_lstm_layouts_agree(rng):
    N, T, D, H = 2, 6, 3, 4
    p, w = lstm_problem(rng, N, T, D, H, "cs231n")
    a = vjp.lstm_vjp(p["x"], p["h0"], w, p["dh"], c0=p["c0"])
    # Coursera's W_k on [a_prev; x_t]: CS231n's gate block k of Wh (transposed) then of Wx (transposed).
    gates = {"i": 0, "f": 1, "o": 2, "c": 3}
    wc = {}
    for k, j in gates.items():
        blk = slice(j * H, (j + 1) * H)
        wc[f"W{k}"] = np.concatenate([w["Wh"][:, blk].T, w["Wx"][:, blk].T], axis=1)
        wc[f"b{k}"] = w["b"][blk, None]
    b = vjp.lstm_vjp(
        p["x"].transpose(2, 0, 1), p["h0"].T, wc, p["dh"].transpose(2, 0, 1), layout="coursera", c0=p["c0"].T
    )
    assert_close(b.h, a.h.transpose(2, 0, 1), 1e-14)
    assert_close(b.c, a.c.transpose(2, 0, 1), 1e-14)
    assert_close(b.dx, a.dx.transpose(2, 0, 1), 1e-14)
    assert_close(b.dh0, a.dh0.T, 1e-14)
    assert_close(b.dc0, a.dc0.T, 1e-14)
    for k, j in gates.items():
        blk = slice(j * H, (j + 1) * H)
        assert_close(b.dW[f"dW{k}"], np.concatenate([a.dW["dWh"][:, blk].T, a.dW["dWx"][:, blk].T], axis=1), 1e-14)
        assert_close(b.dW[f"db{k}"], a.dW["db"][blk, None], 1e-14)


# --------------------------------------------------------------------------- central differences


def numpy_rnn_states(p: dict[str, np.ndarray]) -> np.ndarray:
    """cs231n forward, one example and one step at a time: (N, T, H)."""
    N, T, _ = p["x"].shape
    out = np.zeros((N, T, p["Wh"].shape[0]))
    for n in range(N):
        h = p["h0"][n]
        for t in range(T):
            h = np.tanh(p["x"][n, t] @ p["Wx"] + h @ p["Wh"] + p["b"])
            out[n, t] = h
    return out


def test_rnn_vjp_matches_central_differences(rng):
    """The VJP is the gradient of sum_t <dh_t, h_t>, every input alike."""
    p = rnn_problem(rng, 2, 4, 3, 3, "cs231n")
    p["Wh"] *= 2.0
    got = vjp.rnn_vjp(**p)
    assert_close(got.h, numpy_rnn_states(p), 1e-14)

    def f() -> float:
        return float((numpy_rnn_states(p) * p["dh"]).sum())

    for name, grad in (("x", "dx"), ("h0", "dh0"), ("Wx", "dWx"), ("Wh", "dWh"), ("b", "db")):
        assert_close(getattr(got, grad), numerical_gradient(f, p[name]), 1e-7)


def test_lstm_vjp_matches_central_differences(rng):
    p, w = lstm_problem(rng, 2, 3, 2, 2, "coursera")
    got = vjp.lstm_vjp(p["x"], p["h0"], w, p["dh"], layout="coursera", c0=p["c0"])

    def f() -> float:
        h = vjp.lstm_vjp(p["x"], p["h0"], w, p["dh"], layout="coursera", c0=p["c0"]).h
        return float((h * p["dh"]).sum())

    for name, grad in (("x", "dx"), ("h0", "dh0"), ("c0", "dc0")):
        assert_close(getattr(got, grad), numerical_gradient(f, p[name]), 1e-7)
    for name in w:
        assert_close(got.dW[f"d{name}"], numerical_gradient(f, w[name]), 1e-7)


# --------------------------------------------------------------------------- the loss-driven engine


@pytest.mark.parametrize("with_b_and_s0", [False, True])
def test_rnn_vjp_with_softmax_upstream_equals_engine_bptt(rng, with_b_and_s0):
    """One-hot x_t, Wx = U^T, Wh = W^T, dh_t = V^T (o_t - onehot(y_t)): engine.bptt's gradients."""
    H, C, T = 5, 7, 9
    prob = make_problem(rng, H, C, T, scale=2.0, s0=with_b_and_s0)
    b = rng.uniform(-1, 1, H) if with_b_and_s0 else None
    s0 = prob.s0 if prob.s0 is not None else np.zeros(H)
    g = engine.bptt(prob.U, prob.V, prob.W, prob.x, prob.y, s0=prob.s0, b=b)
    o, s = engine.forward(prob.U, prob.V, prob.W, prob.x, s0=prob.s0, b=b)
    delta_o = o.copy()
    delta_o[np.arange(T), prob.y] -= 1.0  # dL/d(V s_t), softmax + cross-entropy
    dLds = delta_o @ prob.V  # (T, H): V^T delta_o[t], each row
    x = np.eye(C)[prob.x][None]  # (1, T, C), x_t = e_{token}
    r = vjp.rnn_vjp(x, s0[None], prob.U.T, prob.W.T, np.zeros(H) if b is None else b, dLds[None])
    assert_close(r.h[0], s, 1e-12)
    assert_close(r.dWx.T, g.dLdU, 1e-12)
    assert_close(r.dWh.T, g.dLdW, 1e-12)
    assert_close(r.dh0[0], g.dLds0, 1e-12)
    if b is not None:
        assert_close(r.db, g.dLdb, 1e-12)


# --------------------------------------------------------------------------- dtypes and overflow


def test_float32_computes_in_float32(rng):
    p = rnn_problem(rng, 3, 8, 4, 6, "cs231n")
    r64 = vjp.rnn_vjp(**p)
    r32 = vjp.rnn_vjp(**{k: v.astype(np.float32) for k, v in p.items()})
    for name in ("h", *GRADS):
        assert getattr(r32, name).dtype == np.float32
        assert_close(getattr(r32, name).astype(np.float64), getattr(r64, name), 1e-5)
    q, w = lstm_problem(rng, 3, 8, 4, 6, "coursera")
    l64 = vjp.lstm_vjp(q["x"], q["h0"], w, q["dh"], layout="coursera")
    l32 = vjp.lstm_vjp(q["x"].astype(np.float32), q["h0"], w, q["dh"], layout="coursera")  # x decides
    for name, value in l32.as_dict().items():
        assert value.dtype == np.float32
        assert_close(value.astype(np.float64), l64.as_dict()[name], 1e-5)


def test_float64_when_x_is_not_float32(rng):
    p = rnn_problem(rng, 1, 2, 2, 2, "cs231n")
    r = vjp.rnn_vjp(**(p | {"x": p["x"].tolist(), "h0": p["h0"].astype(np.float32)}))
    assert r.dWx.dtype == r.dh0.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_overflow_raises_compute_error(rng, dtype):
    """x tiny and Wx huge keep the states unsaturated; dx = dz Wx^T then overflows."""
    big = float(np.finfo(dtype).max) ** 0.75
    p = rnn_problem(rng, 2, 3, 2, 2, "cs231n")
    p["x"] /= big
    p["Wx"] *= big
    p["dh"] *= big
    p = {k: v.astype(dtype) for k, v in p.items()}
    with pytest.raises(ComputeError, match=rf"^dx is not finite: the computation overflowed in {dtype.__name__}"):
        vjp.rnn_vjp(**p)
    q, w = lstm_problem(rng, 2, 3, 2, 2, "cs231n")
    q["x"] /= big
    w["Wx"] *= big
    q["dh"] *= big
    with pytest.raises(ComputeError, match=r"^dx is not finite"):
        vjp.lstm_vjp(q["x"].astype(dtype), q["h0"], w, q["dh"])


def test_lstm_saturated_gates_stay_finite(rng):
    """Pre-activations of +-1e4: the sigmoid neither overflows nor returns NaN."""
    q, w = lstm_problem(rng, 2, 4, 3, 2, "cs231n")
    w["Wx"] *= 1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        r = vjp.lstm_vjp(q["x"], q["h0"], w, q["dh"])
    for value in r.as_dict().values():
        assert np.isfinite(value).all()


# --------------------------------------------------------------------------- the mistakes


def reference_mistake_cs231n(p: dict[str, np.ndarray], mistake: Mistake | None) -> dict[str, np.ndarray]:
    """CS231n's rnn_step_backward / rnn_backward as a learner writes them, one example at a time."""
    x, h0, Wx, Wh, b, dh = (p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh"))
    N, T, _ = x.shape
    H = h0.shape[1]
    out = {"dx": np.zeros_like(x), "dh0": np.zeros_like(h0), "dWx": np.zeros_like(Wx), "dWh": np.zeros_like(Wh)}
    out["db"] = np.zeros(N) if mistake is Mistake.DB_WRONG_AXIS else np.zeros(H)
    for n in range(N):
        hs, zs, h = [h0[n]], [], h0[n]
        for t in range(T):
            zs.append(x[n, t] @ Wx + h @ Wh + b)
            h = np.tanh(zs[-1])
            hs.append(h)
        dprev = np.zeros(H)
        for t in reversed(range(T)):
            if mistake is Mistake.UPSTREAM_NOT_ADDED:
                dnext = dprev if t < T - 1 else dh[n, t]
            elif mistake is Mistake.NEXT_STEP_NOT_ADDED:
                dnext = dh[n, t]
            else:
                dnext = dh[n, t] + dprev
            act = zs[t] if mistake is Mistake.TANH_OF_PREACTIVATION else hs[t + 1]
            dz = dnext * (1 - act**2)
            out["dx"][n, t] = Wx @ dz
            out["dWx"] += np.outer(x[n, t], dz)
            out["dWh"] += np.outer(hs[t + 1] if mistake is Mistake.DWH_WITH_CURRENT_STATE else hs[t], dz)
            if mistake is Mistake.DB_WRONG_AXIS:
                out["db"][n] += dz.sum()
            else:
                out["db"] += dz
            dprev = dz @ (Wh if mistake is Mistake.WH_NOT_TRANSPOSED else Wh.T)  # correct: dz Wh^T
        out["dh0"][n] = 0.0 if mistake is Mistake.DH0_NOT_RETURNED else dprev
    return out


def reference_mistake_coursera(p: dict[str, np.ndarray], mistake: Mistake | None) -> dict[str, np.ndarray]:
    """Coursera's rnn_cell_backward / rnn_backward, columns, all m examples at once."""
    x, a0, Wax, Waa, ba, da = (p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh"))
    T = x.shape[2]
    a, z, a_prev = [], [], a0
    for t in range(T):
        z.append(Wax @ x[:, :, t] + Waa @ a_prev + ba)
        a_prev = np.tanh(z[-1])
        a.append(a_prev)
    out = {"dx": np.zeros_like(x), "dWx": np.zeros_like(Wax), "dWh": np.zeros_like(Waa)}
    out["db"] = np.zeros((1, x.shape[1])) if mistake is Mistake.DB_WRONG_AXIS else np.zeros_like(ba)
    da_prevt = np.zeros_like(a0)
    for t in reversed(range(T)):
        if mistake is Mistake.UPSTREAM_NOT_ADDED:
            da_next = da_prevt if t < T - 1 else da[:, :, t]
        elif mistake is Mistake.NEXT_STEP_NOT_ADDED:
            da_next = da[:, :, t]
        else:
            da_next = da[:, :, t] + da_prevt
        act = z[t] if mistake is Mistake.TANH_OF_PREACTIVATION else a[t]
        dtanh = (1 - act**2) * da_next
        out["dx"][:, :, t] = Wax.T @ dtanh
        out["dWx"] += dtanh @ x[:, :, t].T
        prev = a0 if t == 0 else a[t - 1]
        out["dWh"] += dtanh @ (a[t] if mistake is Mistake.DWH_WITH_CURRENT_STATE else prev).T
        if mistake is Mistake.DB_WRONG_AXIS:
            out["db"] += np.sum(dtanh, axis=0, keepdims=True)
        else:
            out["db"] += np.sum(dtanh, axis=1, keepdims=True)
        da_prevt = (Waa if mistake is Mistake.WH_NOT_TRANSPOSED else Waa.T) @ dtanh
    out["dh0"] = np.zeros_like(a0) if mistake is Mistake.DH0_NOT_RETURNED else da_prevt
    return out


REFERENCES = {"cs231n": reference_mistake_cs231n, "coursera": reference_mistake_coursera}


@pytest.mark.parametrize("layout", ["cs231n", "coursera"])
@pytest.mark.parametrize("mistake", [None, *Mistake])
def test_mistakes_match_a_learners_loop(rng, layout, mistake):
    """Each recomputation is what the assignment's loop gives with that mistake made (None: correct)."""
    p = rnn_problem(rng, 3, 5, 2, 4, layout)
    got = (vjp.rnn_vjp if mistake is None else MISTAKES[mistake])(**p, layout=layout)
    want = REFERENCES[layout](p, mistake)
    for name in GRADS:
        if np.abs(want[name]).max() > 0:
            assert_close(getattr(got, name), want[name], 1e-12)
        else:  # dh0 left zero
            assert np.array_equal(getattr(got, name), want[name])


@pytest.mark.parametrize("layout", ["cs231n", "coursera"])
@pytest.mark.parametrize("mistake", list(Mistake))
def test_diagnose_identifies_each_mistake_exactly(rng, layout, mistake):
    p = rnn_problem(rng, 3, 5, 2, 4, layout)
    correct = vjp.rnn_vjp(**p, layout=layout)
    wrong = MISTAKES[mistake](**p, layout=layout)
    differs = [g for g in GRADS if not vjp.matches(getattr(wrong, g), getattr(correct, g), 1e-6)]
    assert differs, f"{mistake} gives the correct answer"
    submitted = {g: getattr(wrong, g) for g in GRADS}
    assert vjp.diagnose(submitted, **p, layout=layout) == [mistake]
    # a submission rounded to 9 significant digits, as a learner's JSON might carry it
    rounded = {g: np.array([float(f"{v:.9g}") for v in a.ravel()]).reshape(a.shape) for g, a in submitted.items()}
    assert vjp.diagnose(rounded, **p, layout=layout) == [mistake]
    assert vjp.diagnose({g: getattr(correct, g) for g in GRADS}, **p, layout=layout) == []
    assert wrong.h.shape == correct.h.shape


def test_mistake_names_and_functions(rng):
    assert set(MISTAKES) == set(Mistake) == set(vjp.DESCRIPTIONS)
    assert Mistake("db_wrong_axis") is Mistake.DB_WRONG_AXIS
    assert MISTAKES[Mistake.WH_NOT_TRANSPOSED].__name__ == "rnn_vjp_wh_not_transposed"
    assert "Wh instead of its transpose" in (MISTAKES[Mistake.WH_NOT_TRANSPOSED].__doc__ or "")
    p = rnn_problem(rng, 2, 3, 2, 3, "cs231n")
    assert MISTAKES[Mistake.DB_WRONG_AXIS](**p).db.shape == (2,)
    assert MISTAKES[Mistake.DB_WRONG_AXIS](**to_coursera(p), layout="coursera").db.shape == (1, 2)


def test_diagnose_reports_every_mistake_that_fits(rng):
    """Upstream only at step 0: forgetting dh[:, t] zeroes everything, so dh0 = 0 alone fits two mistakes."""
    p = rnn_problem(rng, 2, 4, 3, 3, "cs231n")
    p["dh"][:, 1:] = 0.0
    zero = {"dh0": np.zeros((2, 3))}
    assert vjp.diagnose(zero, **p) == [Mistake.UPSTREAM_NOT_ADDED, Mistake.DH0_NOT_RETURNED]
    everything_zero = {g: np.zeros_like(getattr(vjp.rnn_vjp(**p), g)) for g in GRADS}
    assert vjp.diagnose(everything_zero, **p) == [Mistake.UPSTREAM_NOT_ADDED]


def test_diagnose_partial_and_coursera_names(rng):
    p = to_coursera(rnn_problem(rng, 2, 4, 3, 3, "cs231n"))
    wrong = MISTAKES[Mistake.WH_NOT_TRANSPOSED](**p, layout="coursera")
    assert vjp.diagnose({"da0": wrong.dh0, "dWaa": wrong.dWh}, **p, layout="coursera") == [Mistake.WH_NOT_TRANSPOSED]
    # dh0 left zero changes nothing but dh0: from dWx alone it cannot be told from a correct answer
    dh0_wrong = MISTAKES[Mistake.DH0_NOT_RETURNED](**p, layout="coursera")
    assert vjp.diagnose({"dWax": dh0_wrong.dWx}, **p, layout="coursera") == []
    # the wrong-shape db of the wrong-axis mistake is recognised by its shape and values
    db_wrong = MISTAKES[Mistake.DB_WRONG_AXIS](**p, layout="coursera")
    assert vjp.diagnose({"dba": db_wrong.db}, **p, layout="coursera") == [Mistake.DB_WRONG_AXIS]
    assert vjp.diagnose({"dba": db_wrong.db.T}, **p, layout="coursera") == []


def test_diagnose_rejects_bad_submissions(rng):
    p = rnn_problem(rng, 2, 3, 2, 3, "cs231n")
    with pytest.raises(InputError) as info:
        vjp.diagnose({"dWax": np.zeros((3, 2))}, **p)
    assert str(info.value) == (
        "submitted must name gradients among dx, dh0, dWx, dWh, db in the cs231n layout, got 'dWax'"
    )
    assert info.value.field == "submitted.dWax"
    with pytest.raises(InputError, match=r"^submitted must hold at least one of dx, dh0, dWx, dWh, db, got none$"):
        vjp.diagnose({}, **p)
    with pytest.raises(InputError, match=r"^submitted\.da0 must be an array of numbers, got list") as info:
        vjp.diagnose({"da0": [[1.0], [2.0, 3.0]]}, **to_coursera(p), layout="coursera")
    assert info.value.field == "submitted.da0"
    assert vjp.diagnose({"db": [np.nan, 0.0, 0.0]}, **p) == []  # a NaN answer matches nothing
    with pytest.raises(InputError, match=r"^tolerance must be a number >= 0, got -1"):
        vjp.diagnose({"db": np.zeros(3)}, **p, tolerance=-1)


def test_matches_is_relative_and_shape_strict():
    e = np.array([1.0, -2.0])
    assert vjp.matches([1.0, -2.0 + 1e-9], e, 1e-6)
    assert not vjp.matches([1.0, -2.1], e, 1e-6)
    assert not vjp.matches([[1.0, -2.0]], e, 1e-6)
    assert vjp.matches(np.zeros(2), np.zeros(2), 1e-6)
    assert not vjp.matches([1e-30, 0.0], np.zeros(2), 1e-6)
    assert not vjp.matches([np.nan, -2.0], e, 1e-6)


# --------------------------------------------------------------------------- shape errors


def _rnn_call(layout: str, **change: Any) -> Callable[[np.random.Generator], object]:
    def call(rng: np.random.Generator) -> object:
        p = rnn_problem(rng, 2, 5, 3, 4, layout)
        for k, f in change.items():
            p[k] = f(p[k])
        return vjp.rnn_vjp(**p, layout=layout)

    return call


def _lstm_call(layout: str, **change: Any) -> Callable[[np.random.Generator], object]:
    def call(rng: np.random.Generator) -> object:
        p, w = lstm_problem(rng, 2, 5, 3, 4, layout)
        for k, f in change.items():
            if k in w:
                w[k] = f(w[k])
            else:
                p[k] = f(p[k])
        return vjp.lstm_vjp(p["x"], p["h0"], w, p["dh"], layout=layout, c0=p["c0"])

    return call


def _drop(key: str) -> Callable[[np.random.Generator], object]:
    def call(rng: np.random.Generator) -> object:
        p, w = lstm_problem(rng, 2, 5, 3, 4, "coursera")
        del w[key]
        return vjp.lstm_vjp(p["x"], p["h0"], w, p["dh"], layout="coursera")

    return call


BAD_SHAPES = [
    # vanilla, cs231n: N = 2, T = 5, D = 3, H = 4
    (
        _rnn_call("cs231n", dh=lambda a: a.transpose(0, 2, 1)),
        "dh",
        "dh must be N x T x H = 2 x 5 x 4 in the cs231n layout, got 2 x 4 x 5",
    ),
    (_rnn_call("cs231n", x=lambda a: a[0]), "x", "x must be N x T x D in the cs231n layout, got 5 x 3"),
    (
        _rnn_call("cs231n", x=lambda a: a[:, :0]),
        "x",
        "x must be N x T x D with every size >= 1 in the cs231n layout, got 2 x 0 x 3",
    ),
    (_rnn_call("cs231n", Wx=lambda a: a.T), "Wx", "Wx must be D x H = 3 x 3 in the cs231n layout, got 4 x 3"),
    (
        _rnn_call("cs231n", Wx=lambda a: a[None]),
        "Wx",
        "Wx must be D x H with D = 3 in the cs231n layout, got 1 x 3 x 4",
    ),
    (_rnn_call("cs231n", Wh=lambda a: a[:, :3]), "Wh", "Wh must be H x H = 4 x 4 in the cs231n layout, got 4 x 3"),
    (_rnn_call("cs231n", b=lambda a: a[:, None]), "b", "b must be H = 4 in the cs231n layout, got 4 x 1"),
    (_rnn_call("cs231n", h0=lambda a: a.T), "h0", "h0 must be N x H = 2 x 4 in the cs231n layout, got 4 x 2"),
    # vanilla, coursera: the same sizes, Coursera's names in brackets
    (
        _rnn_call("coursera", dh=lambda a: a[:, :, :4]),
        "dh",
        "dh (da) must be H x N x T = 4 x 2 x 5 in the coursera layout, got 4 x 2 x 4",
    ),
    (_rnn_call("coursera", Wx=lambda a: a.T), "Wx", "Wx (Wax) must be H x D = 3 x 3 in the coursera layout, got 3 x 4"),
    (
        _rnn_call("coursera", Wh=lambda a: a[:3]),
        "Wh",
        "Wh (Waa) must be H x H = 4 x 4 in the coursera layout, got 3 x 4",
    ),
    (_rnn_call("coursera", b=lambda a: a[:, 0]), "b", "b (ba) must be H x 1 = 4 x 1 in the coursera layout, got 4"),
    (_rnn_call("coursera", h0=lambda a: a.T), "h0", "h0 (a0) must be H x N = 4 x 2 in the coursera layout, got 2 x 4"),
    # LSTM, cs231n
    (
        _lstm_call("cs231n", Wx=lambda a: a[:, :10]),
        "Wx",
        "Wx must be D x 4H in the cs231n layout, got 3 x 10 (10 is not a multiple of 4)",
    ),
    (_lstm_call("cs231n", Wh=lambda a: a[:, :12]), "Wh", "Wh must be H x 4H = 4 x 16 in the cs231n layout, got 4 x 12"),
    (_lstm_call("cs231n", b=lambda a: a[:4]), "b", "b must be 4H = 16 in the cs231n layout, got 4"),
    (_lstm_call("cs231n", c0=lambda a: a[:1]), "c0", "c0 must be N x H = 2 x 4 in the cs231n layout, got 1 x 4"),
    (
        _lstm_call("cs231n", dh=lambda a: a[..., :3]),
        "dh",
        "dh must be N x T x H = 2 x 5 x 4 in the cs231n layout, got 2 x 5 x 3",
    ),
    # LSTM, coursera
    (
        _lstm_call("coursera", Wi=lambda a: a[:, :6]),
        "Wi",
        "Wi must be H x (H + D) = 4 x 7 in the coursera layout, got 4 x 6",
    ),
    (_lstm_call("coursera", bo=lambda a: a.T), "bo", "bo must be H x 1 = 4 x 1 in the coursera layout, got 1 x 4"),
    (_lstm_call("coursera", h0=lambda a: a.T), "h0", "h0 (a0) must be H x N = 4 x 2 in the coursera layout, got 2 x 4"),
    (_drop("bc"), "bc", "weights must hold Wf, Wi, Wc, Wo, bf, bi, bc, bo in the coursera layout, missing bc"),
]


@pytest.mark.parametrize(("call", "field", "message"), BAD_SHAPES)
def test_wrong_shapes_raise_input_error_with_exact_message(rng, call, field, message):
    with pytest.raises(InputError) as info:
        call(rng)
    assert str(info.value) == message
    assert info.value.field == field


def test_other_bad_inputs_raise_input_error(rng):
    p = rnn_problem(rng, 2, 3, 2, 3, "cs231n")
    with pytest.raises(InputError) as info:
        vjp.rnn_vjp(**p, layout="torch")
    assert str(info.value) == "layout must be one of 'cs231n', 'coursera', got 'torch'"
    p["dh"][1, 2, 0] = np.nan
    with pytest.raises(InputError) as info:
        vjp.rnn_vjp(**p)
    assert str(info.value) == "dh must hold finite numbers, got nan at index (1, 2, 0)"
    assert info.value.field == "dh"
    with pytest.raises(InputError, match=r"^x must be an array of numbers, got list"):
        vjp.rnn_vjp(**(p | {"x": [[1.0, 2.0], [3.0]]}))
    q, w = lstm_problem(rng, 2, 3, 2, 3, "cs231n")
    with pytest.raises(InputError) as info:
        vjp.lstm_vjp(q["x"], q["h0"], w | {"Wf": w["Wx"]}, q["dh"])
    assert str(info.value) == "weights must hold Wx, Wh, b in the cs231n layout, unexpected Wf"
