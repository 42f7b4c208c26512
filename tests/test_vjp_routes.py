"""POST /vjp and /vjp/compare: a course assignment's rnn_backward checked over HTTP, in both layouts.

The engine (service/vjp.py) is checked against PyTorch in tests/test_vjp.py; here the routes and the
client, against the engine bit for bit and against a learner's loops written in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service import vjp
from service.client import Client, ServerError

N, T, D, H = 2, 4, 3, 5


def problem(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A CS231n-layout problem: x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,), dh (N, T, H)."""
    return {
        "x": rng.normal(size=(N, T, D)),
        "h0": rng.normal(size=(N, H)),
        "Wx": rng.normal(size=(D, H)) * 0.5,
        "Wh": rng.normal(size=(H, H)) * 0.5,
        "b": rng.normal(size=H),
        "dh": rng.normal(size=(N, T, H)),
    }


def coursera(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same network in the Coursera layout: x (D, N, T), a0 (H, N), Wax (H, D), Waa (H, H), ba (H, 1)."""
    return {
        "x": p["x"].transpose(2, 0, 1),
        "h0": p["h0"].T,
        "Wx": p["Wx"].T,
        "Wh": p["Wh"].T,
        "b": p["b"][:, None],
        "dh": p["dh"].transpose(2, 0, 1),
    }


def learner_rnn_backward(p: dict[str, np.ndarray], *, mistake: str = "") -> dict[str, np.ndarray]:
    """A learner's CS231n rnn_forward + rnn_backward, written plainly (with one mistake when asked)."""
    x, h0, Wx, Wh, b, dh = (p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh"))
    hs = [h0]
    for t in range(T):
        hs.append(np.tanh(x[:, t] @ Wx + hs[-1] @ Wh + b))
    dx, dWx, dWh, db = np.zeros_like(x), np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    dprev = np.zeros_like(h0)
    for t in reversed(range(T)):
        dz = (dh[:, t] + dprev) * (1 - hs[t + 1] ** 2)
        dx[:, t] = dz @ Wx.T
        dWx += x[:, t].T @ dz
        dWh += (hs[t + 1] if mistake == "dwh_with_current_state" else hs[t]).T @ dz
        db += dz.sum(axis=0)
        dprev = dz @ Wh.T
    return {"dx": dx, "dh0": dprev, "dWx": dWx, "dWh": dWh, "db": db}


def test_vjp_route_equals_the_engine_and_the_learners_loop_in_both_layouts(live_server, rng):
    p = problem(rng)
    loop = learner_rnn_backward(p)
    with Client(live_server.url) as client:
        row = client.vjp(*(p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh")))
        col = client.vjp(*(coursera(p)[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh")), layout="coursera")
    local = vjp.rnn_vjp(*(p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh")))
    for name in ("dx", "dh0", "dWx", "dWh", "db"):
        np.testing.assert_array_equal(row.gradients[name], getattr(local, name))  # base64: bit for bit
        np.testing.assert_allclose(row.gradients[name], loop[name], rtol=1e-12, atol=1e-14)
    # The Coursera answer is the same network's, transposed into its layout.
    np.testing.assert_allclose(col.gradients["dx"], loop["dx"].transpose(2, 0, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(col.gradients["dh0"], loop["dh0"].T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(col.gradients["dWx"], loop["dWx"].T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(col.gradients["dWh"], loop["dWh"].T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(col.gradients["db"], loop["db"][:, None], rtol=1e-12, atol=1e-14)
    assert row.h.shape == (N, T, H) and col.h.shape == (H, N, T)


def test_lstm_vjp_route_equals_torch(live_server, rng):
    """CS231n's LSTM (gates i, f, o, g stacked in one Wx): the route against torch autograd."""
    x, h0, dh = rng.normal(size=(N, T, D)), rng.normal(size=(N, H)), rng.normal(size=(N, T, H))
    Wx, Wh, b = rng.normal(size=(D, 4 * H)) * 0.4, rng.normal(size=(H, 4 * H)) * 0.4, rng.normal(size=4 * H)
    with Client(live_server.url) as client:
        got = client.lstm_vjp(x, h0, {"Wx": Wx, "Wh": Wh, "b": b}, dh)
    tx, th0, tWx, tWh, tb = (torch.tensor(a, requires_grad=True) for a in (x, h0, Wx, Wh, b))
    h, c, states = th0, torch.zeros(N, H, dtype=torch.float64), []
    for t in range(T):
        a = tx[:, t] @ tWx + h @ tWh + tb
        i, f, o, g = (
            torch.sigmoid(a[:, :H]),
            torch.sigmoid(a[:, H : 2 * H]),
            torch.sigmoid(a[:, 2 * H : 3 * H]),
            torch.tanh(a[:, 3 * H :]),
        )
        c = f * c + i * g
        h = o * torch.tanh(c)
        states.append(h)
    grads = torch.autograd.grad(torch.stack(states, 1), (tx, th0, tWx, tWh, tb), grad_outputs=torch.tensor(dh))
    for name, want in zip(("dx", "dh0", "dWx", "dWh", "db"), grads, strict=True):
        want = want.numpy()
        assert np.abs(got.gradients[name] - want).max() <= 1e-10 * np.abs(want).max(), name


def test_vjp_compare_names_a_learners_mistake(live_server, rng):
    p = problem(rng)
    wrong = learner_rnn_backward(p, mistake="dwh_with_current_state")
    right = learner_rnn_backward(p)
    with Client(live_server.url) as client:
        verdict = client.vjp_compare(*(p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh")), **wrong)
        good = client.vjp_compare(*(p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh")), **right)
    assert verdict["passed"] is False
    assert [d["mistake"] for d in verdict["diagnosis"]] == ["dwh_with_current_state"]
    assert verdict["parameters"]["dWh"]["passed"] is False and verdict["parameters"]["dx"]["passed"] is True
    assert good["passed"] is True and good["diagnosis"] == []


def test_vjp_errors_name_the_field_and_the_layouts_shape(live_server, rng):
    p = problem(rng)
    with Client(live_server.url) as client, pytest.raises(ServerError) as info:
        client.vjp(*(p[k] for k in ("x", "h0", "Wx", "Wh", "b")), p["dh"].transpose(0, 2, 1))
    assert info.value.status == 422
    assert info.value.detail == f"dh must be N x T x H = {N} x {T} x {H} in the cs231n layout, got {N} x {H} x {T}"


def test_vjp_is_priced(client, rng):
    p = problem(rng)
    body = {k: v.tolist() for k, v in p.items()}
    r = client.post("/vjp/cost", json=body)
    assert r.status_code == 200 and r.json()["admitted"] is True
    assert r.json()["estimate"]["seconds"] > 0


def test_async_client_vjp_equals_the_sync_one(live_server, rng):
    import asyncio

    from service.client import AsyncClient

    p = problem(rng)
    args = [p[k] for k in ("x", "h0", "Wx", "Wh", "b", "dh")]

    async def run():
        async with AsyncClient(live_server.url) as client:
            return await client.vjp(*args)

    with Client(live_server.url) as client:
        sync = client.vjp(*args)
    got = asyncio.run(run())
    for name, a in sync.gradients.items():
        np.testing.assert_array_equal(got.gradients[name], a)
