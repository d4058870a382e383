"""`edgeser doctor` and `edgeser build-trt` as click commands (registered in the `edgeser` group by cli.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from edgeser.cli.params import Bounded, precision_option


@click.command("doctor")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--target",
    default="tensorrt",
    show_default=True,
    help="tensorrt (= tensorrt:10), tensorrt:10, tensorrt:11, or tensorrt:MAJOR.MINOR for a newer floor.",
)
@precision_option(
    "precisions",
    multiple=True,
    default=None,
    show_default=False,
    help="Variant(s) to check (repeatable); default: every variant in bundle.json.",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="STAGE:INPUT=MIN,OPT,MAX",
    help="Optimisation profile override, shapes like 1x16000 (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor_command(
    bundle: Path, target: str, precisions: tuple[str, ...], profiles: tuple[str, ...], as_json: bool
) -> None:
    """Offline check: will TensorRT's ONNX parser and builder take this bundle's graphs?

    Checks every node against the ONNX-TensorRT operator table of the target line, Q/DQ nodes against
    TensorRT's explicit-quantisation rules, element types, inputs that must be constants, and that every dynamic
    axis has an optimisation profile. Writes reports/doctor-<target>[-<precision>].{json,md}; exits 1 on errors.
    """
    from edgeser.reports import REPORTS_DIR, write_report
    from edgeser.trt.doctor import run_doctor
    from edgeser.trt.operators import parse_target

    chosen = parse_target(target)
    report = run_doctor(bundle, chosen, list(precisions) or None, profiles)
    name = f"doctor-{chosen.label}" + (f"-{'-'.join(precisions)}" if precisions else "")
    write_report(bundle / REPORTS_DIR, name, report)
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(report.to_markdown())
    if not report.passed:
        click.echo(
            f"error: {len(report.errors)} TensorRT blocker(s) in {bundle} (see "
            f"{bundle / REPORTS_DIR / name}.md)",
            err=True,
        )
        sys.exit(1)


@click.command("build-trt")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--int8",
    "precision",
    flag_value="int8-trt-fp16",
    help="Build the INT8 graphs with their float remainder "
    "in FP16 (int8-trt-fp16: `quantize --int8-trt-fp16`).",
)
@click.option(
    "--int8-fp32-remainder",
    "precision",
    flag_value="int8-trt",
    help="Build the int8-trt graphs instead: INT8 GEMMs, every other op in FP32 (`quantize --int8-trt`).",
)
@click.option("--fp16", "precision", flag_value="fp16", help="Build the fp16 graphs.")
@click.option(
    "--variant", default=None, help="Build this variant of bundle.json instead (e.g. a second int8)."
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="STAGE:INPUT=MIN,OPT,MAX",
    help="Optimisation profile override, shapes like 1x16000 (repeatable); default: calibration lengths.",
)
@click.option(
    "--workspace",
    "workspace_mb",
    type=Bounded("workspace_mb"),
    default=None,
    help="Builder workspace limit in MB (default: TensorRT's).",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Timing cache file to reuse and update (default: BUNDLE/trt/timing-<machine>.cache).",
)
@click.option("--stages", default=None, help="Comma-separated stages to build (default: all).")
@click.option(
    "--contexts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Identical optimisation profiles per engine: how many threads may run a stage at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the engine manifest as JSON.")
def build_trt_command(
    bundle: Path,
    precision: str | None,
    variant: str | None,
    profiles: tuple[str, ...],
    workspace_mb: int | None,
    timing_cache: Path | None,
    stages: str | None,
    contexts: int,
    as_json: bool,
) -> None:
    """Build TensorRT engines (strongly typed, explicit quantisation) for this GPU and TensorRT version.

    Engines go to BUNDLE/trt/<gpu>-sm<cc>-trt<version>/<precision>/ with a manifest of source checksums,
    profiles, builder settings, versions and per-layer precisions from the engine inspector.
    """
    from edgeser.trt.build import BuildOptions, build_engines

    if precision is None and variant is None:
        raise click.UsageError("choose --int8 or --fp16 (or --variant NAME)")
    options = BuildOptions(
        precision=variant or str(precision),
        profiles=profiles,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        contexts=contexts,
        stages=tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else None,
    )
    record = build_engines(bundle, options, log=lambda message: click.echo(message, err=True))
    if as_json:
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
        return
    for stage, entry in record["stages"].items():
        counts = ", ".join(f"{k} {v}" for k, v in entry["layers"]["precision_counts"].items())
        click.echo(
            f"{stage}: {entry['bytes'] / 1e6:.1f} MB, {entry['layers']['layers']} layers ({counts}), "
            f"{entry['build_seconds']} s"
        )
