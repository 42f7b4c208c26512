"""The oracle of the gated compare: the per-output GRU/LSTM loop with each mistake made (tests/gated_mistakes.py).

The wrong gradients come from tests/gated_mistakes.py, never from service.gated_checks, so a
recomputation that drifts from the mistake it names fails here. The oracle's right gradients are
checked first, against the engine and against torch.nn.GRU / nn.LSTM. Tolerances: compare's
default, 1e-6 relative to the largest entry; the oracle and the recomputations agree to about 1e-15.
"""

from __future__ import annotations

from typing import Any

import gated_mistakes
import numpy as np
import pytest
import torch
from gated_loops import GatedProblem, make_gated_problem

from service import gated

torch.set_num_threads(1)  # the machine is shared; these graphs are tiny

NAMES = ("dLdU", "dLdV", "dLdW")
CELLS = [("gru", False), ("gru", True), ("lstm", False)]  # (cell, reset_after)
CELL_IDS = ["gru", "gru-reset-after", "lstm"]
GATES = ("gru", "lstm")


def problem(seed: int, cell: str, reset_after: bool, T: int = 7, *, extras: bool = False, H: int = 4) -> GatedProblem:
    rng = np.random.default_rng(seed)
    return make_gated_problem(rng, cell, H, 5, T, scale=2.0, biases=extras, states=extras, reset_after=reset_after)


def arrays_of(p: GatedProblem, K: int | None) -> dict[str, Any]:
    """compare's ``arrays``: gated.bptt's keyword arguments, the omitted ones left out."""
    given_ = {k: v for k, v in p.kwargs().items() if v is not None}
    if p.cell == "lstm":
        del given_["reset_after"]
    return dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, bptt_truncate=K, **given_)


def oracle(p: GatedProblem, K: int | None, mistake: str = "") -> dict[str, np.ndarray]:
    grads = gated_mistakes.bptt(p.cell, p.U, p.V, p.W, p.x, p.y, K, **p.kwargs(), mistake=mistake)
    return dict(zip(NAMES, grads, strict=True))


def diagnosed(report: dict[str, Any]) -> list[str]:
    return [d["mistake"] for d in report["diagnosis"]]


def fits(sub: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> bool:
    return all(np.abs(other[k] - sub[k]).max() <= 1e-6 * max(np.abs(other[k]).max(), 1e-8) for k in NAMES)


# --- the oracle's right gradients ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("extras", [False, True], ids=["bare", "biases-and-states"])
@pytest.mark.parametrize("K", [None, 0, 1, 3, 8])
def test_oracle_equals_gated_bptt(cell, reset_after, extras, K):
    """No mistake made: the per-output loop is gated.bptt, full and truncated (K = 8 >= T - 1 is full)."""
    p = problem(3, cell, reset_after, T=9, extras=extras)
    g = gated.bptt(cell, p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **p.kwargs())
    for name, got in oracle(p, K).items():
        want = getattr(g, name)
        assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max(), name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_oracle_equals_torch_nn_cells(cell):
    """The oracle's GRU (reset after, torch's form) and LSTM against nn.GRU / nn.LSTM, weights copied in, float64."""
    p = problem(5, cell, cell == "gru", T=8, extras=True)
    G, H, C = p.U.shape
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](C, H, dtype=torch.float64)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(p.U.reshape(G * H, C)))
        module.weight_hh_l0.copy_(torch.from_numpy(p.W.reshape(G * H, H)))
        module.bias_ih_l0.copy_(torch.from_numpy(p.b.reshape(G * H)))
        module.bias_hh_l0.copy_(torch.from_numpy(p.b_hh.reshape(G * H)))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(p.x), C).to(torch.float64)[:, None]  # (T, 1, C)
    h0 = torch.from_numpy(p.s0.reshape(1, 1, H))
    state = h0 if cell == "gru" else (h0, torch.from_numpy(p.c0.reshape(1, 1, H)))
    out, _ = module(onehot, state)
    V = torch.tensor(p.V, requires_grad=True)
    logits = out[:, 0] @ V.T + torch.from_numpy(p.c)
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(p.y), reduction="sum").backward()
    want = {
        "dLdU": module.weight_ih_l0.grad.numpy().reshape(G, H, C),
        "dLdV": V.grad.numpy(),
        "dLdW": module.weight_hh_l0.grad.numpy().reshape(G, H, H),
    }
    for name, got in oracle(p, None).items():
        assert np.abs(got - want[name]).max() <= 1e-10 * np.abs(want[name]).max(), name


def test_oracle_update_gate_swapped_is_the_gru_with_z_negated():
    """Chung et al.'s GRU, written out in the oracle, is the engine's with U_z, W_z, b_z, bhh_z negated
    (sigma(-a) = 1 - sigma(a)), and its z gradients negated: the identity the recomputation uses."""
    p = problem(6, "gru", False, T=6, extras=True)
    q = GatedProblem(**{**p.__dict__})
    for name in ("U", "W", "b", "b_hh"):
        a = getattr(p, name).copy()
        a[1] = -a[1]
        setattr(q, name, a)
    swapped = oracle(p, None, "update_gate_swapped")
    g = gated.bptt("gru", q.U, q.V, q.W, q.x, q.y, **q.kwargs())
    for name in ("dLdU", "dLdW"):
        want = getattr(g, name).copy()
        want[1] = -want[1]
        np.testing.assert_allclose(swapped[name], want, rtol=0, atol=1e-12 * np.abs(want).max())
    np.testing.assert_allclose(swapped["dLdV"], g.dLdV, rtol=0, atol=1e-12 * np.abs(g.dLdV).max())
