"""FP16 graphs a strongly typed TensorRT network builds as they are.

TensorRT 11 has no FP16 builder flag: in a strongly typed network every tensor keeps the type the ONNX graph
gives it. So the FP16 variant is fully explicit: FP16 weights and activations, explicit Cast nodes into and out
of the ops kept in FP32 (LayerNorm, Softmax, the reductions and exponentials, the feature front end), graph
inputs and outputs in FP32, and no op whose floating-point inputs mix FP16 and FP32 (which a strongly typed
builder refuses and a weakly typed one resolves by guessing). `precision_conflicts` reads that off the graph;
`convert_fp16` refuses to write a graph that has any.

The same conversion gives the INT8 graph for TensorRT its FP16 remainder (`convert_int8_fp16`, variant
`int8-trt-fp16`, NVIDIA's ModelOpt recipe with `high_precision_dtype=fp16`): the `int8-trt` Q/DQ graph with every
float op outside the ops kept in FP32 in FP16, and the Q/DQ scales in FP16 so QuantizeLinear reads and
DequantizeLinear writes FP16 directly (no Cast between a DequantizeLinear and its GEMM, which would keep TensorRT
from fusing the pair into an INT8 kernel). FP16 scales need opset 19, so the graph's opset is raised to 19 (no op
it uses changes meaning between 18 and 19 except Q/DQ gaining FP16 inputs; Cast's `saturate` concerns FP8 only).
Kept in FP32 (with explicit casts), and why: LayerNormalization, Softmax, ReduceMean, Pow, Sqrt, Log, Exp, Erf,
LogSoftmax (sums of squares, exponentials and normalisers overflow or lose their small terms in FP16: 65504 is
FP16's largest value), CumSum and Range (index arithmetic), and the waveform front end and its first conv
(raw samples and their framing, as in the fp16 variant).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeser.errors import BundleError
from edgeser.progress import STDERR, Progress
from edgeser.quantize.graph import resolve_exclusions

if TYPE_CHECKING:
    from edgeser.quantize.variants import StageReport

FP16_OP_BLOCK_LIST = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Log", "Exp", "Erf",
                      "LogSoftmax", "CumSum", "Range")  # fmt: skip
FLOATS: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}
# Inputs whose type is independent of the op's data type (so they may differ from the other float inputs).
_FREE_INPUTS = {
    "Pow": {1},
    "Resize": {1, 2},
    "ConstantOfShape": {0},
    "Cast": {0},
    "CastLike": {0, 1},
    "Shape": {0},
    "Size": {0},
    "LayerNormalization": set(),
}


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph declares or ONNX shape inference derives."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    types = {i.name: i.data_type for i in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def precision_conflicts(model: onnx.ModelProto) -> list[str]:
    """Nodes whose floating-point inputs are of different float types (`name (op): input types`)."""
    types = tensor_types(model)
    conflicts = []
    for node in model.graph.node:
        free = _FREE_INPUTS.get(node.op_type, set())
        kinds = {
            types[name]
            for index, name in enumerate(node.input)
            if name and index not in free and types.get(name) in FLOATS
        }
        if len(kinds) > 1:
            conflicts.append(f"{node.name} ({node.op_type}): {', '.join(sorted(FLOATS[k] for k in kinds))}")
    return conflicts


def float_ops_by_type(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """How many nodes compute in each float type, by op type (from their first float input)."""
    types = tensor_types(model)
    counts: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        kind = next((types[n] for n in node.input if n and types.get(n) in FLOATS), None)
        if kind is not None and node.op_type != "Cast":
            counts.setdefault(FLOATS[kind], {}).setdefault(node.op_type, 0)
            counts[FLOATS[kind]][node.op_type] += 1
    return {k: dict(sorted(v.items())) for k, v in counts.items()}


def fp16_graph(
    source: Path, exclude: tuple[str, ...] | None = None, model: onnx.ModelProto | None = None
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The FP16 graph of one fp32 stage graph (or of `model`, read from `source`), and the nodes kept in FP32 by
    category (see the module docstring)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source)) if model is None else model
    patterns = ("frontend", "first-conv") if exclude is None else exclude
    exclusions = resolve_exclusions(model, patterns)
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_OP_BLOCK_LIST))
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=blocked,
        node_block_list=exclusions.names,
        disable_shape_infer=False,
    )
    conflicts = precision_conflicts(converted)
    if conflicts:
        raise BundleError(
            f"{source}: the FP16 graph mixes float types at {len(conflicts)} node(s), e.g. "
            f"{conflicts[0]}; a strongly typed TensorRT network would refuse it"
        )
    return converted, exclusions.reasons


def fp16_settings(exclude: tuple[str, ...] | None) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return {
        "kind": "fp16",
        "keep_io_types": True,
        "strongly_typed": True,
        "explicit_casts": True,
        "op_block_list": sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_OP_BLOCK_LIST)),
        "exclude": list(exclude) if exclude is not None else ["frontend", "first-conv"],
        "note": "GPU format: on CPU, FP16 runs slower than FP32 (or not at all)",
    }


def convert_fp16(
    bundle: Path, exclude: tuple[str, ...] | None = None, progress: Progress = STDERR
) -> dict[str, StageReport]:
    """FP16 weights and activations with FP32 inputs/outputs and explicit casts around the ops kept in FP32
    (numerically sensitive ops and the front end): a graph a strongly typed TensorRT network builds as it is
    (see fp16.py). A GPU format: on CPU it is usually slower than FP32. Writes `bundle/fp16/`."""
    from edgeser.quantize.variants import StageReport, op_counts, write_variant

    def write(stage: str, fp32: Path, out: Path) -> StageReport:
        converted, kept = fp16_graph(fp32, exclude)
        onnx.save(converted, str(out))
        return StageReport("fp16", 0, kept, op_counts(out), "none")

    return write_variant(bundle, "fp16", write, fp16_settings(exclude), "fp16", progress)


QDQ_FP16_OPSET = 19  # the first opset whose QuantizeLinear / DequantizeLinear take FP16 inputs and scales
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal FP16 (6.1e-5): smaller scales lose bits


def int8_fp16_graph(source: Path) -> tuple[onnx.ModelProto, dict[str, str], dict[str, int]]:
    """The `int8-trt` graph at `source` with an FP16 remainder (see the module docstring), the nodes kept in FP32,
    and Q/DQ facts: how many Q/DQ nodes, how many run in FP16, how many scales are below FP16's normal range."""
    model = onnx.load(str(source))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < QDQ_FP16_OPSET:
            opset.version = QDQ_FP16_OPSET
    converted, kept = fp16_graph(source, model=model)
    types = tensor_types(converted)
    qdq = [n for n in converted.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    in_fp16 = [n for n in qdq if types.get(n.input[1]) == onnx.TensorProto.FLOAT16]
    initializers = {i.name: i for i in converted.graph.initializer}
    subnormal = 0
    for node in in_fp16:
        scale = initializers.get(node.input[1])
        if scale is not None:
            values = numpy_helper.to_array(scale).astype(np.float32)
            subnormal += int(np.any(values < FP16_TINY))
    return converted, kept, {"qdq": len(qdq), "qdq_fp16": len(in_fp16), "subnormal_scales": subnormal}


def convert_int8_fp16(bundle: Path, progress: Progress = STDERR) -> dict[str, StageReport]:
    """`int8-trt` with its float remainder in FP16 (see the module docstring); writes `bundle/int8-trt-fp16/`.
    Needs the bundle's `int8-trt` variant (`edgeser quantize BUNDLE --int8-trt`)."""
    from edgeser.bundle import validate_bundle
    from edgeser.quantize.variants import (
        TENSORRT_FP16_PRECISION,
        TENSORRT_PRECISION,
        StageReport,
        op_counts,
        write_variant,
    )

    manifest = validate_bundle(bundle, TENSORRT_PRECISION)
    sources = {stage: bundle / entry.path for stage, entry in manifest.precisions[TENSORRT_PRECISION].items()}
    source_settings = manifest.extra.get("quantization", {}).get(TENSORRT_PRECISION, {})

    def write(stage: str, _fp32: Path, out: Path) -> StageReport:
        converted, kept, facts = int8_fp16_graph(sources[stage])
        onnx.save(converted, str(out))
        quantised = source_settings.get("stages", {}).get(stage, {}).get("quantized_nodes", 0)
        return StageReport(
            "int8+fp16" if facts["qdq"] else "fp16", quantised, kept, op_counts(out), "none", qdq=facts
        )

    settings = {
        **fp16_settings(None),
        "kind": "int8+fp16",
        "from": TENSORRT_PRECISION,
        "opset": QDQ_FP16_OPSET,
        "int8": {k: source_settings.get(k) for k in ("method", "percentile", "smooth_alpha", "calibration")},
        "note": "GPU format (TensorRT, strongly typed): on CPU the FP16 ops run slower than FP32",
    }
    return write_variant(bundle, TENSORRT_FP16_PRECISION, write, settings, "int8+fp16 (TensorRT)", progress)
