"""One large batch over one worker, and over two workers with ``bptt_batch(..., shards=2)``.

C = 8000, H = 100, B = 80 sequences of T = 50 (4,000 tokens: the largest batch the default
limits admit), full BPTT. The shards travel as the Open Inference Protocol's binary
tensors; the single request is timed in both forms (``/bptt/batch`` with base64, as
``shards=1`` sends it, and V2 binary), so that the speed-up against the second is the
scale-out's alone. Each server process computes with one BLAS
thread (BPTT_BLAS_THREADS=1) and one compute thread, so that two workers on two
cores are the scale-out of two single-core replicas. The client opens one
connection per shard; uvicorn's workers share the port, so the kernel spreads
the connections over them as a Kubernetes Service spreads them over pods.
Prints medians and the ratio of tokens per second, measured in one run.

    python benchmarks/bench_shards.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib

import httpx
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
    env = {"BPTT_BLAS_THREADS": "1", "BPTT_THREADS": "1"}
    configs = ((1, 1), (1, 2), (2, 2), (2, 4))
    with contextlib.ExitStack() as stack:
        urls = {w: stack.enter_context(serve("service.app:create_app", env=env, workers=w)) for w in (1, 2)}
        clients = {w: stack.enter_context(Client(url, timeout=300)) for w, url in urls.items()}
        candidates = {}
        for workers, shards in configs:

            def run(client: Client = clients[workers], shards: int = shards) -> object:
                return client.bptt_batch(U, V, W, xs, ys, shards=shards)

            got = run()
            err = float(np.abs(got.dLdW - want.dLdW).max() / np.abs(want.dLdW).max())  # type: ignore[attr-defined]
            if err > 1e-12:
                raise AssertionError(f"{workers} workers, {shards} shards: dLdW differs by {err:.2e}")
            candidates[workers, shards] = run

        # The same single request in the shards' own form (V2 binary tensors), so that the speed-up
        # below is the scale-out's, not the wire format's.
        binary = Wire("base64", "float64").binary_bodies(U, V, W, xs, ys)

        def one_binary() -> object:
            path, content, headers = binary(range(B))
            with httpx.Client(base_url=urls[1], timeout=300) as http:
                return Wire.binary_batch_result(http.post(path, content=content, headers=headers))

        got = one_binary()
        if np.abs(got.dLdW - want.dLdW).max() > 1e-12 * np.abs(want.dLdW).max():  # type: ignore[attr-defined]
            raise AssertionError("one binary request: dLdW differs")
        candidates[1, 0] = one_binary
        # Interleaved rounds: every configuration sees the same background load (both servers stay up; the
        # idle one costs nothing).
        seconds = interleaved({f"{w} {s}": fn for (w, s), fn in candidates.items()}, repeat=repeat)
    rows = []
    for w, s in ((1, 0), *configs):
        t = seconds[f"{w} {s}"]
        how = "1 request, V2 binary" if s == 0 else "1 request, /bptt/batch base64" if s == 1 else f"{s} shards"
        rows.append([w, how, t * 1e3, B * T / t, seconds["1 1"] / t, seconds["1 0"] / t])
    return table(
        f"One batch (B = {B}, T = {T}, C = {C}, H = {H}, full BPTT) over workers of one BLAS thread each "
        f"(medians of {repeat} interleaved rounds; speed-up against 1 worker and one request of each form)",
        ["workers", "requests", "ms per batch", "tokens / s", "vs 1 base64 request", "vs 1 binary request"],
        rows,
    )


if __name__ == "__main__":
    main()
