"""Write quantised bundle variants: static INT8 (QDQ), dynamic INT8 and FP16, each a folder listed in bundle.json.

Every variant is written into a temporary sibling folder and renamed into place when all stages are done; only
then is the manifest updated (one read-modify-write, under a lock, written atomically). A failed quantisation
therefore never leaves a half variant listed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from edgeser.bundle import MANIFEST, CalibrationMethod, StageFile, read_manifest, validate_bundle
from edgeser.errors import BundleError
from edgeser.files import atomic_dir, sha256_of, staging_dir, working_directory, write_json_atomic
from edgeser.progress import STDERR, Progress
from edgeser.quantize.fuse import frame_first_conv, fuse_parallel_matmuls, union_ranges
from edgeser.quantize.graph import (
    DEFAULT_OP_TYPES,
    NARROW_WIDTH,
    TENSORRT_CATEGORIES,
    Exclusions,
    category_nodes,
    detach_float_reads,
    quantisable_nodes,
    resolve_exclusions,
    strip_output_qdq,
)
from edgeser.quantize.ort_fusions import fuse_attention
from edgeser.quantize.ranges import activation_ranges, calibration_method
from edgeser.quantize.speed import measured_on

LOG = logging.getLogger(__name__)
TENSORRT_PRECISION = "int8-trt"
TENSORRT_FP16_PRECISION = "int8-trt-fp16"  # int8-trt with its float remainder in FP16 (fp16.py)
QuantTypeName = Literal["QInt8", "QUInt8"]  # onnxruntime's QuantType: signed or unsigned 8-bit
QuantTarget = Literal["cpu", "tensorrt"]  # what a graph is made for: onnxruntime on the CPU, or TensorRT


@dataclass(frozen=True)
class Int8Options:
    """Settings of static INT8 quantisation (defaults follow DESIGN "Known pitfalls")."""

    # percentile (99.999), on the trained stfnet fold 0, every width quantised (EMO-DB speaker 03, 49 clips):
    # logit RMSE vs fp32 0.040 and 1 label flip, where minmax gave 0.042 and 2 flips, entropy 0.104 and 1;
    # HuBERT-large feature cosine 0.9988 against 0.9986 for minmax. Calibration (histograms) is slower.
    method: CalibrationMethod = "percentile"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude: tuple[str, ...] | None = None  # None: the default float categories; else exactly these patterns
    min_width: int = NARROW_WIDTH  # GEMMs with fewer input features or output channels stay float (0: none)
    per_channel: bool = True
    activation_type: QuantTypeName = "QUInt8"
    weight_type: QuantTypeName = "QInt8"
    # TensorRT's ONNX parser takes symmetric INT8 only: activations QInt8 with zero point 0, float biases (it has
    # no INT32 DequantizeLinear), and one Q/DQ pair per consumer. See `Int8Options.tensorrt()`.
    symmetric_activations: bool = False
    dedicated_qdq: bool = False
    quantize_bias: bool = True
    # cpu (onnxruntime) or tensorrt: what the graph is made for, recorded in its settings
    target: QuantTarget = "cpu"
    percentile: float = 99.999
    # True: activation x activation MatMuls (attention scores and their weighted sum) stay float, excluded by
    # name (the `activation-matmuls` category of graph.py); onnxruntime's own MatMulConstBOnly is QOperator-only.
    matmul_weights_only: bool = False
    # False: Q/DQ only on node inputs (outputs stay float until the next consumer)
    quantize_outputs: bool = True
    # Float nodes whose inputs must arrive unquantised: the Q/DQ onnxruntime puts on a quantised MatMul's output
    # is removed where that output only feeds these (through a bias Add at most). See graph.strip_output_qdq.
    # Measured: all-MiniLM-L6 token-feature cosine 0.89 -> 0.97 (residual) -> 0.973 (+ GELU); HuBERT-large
    # feature cosine 0.9988 -> 0.9990, same latency (914 vs 928 ms on a 4.5 s clip).
    float_inputs_into: tuple[str, ...] = ("residual-add", "gelu")
    stages: tuple[str, ...] | None = None  # None: every stage; others are copied from fp32
    float_nodes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra per-stage float nodes
    # Time each quantised stage against fp32 on this CPU and keep float those INT8 would slow down (speed.py).
    speed_gate: bool = True
    fuse_projections: bool = True  # one MatMul for projections reading one activation (q/k/v); see fuse.py
    frame_first_conv: bool = True  # the waveform's first conv as framing + MatMul, no Transpose; see fuse.py
    # attention cores as onnxruntime's CPU MultiHeadAttention (float, com.microsoft); see ort_fusions.py. Only for
    # graphs onnxruntime runs: TensorRT's parser does not know the op.
    fuse_attention: bool = True
    speed_threads: int | None = None  # threads the stages are timed with [all logical cores]
    # SmoothQuant migration strength (smooth.py) on MatMuls whose activation channels are uneven; None: off.
    # all-MiniLM-L6-v2 of the small cmgi, calibrated with the shipped sentences (calibrate/capture.py), token cosine
    # on 30 held-out sentences, int8 mean / min: off 0.987 / 0.977, 0.5 0.985 / 0.976, 0.7 0.996 / 0.992,
    # 0.8 0.997 / 0.993, 0.9 0.996 / 0.990; int8-trt 0.968 / 0.947, 0.933 / 0.882, 0.992 / 0.985, 0.994 / 0.990,
    # 0.994 / 0.989.
    smooth_alpha: float | None = 0.8

    def __post_init__(self) -> None:
        if self.speed_threads is not None:
            from edgeser.runtime.options import check_threads

            check_threads("speed_threads", self.speed_threads)

    @classmethod
    def tensorrt(cls, **changes: Any) -> Int8Options:
        """The settings of graphs TensorRT builds (explicit quantisation, strongly typed): signed symmetric
        activations, symmetric per-channel weights on the output-channel axis, float biases, dedicated Q/DQ."""
        base = {
            "activation_type": "QInt8",
            "weight_type": "QInt8",
            "symmetric_activations": True,
            "dedicated_qdq": True,
            "quantize_bias": False,
            "per_channel": True,
            "target": "tensorrt",
            "speed_gate": False,  # a GPU graph: this CPU's INT8 speed says nothing about it
            "fuse_attention": False,  # com.microsoft ops: TensorRT's parser does not know them
            "exclude": TENSORRT_CATEGORIES,
        }
        return cls(**{**base, **changes})

    def signature(self) -> str:
        """What cached activation ranges depend on besides the calibration inputs: op types, percentile, and the
        onnxruntime version (its pre-processing names the tensors the ranges are keyed by)."""
        import onnxruntime

        extra = f"-p{self.percentile:g}" if self.method == "percentile" else ""
        return f"{'+'.join(sorted(self.op_types))}{extra}-ort{onnxruntime.__version__}"


@dataclass
class StageReport:
    """What happened to one stage in a variant."""

    precision: str  # of this stage's graph: int8, int8-dynamic, fp16 or fp32 (kept float)
    quantized_nodes: int = 0
    float_nodes: dict[str, str] = field(default_factory=dict)  # quantisable node -> why it stayed float
    op_counts: dict[str, int] = field(default_factory=dict)
    preprocess: str = ""
    seconds: float = 0.0
    float_outputs: int = 0  # quantised nodes whose output Q/DQ was removed (it fed residual Adds / GELU)
    speed: dict[str, Any] = field(default_factory=dict)  # fp32 vs int8 ms on this CPU (SpeedCheck.to_dict)
    fused: dict[str, list[str]] = field(default_factory=dict)  # merged MatMul -> the projections it replaced
    smoothed: list[str] = field(default_factory=list)  # MatMuls given SmoothQuant scales (smooth.py)
    qdq: dict[str, int] = field(
        default_factory=dict
    )  # int8-trt-fp16: Q/DQ nodes, those in FP16, subnormal scales


# --------------------------------------------------------------------------------------------- manifest


@contextlib.contextmanager
def manifest_lock(bundle: Path) -> Iterator[None]:
    """Serialise read-modify-write of bundle.json between processes."""
    with (bundle / f".{MANIFEST}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_precision(
    bundle: Path, precision: str, files: dict[str, StageFile], settings: dict[str, Any]
) -> None:
    """List a written variant in bundle.json: its stage files under `precisions`, settings under
    `extra["quantization"][precision]` (one atomic manifest write)."""
    with manifest_lock(bundle):
        manifest = read_manifest(bundle)
        manifest.precisions[precision] = files
        manifest.extra.setdefault("quantization", {})[precision] = settings
        write_json_atomic(bundle / MANIFEST, manifest.to_dict())


def write_variant(
    bundle: Path,
    precision: str,
    write_stage: Callable[[str, Path, Path], StageReport],
    settings: dict[str, Any],
    label: str,
    progress: Progress = STDERR,
) -> dict[str, StageReport]:
    """Write `bundle/<precision>/` stage by stage with `write_stage(stage, fp32_path, out_path)`, then list it
    (under a progress bar named `label`)."""
    manifest = validate_bundle(bundle, "fp32")
    reports: dict[str, StageReport] = {}
    files: dict[str, StageFile] = {}
    with atomic_dir(bundle / precision) as staging:
        stages = list(manifest.precisions["fp32"].items())
        with progress.bar(stages, label, lambda s: s[0]) as bar:
            for stage, entry in bar:
                started = time.perf_counter()
                out = staging / f"{stage}.onnx"
                with quiet_ort_logging():
                    report = write_stage(stage, bundle / entry.path, out)
                report.seconds = round(time.perf_counter() - started, 2)
                reports[stage] = report
                relative = f"{precision}/{stage}.onnx"
                files[stage] = StageFile(relative, sha256_of(out), out.stat().st_size)
        settings = {**settings, "stages": {s: asdict(r) for s, r in reports.items()}}
    add_precision(bundle, precision, files, settings)
    return reports


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet_ort_logging() -> Iterator[None]:
    """Mute onnxruntime.quantization's root-logger warnings ("consider pre-processing") while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def preprocess(source: Path, target: Path) -> str:
    """onnxruntime's `quant_pre_process` (symbolic shapes, basic optimisation, ONNX shapes) where it works.

    Returns what was done: "quant_pre_process", "quant_pre_process (no symbolic shapes)" or "none".
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = source.resolve(), target.resolve()
    for skip_symbolic, label in (
        (False, "quant_pre_process"),
        (True, "quant_pre_process (no symbolic shapes)"),
    ):
        try:
            # onnxruntime's symbolic shape inference writes scratch files into the current directory when it
            # gives up: run it inside the private work folder.
            with working_directory(target.parent):
                quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic)
        except Exception as err:
            LOG.debug("%s: %s failed (%s)", source, label, err)
            continue
        name_nodes(target)
        return label
    shutil.copyfile(source, target)
    name_nodes(target)
    return "none"


def name_nodes(path: Path) -> None:
    """Give every unnamed node a unique name so exclusions can refer to it."""
    model = onnx.load(str(path))
    unnamed = [n for n in model.graph.node if not n.name]
    if not unnamed:
        return
    taken = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    onnx.save(model, str(path))


def op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def quant_type(name: QuantTypeName) -> Any:
    from onnxruntime.quantization import QuantType

    try:
        return getattr(QuantType, name)
    except AttributeError:
        raise BundleError(f"unknown quantisation type {name!r}; use QInt8 or QUInt8") from None


# --------------------------------------------------------------------------------------------- static INT8


# Per-channel weight axis per op type: the output-channel axis, which is what TensorRT's explicit quantisation
# requires (Conv weights [Cout, Cin/g, k...]: axis 0; MatMul weights [K, N]: axis 1, the output columns; Gemm:
# onnxruntime takes 0 with transB=1, else 1). onnxruntime's own defaults are the same; they are written out here
# so a change there cannot move them.
PER_CHANNEL_AXIS = {"Conv": 0, "MatMul": 1}


def quantizer_options(options: Int8Options) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "MatMulConstBOnly": options.matmul_weights_only,
        "QDQOpTypePerChannelSupportToAxis": dict(PER_CHANNEL_AXIS),
        "ActivationSymmetric": options.symmetric_activations,
        "WeightSymmetric": True,
        "DedicatedQDQPair": options.dedicated_qdq,
        "QuantizeBias": options.quantize_bias,
    }
    if not options.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(options.op_types)
    return extra


def prepared_graph(fp32: Path, stage: str, workdir: Path) -> tuple[Path, str]:
    """The pre-processed fp32 graph of `stage` in `workdir` (made once per workdir)."""
    prepared = workdir / f"{stage}.prepared.onnx"
    marker = workdir / f"{stage}.prepared.txt"
    if prepared.is_file() and marker.is_file():
        return prepared, marker.read_text()
    how = preprocess(fp32, prepared)
    marker.write_text(how)
    return prepared, how


def rewrite_for_quantisation(
    model: onnx.ModelProto,
    prepared: Path,
    reasons: dict[str, str],
    ranges: Path,
    options: Int8Options,
    stem: Path,
) -> tuple[Path, dict[str, list[str]], dict[str, str], Path]:
    """Apply the float-exact rewrites of fuse.py to `model` (in place) where `options` ask for them.

    Returns the graph to quantise (`prepared` when nothing changed, else `<stem>.rewritten.onnx`), the merged
    projections, the float nodes with any new first-conv node, and the ranges (with the merged outputs' ranges).
    """
    before = {node.name: node.output[0] for node in model.graph.node}
    attention = fuse_attention(model) if options.fuse_attention else []
    merged = (
        fuse_parallel_matmuls(model, skip=reasons)
        if options.fuse_projections and "MatMul" in options.op_types
        else {}
    )
    first = next((name for name, why in reasons.items() if why == "first-conv"), None)
    framed = frame_first_conv(model, first) if options.frame_first_conv and first is not None else None
    if framed is not None:
        reasons = {**reasons, framed: "first-conv"}
    if not merged and framed is None and not attention:
        return prepared, merged, reasons, ranges
    source = stem.with_name(f"{stem.name}.rewritten.onnx")
    onnx.save(model, str(source))
    if merged:
        ranges = union_ranges(ranges, merged, before, model, stem.with_name(f"{stem.name}.ranges.json"))
    return source, merged, reasons, ranges


def quantize_stage_static(
    stage: str,
    fp32: Path,
    out: Path,
    cache: Any,
    options: Int8Options,
    workdir: Path,
    float_nodes: tuple[str, ...] = (),
) -> StageReport:
    """Static QDQ INT8 of one stage graph; `float_nodes` stay float on top of the exclusions."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    prepared, how = prepared_graph(fp32, stage, workdir)
    model = onnx.load(str(prepared))
    exclusions: Exclusions = resolve_exclusions(model, options.exclude, options.min_width)
    extra = tuple(float_nodes) + tuple(options.float_nodes.get(stage, ()))
    reasons = exclusions.reasons | {
        n: "accuracy-controlled: kept float" for n in extra if n not in exclusions.reasons
    }
    if options.matmul_weights_only:  # onnxruntime's MatMulConstBOnly does nothing in QDQ mode (graph.py)
        for name in category_nodes(model, options.min_width)["activation-matmuls"]:
            reasons.setdefault(name, "matmul_weights_only")
    smoothed: list[str] = []
    if options.smooth_alpha:
        prepared, smoothed = smoothed_graph(prepared, stage, cache, options, workdir, reasons)
        if smoothed:
            model = onnx.load(str(prepared))
    variant = (
        f"-sq{options.smooth_alpha:g}-{hashlib.sha256(' '.join(smoothed).encode()).hexdigest()[:8]}"
        if smoothed
        else ""
    )
    cached_ranges = activation_ranges(prepared, stage, cache, options, workdir, variant)
    effective = Exclusions(reasons).effective(model, options.op_types)
    quantisable = len(quantisable_nodes(model, options.op_types))
    source, merged, reasons, ranges = rewrite_for_quantisation(
        model, prepared, reasons, cached_ranges, options, workdir / out.stem
    )
    del model
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress to stdout
        quantize_static(
            str(source),
            str(out),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(options.op_types),
            per_channel=options.per_channel,
            activation_type=quant_type(options.activation_type),
            weight_type=quant_type(options.weight_type),
            nodes_to_exclude=list(reasons),
            calibrate_method=calibration_method(options.method),
            calibration_cache_path=str(ranges),
            extra_options=quantizer_options(options),
        )
    for scratch in {source, ranges} - {prepared, cached_ranges}:
        scratch.unlink()
    quantized = onnx.load(str(out))
    stripped: list[str] = []
    if options.quantize_outputs and (options.float_inputs_into or merged):
        stripped = strip_output_qdq(quantized, options.float_inputs_into, producers=merged)
    detached = detach_float_reads(quantized)
    if stripped or detached:
        onnx.save(quantized, str(out))
    if quantisable == len(effective):
        shutil.copyfile(fp32, out)  # nothing left to quantise: the float graph, not a re-optimised copy
        return StageReport("fp32", 0, effective, op_counts(out), how)
    return StageReport(
        "int8",
        quantisable - len(effective),
        effective,
        op_counts(out),
        how,
        float_outputs=len(stripped),
        fused=dict(merged),
        smoothed=smoothed,
    )


def smoothed_graph(
    prepared: Path, stage: str, cache: Any, options: Int8Options, workdir: Path, reasons: dict[str, str]
) -> tuple[Path, list[str]]:
    """`prepared` with SmoothQuant scales migrated into the weights of the MatMuls that will be quantised."""
    from edgeser.quantize.smooth import smooth_graph, stage_feeds

    model = onnx.load(str(prepared), load_external_data=False)
    quantised = [n for n in quantisable_nodes(model, options.op_types) if n not in reasons]
    inputs = [i.name for i in model.graph.input]
    target = workdir / f"{stage}.smoothed.onnx"
    smoothed = smooth_graph(
        prepared, target, quantised, stage_feeds(cache, stage, inputs), float(options.smooth_alpha or 0)
    )
    return (target, smoothed) if smoothed else (prepared, [])


def static_stage_writer(
    cache: Any, options: Int8Options, workdir: Path
) -> Callable[[str, Path, Path], StageReport]:
    """A `write_stage` for static QDQ INT8 (per-channel weights, ranges from the calibration cache)."""

    def write(stage: str, fp32: Path, out: Path) -> StageReport:
        if options.stages is not None and stage not in options.stages:
            shutil.copyfile(fp32, out)
            return StageReport(
                "fp32", float_nodes={"*": "whole stage kept in float"}, op_counts=op_counts(out)
            )
        report = quantize_stage_static(stage, fp32, out, cache, options, workdir)
        if options.speed_gate and report.precision == "int8":
            report = keep_if_faster(report, stage, fp32, out, cache, options)
        return report

    return write


def keep_if_faster(
    report: StageReport, stage: str, fp32: Path, out: Path, cache: Any, options: Int8Options
) -> StageReport:
    """Time the written INT8 graph against fp32 on this CPU; where INT8 is slower, `out` becomes the fp32 graph."""
    from edgeser.machine import cpu_info
    from edgeser.quantize.speed import check_speed

    check = check_speed(cache, stage, fp32, out, options.speed_threads)
    report.speed = check.to_dict()
    if check.pays:
        return report
    shutil.copyfile(fp32, out)
    return StageReport(
        "fp32",
        0,
        {"*": check.reason(cpu_info()["cpu_class"])},
        op_counts(out),
        report.preprocess,
        speed=report.speed,
    )


def quantize_int8(
    bundle: Path, options: Int8Options | None = None, precision: str = "int8", progress: Progress = STDERR
) -> dict[str, StageReport]:
    """Static QDQ INT8 of every stage from the bundle's calibration cache; writes `bundle/int8/`."""
    from edgeser.calibrate import read_calibration

    options = options or Int8Options()
    calibration_method(options.method)
    cache = read_calibration(bundle)
    provenance = cache.provenance
    settings = {
        "kind": "static", "format": "QDQ", "method": options.method, "op_types": list(options.op_types),
        "per_channel": options.per_channel, "activation_type": options.activation_type,
        "weight_type": options.weight_type,
        "exclude": list(options.exclude) if options.exclude is not None else "default",
        "min_width": options.min_width,
        "float_inputs_into": list(options.float_inputs_into) if options.quantize_outputs else [],
        "percentile": options.percentile if options.method == "percentile" else None,
        "target": options.target, "symmetric_activations": options.symmetric_activations, "dedicated_qdq": options.dedicated_qdq,
        "quantize_bias": options.quantize_bias, "per_channel_axis": dict(PER_CHANNEL_AXIS),
        "speed_gate": options.speed_gate, "fuse_projections": options.fuse_projections,
        "frame_first_conv": options.frame_first_conv, "fuse_attention": options.fuse_attention,
        "smooth_alpha": options.smooth_alpha,
        "measured_on": measured_on(options.speed_threads) if options.speed_gate else None,
        "calibration": {k: provenance.get(k) for k in ("data_spec", "corpus", "fold", "held_out", "pool", "count",
                                                       "ids_sha", "labels", "buckets_s", "groups", "ids")},
    }  # fmt: skip
    with staging_dir(bundle, "quantize") as tmp:
        return write_variant(
            bundle,
            precision,
            static_stage_writer(cache, options, tmp),
            settings,
            f"int8 ({options.method})",
            progress,
        )


def quantize_int8_tensorrt(
    bundle: Path, options: Int8Options | None = None, progress: Progress = STDERR
) -> dict[str, StageReport]:
    """Static INT8 for TensorRT (`Int8Options.tensorrt()`: signed symmetric activations with zero point 0,
    symmetric per-channel weights on the output-channel axis, constant scales, float biases, dedicated Q/DQ);
    writes `bundle/int8-trt/`. It runs in onnxruntime too, so `edgeser check` measures its accuracy on CPU."""
    return quantize_int8(
        bundle, options or Int8Options.tensorrt(), precision=TENSORRT_PRECISION, progress=progress
    )
