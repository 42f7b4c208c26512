"""One batch over several requests: ``bptt_batch(..., shards=N)`` against a live server with small limits.

The sums must equal one request's (the engine's own ``bptt_batch``) to 1e-12, every row back in request
order, and no shard may be refused: the client sizes them with the service's own dry run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
from helpers import LocalServer, assert_close
from hypothesis import given
from hypothesis import strategies as st

from service import engine, gated
from service.client import AsyncClient, Client, Wire, _Shards, shard_groups
from service.errors import ServerError


@pytest.fixture(scope="module")
def small() -> Iterator[LocalServer]:
    """At most 4 sequences and 60 tokens a request: a batch of 11 needs at least 3 shards."""
    with LocalServer(args=["--log-level", "warning", "--max-batch", "4", "--max-batch-tokens", "60"]) as server:
        yield server


def batch(rng: np.random.Generator, B: int = 11, H: int = 5, C: int = 9):
    U = rng.uniform(-1, 1, (H, C)) / np.sqrt(C)
    V = rng.uniform(-1, 1, (C, H)) / np.sqrt(H)
    W = rng.uniform(-1, 1, (H, H)) / np.sqrt(H)
    lengths = rng.integers(1, 15, B)
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    s0 = [rng.uniform(-1, 1, H) if i % 3 else None for i in range(B)]
    return U, V, W, xs, ys, s0


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 8))
def test_shard_groups_cover_every_sequence_once_in_order_and_balance_tokens(lengths, shards):
    groups = shard_groups(lengths, shards)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(g == sorted(g) and g for g in groups)
    assert len(groups) == min(shards, len(lengths))
    tokens = [sum(lengths[i] for i in g) for g in groups]
    assert max(tokens) - min(tokens) <= max(lengths)  # greedy longest-first: within one sequence


def test_shard_groups_refuses_zero_shards():
    with pytest.raises(ValueError, match="shards must be an integer >= 1, got 0"):
        shard_groups([3, 4], 0)


@pytest.mark.parametrize("K", [None, 3])
def test_sharded_batch_equals_one_computation(small, rng, K):
    """11 sequences, 2 shards asked: refused groups are split until admitted; the sums equal the engine's."""
    U, V, W, xs, ys, s0 = batch(rng)
    want = engine.bptt_batch(U, V, W, xs, ys, bptt_truncate=K, s0=s0)
    with Client(small.url) as client:
        with pytest.raises(ServerError) as refused:
            client.bptt_batch(U, V, W, xs, ys, s0=s0, bptt_truncate=K)
        assert refused.value.status == 413
        got = client.bptt_batch(U, V, W, xs, ys, s0=s0, bptt_truncate=K, shards=2)
    for name in ("dLdU", "dLdV", "dLdW"):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)
    for name in ("dLds0", "final_state", "losses"):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)
    assert got.tokens == want.tokens
    assert got.loss == pytest.approx(want.loss, rel=1e-12)
    assert got.mean_loss == pytest.approx(want.mean_loss, rel=1e-12)
    assert got.clipped is None


def test_clip_is_applied_to_the_sums_not_to_each_shard(small, rng):
    U, V, W, xs, ys, s0 = batch(rng)
    W = W * 8  # large gradients, so that clipping bites
    want = engine.bptt_batch(U, V, W, xs, ys, s0=s0, clip=0.5)
    with Client(small.url) as client:
        got = client.bptt_batch(U, V, W, xs, ys, s0=s0, clip=0.5, shards=3)
    assert got.clipped == want.clipped and sum(got.clipped.values()) > 0
    for name in ("dLdU", "dLdV", "dLdW"):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)


def test_sharded_lstm_batch_keeps_each_sequences_cell_state(small, rng):
    H, C, G = 4, 6, 4
    U, V, W = rng.normal(0, 0.5, (G, H, C)), rng.normal(0, 0.5, (C, H)), rng.normal(0, 0.5, (G, H, H))
    lengths = [9, 2, 7, 4, 4, 1, 8]
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    c0 = [rng.normal(0, 0.5, H) for _ in lengths]
    want = gated.bptt_batch("lstm", U, V, W, xs, ys, c0=c0)
    with Client(small.url) as client:
        got = client.bptt_batch(U, V, W, xs, ys, cell="lstm", c0=c0, shards=3)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdc0", "final_cell", "losses"):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)


def test_async_client_shards_alike(small, rng):
    U, V, W, xs, ys, s0 = batch(rng)
    want = engine.bptt_batch(U, V, W, xs, ys, s0=s0)

    async def run():
        async with AsyncClient(small.url) as client:
            return await client.bptt_batch(U, V, W, xs, ys, s0=s0, shards=4)

    got = asyncio.run(run())
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "losses"):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)


def test_a_sequence_refused_alone_is_named(small, rng):
    """A sequence over max_tokens cannot be sharded away: the refusal names it and the service's reason."""
    U, V, W, xs, ys, _ = batch(rng, B=3)
    xs[1] = ys[1] = np.zeros(10_001, dtype=np.int64)  # over the default max_tokens of 10,000
    with Client(small.url) as client, pytest.raises(ServerError) as refused:
        client.bptt_batch(U, V, W, xs, ys, shards=2)
    assert refused.value.status == 413
    assert refused.value.detail.startswith("sequence 1 alone is refused: ")
    assert "BPTT_MAX_TOKENS" in refused.value.detail


def _dry_run(admitted: bool) -> httpx.Response:
    return httpx.Response(200, json={"admitted": admitted, "refusal": None if admitted else "over a limit"})


def test_the_plan_prices_the_whole_batch_once_when_it_is_admitted(rng):
    """One dry run of the whole batch, then every group is sent: a part costs no more than the whole."""
    U, V, W, xs, ys, _ = batch(rng, B=7)
    plan = _Shards(Wire("base64", "float64"), U, V, W, xs, ys, shards=3)
    priced = []
    while (group := plan.next()) is not None:
        priced.append(group)
        plan.priced(group, _dry_run(True))
    assert priced == [list(range(7))]
    assert sorted(i for g in plan.admitted for i in g) == list(range(7)) and len(plan.admitted) == 3


def test_the_plan_splits_refused_groups_until_each_is_admitted(rng):
    """The whole refused: each group priced, a refused one split in two; the body of a group holds its sequences."""
    U, V, W, xs, ys, _ = batch(rng, B=6)
    plan = _Shards(Wire("base64", "float64"), U, V, W, xs, ys, shards=2)
    while (group := plan.next()) is not None:
        plan.priced(group, _dry_run(len(group) <= 2))  # the service admits at most 2 sequences
    assert sorted(i for g in plan.admitted for i in g) == list(range(6))
    assert all(len(g) <= 2 for g in plan.admitted)
    group = plan.admitted[0]
    path, body, headers = plan.request(group)
    assert path == "/v2/models/bptt/infer" and headers is not None
    header = orjson.loads(body[: int(headers["inference-header-content-length"])])
    inputs = {i["name"]: i for i in header["inputs"]}
    assert inputs["x"]["shape"] == [len(group), max(len(xs[i]) for i in group)]
    assert inputs["lengths"]["shape"] == [len(group)]
    assert header["parameters"] == {"binary_data_output": True}  # no clip: merge_batches clips the sums
    dry_run = orjson.loads(plan.dry_run(group))
    assert [s["x"] for s in dry_run["sequences"]] == [list(xs[i]) for i in group]
    assert dry_run["U"] == {"dtype": "float64", "shape": list(U.shape)}


def test_the_plan_names_a_sequence_refused_alone(rng):
    U, V, W, xs, ys, _ = batch(rng, B=2)
    plan = _Shards(Wire("base64", "float64"), U, V, W, xs, ys, shards=2)
    with pytest.raises(ServerError, match="sequence 1 alone is refused: over a limit"):
        while (group := plan.next()) is not None:
            plan.priced(group, _dry_run(False))


@pytest.mark.parametrize(("cell", "reset_after"), [("rnn", False), ("gru", True), ("gru", False)])
def test_sharded_batch_with_biases_equals_one_computation(small, rng, cell, reset_after):
    """Biases: the vanilla cell's b and c go as /bptt/batch bodies (the V2 model bptt takes none), the GRU's
    b, b_hh, c as binary tensors with reset_after; either way the sums equal the engine's to 1e-12."""
    H, C = 4, 6
    lead = () if cell == "rnn" else (3,)
    U, V, W = rng.normal(0, 0.5, (*lead, H, C)), rng.normal(0, 0.5, (C, H)), rng.normal(0, 0.5, (*lead, H, H))
    b, c = rng.normal(0, 0.5, (*lead, H)), rng.normal(0, 0.5, C)
    lengths = [9, 2, 7, 4, 4, 1, 8]
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    if cell == "rnn":
        want = engine.bptt_batch(U, V, W, xs, ys, b=b, c=c, bptt_truncate=2)
        gated_options = {}
    else:
        b_hh = rng.normal(0, 0.5, (3, H))
        want = gated.bptt_batch("gru", U, V, W, xs, ys, b=b, b_hh=b_hh, c=c, bptt_truncate=2, reset_after=reset_after)
        gated_options = {"cell": "gru", "b_hh": b_hh, "reset_after": reset_after}
    with Client(small.url) as client:
        got = client.bptt_batch(U, V, W, xs, ys, b=b, c=c, bptt_truncate=2, shards=3, **gated_options)
    names = ["dLdU", "dLdV", "dLdW", "dLdb", "dLdc", "dLds0", "final_state", "losses"]
    for name in names + (["dLdb_hh"] if cell == "gru" else []):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)
    assert got.loss == pytest.approx(want.loss, rel=1e-12)


def test_a_group_that_padding_would_swell_goes_as_a_batch_body(rng):
    """One long sequence among many short ones: padded to [B, T] the group's x and y would be far over its
    tokens (and over the body limit the dry run priced), so it goes to /bptt/batch; an even group goes binary."""
    U, V, W = rng.normal(size=(4, 6)), rng.normal(size=(6, 4)), rng.normal(size=(4, 4))
    lengths = [500] + [1] * 100 + [450]
    xs = [rng.integers(0, 6, n) for n in lengths]
    plan = _Shards(Wire("base64", "float64"), U, V, W, xs, xs, shards=2)
    assert plan.request(list(range(101)))[0] == "/bptt/batch"  # 600 tokens padded to 101 x 500
    assert plan.request([0, 101])[0] == "/v2/models/bptt/infer"  # 950 tokens in 2 x 500
    assert plan.request(list(range(1, 101)))[0] == "/v2/models/bptt/infer"  # no padding


def test_sharded_batch_with_uneven_lengths_and_no_cell_state_equals_one_computation(small, rng):
    """Groups of both forms in one call, and c0 given as None for every sequence of a GRU (nothing sent)."""
    H, C = 4, 6
    U, V, W = rng.normal(0, 0.5, (3, H, C)), rng.normal(0, 0.5, (C, H)), rng.normal(0, 0.5, (3, H, H))
    lengths = [14, 1, 1, 1, 1, 1, 1, 1, 1, 13]
    xs = [rng.integers(0, C, n) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    want = gated.bptt_batch("gru", U, V, W, xs, ys)
    with Client(small.url) as client:
        got = client.bptt_batch(U, V, W, xs, ys, cell="gru", c0=[None] * len(xs), shards=3)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses"):
        assert_close(getattr(got, name), getattr(want, name), 1e-12)


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_a_clip_the_service_refuses_is_refused_when_sharded_too(small, rng, clip):
    """clip is applied to the sums by the client, but the dry run carries it: the service's 422 names it."""
    U, V, W, xs, ys, _ = batch(rng)
    with Client(small.url) as client, pytest.raises(ServerError) as refused:
        client.bptt_batch(U, V, W, xs, ys, clip=clip, shards=2)
    assert refused.value.status == 422
    assert "clip" in refused.value.detail
