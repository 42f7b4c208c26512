"""Fixtures the tests share; helpers (problems, tolerances, LocalServer) are in helpers.py."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer
from hypothesis import settings

from service import engine
from service.app import create_app
from service.settings import Settings

# The compiled loops (service/kernel.py) cached on disk for the whole run: each server a test starts then
# loads them instead of compiling them in its self-check (two seconds a server).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bptt-service-numba-cache"))

# `HYPOTHESIS_PROFILE=quick` (used by `make mutate`) draws fewer examples.
settings.register_profile("quick", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module", params=["numba", "numpy"])
def both_loops(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's tests once with the engine's compiled paths (numba: one short sequence in
    ``kernel.bptt_one``, the per-step loops where they pay) and once with its numpy reference alone,
    the fallback where numba is absent: ``pytestmark = pytest.mark.usefixtures("both_loops")``. Either
    is held to the seed's loop and to central differences by the same tests."""
    engine.use_kernel(request.param)
    yield request.param
    engine.use_kernel("auto")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20151008)


@pytest.fixture(scope="session")
def live_server() -> Iterator[LocalServer]:
    """``python -m service`` with default settings on a free loopback port, for the whole session."""
    with LocalServer(args=["--log-level", "warning"]) as server:
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The default app in-process (its lifespan run), answering 500s instead of raising."""
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as c:
        yield c
