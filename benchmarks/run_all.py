"""Run every benchmark in one go and write the tables to bench-results/results.md.

    make bench            # installs the bench extras first
    python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import sys

import bench_batch
import bench_engine
import bench_growth
import bench_http
import bench_throughput
from common import ROOT, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, not for quoting)")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    header = f"Measured {datetime.date.today()} on {machine()}.\n"
    print(header)
    parts = [
        bench_engine.main(quick),
        bench_http.main(quick),
        bench_throughput.main(["--seconds", "5" if args.quick else "10"]),
        bench_batch.main(quick),
        bench_growth.main(quick),
    ]
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "results.md").write_text(header + "\n" + "\n".join(parts))
    print(f"wrote {out / 'results.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
