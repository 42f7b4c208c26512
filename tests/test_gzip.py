"""Content-Encoding: gzip request bodies: decompressed as they arrive, the body limit applied to the
decompressed bytes (a zip bomb is refused after at most the limit is produced), and the client sending them."""

from __future__ import annotations

import gzip
import zlib

import httpx
import numpy as np
import orjson
from fastapi.testclient import TestClient
from helpers import make_problem

from service.app import create_app
from service.client import Client
from service.settings import Settings

GZ = {"content-type": "application/json", "content-encoding": "gzip"}


def test_a_gzip_body_is_the_same_request(client, rng):
    p = make_problem(rng, H=4, C=6, T=5)
    body = orjson.dumps(p.body())
    plain = client.post("/bptt", content=body, headers={"content-type": "application/json"})
    packed = client.post("/bptt", content=gzip.compress(body), headers=GZ)
    assert packed.status_code == 200 and packed.json() == plain.json()


def test_a_zip_bomb_is_refused_after_at_most_the_limit(rng):
    """100 MB of zeros in about 100 KB: the limit (1 MiB) counts what comes out, and stops it there."""
    bomb = gzip.compress(b"0" * 100_000_000, compresslevel=9)
    assert len(bomb) < 200_000
    app = create_app(Settings(max_body_bytes=1 << 20))
    with TestClient(app) as c:
        r = c.post("/bptt", content=bomb, headers=GZ)
    assert r.status_code == 413
    assert "larger than the limit of 1,048,576 bytes" in r.json()["detail"]


def test_broken_gzip_is_a_400_like_broken_json(client):
    r = client.post("/bptt", content=b"not gzip at all", headers=GZ)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("the gzip body is not valid gzip")
    truncated = gzip.compress(b'{"U": [[1.0]]}')[:-6]
    r = client.post("/bptt", content=truncated, headers=GZ)
    assert r.status_code == 400 and "ends before its gzip stream does" in r.json()["detail"]


def test_data_after_the_gzip_stream_is_refused_not_kept(client, rng):
    """Bytes past the end of the stream would be held uncounted: a 400 instead."""
    p = make_problem(rng, H=2, C=3, T=2)
    body = gzip.compress(orjson.dumps(p.body())) + gzip.compress(b"garbage" * 1000)
    r = client.post("/bptt", content=body, headers=GZ)
    assert r.status_code == 400 and "after its gzip stream ends" in r.json()["detail"]


def test_the_compressed_bytes_count_too():
    """A stream that inflates to almost nothing (a huge gzip comment) is still bounded: 413 on its own size."""
    comment = b"\x1f\x8b\x08\x10" + b"\x00" * 6 + b"c" * 3_000_000 + b"\x00"  # FCOMMENT, then the comment
    body = comment + zlib.compress(b"{}")[2:-4]
    with TestClient(create_app(Settings(max_body_bytes=1 << 20))) as c:
        r = c.post("/bptt", content=body, headers=GZ)  # Content-Length over the limit: refused before reading
        assert r.status_code == 413
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        r = c.post("/bptt", content=chunks, headers=GZ)  # chunked: refused as the compressed bytes pass it
        assert r.status_code == 413


def test_the_client_sends_gzip_to_a_real_server(rng, live_server):
    p = make_problem(rng, H=5, C=7, T=6)
    url = live_server.url
    with Client(url, encoding="json", gzip=True) as packed, Client(url, encoding="json") as plain:
        a = packed.bptt(p.U, p.V, p.W, p.x, p.y)
        b = plain.bptt(p.U, p.V, p.W, p.x, p.y)
    # A streamed (chunked) gzip body too, in small pieces.
    body = gzip.compress(orjson.dumps(p.body()))
    chunks = (body[i : i + 100] for i in range(0, len(body), 100))
    r = httpx.post(f"{url}/bptt", content=chunks, headers=GZ)
    np.testing.assert_array_equal(a.dLdW, b.dLdW)
    assert r.status_code == 200 and np.array(r.json()["dLdW"]).tolist() == b.dLdW.tolist()


def test_decompression_comes_out_in_bounded_pieces():
    """The middleware never inflates more than CHUNK bytes per read, whatever the ratio."""
    from service.middleware import GzipRequest

    data = zlib.compress(b"x" * 10_000_000)
    assert len(data) < 20_000
    assert GzipRequest.CHUNK <= 1 << 16
