"""One large batch over one worker, and over two workers with ``bptt_batch(..., shards=N)``.

C = 8000, H = 100, B = 80 sequences of T = 50 (4,000 tokens: the largest batch the default
limits admit), full BPTT. The shards travel as the Open Inference Protocol's binary
tensors; the single request is timed in both forms (``/bptt/batch`` with base64, as
``shards=1`` sends it, and V2 binary), and the speed-up is against the faster, so that
it is the scale-out's alone. Every server process computes with one BLAS thread (the
default BPTT_BLAS_THREADS=1), with one compute thread (BPTT_THREADS=1: two workers on two
cores model two single-core replicas) or two (the default). The client opens one
connection per shard; uvicorn's workers share the port, and whichever worker's event
loop wakes first accepts a connection, so two shards may land on one worker (as
kube-proxy's random choice may send two connections to one pod). Prints medians and
the ratio of tokens per second, measured in one run, the configurations in a new
random order each round.

    python benchmarks/bench_shards.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
from common import interleaved, problem, serve, table

from service import engine
from service.client import Client, Wire


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 9")
    args = parser.parse_args(argv)
    C, H, B, T = 8000, 100, 80, 50
    U, V, W, _, _ = problem(C, H, 1)
    rng = np.random.default_rng(3)
    xs = [rng.integers(0, C, T) for _ in range(B)]
    ys = [rng.integers(0, C, T) for _ in range(B)]
    want = engine.bptt_batch(U, V, W, xs, ys)
    repeat = 5 if args.quick else 9
    # (workers, compute threads per worker, shards); shards 0: one V2 binary request, 1: one /bptt/batch request.
    configs = [(1, 1, 1), (1, 1, 0), (2, 1, 2), (2, 1, 4), (1, 2, 2), (2, 2, 2), (2, 2, 4)]
    with contextlib.ExitStack() as stack:
        urls = {
            (w, n): stack.enter_context(serve("service.app:create_app", env={"BPTT_THREADS": str(n)}, workers=w))
            for w, n in {(w, n) for w, n, _ in configs}
        }  # every process with one BLAS thread (the default BPTT_BLAS_THREADS=1)
        clients = {key: stack.enter_context(Client(url, timeout=300)) for key, url in urls.items()}
        # The single request also in the shards' own form (V2 binary tensors), so that the speed-up
        # against it is the scale-out's, not the wire format's.
        binary = Wire("base64", "float64").binary_bodies(U, V, W, xs, ys)
        candidates = {}
        for workers, threads, shards in configs:
            client = clients[workers, threads]

            def run(client: Client = client, shards: int = shards) -> object:
                if shards:
                    return client.bptt_batch(U, V, W, xs, ys, shards=shards)
                path, content, headers = binary(range(B))
                return Wire.binary_batch_result(client._http.post(path, content=content, headers=headers))

            got = run()
            err = float(np.abs(got.dLdW - want.dLdW).max() / np.abs(want.dLdW).max())  # type: ignore[attr-defined]
            if err > 1e-12:
                raise AssertionError(f"{workers} workers, {shards} shards: dLdW differs by {err:.2e}")
            candidates[workers, threads, shards] = run
        # Interleaved rounds: every configuration sees the same background load (the servers stay up; the
        # idle ones cost nothing).
        seconds = interleaved(candidates, repeat=repeat, shuffle=0)  # type: ignore[arg-type]
    best = min(seconds[1, 1, 1], seconds[1, 1, 0])
    rows = []
    for w, n, s in configs:
        t = seconds[w, n, s]
        how = {0: "1 request, V2 binary", 1: "1 request, /bptt/batch base64"}.get(s, f"{s} shards")
        rows.append([w, n, how, t * 1e3, B * T / t, best / t])
    return table(
        f"One batch (B = {B}, T = {T}, C = {C}, H = {H}, full BPTT) over workers of one BLAS thread each "
        f"(medians of {repeat} interleaved rounds; speed-up against the faster single request to 1 worker)",
        ["workers", "threads", "requests", "ms per batch", "tokens / s", "speed-up"],
        rows,
    )


if __name__ == "__main__":
    main()
