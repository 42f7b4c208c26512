"""A server on a free loopback port, for tests, benchmarks and examples: ``python -m service`` by default.

    with LocalServer() as server:           # up (healthy) on entry, stopped on exit
        Client(server.url).bptt(...)

Standard library and httpx only, like the client.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO

import httpx

__all__ = ["LocalServer", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalServer:
    """A server process on 127.0.0.1, started and polled until ``health`` answers 200.

    ``args`` are extra options of ``python -m service``; ``command`` replaces the
    whole command line (given the port), for other servers; ``output`` receives
    the process's stdout and stderr (a pipe by default, read when it fails to start).
    """

    def __init__(
        self,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        command: Callable[[int], list[str]] | None = None,
        health: str = "/healthz",
        timeout: float = 30.0,
        output: int | IO[bytes] | None = subprocess.PIPE,
        cwd: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = (
            command(self.port)
            if command
            else [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port), *args]
        )
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "BPTT_LOG_LEVEL": "warning", **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT if output is subprocess.PIPE else output,
            cwd=cwd,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                said = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {said}")
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not answer {health} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
