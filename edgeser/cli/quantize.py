"""`edgeser calibrate` and `edgeser quantize`: calibration clips off the evaluation split, then quantised variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeser.bundle import CALIBRATION_METHODS, CalibrationMethod
from edgeser.cli import echo_json
from edgeser.cli.params import THREADS, Bounded, comma_list, threads_option


@click.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True, help="Data spec of the corpus to calibrate on.")
@click.option(
    "--fold",
    "fold_index",
    type=click.IntRange(min=0),
    help="Fold whose evaluation split is kept out [the checkpoint's, else 0].",
)
@click.option(
    "--samples",
    type=Bounded("samples"),
    default=64,
    show_default=True,
    help="Calibration clips (label/length stratified).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Use these utterance ids (one a line) instead; refused if any is in the evaluation split.",
)
@click.option("--buckets", default="2,4", show_default=True, help="Fixed waveform lengths in seconds.")
@click.option(
    "--text-sentences/--no-text-sentences",
    default=True,
    show_default=True,
    help="Also calibrate the text encoder on edgeser's shipped sentences (besides the clips' transcripts).",
)
@threads_option()
@click.option("--json", "as_json", is_flag=True, help="Print the cached provenance as JSON.")
def calibrate_command(
    bundle: Path,
    data_spec: str,
    fold_index: int | None,
    samples: int,
    seed: int,
    ids_file: Path | None,
    buckets: str,
    text_sentences: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """Pick calibration clips off the evaluation split, capture each stage's real inputs, cache them in BUNDLE."""
    from edgeser.calibrate import calibrate_bundle
    from edgeser.cli.progress import CLICK
    from edgeser.errors import DataError
    from edgeser.runtime.options import bounded

    ids = None
    if ids_file is not None:
        if not ids_file.is_file():
            raise DataError(f"{ids_file}: ids file not found")
        ids = [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        seconds = [float(b) for b in comma_list(buckets)]
    except ValueError:
        raise click.BadParameter(f"{buckets!r}: give seconds like 2,4", param_hint="--buckets") from None
    bucket_s = tuple(
        bounded("--buckets", s, "clip_seconds") for s in seconds
    )  # past the bound: one line, exit 1
    cache = calibrate_bundle(
        bundle,
        data_spec,
        fold_index=fold_index,
        samples=samples,
        seed=seed,
        ids=ids,
        buckets_s=bucket_s,
        threads=threads,
        text_sentences=text_sentences,
        progress=CLICK,
    )
    p = cache.provenance
    if as_json:
        echo_json(p)
        return
    groups = ", ".join(f"{k} x{v}" for k, v in p["groups"].items())
    click.echo(
        f"cached {p['count']} calibration clips of {p['corpus']} ({p['pool']}): {groups} -> {cache.root}"
    )


@click.command("quantize")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--int8",
    "int8",
    is_flag=True,
    help="Static INT8 (QDQ, per-channel weights) from the calibration cache: "
    "the CPU default (u8 activations).",
)
@click.option(
    "--int8-trt",
    "int8_trt",
    is_flag=True,
    help="Static INT8 for TensorRT (int8-trt/): signed symmetric "
    "activations with zero point 0, per-channel weights on the output axis, float biases, dedicated Q/DQ.",
)
@click.option(
    "--int8-trt-fp16",
    "int8_trt_fp16",
    is_flag=True,
    help="int8-trt with its float remainder in FP16 "
    "(int8-trt-fp16/, what `build-trt --int8` builds; writes int8-trt first when it is missing).",
)
@click.option(
    "--int8-dynamic", "int8_dynamic", is_flag=True, help="Dynamic INT8 (MatMul weights; no calibration)."
)
@click.option(
    "--fp16", "fp16", is_flag=True, help="FP16 for GPUs (sensitive ops and the front end stay FP32)."
)
@click.option(
    "--method",
    type=click.Choice(CALIBRATION_METHODS),
    default="percentile",
    show_default=True,
    help="Calibration method of --int8.",
)
@click.option(
    "--exclude",
    multiple=True,
    help="Keep these in float instead of the defaults: categories "
    "(frontend, first-conv, layernorm, softmax, residual-add, gelu, narrow, grouped-conv, "
    "gather-activations, feature-convs, activation-matmuls), node-name globs, or 'none'. Repeatable.",
)
@click.option(
    "--min-width",
    type=click.IntRange(min=0),
    help="MatMul/Gemm/Conv nodes with fewer input features or output "
    "channels stay float (the `narrow` category) [64; 0 quantises every width].",
)
@click.option("--op-types", help="Op types --int8 quantises [MatMul,Conv,Gemm,Gather].")
@click.option(
    "--dynamic-op-types", default="MatMul", show_default=True, help="Op types --int8-dynamic quantises."
)
@click.option(
    "--max-ua-drop",
    type=click.FloatRange(min=0),
    help="Accuracy-controlled --int8: keep the most sensitive stages / node "
    "groups in float until the worst-case UA drop (class-balanced label-flip rate against fp32) on "
    "calibration-side clips is within X points.",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0.0, 1.0),
    help="With --max-ua-drop: also require this label agreement (0..1).",
)
@click.option("--data", "data_spec", help="Corpus for --max-ua-drop [the calibration corpus].")
@click.option(
    "--fold", "fold_index", type=click.IntRange(min=0), help="Fold for --max-ua-drop [the calibration fold]."
)
@click.option(
    "--validation-clips",
    type=Bounded("validation_clips"),
    default=64,
    show_default=True,
    help="Clips --max-ua-drop measures on.",
)
@threads_option("onnxruntime intra-op threads (for --max-ua-drop) [at most the logical cores].")
@click.option(
    "--no-speed-gate",
    is_flag=True,
    help="--int8: keep INT8 stages even where they run slower than fp32 "
    "on this CPU (by default such a stage stays fp32, and bundle.json records the timings).",
)
@click.option("--speed-threads", type=THREADS, help="Threads the speed gate times stages with [all cores].")
@click.option(
    "--no-fuse-attention",
    is_flag=True,
    help="--int8: keep attention in standard ONNX ops instead of "
    "onnxruntime's MultiHeadAttention (for onnxruntime builds without contrib ops).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def quantize_command(
    bundle: Path,
    int8: bool,
    int8_trt: bool,
    int8_trt_fp16: bool,
    int8_dynamic: bool,
    fp16: bool,
    method: CalibrationMethod,
    exclude: tuple[str, ...],
    op_types: str | None,
    dynamic_op_types: str,
    min_width: int | None,
    max_ua_drop: float | None,
    min_agreement: float | None,
    data_spec: str | None,
    fold_index: int | None,
    validation_clips: int,
    threads: int | None,
    no_speed_gate: bool,
    speed_threads: int | None,
    no_fuse_attention: bool,
    as_json: bool,
) -> None:
    """Write INT8 / INT8 for TensorRT / dynamic INT8 / FP16 variants into BUNDLE (int8/, int8-trt/,
    int8-trt-fp16/, int8-dynamic/, fp16/), listed in bundle.json."""
    from dataclasses import asdict

    from edgeser.bundle import read_manifest
    from edgeser.cli.progress import CLICK
    from edgeser.quantize import Int8Options, convert_fp16, quantize_int8, quantize_int8_dynamic
    from edgeser.quantize.fp16 import convert_int8_fp16
    from edgeser.quantize.graph import DEFAULT_OP_TYPES, NARROW_WIDTH
    from edgeser.quantize.variants import quantize_int8_tensorrt

    if max_ua_drop is not None:
        int8 = True
    if int8_trt_fp16 and "int8-trt" not in read_manifest(bundle).precisions:
        int8_trt = True  # the FP16-remainder graph is made from the int8-trt one
    if not (int8 or int8_trt or int8_trt_fp16 or int8_dynamic or fp16):
        raise click.UsageError(
            "choose at least one of --int8, --int8-trt, --int8-trt-fp16, --int8-dynamic, --fp16"
        )
    excluded = tuple(exclude) if exclude else None
    min_width = NARROW_WIDTH if min_width is None else min_width
    written: dict[str, Any] = {}
    if int8:
        chosen_ops = tuple(comma_list(op_types)) if op_types else DEFAULT_OP_TYPES
        options = Int8Options(
            method=method,
            op_types=chosen_ops,
            exclude=excluded,
            min_width=min_width,
            speed_gate=not no_speed_gate,
            speed_threads=speed_threads,
            fuse_attention=not no_fuse_attention,
        )
        if max_ua_drop is not None:
            from edgeser.quantize.controlled import quantize_controlled

            report = quantize_controlled(
                bundle,
                max_ua_drop,
                data_spec=data_spec,
                fold_index=fold_index,
                options=options,
                validation_clips=validation_clips,
                min_agreement=min_agreement,
                threads=threads,
                progress=CLICK,
            )
            written["controlled"] = asdict(report)
            if not as_json:
                click.echo(report.to_markdown())
        else:
            quantize_int8(bundle, options, progress=CLICK)
    if int8_trt:
        trt_changes: dict[str, Any] = {"method": method, "min_width": min_width}
        if excluded is not None:
            trt_changes["exclude"] = excluded
        quantize_int8_tensorrt(bundle, Int8Options.tensorrt(**trt_changes), progress=CLICK)
    if int8_trt_fp16:
        convert_int8_fp16(bundle, progress=CLICK)
    if int8_dynamic:
        quantize_int8_dynamic(
            bundle,
            op_types=tuple(comma_list(dynamic_op_types)),
            exclude=excluded,
            min_width=min_width,
            progress=CLICK,
        )
    if fp16:
        convert_fp16(bundle, exclude=excluded, progress=CLICK)
    manifest = read_manifest(bundle)
    fp32_bytes = sum(e.bytes for e in manifest.precisions["fp32"].values())
    chosen = (
        ("int8", int8),
        ("int8-trt", int8_trt),
        ("int8-trt-fp16", int8_trt_fp16),
        ("int8-dynamic", int8_dynamic),
        ("fp16", fp16),
    )
    for precision in [p for p, on in chosen if on]:
        files = manifest.precisions[precision]
        settings = manifest.extra.get("quantization", {}).get(precision, {})
        size = sum(e.bytes for e in files.values())
        written[precision] = {"bytes": size, "fraction_of_fp32": size / fp32_bytes, "settings": settings}
        if not as_json:
            stages = settings.get("stages", {})
            parts = []
            for stage, r in stages.items():
                reasons = ", ".join(sorted(set(r["float_nodes"].values())))
                parts.append(
                    f"{stage} {r['precision']} ({r['quantized_nodes']} quantised"
                    + (f", float: {reasons})" if reasons else ")")
                )
            click.echo(
                f"{precision}: {size / 1e6:.1f} MB ({size / fp32_bytes:.0%} of fp32) -> {bundle / precision}; "
                + "; ".join(parts)
            )
            if (
                stages
                and precision not in ("fp16", "int8-trt-fp16")
                and not any(r["quantized_nodes"] for r in stages.values())
            ):
                click.echo(
                    f"note: {precision} quantised no node (every one is excluded or narrower than "
                    f"--min-width {min_width}): it computes what fp32 does",
                    err=True,
                )
    if as_json:
        echo_json(written)


def register(main: click.Group) -> None:
    main.add_command(calibrate_command)
    main.add_command(quantize_command)
