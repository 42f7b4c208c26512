"""A new user's first hour: the client refuses what the server refuses, mistakes say how to fix them,
and the README's commands do what they say."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
from helpers import make_problem

import service
from service.client import Client
from service.errors import InputError
from service.settings import settings_table

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# -- the client refuses what the server refuses, with the server's message -------


def test_client_refuses_non_integer_token_ids_like_the_server(live_server, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    x = np.array([0.0, 2.5, 1.0])
    with Client(live_server.url) as client, pytest.raises(InputError) as info:
        client.bptt(p.U, p.V, p.W, x, p.y)
    r = httpx.post(f"{live_server.url}/bptt", json=p.body() | {"x": [0, 2.5, 1]})
    assert r.status_code == 422
    assert (info.value.field, info.value.message) == (r.json()["errors"][0]["field"], r.json()["detail"])
    assert info.value.message == "x[1] must be an integer, got 2.5"


def test_client_sends_whole_floats_as_the_ids_they_are(live_server, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    with Client(live_server.url) as client:
        as_floats = client.bptt(p.U, p.V, p.W, p.x.astype(float), p.y)
        as_ints = client.bptt(p.U, p.V, p.W, p.x, p.y)
    np.testing.assert_array_equal(as_floats.dLdU, as_ints.dLdU)


@pytest.mark.parametrize("bad", [[0, True, 1], ["0", "1", "2"], [0, float("nan"), 1]])
def test_client_refuses_other_non_integers(live_server, rng, bad):
    p = make_problem(rng, H=3, C=4, T=3)
    with Client(live_server.url) as client, pytest.raises(InputError, match=r"must be an integer, got"):
        client.bptt(p.U, p.V, p.W, p.x, bad)


def test_client_misspelt_option_is_an_error_not_full_bptt(live_server, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    with Client(live_server.url) as client, pytest.raises(TypeError, match="bptt_truncation"):
        client.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncation=4)  # type: ignore[call-arg]


# -- messages that say how to fix it ----------------------------------------------


def test_overflow_names_the_weight_not_an_internal_variable(client, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    # Every s_t close to 1 and V s_t about 3e308: beyond float64.
    r = client.post(
        "/bptt", json=p.body() | {"U": np.full((3, 4), 10.0).tolist(), "V": np.full((4, 3), 1e308).tolist()}
    )
    assert r.status_code == 422
    err = r.json()["errors"][0]
    assert err["field"] == "V"
    assert "dz" not in r.json()["detail"]
    assert r.json()["detail"].endswith("scale V down")


def test_transposed_u_is_named(client, rng):
    p = make_problem(rng, H=3, C=2, T=3)
    r = client.post("/bptt", json=p.body() | {"U": p.U.T.tolist()})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("is U transposed? U must be H x C = 3 x 2")


def test_negative_truncation_says_null_means_full(client, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    r = client.post("/bptt", json=p.body(bptt_truncate=-1))
    assert r.status_code == 422
    assert r.json()["detail"] == "bptt_truncate must be >= 0, got -1 (null means full BPTT)"


def test_wrong_method_says_which_method_the_route_takes(client):
    r = client.get("/bptt")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["detail"] == "GET /bptt is not allowed: this route takes POST"
    assert r.json()["errors"][0]["field"] == "method"


def test_trailing_slash_is_served(client, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    plain = client.post("/bptt", json=p.body())
    slashed = client.post("/bptt/", json=p.body(), follow_redirects=False)
    assert slashed.status_code == 200
    assert slashed.json() == plain.json()


def test_root_points_to_docs_and_explain(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.json()["docs"] == "/docs"
    assert r.json()["explain"] == "/explain"
    assert client.get(r.json()["docs"]).status_code == 200
    assert client.get(r.json()["explain"]).status_code == 200


def test_port_in_use_says_how_to_choose_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run(sys.executable, "-m", "service", "--port", str(port))
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr
    assert f"make run PORT={port + 1}" in out.stderr
    assert "Traceback" not in out.stderr


# -- the README and the command line ---------------------------------------------


def test_make_run_leaves_the_port_to_the_environment_unless_given():
    plain = run("make", "-n", "run", env={"BPTT_PORT": "9000"})
    assert re.search(r"-m service\s*$", plain.stdout, re.M), plain.stdout  # BPTT_PORT decides
    given = run("make", "-n", "run", "PORT=9001", "HOST=0.0.0.0")
    assert "-m service --host 0.0.0.0 --port 9001" in given.stdout


def test_readme_settings_table_is_generated_from_the_settings():
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README's settings table drifted: paste service.settings.settings_table()"


def test_help_names_environment_variables_and_readable_metavars():
    out = run(sys.executable, "-m", "service", "--help")
    assert out.returncode == 0
    assert "BPTT_MAX_TOKENS" in out.stdout and "--max-trace-values" in out.stdout
    assert "--api-key KEYS" in out.stdout
    assert "SecretStr" not in out.stdout


def test_version_on_the_command_line_and_in_healthz(client):
    out = run(sys.executable, "-m", "service", "--version")
    assert out.stdout.strip() == f"bptt-service {service.__version__}"
    assert client.get("/healthz").json()["version"] == service.__version__


@pytest.mark.slow  # a server process (or interpreter) of its own
def test_command_line_option_reaches_the_app(rng):
    """--max-tokens 2 on the command line: a 3-token request is refused, naming the setting."""
    from helpers import LocalServer

    p = make_problem(rng, H=3, C=4, T=3)
    with LocalServer(args=["--max-tokens", "2"]) as server:
        r = httpx.post(f"{server.url}/bptt", json=p.body())
    assert r.status_code == 413
    assert "BPTT_MAX_TOKENS" in r.json()["detail"]


def test_training_example_help_shows_every_default():
    out = run(sys.executable, "examples/train.py", "--help")
    assert out.returncode == 0
    for option in ("--text", "--plot", "--bptt-truncate", "--seed", "--epochs"):
        line = re.search(rf"^\s+{option} \S+\s+(.*(?:\n\s{{20,}}.*)*)", out.stdout, re.M)
        assert line and line.group(1).strip(), f"{option} has no help"
    assert "examples/output/loss.png" in out.stdout
    assert "'full'" in out.stdout


def test_readme_error_table_is_the_error_model():
    from service.errors import status_table

    assert status_table() in (ROOT / "README.md").read_text(), "README's error table drifted: paste status_table()"
