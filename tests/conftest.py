"""Shared fixtures: random RNN problems, and a real uvicorn server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest


@dataclass
class Problem:
    """One request's worth of inputs: U (H, C), V (C, H), W (H, H), x, y (T,), s0 (H,) or None."""

    U: np.ndarray
    V: np.ndarray
    W: np.ndarray
    x: np.ndarray
    y: np.ndarray
    s0: np.ndarray | None = None

    def body(self, **extra) -> dict:
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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20151008)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``python -m service`` in a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *(args or [])],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.proc.stdout.read().decode()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not become healthy within 30 s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def live_server():
    server = LiveServer()
    yield server
    server.stop()
