"""Lean-runtime latency of one precision by clip length, with cold start and peak memory: a thin caller of
`edgeser bench`.

    python benchmarks/runtime_latency.py build/stfnet --precision fp32 --threads 2

Writes benchmarks/results/runtime_latency-<model>-<size>-<precision>-<cpu class>/ (the report names the machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.bench import BenchOptions, run_bench
from edgeser.bundle import read_manifest
from edgeser.machine import cpu_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--lengths", default="2,4.5,10", help="Clip lengths in seconds.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--clips", action="append", default=[], help="Speech source (see edgeser bench --clips)."
    )
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    out = (
        REPO
        / "benchmarks"
        / "results"
        / f"runtime_latency-{manifest.model}-{manifest.size}-{args.precision}-{cpu_info()['cpu_class']}"
    )
    options = BenchOptions(
        lengths_s=tuple(float(x) for x in args.lengths.split(",")),
        threads=(args.threads,),
        precisions=(args.precision,),
        clips=tuple(args.clips),
        rounds=args.rounds,
    )
    report = run_bench(args.bundle, options, out, command="python " + " ".join(sys.argv))
    print(report.to_markdown())


if __name__ == "__main__":
    main()
