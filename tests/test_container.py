"""The Dockerfile, built and run: health, a real /bptt from the host, a clean stop.

Uses Docker when a Docker engine answers; otherwise podman + buildah with a
local base image (``../shared/container/make-base-image.sh`` builds
``localhost/python-base:bookworm``; ``BPTT_BASE_IMAGE`` names another). Where
neither exists the tests are skipped, with the reason in pytest's summary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import free_port, make_problem

from service import engine

ROOT = Path(__file__).resolve().parent.parent
TAG = "localhost/bptt-service:test"
LOCAL_BASE = "localhost/python-base:bookworm"


def _run(*cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _engine() -> tuple[str | None, str]:
    """("docker" | "podman" | None, base image or skip reason)."""
    if shutil.which("docker") and _run("docker", "info", timeout=30).returncode == 0:
        return "docker", os.environ.get("BPTT_BASE_IMAGE", "python:3.12-slim")
    if shutil.which("podman") and shutil.which("buildah"):
        base = os.environ.get("BPTT_BASE_IMAGE", LOCAL_BASE)
        if _run("podman", "image", "exists", base, timeout=30).returncode == 0:
            return "podman", base
        return None, f"podman is here but base image {base} is not: run ../shared/container/make-base-image.sh"
    return None, "no container engine: neither a Docker daemon nor podman + buildah"


ENGINE, BASE = _engine()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(ENGINE is None, reason=f"container tests skipped: {BASE}")]


@pytest.fixture(scope="module")
def image() -> str:
    if ENGINE == "docker":
        cmd = ["docker", "build", "--build-arg", f"BASE_IMAGE={BASE}", "-t", TAG, str(ROOT)]
    else:
        cmd = [
            "podman",
            "build",
            "--isolation=chroot",
            "--network=host",
            "--format",
            "docker",
            "--build-arg",
            f"BASE_IMAGE={BASE}",
            "-t",
            TAG,
            str(ROOT),
        ]
    out = _run(*cmd, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return TAG


def _inspect(image: str) -> dict:
    """The image's config; podman reports the healthcheck beside it, Docker inside it."""
    out = _run(ENGINE, "image", "inspect", image)
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)[0]
    return {"Healthcheck": top.get("Healthcheck"), **top["Config"]}


class Container:
    """The image's CMD running with host networking (podman: buildah run, chroot isolation)."""

    def __init__(self, image: str, port: int) -> None:
        self.port = port
        config = _inspect(image)
        self.cmd = config["Cmd"]
        self.env = {"BPTT_PORT": str(port), "BPTT_WORKERS": "1"}
        if ENGINE == "docker":
            self.id = _run(
                "docker", "run", "-d", "--network=host", *(f"--env={k}={v}" for k, v in self.env.items()), image
            ).stdout.strip()
            self.proc = None
        else:
            self.id = _run("buildah", "from", image).stdout.strip()
            self.proc = subprocess.Popen(
                [
                    "buildah",
                    "run",
                    "--isolation=chroot",
                    "--network=host",
                    *(f"--env={k}={v}" for k, v in self.env.items()),
                    self.id,
                    "--",
                    *self.cmd,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        if ENGINE == "docker":
            return _run("docker", "exec", self.id, *cmd, timeout=60)
        return _run(
            "buildah",
            "run",
            "--isolation=chroot",
            "--network=host",
            *(f"--env={k}={v}" for k, v in self.env.items()),
            self.id,
            "--",
            *cmd,
            timeout=60,
        )

    def stop(self) -> tuple[int, str]:
        """SIGTERM to the service, as an orchestrator stops it; (exit status, its output)."""
        if ENGINE == "docker":
            _run("docker", "stop", "--time=20", self.id)
            status = int(_run("docker", "inspect", "-f", "{{.State.ExitCode}}", self.id).stdout.strip())
            logs = _run("docker", "logs", self.id).stdout
            _run("docker", "rm", self.id)
            return status, logs
        # buildah run kills its child on SIGTERM; signal the service itself, as a runtime would.
        for pid in _descendants(self.proc.pid):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
                os.kill(pid, signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        finally:
            _run("buildah", "rm", self.id)
        return self.proc.returncode, out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with open(task / "children") as f:
                kids = [int(k) for k in f.read().split()]
            found += kids
            todo += kids
    return found


def test_image_is_non_root_with_healthcheck_and_exec_cmd(image):
    config = _inspect(image)
    assert config["User"] not in ("", "0", "root")
    assert config["Cmd"] == ["python", "-m", "service"]  # exec form: signals reach the service, not a shell
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "BPTT_HOST=0.0.0.0" in config["Env"]


def test_container_serves_correct_gradients_and_stops_cleanly(image, rng):
    container = Container(image, free_port())
    url = f"http://127.0.0.1:{container.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the container did not become ready in 60 s"
            time.sleep(0.5)
        p = make_problem(rng, H=8, C=20, T=15)
        r = httpx.post(f"{url}/bptt", json=p.body(bptt_truncate=4), timeout=30)
        assert r.status_code == 200, r.text
        g = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=4)
        for name in ("dLdU", "dLdV", "dLdW"):
            np.testing.assert_array_equal(np.array(r.json()[name]), getattr(g, name))
        assert r.json()["loss"] == g.loss
        page = httpx.get(f"{url}/explain", timeout=10)  # package data (the page's files) made it in
        assert page.status_code == 200 and "delta_t" in page.text
        assert httpx.get(f"{url}/static/explain.js", timeout=10).status_code == 200
        # The image's own HEALTHCHECK command succeeds against the running service.
        check = container.exec(*_inspect(image)["Healthcheck"]["Test"][1:])
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        status, logs = container.stop()
    assert status == 0, logs[-2000:]
    assert '"path": "/bptt"' in logs  # the JSON access log the image selects
    assert '"message": "engine loops: numba (compiled in' in logs  # the fast extra, compiled before readiness
