"""Latency and size of a bundle's variants against what a user would do instead: a thin caller of `edgeser bench`.

    python benchmarks/quantization_latency.py build/cmgi-paper --threads 2 [--nncf] [--lengths 4.5]

Runs `edgeser bench BUNDLE --compare` (PyTorch float, onnxruntime quantize_dynamic defaults, OpenVINO when
installed) and writes the report to benchmarks/results/quantization_latency-<model>-<size>-<cpu class>/, so a
committed result names the machine class it ran on (the report itself has the CPU model, flags and load).
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
    parser.add_argument("--lengths", default="4.5", help="Clip lengths in seconds.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--nncf", action="store_true", help="Add OpenVINO + NNCF INT8.")
    parser.add_argument(
        "--clips", action="append", default=[], help="Speech source (see edgeser bench --clips)."
    )
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    name = f"quantization_latency-{manifest.model}-{manifest.size}-{cpu_info()['cpu_class']}"
    out = REPO / "benchmarks" / "results" / name
    options = BenchOptions(
        lengths_s=tuple(float(x) for x in args.lengths.split(",")),
        threads=(args.threads,),
        compare=True,
        nncf=args.nncf,
        clips=tuple(args.clips),
        rounds=args.rounds,
    )
    report = run_bench(args.bundle, options, out, command="python " + " ".join(sys.argv))
    print(report.to_markdown())


if __name__ == "__main__":
    main()
