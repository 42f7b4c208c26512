"""`python -m service`: options, settings errors, and a clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest
from helpers import LocalServer


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_main_help_lists_settings():
    out = run("--help")
    assert out.returncode == 0
    for option in ("--host", "--port", "--workers", "--log-level"):
        assert option in out.stdout


def test_main_bad_setting_fails_clearly():
    out = run(env={"BPTT_PORT": "eighty"})
    assert out.returncode == 2
    assert "invalid setting port (--port or BPTT_PORT)" in out.stderr
    assert "'eighty'" in out.stderr


@pytest.mark.slow  # a server process started and stopped by a signal: the system tests
def test_main_serves_and_stops_on_sigterm():
    server = LocalServer()
    try:
        assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0
    finally:
        server.stop()


def test_main_refuses_settings_that_contradict_each_other():
    out = run(env={"BPTT_MAX_BYTES_IN_FLIGHT": "2000", "BPTT_MAX_BODY_BYTES": "4000"})
    assert out.returncode == 2
    assert "invalid settings: max_bytes_in_flight (2,000) must be at least max_body_bytes (4,000)" in out.stderr
    out = run(env={"BPTT_API_KEY": " , "})
    assert out.returncode == 2
    assert "api_key is set but holds no key" in out.stderr
