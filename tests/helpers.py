"""Helpers the tests share: random RNN problems, tolerances, numerical derivatives, a live server.

Imported by test modules (``from helpers import make_problem``); fixtures live in conftest.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.local import LocalServer, free_port

# Debian's Chromium, driven headless by Playwright (tests/test_explain.py, tests/test_cors.py).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No background networking in a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "RTOL",
    "LocalServer",
    "Problem",
    "assert_close",
    "free_port",
    "make_problem",
    "numerical_gradient",
]

RTOL = 1e-12  # float64, against the seed's loop


@dataclass
class Problem:
    """One request's worth of inputs: U (H, C), V (C, H), W (H, H), x, y (T,), s0 (H,) or None."""

    U: np.ndarray
    V: np.ndarray
    W: np.ndarray
    x: np.ndarray
    y: np.ndarray
    s0: np.ndarray | None = None

    def body(self, **extra: Any) -> dict[str, Any]:
        """The JSON body of POST /bptt, with nested lists."""
        b = {k: getattr(self, k).tolist() for k in ("U", "V", "W", "x", "y")}
        if self.s0 is not None:
            b["s0"] = self.s0.tolist()
        b.update(extra)
        return b


def make_problem(rng: np.random.Generator, H: int, C: int, T: int, *, scale: float = 1.0, s0: bool = False) -> Problem:
    """Weights drawn as in the seed (uniform in +-1/sqrt(fan-in)), times ``scale``."""
    return Problem(
        U=rng.uniform(-1, 1, (H, C)) * scale / np.sqrt(C),
        V=rng.uniform(-1, 1, (C, H)) * scale / np.sqrt(H),
        W=rng.uniform(-1, 1, (H, H)) * scale / np.sqrt(H),
        x=rng.integers(0, C, T),
        y=rng.integers(0, C, T),
        s0=rng.uniform(-1, 1, H) if s0 else None,
    )


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    """Relative error max|a - e| / max|e| (the scale of the whole array) below rtol."""
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-300)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def numerical_gradient(f: Callable[[], float], a: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences (f(a + h e_i) - f(a - h e_i)) / 2h, entry by entry."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        plus = f()
        a[i] = old - h
        minus = f()
        a[i] = old
        g[i] = (plus - minus) / (2 * h)
    return g
