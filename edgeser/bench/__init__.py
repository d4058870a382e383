"""`edgeser bench`: latency of a bundle's variants on the machine it runs on, against what users would do instead.

    clips    real speech cut to exact lengths (the user's files, the corpora, or the shipped demo clips)
    runners  the rows: the bundle's precisions through the runtime, PyTorch float, quantize_dynamic, OpenVINO
    measure  interleaved rounds per (clip length, batch, threads); p50/p90/p99, RTF, throughput, per stage
    probe    cold start and peak memory of one row in a fresh interpreter
    report   JSON, Markdown table and PNG plots

The click command is `edgeser.cli.bench`.
"""

from edgeser.bench.core import BenchOptions, run_bench
from edgeser.bench.report import BenchReport

__all__ = ["BenchOptions", "BenchReport", "run_bench"]
