"""FP16 graphs a strongly typed TensorRT network builds as they are.

TensorRT 11 has no FP16 builder flag: in a strongly typed network every tensor keeps the type the ONNX graph
gives it. So the FP16 variant is fully explicit: FP16 weights and activations, explicit Cast nodes into and out
of the ops kept in FP32 (LayerNorm, Softmax, the reductions and exponentials, the feature front end), graph
inputs and outputs in FP32, and no op whose floating-point inputs mix FP16 and FP32 (which a strongly typed
builder refuses and a weakly typed one resolves by guessing). `precision_conflicts` reads that off the graph;
`convert_fp16` refuses to write a graph that has any.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgeser.errors import BundleError
from edgeser.quantize.graph import resolve_exclusions

if TYPE_CHECKING:
    from edgeser.quantize.variants import StageReport

FP16_OP_BLOCK_LIST = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Log", "Exp", "Erf",
                      "LogSoftmax", "CumSum", "Range")  # fmt: skip
FLOATS = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
          onnx.TensorProto.DOUBLE: "float64"}
# Inputs whose type is independent of the op's data type (so they may differ from the other float inputs).
_FREE_INPUTS = {"Pow": {1}, "Resize": {1, 2}, "ConstantOfShape": {0}, "Cast": {0}, "CastLike": {0, 1},
                "Shape": {0}, "Size": {0}, "LayerNormalization": set()}


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
        kinds = {types[name] for index, name in enumerate(node.input)
                 if name and index not in free and types.get(name) in FLOATS}
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


def fp16_graph(source: Path, exclude: tuple[str, ...] | None = None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The FP16 graph of one fp32 stage graph, and the nodes kept in FP32 by category (see the module docstring)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    patterns = ("frontend", "first-conv") if exclude is None else exclude
    exclusions = resolve_exclusions(model, patterns)
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_OP_BLOCK_LIST))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                         node_block_list=exclusions.names, disable_shape_infer=False)
    conflicts = precision_conflicts(converted)
    if conflicts:
        raise BundleError(f"{source}: the FP16 graph mixes float types at {len(conflicts)} node(s), e.g. "
                          f"{conflicts[0]}; a strongly typed TensorRT network would refuse it")
    return converted, exclusions.reasons


def fp16_settings(exclude: tuple[str, ...] | None) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return {"kind": "fp16", "keep_io_types": True, "strongly_typed": True, "explicit_casts": True,
            "op_block_list": sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_OP_BLOCK_LIST)),
            "exclude": list(exclude) if exclude is not None else ["frontend", "first-conv"],
            "note": "GPU format: on CPU, FP16 runs slower than FP32 (or not at all)"}


def convert_fp16(bundle: Path, exclude: tuple[str, ...] | None = None) -> dict[str, StageReport]:
    """FP16 weights and activations with FP32 inputs/outputs and explicit casts around the ops kept in FP32
    (numerically sensitive ops and the front end): a graph a strongly typed TensorRT network builds as it is
    (see fp16.py). A GPU format: on CPU it is usually slower than FP32. Writes `bundle/fp16/`."""
    from edgeser.quantize.variants import StageReport, op_counts, write_variant

    def write(stage: str, fp32: Path, out: Path) -> StageReport:
        converted, kept = fp16_graph(fp32, exclude)
        onnx.save(converted, str(out))
        return StageReport("fp16", 0, kept, op_counts(out), "none")

    return write_variant(bundle, "fp16", write, fp16_settings(exclude), "fp16")
