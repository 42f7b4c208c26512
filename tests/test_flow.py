"""service.flow against PyTorch autograd, log-space loops, engine.bptt / gated.bptt and the seed's loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import seed
import torch
from gated_loops import GatedProblem, make_gated_problem
from helpers import Problem, assert_close, make_problem

from service import engine, flow, gated
from service.errors import InputError

torch.set_num_threads(1)  # the machine is shared; these graphs are tiny

LOG_TOL = 1e-9  # absolute, on log10 norms against autograd
BIAS_TOL = 1e-9  # absolute, on relative errors against engine.bptt
GATED = [("gru", False), ("gru", True), ("lstm", False)]  # (cell, reset_after)
GATED_IDS = ["gru", "gru-reset-after", "lstm"]
SIZES = [(2, 3, 1), (2, 4, 5), (3, 2, 8), (4, 6, 7), (5, 3, 8)]  # (H, C, T)


def with_bias(rng: np.random.Generator, p: Problem) -> dict[str, Any]:
    """Keyword arguments b, c (and s0) for ``flow``/``engine.bptt``."""
    H, C = p.U.shape
    return {"s0": p.s0, "b": rng.uniform(-1, 1, H), "c": rng.uniform(-1, 1, C)}


# --- References: autograd, explicit Jacobians, a log-space loop ---


def torch_step(cell: str, reset_after: bool, params: dict[str, torch.Tensor], token: int) -> Callable[..., Any]:
    """One step of the cell as a function of the state: s -> s' (rnn, GRU) or (s, c) -> (s', c') (LSTM).

    Written from the formulas of the module docstrings of service/engine.py and service/gated.py.
    """
    U, W, b, bhh = params["U"], params["W"], params["b"], params["b_hh"]
    if cell == "rnn":
        return lambda s: torch.tanh(U[:, token] + W @ s + b)
    u = U[:, :, token]  # (G, H)
    if cell == "gru":

        def gru(s: torch.Tensor) -> torch.Tensor:
            r = torch.sigmoid(u[0] + W[0] @ s + b[0] + bhh[0])
            z = torch.sigmoid(u[1] + W[1] @ s + b[1] + bhh[1])
            if reset_after:
                n = torch.tanh(u[2] + b[2] + r * (W[2] @ s + bhh[2]))
            else:
                n = torch.tanh(u[2] + W[2] @ (r * s) + b[2] + bhh[2])
            return (1 - z) * n + z * s

        return gru

    def lstm(sc: torch.Tensor) -> torch.Tensor:
        H = len(sc) // 2
        s, cs = sc[:H], sc[H:]
        i = torch.sigmoid(u[0] + W[0] @ s + b[0] + bhh[0])
        f = torch.sigmoid(u[1] + W[1] @ s + b[1] + bhh[1])
        g = torch.tanh(u[2] + W[2] @ s + b[2] + bhh[2])
        o = torch.sigmoid(u[3] + W[3] @ s + b[3] + bhh[3])
        cs = f * cs + i * g
        return torch.cat([o * torch.tanh(cs), cs])

    return lstm


def torch_jacobians(
    cell: str, U: np.ndarray, W: np.ndarray, x: np.ndarray, state0: np.ndarray, **biases: Any
) -> tuple[list[np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """By autograd: the states (s_k, or [s_k; c_k]) and d state_t / d state_k for every k < t."""
    reset_after = bool(biases.pop("reset_after", False))
    H = U.shape[-2]
    shape = (H,) if cell == "rnn" else (U.shape[0], H)
    params = {"U": torch.from_numpy(U), "W": torch.from_numpy(W)}
    for name in ("b", "b_hh"):
        value = biases.get(name)
        params[name] = torch.zeros(shape, dtype=torch.float64) if value is None else torch.from_numpy(value)
    steps = [torch_step(cell, reset_after, params, int(t)) for t in x]
    states = []
    state = torch.from_numpy(state0)
    for step in steps:
        state = step(state)
        states.append(state)
    jac = {}
    for k in range(len(x)):

        def run(start: torch.Tensor, k: int = k) -> torch.Tensor:
            out, s = [], start
            for step in steps[k + 1 :]:
                s = step(s)
                out.append(s)
            return torch.stack(out)

        if k + 1 < len(x):
            J = torch.autograd.functional.jacobian(run, states[k]).numpy()  # (T-k-1, D, D)
            for t in range(k + 1, len(x)):
                jac[t, k] = J[t - k - 1]
    return [s.numpy() for s in states], jac


def matrix_norm(a: np.ndarray, norm: str) -> float:
    return float(np.linalg.svd(a, compute_uv=False)[0]) if norm == "spectral" else float(np.sqrt((a * a).sum()))


def log_space_reference(J: np.ndarray, norm: str) -> np.ndarray:
    """Row by row, multiplying backwards: R = J_t J_{t-1} ... J_{k+1}, renormalised at each k, its scale in log10."""
    T, D, _ = J.shape
    out = np.full((T, T), np.nan)
    for t in range(T):
        out[t, t] = np.log10(matrix_norm(np.eye(D), norm))
        R, scale = np.eye(D), 0.0
        for k in range(t - 1, -1, -1):
            R = R @ J[k + 1]
            n = matrix_norm(R, norm)
            out[t, k] = scale + np.log10(n)
            R, scale = R / n, scale + np.log10(n)
    return out


def relative_error(got: np.ndarray, full: np.ndarray) -> float:
    err, scale = float(np.linalg.norm(got - full)), float(np.linalg.norm(full))
    return 0.0 if err == 0 else err / scale


def gated_problem(rng: np.random.Generator, cell: str, reset_after: bool, H: int, C: int, T: int) -> GatedProblem:
    return make_gated_problem(rng, cell, H, C, T, scale=1.5, biases=True, states=True, reset_after=reset_after)


def gated_args(p: GatedProblem) -> dict[str, Any]:
    args = {k: v for k, v in p.kwargs().items() if v is not None}
    if p.cell == "lstm":
        args.pop("reset_after")
    return args


# --- Jacobian norms ---


@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
@pytest.mark.parametrize(("H", "C", "T"), SIZES)
def test_flow_jacobian_norms_match_autograd(rng, norm, H, C, T):
    """log10 ||d s_t / d s_k|| equals autograd's Jacobian's to 1e-9, with s0 and b; NaN above the diagonal."""
    p = make_problem(rng, H, C, T, scale=2.0, s0=True)
    kw = with_bias(rng, p)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, norm=norm, **kw)
    states, jac = torch_jacobians("rnn", p.U, p.W, p.x, p.s0, b=kw["b"])
    assert_close(np.array(states), engine.forward(p.U, p.V, p.W, p.x, s0=p.s0, b=kw["b"])[1])
    got = f.log10_jacobian_norms
    assert got.shape == (T, T)
    assert np.isnan(got[np.triu_indices(T, 1)]).all()
    np.testing.assert_allclose(np.diag(got), 0.0 if norm == "spectral" else np.log10(np.sqrt(H)), atol=1e-15)
    assert len(jac) == T * (T - 1) // 2
    for (t, k), J in jac.items():
        assert abs(got[t, k] - np.log10(matrix_norm(J, norm))) <= LOG_TOL, (t, k)


@pytest.mark.parametrize(("cell", "reset_after"), GATED, ids=GATED_IDS)
@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
@pytest.mark.parametrize(("H", "C", "T"), [(2, 3, 4), (3, 4, 7), (5, 2, 8)])
def test_flow_gated_jacobian_norms_match_autograd(rng, cell, reset_after, norm, H, C, T):
    """GRU: d s_t / d s_k; LSTM: d (s_t, c_t) / d (s_k, c_k), 2H x 2H; both to 1e-9 in log10."""
    p = gated_problem(rng, cell, reset_after, H, C, T)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, cell=cell, norm=norm, **gated_args(p))
    state0 = p.s0 if cell == "gru" else np.concatenate([p.s0, p.c0])
    _, jac = torch_jacobians(cell, p.U, p.W, p.x, state0, b=p.b, b_hh=p.b_hh, reset_after=reset_after)
    D = len(state0)
    got = f.log10_jacobian_norms
    assert np.isnan(got[np.triu_indices(T, 1)]).all()
    np.testing.assert_allclose(np.diag(got), 0.0 if norm == "spectral" else np.log10(np.sqrt(D)), atol=1e-15)
    for (t, k), J in jac.items():
        assert J.shape == (D, D)
        assert abs(got[t, k] - np.log10(matrix_norm(J, norm))) <= LOG_TOL, (t, k)


@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
def test_flow_jacobian_norms_beyond_float64_closed_form(rng, norm):
    """States held at 0 (U = 0, s0 = 0) make every J_k = W; W symmetric, 1e3 times its draw, T = 200:
    ||W^n|| reaches 1e500, yet log10 equals n log10 max|lambda| (spectral) or
    log10 sqrt(sum lambda_i^(2n)) (Frobenius) to 1e-6."""
    H, T = 3, 200
    A = rng.uniform(-1, 1, (H, H))
    W = 1e3 * (A + A.T) / 2
    U = np.zeros((H, 4))
    V = rng.uniform(-1, 1, (4, H))
    x, y = rng.integers(0, 4, T), rng.integers(0, 4, T)
    f = flow.flow(U, V, W, x, y, norm=norm)
    ln_abs = np.log(np.abs(np.linalg.eigvalsh(W)))  # (H,)
    n = np.subtract.outer(np.arange(T), np.arange(T))  # n = t - k
    if norm == "spectral":
        want = n * ln_abs.max() / np.log(10)
    else:
        e = 2 * n[..., None] * ln_abs  # (T, T, H), ln lambda_i^(2n)
        top = e.max(axis=-1, keepdims=True)
        want = (top[..., 0] + np.log(np.exp(e - top).sum(axis=-1))) / 2 / np.log(10)
    lower = np.tril_indices(T)
    got = f.log10_jacobian_norms[lower]
    assert np.isfinite(got).all()
    assert got.max() > 400  # 1e400 and more: past float64's 1.8e308
    np.testing.assert_allclose(got, want[lower], rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
@pytest.mark.parametrize("scale", [1e3, 1e-2], ids=["overflow", "underflow"])
def test_flow_jacobian_norms_beyond_float64_match_log_loop(rng, norm, scale):
    """A general W (not normal) times 1e3 with the states at 0, and a small W with nonzero states whose
    products fall below 1e-308: equal to the row-by-row log-space loop to 1e-6, and finite."""
    H, C, T = 3, 4, 200
    p = make_problem(rng, H, C, T)
    W = p.W * scale
    U = np.zeros((H, C)) if scale > 1 else p.U
    f = flow.flow(U, p.V, W, p.x, p.y, norm=norm)
    S = engine.forward(U, p.V, W, p.x)[1]
    J = (1 - S**2)[:, :, None] * W  # (T, H, H), explicit J_k = diag(1 - s_k**2) W
    want = log_space_reference(J, norm)
    lower = np.tril_indices(T)
    got = f.log10_jacobian_norms[lower]
    assert np.isfinite(got).all()
    assert got.max() > 310 if scale > 1 else got.min() < -310
    np.testing.assert_allclose(got, want[lower], rtol=0, atol=1e-6)


def test_flow_zero_W_gives_minus_infinity_below_the_diagonal(rng):
    """W = 0: every product of two or more Jacobians is the zero matrix, log10 0 = -inf; J_k itself is 0 too."""
    p = make_problem(rng, 3, 4, 5)
    f = flow.flow(p.U, p.V, np.zeros((3, 3)), p.x, p.y)
    assert np.all(f.log10_jacobian_norms[np.tril_indices(5, -1)] == -np.inf)
    assert np.all(np.diag(f.log10_jacobian_norms) == 0.0)
    assert np.all(f.step_jacobian_sigma == 0.0)
    assert f.W_spectral_radius == 0.0 and f.W_sigma_max == 0.0


# --- Step Jacobians and W ---


@pytest.mark.parametrize(("H", "C", "T"), SIZES)
def test_flow_step_sigma_and_W_match_numpy(rng, H, C, T):
    """sigma_max of diag(1 - s_k^2) W built explicitly (s_{-1} = s0) by np.linalg.svd; W's by eig and svd;
    the spectral log10 norm one step below the diagonal is log10 sigma_k."""
    p = make_problem(rng, H, C, T, scale=1.5, s0=True)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, s0=p.s0)
    _, s = seed.forward_propagation(p.U, p.V, p.W, p.x, s0=p.s0)
    want = [np.linalg.svd(np.diag(1 - s[k] ** 2) @ p.W, compute_uv=False)[0] for k in range(T)]
    np.testing.assert_allclose(f.step_jacobian_sigma, want, rtol=1e-12)
    assert f.W_spectral_radius == pytest.approx(np.abs(np.linalg.eig(p.W)[0]).max(), rel=1e-12)
    assert f.W_sigma_max == pytest.approx(np.linalg.svd(p.W, compute_uv=False)[0], rel=1e-12)
    sub = np.diag(f.log10_jacobian_norms, -1)  # (T-1,): log10 ||J_k||, k = 1 .. T-1
    np.testing.assert_allclose(sub, np.log10(want[1:]), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("cell", "reset_after"), GATED, ids=GATED_IDS)
def test_flow_gated_step_sigma_and_W_block_match(rng, cell, reset_after):
    """Step Jacobians by autograd on one step (k = 0 from s0, c0), their sigma_max by np.linalg.svd;
    the candidate block W[2] for the radius and sigma."""
    p = gated_problem(rng, cell, reset_after, 4, 5, 6)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, cell=cell, **gated_args(p))
    state0 = p.s0 if cell == "gru" else np.concatenate([p.s0, p.c0])
    states, _ = torch_jacobians(cell, p.U, p.W, p.x, state0, b=p.b, b_hh=p.b_hh, reset_after=reset_after)
    params = {name: torch.from_numpy(getattr(p, name)) for name in ("U", "W", "b", "b_hh")}
    prev = [state0, *states[:-1]]
    want = []
    for k, token in enumerate(p.x):
        step = torch_step(cell, reset_after, params, int(token))
        J = torch.autograd.functional.jacobian(step, torch.from_numpy(prev[k])).numpy()
        want.append(np.linalg.svd(J, compute_uv=False)[0])
    np.testing.assert_allclose(f.step_jacobian_sigma, want, rtol=1e-12)
    assert f.W_spectral_radius == pytest.approx(np.abs(np.linalg.eig(p.W[2])[0]).max(), rel=1e-12)
    assert f.W_sigma_max == pytest.approx(np.linalg.svd(p.W[2], compute_uv=False)[0], rel=1e-12)


# --- Lags and truncation ---


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize(("H", "C", "T"), [*SIZES, (6, 9, 20)])
def test_flow_truncation_bias_matches_engine_bptt(rng, biases, H, C, T):
    """At every K, ||g_K - g|| / ||g|| from engine.bptt(bptt_truncate=K) against engine.bptt, to 1e-9."""
    p = make_problem(rng, H, C, T, scale=2.0, s0=True)
    kw = with_bias(rng, p) if biases else {"s0": p.s0}
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, **kw)
    full = engine.bptt(p.U, p.V, p.W, p.x, p.y, **kw)
    names = ["dLdU", "dLdW", "dLds0"] + (["dLdb"] if biases else [])
    assert sorted(f.truncation_bias) == sorted(["K", *names])
    assert f.truncation_bias["K"] == list(range(T))
    for K in range(T):
        g = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **kw)
        for name in names:
            want = relative_error(getattr(g, name), getattr(full, name))
            assert abs(f.truncation_bias[name][K] - want) <= BIAS_TOL, (name, K)


@pytest.mark.parametrize(("cell", "reset_after"), GATED, ids=GATED_IDS)
def test_flow_gated_truncation_bias_matches_gated_bptt(rng, cell, reset_after):
    """The same against gated.bptt, with b, b_hh, s0 (and c0: dLdc0) given."""
    T = 7
    p = gated_problem(rng, cell, reset_after, 3, 4, T)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, cell=cell, **gated_args(p))
    full = gated.bptt(cell, p.U, p.V, p.W, p.x, p.y, **p.kwargs())
    names = ["dLdU", "dLdW", "dLdb", "dLdb_hh", "dLds0"] + (["dLdc0"] if cell == "lstm" else [])
    assert sorted(f.truncation_bias) == sorted(["K", *names])
    for K in range(T):
        g = gated.bptt(cell, p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **p.kwargs())
        for name in names:
            want = relative_error(getattr(g, name), getattr(full, name))
            assert abs(f.truncation_bias[name][K] - want) <= BIAS_TOL, (name, K)


@pytest.mark.parametrize("biases", [False, True])
def test_lag_gradients_sum_to_full_and_truncated(rng, biases):
    """Summed over all lags: engine.bptt's gradients; over lags <= K: engine.bptt(bptt_truncate=K)'s."""
    T = 9
    p = make_problem(rng, 4, 6, T, scale=2.0, s0=True)
    kw = with_bias(rng, p) if biases else {"s0": p.s0}
    terms = list(flow.lag_gradients(p.U, p.V, p.W, p.x, p.y, **kw))
    assert len(terms) == T
    names = ["dLdU", "dLdW", "dLds0"] + (["dLdb"] if biases else [])
    for K in [*range(T), None]:
        g = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **kw)
        kept = terms if K is None else terms[: K + 1]
        for name in names:
            assert_close(sum(t[name] for t in kept), getattr(g, name), rtol=1e-12)


@pytest.mark.parametrize(("cell", "reset_after"), GATED, ids=GATED_IDS)
def test_lag_gradients_gated_sum_to_full_and_truncated(rng, cell, reset_after):
    T = 6
    p = gated_problem(rng, cell, reset_after, 3, 5, T)
    terms = list(flow.lag_gradients(p.U, p.V, p.W, p.x, p.y, cell=cell, **gated_args(p)))
    names = ["dLdU", "dLdW", "dLdb", "dLdb_hh", "dLds0"] + (["dLdc0"] if cell == "lstm" else [])
    for K in [*range(T), None]:
        g = gated.bptt(cell, p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **p.kwargs())
        kept = terms if K is None else terms[: K + 1]
        for name in names:
            assert_close(sum(t[name] for t in kept), getattr(g, name), rtol=1e-12)


@pytest.mark.parametrize(("H", "C", "T"), SIZES)
def test_flow_lag_contributions_match_seed_loop(rng, H, C, T):
    """The seed's loop, its (t, bptt_step, delta_t) recorded, grouped by lag t - bptt_step: the Frobenius
    norms of sum outer(delta_t, s[bptt_step - 1]) and of the column updates, per lag, to 1e-12."""
    p = make_problem(rng, H, C, T, scale=2.0, s0=True)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, s0=p.s0)
    record: list[tuple[int, int, np.ndarray]] = []
    seed.bptt(p.U, p.V, p.W, p.x, p.y, T, s0=p.s0, record=record)
    _, s = seed.forward_propagation(p.U, p.V, p.W, p.x, s0=p.s0)
    dLdW = np.zeros((T, H, H))
    dLdU = np.zeros((T, H, C))
    for t, step, delta in record:
        dLdW[t - step] += np.outer(delta, s[step - 1])
        dLdU[t - step][:, p.x[step]] += delta
    lags = f.lag_contributions
    assert lags["lag"] == list(range(T))
    np.testing.assert_allclose(lags["dLdW"], np.linalg.norm(dLdW, axis=(1, 2)), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(lags["dLdU"], np.linalg.norm(dLdU, axis=(1, 2)), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(("cell", "reset_after"), [("rnn", False), *GATED], ids=["rnn", *GATED_IDS])
def test_flow_lag_contributions_are_norms_of_lag_gradients(rng, cell, reset_after):
    if cell == "rnn":
        p: Any = make_problem(rng, 3, 4, 6, s0=True)
        args: dict[str, Any] = {"s0": p.s0}
    else:
        p = gated_problem(rng, cell, reset_after, 3, 4, 6)
        args = {"cell": cell, **gated_args(p)}
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, **args)
    terms = list(flow.lag_gradients(p.U, p.V, p.W, p.x, p.y, **args))
    for name in ("dLdW", "dLdU"):
        want = [float(np.linalg.norm(t[name])) for t in terms]
        assert f.lag_contributions[name] == pytest.approx(want, rel=1e-14, abs=0)


def test_flow_seed_default_truncation_small_on_small_weights(rng):
    """The seed's K = 4 on T = 20 with small weights: its bias is small (the gradient has vanished by lag 4),
    and it is what engine.bptt(bptt_truncate=4) gives."""
    p = make_problem(rng, 8, 10, 20, scale=0.5)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y)
    full = engine.bptt(p.U, p.V, p.W, p.x, p.y)
    g4 = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=4)
    for name in ("dLdU", "dLdW"):
        want = relative_error(getattr(g4, name), getattr(full, name))
        assert f.truncation_bias[name][4] == pytest.approx(want, abs=BIAS_TOL)
        assert f.truncation_bias[name][4] < 1e-2
    assert f.truncation_bias["dLdW"][0] > 10 * f.truncation_bias["dLdW"][4]  # K = 0 is visibly worse


def test_flow_one_step(rng):
    """T = 1: a 1 x 1 table holding the identity's norm, one lag, no truncation to speak of."""
    p = make_problem(rng, 3, 4, 1)
    f = flow.flow(p.U, p.V, p.W, p.x, p.y, norm="frobenius")
    assert f.log10_jacobian_norms.shape == (1, 1)
    assert f.log10_jacobian_norms[0, 0] == pytest.approx(np.log10(np.sqrt(3)), abs=1e-15)
    assert f.step_jacobian_sigma.shape == (1,)
    assert f.lag_contributions["lag"] == [0]
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y)
    assert f.lag_contributions["dLdW"][0] == pytest.approx(np.linalg.norm(g.dLdW), rel=1e-12)
    assert f.truncation_bias == {"K": [0], "dLdU": [0.0], "dLdW": [0.0], "dLds0": [0.0]}


# --- Errors ---


def error_of(call: Callable[[], Any]) -> InputError:
    with pytest.raises(InputError) as info:
        call()
    return info.value


def test_flow_bad_norm_names_the_field(rng):
    p = make_problem(rng, 3, 4, 5)
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y, norm="nuclear"))
    assert e.field == "norm"
    assert "'spectral' or 'frobenius'" in e.message and "'nuclear'" in e.message


def test_flow_bad_shapes_name_the_field(rng):
    p = make_problem(rng, 3, 4, 5)
    e = error_of(lambda: flow.flow(p.U, p.V, np.zeros((3, 4)), p.x, p.y))
    assert e.field == "W" and "3 x 3" in e.message and "3 x 4" in e.message
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y[:4]))
    assert e.field == "y"
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y, s0=np.zeros(4)))
    assert e.field == "s0" and "H = 3" in e.message
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y, b=np.zeros(2)))
    assert e.field == "b"
    x = p.x.copy()
    x[2] = 4
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, x, p.y))
    assert e.field == "x[2]" and "[0, 4)" in e.message
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y, cell="gru"))
    assert e.field == "U" and "G = 3" in e.message
    q = gated_problem(rng, "lstm", False, 3, 4, 5)
    e = error_of(lambda: flow.flow(q.U, q.V, q.W[:3], q.x, q.y, cell="lstm"))
    assert e.field == "W" and "4 x 3 x 3" in e.message


def test_flow_bad_cell_options_and_numbers_name_the_field(rng):
    p = make_problem(rng, 3, 4, 5)
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y, cell="elman"))
    assert e.field == "cell" and "'elman'" in e.message
    e = error_of(lambda: flow.flow(p.U, p.V, p.W, p.x, p.y, c0=np.zeros(3)))
    assert e.field == "c0" and "'rnn'" in e.message and "takes none" in e.message
    q = gated_problem(rng, "gru", False, 3, 4, 5)
    e = error_of(lambda: flow.flow(q.U, q.V, q.W, q.x, q.y, cell="gru", bptt_truncate=2))
    assert e.field == "bptt_truncate" and "one of c0, b_hh, reset_after" in e.message
    e = error_of(lambda: flow.flow(q.U, q.V, q.W, q.x, q.y, cell="gru", c0=np.zeros(3)))
    assert e.field == "c0"
    W = p.W.copy()
    W[1, 2] = np.nan
    e = error_of(lambda: flow.flow(p.U, p.V, W, p.x, p.y))
    assert e.field == "W" and "W[1][2]" in e.message and "nan" in e.message
    e = error_of(lambda: flow.lag_gradients(p.U, p.V, p.W, p.x, p.y, cell="elman"))  # at the call, not the first lag
    assert e.field == "cell"


def test_log10_product_norms_checks_its_arguments():
    e = error_of(lambda: flow.log10_product_norms(np.zeros((3, 2, 3))))
    assert e.field == "J" and "3 x 2 x 3" in e.message
    e = error_of(lambda: flow.log10_product_norms(np.zeros((3, 2, 2)), "max"))  # type: ignore[arg-type]
    assert e.field == "norm"
