"""GET /explain in headless Chromium (Debian's chromium, driven by Playwright).

The page must load with no console error, no failed request and no request
leaving the server; computing must show the engine's loss and draw both
charts. For each cell (vanilla, GRU, LSTM) it must draw ||dL/ds_k|| and the
three cells' per-lag curves, with the numbers of the API's answer for the very
bodies it sent. Skipped, with the reason in pytest's summary, where no Chromium
is installed (.ci/run installs Debian's). BPTT_EXPLAIN_SCREENSHOT=path saves a
screenshot (docs/explain.png is made that way).
"""

from __future__ import annotations

import json
import os

import httpx
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


def js_exponential(v: float, digits: int) -> str:
    """JavaScript's v.toExponential(digits): 5.112e-1 and 1.2e+0, where Python writes 5.112e-01 and 1.2e+00."""
    mantissa, exponent = f"{v:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent):+d}"


def row_numbers(page) -> list[dict[str, str]]:
    """The comparison table's rows: their data attributes and cells' text."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#comparetable tbody tr')].map(
            r => ({...r.dataset, text: [...r.cells].map(c => c.textContent)}))"""
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


@pytest.mark.parametrize(
    ("cell", "reset_after", "truncate"),
    [("rnn", False, ""), ("rnn", False, "3"), ("gru", False, ""), ("gru", True, ""), ("lstm", False, "4")],
)
def test_explain_page_draws_each_cells_dLds_with_the_apis_numbers(browser, live_server, cell, reset_after, truncate):
    page = browser.new_page()
    problems, posts = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on("request", lambda r: posts.append((r.url, r.post_data)) if r.method == "POST" else None)
    try:
        page.goto(f"{live_server.url}/explain")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        posts.clear()
        page.fill("#T", "15")
        page.fill("#K", truncate)
        page.evaluate(f"document.getElementById('reset_after').checked = {str(reset_after).lower()}")
        page.select_option("#cell", cell)  # selecting computes at once
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        assert page.get_attribute("body", "data-cell") == cell
        sent = [json.loads(body) for url, body in posts if url.endswith("/bptt")]
        main = sent[0]
        assert main["trace"] is True and len(main["x"]) == 15 and main.get("cell", "rnn") == cell
        assert main["bptt_truncate"] == (int(truncate) if truncate else None)
        G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
        assert np.array(main["U"]).shape == ((16, 20) if cell == "rnn" else (G, 16, 20))
        assert main.get("reset_after", False) is reset_after
        answer = httpx.post(f"{live_server.url}/bptt", json=main, timeout=30).json()
        # The loss and ||dL/ds_k|| (and the LSTM's ||dL/dc_k||) are the API's for the body the page sent.
        assert float(page.get_attribute("body", "data-loss")) == answer["loss"]
        dlds = json.loads(page.get_attribute("#statesteps", "data-dlds"))
        np.testing.assert_allclose(dlds, np.linalg.norm(answer["trace"]["dLds"], axis=1), rtol=1e-12)
        dldc = page.get_attribute("#statesteps", "data-dldc")
        if cell == "lstm":
            np.testing.assert_allclose(json.loads(dldc), np.linalg.norm(answer["trace"]["dLdc"], axis=1), rtol=1e-12)
            assert page.is_visible("#dcnote")
        else:
            assert dldc is None and page.is_hidden("#dcnote")
        assert painted(page, "statesteps") > 500
        assert painted(page, "compare") > 1000
        # The three cells, on the same tokens and V, each row the API's answer for the body sent for that cell
        # (full BPTT: the chosen cell's own request is reused only when it was not truncated).
        by_cell = {body.get("cell", "rnn"): body for body in sent if body.get("bptt_truncate") is None}
        assert sorted(by_cell) == ["gru", "lstm", "rnn"]
        assert len(sent) == (3 if not truncate else 4)
        rows = row_numbers(page)
        assert [r["cell"] for r in rows] == ["rnn", "gru", "lstm"]
        summary = page.text_content("#statesummary")
        for row in rows:
            body = by_cell[row["cell"]]
            assert body["x"] == main["x"] and body["y"] == main["y"] and body["V"] == main["V"]
            assert body.get("reset_after", False) is (reset_after and row["cell"] == "gru")
            lags = httpx.post(f"{live_server.url}/bptt", json=body, timeout=30).json()["trace"]["state_lag_summary"]
            far = int(row["lag"])
            assert far == 7 and len(lags) == 15
            assert float(row["lag0"]) == lags[0]["mean_norm"]
            assert float(row["far"]) == lags[far]["mean_norm"]
            assert row["text"][1:3] == [
                js_exponential(lags[0]["mean_norm"], 3),
                js_exponential(lags[far]["mean_norm"], 3),
            ]
            assert js_exponential(lags[far]["mean_norm"], 1) in summary
        # delta_t and the gradient flow are the vanilla cell's: drawn for it, hidden (and not asked for) otherwise.
        flows = [url for url, _ in posts if url.endswith("/bptt/flow")]
        if cell == "rnn":
            assert page.is_visible("#vanilla") and page.is_hidden("#vanillanote")
            assert painted(page, "heatmap") > 5000 and len(flows) == 1
        else:
            assert page.is_hidden("#vanilla") and page.is_visible("#vanillanote")
            assert not flows and page.get_attribute("body", "data-radius") is None
    finally:
        page.close()
    assert not problems, problems


def test_explain_page_draws_a_pasted_lstm_alone(browser, live_server):
    rng = np.random.default_rng(5)
    H, C, T = 3, 4, 6
    model = {
        "cell": "lstm",
        "U": rng.uniform(-1, 1, (4, H, C)).tolist(),
        "V": rng.uniform(-1, 1, (C, H)).tolist(),
        "W": rng.uniform(-1, 1, (4, H, H)).tolist(),
        "x": rng.integers(0, C, T).tolist(),
        "y": rng.integers(0, C, T).tolist(),
    }
    page = browser.new_page()
    problems, posts = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    try:
        page.goto(f"{live_server.url}/explain")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        posts.clear()
        page.evaluate("document.getElementById('status').textContent = ''")
        page.fill("#pasted", json.dumps(model))
        page.click("#compute")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30_000)
        # One request: the pasted model is not redrawn as the other cells.
        assert len(posts) == 1 and posts[0].endswith("/bptt")
        answer = httpx.post(f"{live_server.url}/bptt", json={**model, "trace": True}, timeout=30).json()
        assert page.get_attribute("body", "data-cell") == "lstm"
        rows = row_numbers(page)
        assert [r["cell"] for r in rows] == ["lstm"]
        assert float(rows[0]["lag0"]) == answer["trace"]["state_lag_summary"][0]["mean_norm"]
        assert page.text_content("#statesummary").startswith("The pasted LSTM")
        assert painted(page, "compare") > 500 and page.is_hidden("#vanilla")
    finally:
        page.close()
    assert not problems, problems
