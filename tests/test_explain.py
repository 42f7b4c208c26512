"""GET /explain in headless Chromium (Debian's chromium, driven by Playwright).

The page must load with no console error, no failed request and no request
leaving the server; computing must show the engine's loss and draw both
charts. Skipped, with the reason in pytest's summary, where no Chromium is
installed (.ci/run installs Debian's). BPTT_EXPLAIN_SCREENSHOT=path saves a
screenshot (docs/explain.png is made that way).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS

from service import engine

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")]
ARGS = CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def painted(page, canvas_id: str) -> int:
    """How many pixels of a canvas are not transparent or white."""
    return page.evaluate(
        """id => {
            const c = document.getElementById(id);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
            return n;
        }""",
        canvas_id,
    )


@pytest.mark.parametrize("truncate", ["", "3"])
def test_explain_page_computes_and_draws(browser, live_server, truncate):
    page = browser.new_page()
    problems, requests, bodies = [], [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    page.on("request", lambda r: bodies.append(r.post_data) if r.method == "POST" else None)
    try:
        page.goto(f"{live_server.url}/explain")
        # The default model is drawn on load, before anything is clicked.
        page.wait_for_selector("#results:not([hidden])", timeout=30_000)
        assert painted(page, "heatmap") > 5000
        bodies.clear()
        page.evaluate("document.getElementById('status').textContent = ''")
        page.fill("#T", "12")
        page.fill("#K", truncate)
        page.click("#compute")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        # The loss shown is the engine's for the weights the page sent.
        sent = json.loads(bodies[0])
        assert sent["trace"] is True and len(sent["x"]) == 12
        g = engine.bptt(*(np.array(sent[k]) for k in ("U", "V", "W", "x", "y")), bptt_truncate=sent["bptt_truncate"])
        assert float(page.get_attribute("body", "data-loss")) == pytest.approx(g.loss, rel=1e-12)
        assert f"loss {g.loss:.6f} over 12 tokens" in page.text_content("#summary")
        assert painted(page, "heatmap") > 5000
        assert painted(page, "lags") > 500
        if os.environ.get("BPTT_EXPLAIN_SCREENSHOT") and truncate == "":
            page.screenshot(path=os.environ["BPTT_EXPLAIN_SCREENSHOT"], full_page=True)
    finally:
        page.close()
    assert not problems, problems
    assert all(url.startswith(live_server.url) for url in requests), requests


def test_explain_page_shows_server_errors(browser, live_server):
    page = browser.new_page()
    try:
        page.goto(f"{live_server.url}/explain")
        page.wait_for_selector("#results:not([hidden])", timeout=30_000)  # the default drawing
        page.fill("#pasted", '{"U": [[0.1, 0.2]], "V": [[0.1], [0.2]], "W": [[0.5, 0.5]], "x": [0], "y": [1]}')
        page.click("#compute")
        page.wait_for_function("document.getElementById('status').classList.contains('error')")
        assert page.text_content("#status") == "422: W must be H x H = 1 x 1, got 1 x 2"
        # The previous drawing is gone, so it cannot be taken for this request's result.
        assert page.is_hidden("#results")
        assert painted(page, "heatmap") == 0
        assert page.get_attribute("body", "data-loss") is None
        page.fill("#pasted", "{not json")
        page.click("#compute")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('The pasted')")
    finally:
        page.close()


def test_explain_page_draws_the_gradient_flow_and_the_slider_scales_w(browser, live_server):
    page = browser.new_page()
    problems, bodies = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: bodies.append((r.url, r.post_data)) if r.method == "POST" else None)
    try:
        page.goto(f"{live_server.url}/explain")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        for canvas in ("flowmap", "lagdecay", "bias"):
            assert painted(page, canvas) > 500, canvas
        sent = json.loads(next(body for url, body in bodies if url.endswith("/bptt/flow")))
        rho = max(abs(np.linalg.eigvals(np.array(sent["W"]))))
        assert float(page.get_attribute("body", "data-radius")) == pytest.approx(rho, rel=1e-12)
        assert f"spectral radius {rho:.4f}" in page.text_content("#flowsummary")
        # Slide W up: the radius the page shows grows with it.
        bodies.clear()
        page.evaluate("document.getElementById('status').textContent = ''")
        page.fill("#slider", "3")
        page.dispatch_event("#slider", "change")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        scaled = json.loads(next(body for url, body in bodies if url.endswith("/bptt/flow")))
        rho3 = max(abs(np.linalg.eigvals(np.array(scaled["W"]))))
        assert rho3 == pytest.approx(3 * rho, rel=1e-9)
        assert float(page.get_attribute("body", "data-radius")) == pytest.approx(rho3, rel=1e-12)
    finally:
        page.close()
    assert not problems, problems
