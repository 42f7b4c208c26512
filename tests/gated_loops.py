"""Reference loops for the GRU and LSTM language models, written independently of service/gated.py.

One step at a time, one output at a time: slow on purpose, they are the oracles.

- ``torch_grads``: the loss and its gradients by PyTorch autograd through a
  hand-written cell (torch ops, no ``nn.GRU``), exact or truncated. Truncated
  means, for each output t, a fresh graph that starts from the state after step
  t-K-1 ``detach()``ed (or from the leaves s0, c0 when t-K <= 0), runs steps
  max(0, t-K) .. t and backpropagates E_t = -ln o_t[y_t] alone; the gradients
  are summed over t.
- ``torch_state_grads``: dL/ds_k and dL/dc_k (``retain_grad``), and
  ||dE_t/ds_{t-j}|| by one backward pass per output.
- ``numpy_loss``: the summed loss by a plain numpy loop, for central differences.
- ``torch_module_grads``: the loss and gradients through ``torch.nn.GRU`` / ``nn.LSTM``
  themselves, the problem's weights copied in (the GRU in its reset-after form).

Dimension letters as in service/gated.py: T steps, H hidden, C vocabulary, G gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

GATE_COUNT = {"gru": 3, "lstm": 4}


@dataclass
class GatedProblem:
    """One sequence's inputs: U (G, H, C), V (C, H), W (G, H, H), x, y (T,), optional b, b_hh (G, H), c (C,),
    s0, c0 (H,)."""

    cell: str
    U: np.ndarray
    V: np.ndarray
    W: np.ndarray
    x: np.ndarray
    y: np.ndarray
    b: np.ndarray | None = None
    b_hh: np.ndarray | None = None
    c: np.ndarray | None = None
    s0: np.ndarray | None = None
    c0: np.ndarray | None = None
    reset_after: bool = False

    @property
    def H(self) -> int:
        return self.U.shape[1]

    @property
    def C(self) -> int:
        return self.U.shape[2]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``gated.bptt`` beyond (cell, U, V, W, x, y)."""
        return {k: getattr(self, k) for k in ("b", "b_hh", "c", "s0", "c0", "reset_after")}


def make_gated_problem(
    rng: np.random.Generator,
    cell: str,
    H: int,
    C: int,
    T: int,
    *,
    scale: float = 1.0,
    biases: bool = False,
    states: bool = False,
    reset_after: bool = False,
) -> GatedProblem:
    """Weights uniform in +-scale/sqrt(fan-in), as the seed draws them; biases and states in +-1 when asked."""
    G = GATE_COUNT[cell]
    return GatedProblem(
        cell=cell,
        U=rng.uniform(-1, 1, (G, H, C)) * scale / np.sqrt(C),
        V=rng.uniform(-1, 1, (C, H)) * scale / np.sqrt(H),
        W=rng.uniform(-1, 1, (G, H, H)) * scale / np.sqrt(H),
        x=rng.integers(0, C, T),
        y=rng.integers(0, C, T),
        b=rng.uniform(-1, 1, (G, H)) if biases else None,
        b_hh=rng.uniform(-1, 1, (G, H)) if biases else None,
        c=rng.uniform(-1, 1, C) if biases else None,
        s0=rng.uniform(-1, 1, H) if states else None,
        c0=rng.uniform(-1, 1, H) if states and cell == "lstm" else None,
        reset_after=reset_after,
    )


# --- numpy, the loss alone ---


def _sigma(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def numpy_loss(p: GatedProblem) -> float:
    """sum_t -ln softmax(V s_t + c)[y_t], one step at a time."""
    G, H = p.U.shape[:2]
    b = np.zeros((G, H)) if p.b is None else p.b
    bhh = np.zeros((G, H)) if p.b_hh is None else p.b_hh
    c = np.zeros(p.C) if p.c is None else p.c
    s = np.zeros(H) if p.s0 is None else p.s0
    cs = np.zeros(H) if p.c0 is None else p.c0
    total = 0.0
    for t in range(len(p.x)):
        u = p.U[:, :, p.x[t]]  # (G, H)
        if p.cell == "gru":
            r = _sigma(u[0] + p.W[0] @ s + b[0] + bhh[0])
            z = _sigma(u[1] + p.W[1] @ s + b[1] + bhh[1])
            if p.reset_after:
                n = np.tanh(u[2] + b[2] + r * (p.W[2] @ s + bhh[2]))
            else:
                n = np.tanh(u[2] + p.W[2] @ (r * s) + b[2] + bhh[2])
            s = (1 - z) * n + z * s
        else:
            i = _sigma(u[0] + p.W[0] @ s + b[0] + bhh[0])
            f = _sigma(u[1] + p.W[1] @ s + b[1] + bhh[1])
            g = np.tanh(u[2] + p.W[2] @ s + b[2] + bhh[2])
            o = _sigma(u[3] + p.W[3] @ s + b[3] + bhh[3])
            cs = f * cs + i * g
            s = o * np.tanh(cs)
        logits = p.V @ s + c
        m = logits.max()
        total += m + np.log(np.exp(logits - m).sum()) - logits[p.y[t]]
    return float(total)


# --- torch autograd through a hand-written cell ---


class _Leaves:
    """The problem's arrays as float64 leaf tensors that collect gradients (zeros where omitted)."""

    def __init__(self, p: GatedProblem) -> None:
        G, H = p.U.shape[:2]

        def leaf(a: np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor:
            value = np.zeros(shape) if a is None else np.array(a, dtype=np.float64)
            return torch.tensor(value, dtype=torch.float64, requires_grad=True)

        self.U = leaf(p.U, p.U.shape)
        self.V = leaf(p.V, p.V.shape)
        self.W = leaf(p.W, p.W.shape)
        self.b = leaf(p.b, (G, H))
        self.b_hh = leaf(p.b_hh, (G, H))
        self.c = leaf(p.c, (p.C,))
        self.s0 = leaf(p.s0, (H,))
        self.c0 = leaf(p.c0, (H,))


def _step(p: GatedProblem, L: _Leaves, t: int, s: torch.Tensor, cs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the cell: (s_{t-1}, c_{t-1}) -> (s_t, c_t); the GRU passes c through unchanged."""
    u = L.U[:, :, int(p.x[t])]  # (G, H)
    W, b, bhh = L.W, L.b, L.b_hh
    if p.cell == "gru":
        r = torch.sigmoid(u[0] + W[0] @ s + b[0] + bhh[0])
        z = torch.sigmoid(u[1] + W[1] @ s + b[1] + bhh[1])
        if p.reset_after:
            n = torch.tanh(u[2] + b[2] + r * (W[2] @ s + bhh[2]))
        else:
            n = torch.tanh(u[2] + W[2] @ (r * s) + b[2] + bhh[2])
        return (1 - z) * n + z * s, cs
    i = torch.sigmoid(u[0] + W[0] @ s + b[0] + bhh[0])
    f = torch.sigmoid(u[1] + W[1] @ s + b[1] + bhh[1])
    g = torch.tanh(u[2] + W[2] @ s + b[2] + bhh[2])
    o = torch.sigmoid(u[3] + W[3] @ s + b[3] + bhh[3])
    cs = f * cs + i * g
    return o * torch.tanh(cs), cs


def _output_loss(p: GatedProblem, L: _Leaves, t: int, s: torch.Tensor) -> torch.Tensor:
    """E_t = -ln softmax(V s_t + c)[y_t]."""
    return -torch.log_softmax(L.V @ s + L.c, dim=0)[int(p.y[t])]


def torch_grads(p: GatedProblem, K: int | None = None) -> dict[str, Any]:
    """Loss and gradients by autograd; K None for exact BPTT, else the truncated sum described above.

    Returns loss, dLdU, dLdV, dLdW, dLds0 always; dLdb, dLdb_hh, dLdc when the problem has them; dLdc0
    for the LSTM.
    """
    L = _Leaves(p)
    T = len(p.x)
    loss = 0.0
    if K is None:
        s, cs = L.s0, L.c0
        total = torch.zeros((), dtype=torch.float64)
        for t in range(T):
            s, cs = _step(p, L, t, s, cs)
            total = total + _output_loss(p, L, t, s)
        total.backward()
        loss = float(total.detach())
    else:
        with torch.no_grad():  # the states to start each output's graph from
            states = []
            s, cs = L.s0, L.c0
            for t in range(T):
                s, cs = _step(p, L, t, s, cs)
                states.append((s, cs))
        for t in range(T):
            start = max(0, t - K)
            if start == 0:
                s, cs = L.s0, L.c0
            else:
                s, cs = (a.detach() for a in states[start - 1])
            for k in range(start, t + 1):
                s, cs = _step(p, L, k, s, cs)
            E = _output_loss(p, L, t, s)
            E.backward()
            loss += float(E.detach())
    out: dict[str, Any] = {"loss": loss}
    for name in ("U", "V", "W", "s0"):
        out[f"dLd{name}"] = _grad(getattr(L, name))
    for name in ("b", "b_hh", "c"):
        if getattr(p, name) is not None:
            out[f"dLd{name}"] = _grad(getattr(L, name))
    if p.cell == "lstm":
        out["dLdc0"] = _grad(L.c0)
    return out


def _grad(leaf: torch.Tensor) -> np.ndarray:
    return np.zeros(tuple(leaf.shape)) if leaf.grad is None else leaf.grad.numpy().copy()


def torch_state_grads(p: GatedProblem) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """dL/ds_k (T, H), dL/dc_k (T, H) or None for the GRU, and norms (T, T) with
    norms[t, j] = ||dE_t/ds_{t-j}|| (NaN for j > t), one backward pass per output t."""
    L = _Leaves(p)
    T = len(p.x)
    s, cs = L.s0, L.c0
    ss, cc, losses = [], [], []
    for t in range(T):
        s, cs = _step(p, L, t, s, cs)
        s.retain_grad()
        if p.cell == "lstm":
            cs.retain_grad()
        ss.append(s)
        cc.append(cs)
        losses.append(_output_loss(p, L, t, s))
    torch.stack(losses).sum().backward(retain_graph=True)
    dLds = np.stack([a.grad.numpy().copy() for a in ss])
    dLdc = np.stack([a.grad.numpy().copy() for a in cc]) if p.cell == "lstm" else None
    # Per output, afterwards: autograd.grad also feeds the retain_grad hooks of its inputs.
    norms = np.full((T, T), np.nan)
    for t in range(T):
        grads = torch.autograd.grad(losses[t], ss[: t + 1], retain_graph=True)  # dE_t/ds_k, k = 0..t
        for k, g in enumerate(grads):
            norms[t, t - k] = float(torch.linalg.vector_norm(g))
    return dLds, dLdc, norms


def torch_module_grads(p: GatedProblem, batch_first: bool) -> dict[str, Any]:
    """Loss and gradients through torch.nn.GRU / nn.LSTM with p's weights copied in, fed one-hot inputs."""
    G, H, C = p.U.shape
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[p.cell](C, H, batch_first=batch_first, dtype=torch.float64)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(p.U.reshape(G * H, C)))
        module.weight_hh_l0.copy_(torch.from_numpy(p.W.reshape(G * H, H)))
        module.bias_ih_l0.copy_(torch.from_numpy(p.b.reshape(G * H)))
        module.bias_hh_l0.copy_(torch.from_numpy(p.b_hh.reshape(G * H)))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(p.x), C).to(torch.float64)  # (T, C)
    inputs = onehot[None] if batch_first else onehot[:, None]  # (1, T, C) or (T, 1, C)
    h0 = torch.tensor(p.s0.reshape(1, 1, H), requires_grad=True)
    c0 = torch.tensor(p.c0.reshape(1, 1, H), requires_grad=True) if p.cell == "lstm" else None
    out, last = module(inputs, h0 if c0 is None else (h0, c0))
    S = out[0] if batch_first else out[:, 0]  # (T, H)
    V = torch.tensor(p.V, requires_grad=True)
    c = torch.tensor(p.c, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(S @ V.T + c, torch.from_numpy(p.y), reduction="sum")
    loss.backward()
    ref = {
        "loss": float(loss.detach()),
        "dLdU": module.weight_ih_l0.grad.numpy().reshape(G, H, C),
        "dLdW": module.weight_hh_l0.grad.numpy().reshape(G, H, H),
        "dLdb": module.bias_ih_l0.grad.numpy().reshape(G, H),
        "dLdb_hh": module.bias_hh_l0.grad.numpy().reshape(G, H),
        "dLdV": V.grad.numpy(),
        "dLdc": c.grad.numpy(),
        "dLds0": h0.grad.numpy().reshape(H),
        "final_state": S[-1].detach().numpy(),
    }
    if c0 is not None:
        ref["dLdc0"] = c0.grad.numpy().reshape(H)
        ref["final_cell"] = last[1].detach().numpy().reshape(H)
    return ref
