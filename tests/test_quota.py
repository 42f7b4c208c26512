"""Request-rate quotas per API key: the token bucket, the 429 answers, the metric (service/quota.py)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer, make_problem
from prometheus_client import REGISTRY

from service.app import create_app
from service.quota import Quotas, TokenBucket, key_id
from service.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]  # a quiet client may send the burst at once
    assert bucket.take() == pytest.approx(0.5)  # then one every 1 / rate seconds
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)  # a refused request takes nothing
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 60
    assert [bucket.take() for _ in range(4)][-1] > 0  # refilled to the burst, never beyond


def test_token_bucket_never_refuses_a_client_that_keeps_to_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=5.0, burst=1, clock=clock)
    for _ in range(1000):
        assert bucket.take() == 0.0
        clock.now += 0.2


def test_quotas_are_per_key():
    quotas = Quotas(rate=1.0, burst=1, clock=Clock())
    assert quotas.take("a") == 0.0 and quotas.take("a") > 0
    assert quotas.take("b") == 0.0  # a's use leaves b's bucket full


def refused(key: str) -> float:
    return REGISTRY.get_sample_value("bptt_rate_limited_total", {"key": key_id(key.encode())}) or 0.0


def test_rate_limit_is_429_with_retry_after_per_key_and_counted(rng):
    body = json.dumps(make_problem(rng, H=2, C=3, T=2).body())
    settings = Settings(api_key="key-one,key-two", rate_limit_per_key=0.001, rate_limit_burst=2)
    one, two = {"authorization": "Bearer key-one"}, {"authorization": "Bearer key-two"}
    before = refused("key-one"), refused("key-two")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert [c.post("/bptt", content=body, headers=one).status_code for _ in range(2)] == [200, 200]
        r = c.post("/bptt", content=body, headers=one)
        assert r.status_code == 429
        assert 900 <= int(r.headers["retry-after"]) <= 1000  # one token every 1000 s
        assert r.json()["errors"][0]["type"] == "rate_limited"
        said = f"API key {key_id(b'key-one')} is over its rate of 0.001 requests a second"
        assert r.json()["detail"].startswith(said)
        v2 = c.get("/v2/models/bptt", headers=one)
        assert v2.status_code == 429 and "over its rate" in v2.json()["error"]  # every keyed route counts
        assert c.post("/bptt", content=body, headers=two).status_code == 200  # the other key is not starved
        assert c.post("/bptt", content=body, headers={"authorization": "Bearer nope"}).status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and the scraper have no key and no quota
            assert all(c.get(path).status_code == 200 for _ in range(5))
    assert (refused("key-one") - before[0], refused("key-two") - before[1]) == (2, 0)


def test_rate_limit_needs_api_keys():
    with pytest.raises(ValueError, match="rate_limit_per_key needs api_key"):
        Settings(rate_limit_per_key=5)


@pytest.mark.slow  # a real server process
def test_rate_limit_on_a_real_server(rng):
    body = json.dumps(make_problem(rng, H=2, C=3, T=2).body())
    env = {"BPTT_API_KEY": "alpha,beta", "BPTT_RATE_LIMIT_PER_KEY": "0.1", "BPTT_RATE_LIMIT_BURST": "2"}
    with LocalServer(env=env) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        alpha, beta = {"authorization": "Bearer alpha"}, {"authorization": "Bearer beta"}
        statuses = [http.post("/bptt", content=body, headers=alpha).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert http.post("/bptt", content=body, headers=beta).status_code == 200
        r = http.post("/bptt", content=body, headers=alpha)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 10
        text = http.get("/metrics").text
        counted = re.search(rf'^bptt_rate_limited_total{{key="{key_id(b"alpha")}"}} (\S+)$', text, re.M)
        assert counted and float(counted.group(1)) == 2
        assert f'key="{key_id(b"beta")}"' not in text
