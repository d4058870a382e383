"""`edgeser bench BUNDLE`: the latency benchmark users run on their own hardware."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import click

from edgeser.bench.clips import DEFAULT_LENGTHS_S
from edgeser.cli.params import Bounded, comma_list, force_threads_option, precisions_option


def _numbers(value: str, kind: type, option: str) -> tuple:  # type: ignore[type-arg]
    try:
        numbers = tuple(kind(v) for v in comma_list(value))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma list of numbers", param_hint=option) from None
    if not numbers or min(numbers) <= 0:
        raise click.BadParameter(f"{value!r}: expected positive numbers", param_hint=option)
    return numbers


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--lengths",
    default=",".join(f"{x:g}" for x in DEFAULT_LENGTHS_S),
    show_default=True,
    help="Clip lengths in seconds (real speech cut to length).",
)
@click.option(
    "--batch-sizes", default="1", show_default=True, help="Batch sizes (distinct clips of one length)."
)
@click.option("--threads", "threads_list", help="Intra-op thread counts [all logical cores].")
@precisions_option("Comma list of the bundle's precisions to run [every one present].")
@click.option(
    "--provider",
    "providers",
    multiple=True,
    help="onnxruntime execution provider for the bundle's rows, in order of preference [CPU].",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Add PyTorch float, onnxruntime quantize_dynamic defaults and "
    "OpenVINO (when installed) as comparison rows.",
)
@click.option("--nncf", is_flag=True, help="With --compare: an OpenVINO + NNCF INT8 row too (needs nncf).")
@click.option(
    "--clips",
    "clip_sources",
    multiple=True,
    help="Speech to cut clips from: audio files, folders or "
    "corpus specs (tess:/data/tess). [$EDGESER_DATA or ../shared/data, else the shipped demo clips]",
)
@click.option(
    "--rounds", type=Bounded("rounds"), default=10, show_default=True, help="Interleaved rounds per setting."
)
@click.option(
    "--warmup", type=Bounded("warmup"), default=2, show_default=True, help="Warm-up runs per row and setting."
)
@click.option("--no-cold-start", is_flag=True, help="Skip cold start and peak memory (fresh interpreters).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option(
    "--spin",
    is_flag=True,
    help="onnxruntime workers spin during a run instead of waiting passively "
    "(faster on an otherwise idle CPU, slower beside other busy processes).",
)
@force_threads_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Report folder [BUNDLE/reports].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
def bench_command(
    bundle: Path,
    lengths: str,
    batch_sizes: str,
    threads_list: str | None,
    precisions: tuple[str, ...] | None,
    providers: tuple[str, ...],
    compare: bool,
    nncf: bool,
    clip_sources: tuple[str, ...],
    rounds: int,
    warmup: int,
    no_cold_start: bool,
    no_plots: bool,
    spin: bool,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Latency of every variant of BUNDLE on this machine: p50/p90/p99, real-time factor, throughput, cold
    start, peak memory and per-stage times, by clip length, batch size and thread count, in interleaved rounds.
    Writes bench.json, bench.md and plots into BUNDLE/reports (or --out); progress goes to stderr."""
    from edgeser.bench.core import BenchOptions, run_bench
    from edgeser.cli.progress import CLICK
    from edgeser.runtime.options import thread_count

    if nncf and not compare:
        raise click.UsageError("--nncf adds a comparison row: use it with --compare")
    options = BenchOptions(
        lengths_s=_numbers(lengths, float, "--lengths"),
        batches=_numbers(batch_sizes, int, "--batch-sizes"),
        threads=_numbers(threads_list, int, "--threads") if threads_list else (thread_count(),),
        precisions=precisions,
        providers=tuple(providers) or None,
        compare=compare,
        nncf=nncf,
        clips=clip_sources,
        rounds=rounds,
        warmup=warmup,
        cold_start=not no_cold_start,
        plots=not no_plots,
        spin=spin,
    )
    args = sys.argv[1:]
    args = args[1:] if args[:1] == ["bench"] else args
    command = f"{click.get_current_context().command_path} {shlex.join(args)}"
    report = run_bench(bundle, options, out_dir, command=command, progress=CLICK)
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
    else:
        click.echo(report.to_markdown())
    if not report.passed:
        sys.exit(1)
