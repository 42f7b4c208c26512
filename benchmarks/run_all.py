"""Run every benchmark, each in a process of its own, and write the tables to bench-results/results.md.

    make bench            # installs the bench extras first
    python benchmarks/run_all.py [--quick]

A process each: PyTorch's and JAX's thread pools, once started, keep spinning
in the background and slowed the HTTP benchmarks that ran after them in one
process (the V2 path measured 2.5x its floor that way, 1.4x alone).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys

from common import ROOT, machine

BENCHMARKS = [
    "bench_engine.py",
    "bench_kernel.py",
    "bench_fused.py",
    "bench_output.py",
    "bench_gated.py",
    "bench_http.py",
    "bench_grpc.py",
    "bench_throughput.py",
    "bench_batch.py",
    "bench_growth.py",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, not for quoting)")
    args = parser.parse_args()
    header = f"Measured {datetime.date.today()} on {machine()}.\n"
    print(header, flush=True)
    parts = []
    for script in BENCHMARKS:
        extra = (["--seconds", "5"] if script == "bench_throughput.py" else ["--quick"]) if args.quick else []
        out = subprocess.run(
            [sys.executable, script, *extra], cwd=ROOT / "benchmarks", capture_output=True, text=True, check=True
        ).stdout
        print(out, flush=True)
        parts.append(out)
    results = ROOT / "bench-results"
    results.mkdir(exist_ok=True)
    (results / "results.md").write_text(header + "\n" + "\n".join(parts))
    print(f"wrote {results / 'results.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
