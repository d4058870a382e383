"""Write quantised bundle variants: static INT8 (QDQ), dynamic INT8 and FP16, each a folder listed in bundle.json.

Every variant is written into a temporary sibling folder and renamed into place when all stages are done; only
then is the manifest updated (one read-modify-write, under a lock, written atomically). A failed quantisation
therefore never leaves a half variant listed.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import onnx

from edgeser.bundle import MANIFEST, StageFile, read_manifest, validate_bundle
from edgeser.errors import BundleError
from edgeser.files import atomic_dir, sha256_of, staging_dir, working_directory, write_json_atomic
from edgeser.quantize.graph import (
    DEFAULT_OP_TYPES,
    DYNAMIC_OP_TYPES,
    NARROW_WIDTH,
    Exclusions,
    quantisable_nodes,
    resolve_exclusions,
    strip_output_qdq,
)

LOG = logging.getLogger(__name__)
METHODS = ("minmax", "percentile", "entropy")
FP16_OP_BLOCK_LIST = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Log", "Exp", "Erf",
                      "LogSoftmax", "CumSum", "Range")  # fmt: skip
# Items per collect_data call (one shape per call). Histogram calibrators hold every calibrated tensor of the
# items of a call: HuBERT-large peaks near 10 GB of RAM at 8 items, so they get 2.
CALIBRATION_CHUNK = {"minmax": 8, "percentile": 2, "entropy": 2}


@dataclass(frozen=True)
class Int8Options:
    """Settings of static INT8 quantisation (defaults follow DESIGN "Known pitfalls")."""

    # percentile (99.999), on the trained stfnet fold 0, every width quantised (EMO-DB speaker 03, 49 clips):
    # logit RMSE vs fp32 0.040 and 1 label flip, where minmax gave 0.042 and 2 flips, entropy 0.104 and 1;
    # HuBERT-large feature cosine 0.9988 against 0.9986 for minmax. Calibration (histograms) is slower.
    method: str = "percentile"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude: tuple[str, ...] | None = None  # None: the default float categories; else exactly these patterns
    min_width: int = NARROW_WIDTH  # GEMMs with fewer input features or output channels stay float (0: none)
    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    percentile: float = 99.999
    matmul_weights_only: bool = False  # True: leave activation x activation MatMuls (attention) in float
    quantize_outputs: bool = True  # False: Q/DQ only on node inputs (outputs stay float until the next consumer)
    # Float nodes whose inputs must arrive unquantised: the Q/DQ onnxruntime puts on a quantised MatMul's output
    # is removed where that output only feeds these (through a bias Add at most). See graph.strip_output_qdq.
    # Measured: all-MiniLM-L6 token-feature cosine 0.89 -> 0.97 (residual) -> 0.973 (+ GELU); HuBERT-large
    # feature cosine 0.9988 -> 0.9990, same latency (914 vs 928 ms on a 4.5 s clip).
    float_inputs_into: tuple[str, ...] = ("residual-add", "gelu")
    stages: tuple[str, ...] | None = None  # None: every stage; others are copied from fp32
    float_nodes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra per-stage float nodes

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


def add_precision(bundle: Path, precision: str, files: dict[str, StageFile], settings: dict[str, Any]) -> None:
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
) -> dict[str, StageReport]:
    """Write `bundle/<precision>/` stage by stage with `write_stage(stage, fp32_path, out_path)`, then list it."""
    manifest = validate_bundle(bundle, "fp32")
    reports: dict[str, StageReport] = {}
    files: dict[str, StageFile] = {}
    with atomic_dir(bundle / precision) as staging:
        stages = list(manifest.precisions["fp32"].items())
        with click.progressbar(stages, label=label, file=sys.stderr,
                               item_show_func=lambda s: s[0] if s else None) as bar:
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
    for skip_symbolic, label in ((False, "quant_pre_process"), (True, "quant_pre_process (no symbolic shapes)")):
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


def quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    try:
        return getattr(QuantType, name)
    except AttributeError:
        raise BundleError(f"unknown quantisation type {name!r}; use QInt8 or QUInt8") from None


def calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}
    if name not in table:
        raise BundleError(f"unknown calibration method {name!r}; choose {', '.join(METHODS)}")
    return table[name]


# --------------------------------------------------------------------------------------------- static INT8


def robust_collector(calibrator: Any) -> None:
    """Give a histogram calibrator a collector that survives near-constant tensors.

    onnxruntime's `HistogramCollector` starts each absolute-value histogram at `[min |x|, max |x|]` in float32
    and fails ("Too many bins for data range") when that span is below 2048 float32 steps, e.g. the uniform
    attention probabilities of a freshly initialised model. Such first histograms start at 0 here instead;
    everything else is onnxruntime's own code.
    """
    import numpy as np
    from onnxruntime.quantization.calibrate import HistogramCalibrater, HistogramCollector

    if not isinstance(calibrator, HistogramCalibrater) or calibrator.collector is not None:
        return

    class RobustHistogramCollector(HistogramCollector):  # type: ignore[misc]
        def collect_absolute_value(self, name_to_arr: dict[str, Any]) -> None:
            rest = {}
            for tensor, data in name_to_arr.items():
                values = np.asarray(data).ravel()
                magnitudes = np.abs(values)
                if tensor in self.histogram_dict or values.size == 0:
                    rest[tensor] = data
                    continue
                low, high = float(np.nanmin(magnitudes)), float(np.nanmax(magnitudes))
                if high - low > 4 * self.num_bins * float(np.spacing(np.float32(high))):
                    rest[tensor] = data
                    continue
                hist, edges = np.histogram(magnitudes, bins=self.num_bins, range=(0.0, high if high > 0 else 1.0))
                self.histogram_dict[tensor] = (hist, edges.astype(magnitudes.dtype), np.nanmin(values),
                                               np.nanmax(values))
            if rest:
                super().collect_absolute_value(rest)

    calibrator.collector = RobustHistogramCollector(
        method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
        scenario=calibrator.scenario)


def activation_ranges(prepared: Path, stage: str, cache: Any, options: Int8Options, workdir: Path) -> Path:
    """Activation ranges of `stage` from the cached calibration inputs, computed once per method and cached."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    from edgeser.calibrate.reader import StageDataReader

    target = cache.ranges_path(stage, options.method, options.signature())
    if target.is_file():
        return target
    extra = {"percentile": options.percentile} if options.method == "percentile" else {}
    calibrator = create_calibrator(
        prepared, list(options.op_types), augmented_model_path=str(workdir / f"{stage}.augmented.onnx"),
        calibrate_method=calibration_method(options.method), extra_options=extra,
    )
    robust_collector(calibrator)
    inputs = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress to stdout
        for _, feeds in cache.stage_feeds(stage, inputs):
            chunk = CALIBRATION_CHUNK[options.method]
            for start in range(0, len(feeds), chunk):
                calibrator.collect_data(StageDataReader(feeds[start : start + chunk]))
        ranges = calibrator.compute_data()
    del calibrator
    save_tensors_data(ranges, target)
    return target


def quantizer_options(options: Int8Options) -> dict[str, Any]:
    extra: dict[str, Any] = {"MatMulConstBOnly": options.matmul_weights_only}
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


def quantize_stage_static(stage: str, fp32: Path, out: Path, cache: Any, options: Int8Options, workdir: Path,
                          float_nodes: tuple[str, ...] = ()) -> StageReport:
    """Static QDQ INT8 of one stage graph; `float_nodes` stay float on top of the exclusions."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    prepared, how = prepared_graph(fp32, stage, workdir)
    model = onnx.load(str(prepared))
    exclusions: Exclusions = resolve_exclusions(model, options.exclude, options.min_width)
    extra = tuple(float_nodes) + tuple(options.float_nodes.get(stage, ()))
    reasons = exclusions.reasons | {n: "accuracy-controlled: kept float" for n in extra if n not in exclusions.reasons}
    ranges = activation_ranges(prepared, stage, cache, options, workdir)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress to stdout
        quantize_static(
            str(prepared), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
            activation_type=quant_type(options.activation_type), weight_type=quant_type(options.weight_type),
            nodes_to_exclude=list(reasons), calibrate_method=calibration_method(options.method),
            calibration_cache_path=str(ranges), extra_options=quantizer_options(options),
        )
    stripped: list[str] = []
    if options.float_inputs_into and options.quantize_outputs:
        quantized = onnx.load(str(out))
        stripped = strip_output_qdq(quantized, options.float_inputs_into)
        if stripped:
            onnx.save(quantized, str(out))
    effective = Exclusions(reasons).effective(model, options.op_types)
    quantisable = len(quantisable_nodes(model, options.op_types))
    if quantisable == len(effective):
        shutil.copyfile(fp32, out)  # nothing left to quantise: the float graph, not a re-optimised copy
        return StageReport("fp32", 0, effective, op_counts(out), how)
    return StageReport("int8", quantisable - len(effective), effective, op_counts(out), how,
                       float_outputs=len(stripped))


def static_stage_writer(cache: Any, options: Int8Options, workdir: Path) -> Callable[[str, Path, Path], StageReport]:
    """A `write_stage` for static QDQ INT8 (per-channel weights, ranges from the calibration cache)."""

    def write(stage: str, fp32: Path, out: Path) -> StageReport:
        if options.stages is not None and stage not in options.stages:
            shutil.copyfile(fp32, out)
            return StageReport("fp32", float_nodes={"*": "whole stage kept in float"}, op_counts=op_counts(out))
        return quantize_stage_static(stage, fp32, out, cache, options, workdir)

    return write


def quantize_int8(bundle: Path, options: Int8Options | None = None, precision: str = "int8"
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
        "calibration": {k: provenance.get(k) for k in ("data_spec", "corpus", "fold", "held_out", "pool", "count",
                                                       "ids_sha", "labels", "buckets_s", "groups", "ids")},
    }  # fmt: skip
    with staging_dir(bundle, "quantize") as tmp:
        return write_variant(bundle, precision, static_stage_writer(cache, options, tmp), settings,
                             f"int8 ({options.method})")


# --------------------------------------------------------------------------------------------- dynamic INT8


def quantize_int8_dynamic(bundle: Path, op_types: tuple[str, ...] = DYNAMIC_OP_TYPES,
                          exclude: tuple[str, ...] | None = None, per_channel: bool = True,
                          min_width: int = NARROW_WIDTH) -> dict[str, StageReport]:
    """Dynamic INT8 (weights int8, activations quantised at run time), MatMul only by default; writes
    `bundle/int8-dynamic/`. The front end stays float (a ConvInteger/MatMulInteger there wrecks accuracy)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with staging_dir(bundle, "quantize") as tmp:
        def write(stage: str, fp32: Path, out: Path) -> StageReport:
            prepared = tmp / f"{stage}.prepared.onnx"
            how = preprocess(fp32, prepared)
            model = onnx.load(str(prepared))
            exclusions = resolve_exclusions(model, exclude, min_width)
            quantize_dynamic(str(prepared), str(out), op_types_to_quantize=list(op_types), per_channel=per_channel,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclusions.names)
            effective = exclusions.effective(model, op_types)
            quantisable = len(quantisable_nodes(model, op_types))
            if quantisable == len(effective):
                shutil.copyfile(fp32, out)  # nothing left to quantise: the float graph, as for static INT8
                return StageReport("fp32", 0, effective, op_counts(out), how)
            return StageReport("int8-dynamic", quantisable - len(effective), effective, op_counts(out), how)

        settings = {"kind": "dynamic", "op_types": list(op_types), "per_channel": per_channel,
                    "weight_type": "QInt8", "exclude": list(exclude) if exclude is not None else "default",
                    "min_width": min_width}
        return write_variant(bundle, "int8-dynamic", write, settings, "int8-dynamic")


# --------------------------------------------------------------------------------------------- FP16


def convert_fp16(bundle: Path, exclude: tuple[str, ...] | None = None) -> dict[str, StageReport]:
    """FP16 weights and activations with FP32 inputs/outputs; numerically sensitive ops and the front end stay
    FP32. A GPU format: on CPU it is usually slower than FP32. Writes `bundle/fp16/`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_OP_BLOCK_LIST))

    def write(stage: str, fp32: Path, out: Path) -> StageReport:
        model = onnx.load(str(fp32))
        patterns = ("frontend", "first-conv") if exclude is None else exclude
        exclusions = resolve_exclusions(model, patterns)
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                             node_block_list=exclusions.names, disable_shape_infer=False)
        onnx.save(converted, str(out))
        return StageReport("fp16", 0, exclusions.reasons, op_counts(out), "none")

    settings = {"kind": "fp16", "keep_io_types": True, "op_block_list": blocked,
                "exclude": list(exclude) if exclude is not None else ["frontend", "first-conv"],
                "note": "GPU format: on CPU, FP16 runs slower than FP32 (or not at all)"}
    return write_variant(bundle, "fp16", write, settings, "fp16")
