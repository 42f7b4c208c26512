"""CORS: a page on another origin may call the service only when the operator allows that origin
(BPTT_CORS_ORIGINS); tested in headless Chromium from a page served on another port, preflight included."""

from __future__ import annotations

import sys

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, LocalServer, make_problem

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")]

PAGE = """<!doctype html><html><body><script>
fetch(new URLSearchParams(location.search).get("api") + "/bptt", {
  method: "POST", headers: {"Content-Type": "application/json", "X-Request-Id": "from-a-page"}, body: %s,
}).then(async (r) => {
  document.body.dataset.status = String(r.status);
  document.body.dataset.rid = r.headers.get("x-request-id") || "";
}).catch(() => { document.body.dataset.status = "blocked"; });
</script></body></html>"""


def page_server(tmp_path, body: str) -> LocalServer:
    (tmp_path / "index.html").write_text(PAGE % body)
    return LocalServer(
        command=lambda port: [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path),
        ],
        health="/index.html",
    )


@pytest.mark.parametrize("allowed", [True, False])
def test_a_page_on_another_origin_calls_only_when_allowed(tmp_path, rng, allowed):
    import json

    from playwright.sync_api import sync_playwright

    p = make_problem(rng, H=2, C=3, T=2)
    with page_server(tmp_path, json.dumps(json.dumps(p.body()))) as pages:
        origin = pages.url
        env = {"BPTT_CORS_ORIGINS": origin} if allowed else {}
        with LocalServer(env=env) as api, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{origin}/index.html?api={api.url}")
                page.wait_for_function("document.body.dataset.status !== undefined", timeout=20_000)
                status = page.get_attribute("body", "data-status")
                rid = page.get_attribute("body", "data-rid")
            finally:
                browser.close()
    if allowed:
        assert status == "200"  # the preflight answered, the POST read
        assert rid == "from-a-page"  # an exposed header
    else:
        assert status == "blocked"  # no cross-origin access by default
