"""TensorRT's explicit-quantisation rules for one QuantizeLinear / DequantizeLinear node.

What TensorRT documents (IQuantizeLayer / IDequantizeLayer, "Explicit Quantization" in the developer guide) and
what its ONNX parser enforces (`QuantDequantLinearHelper`):
- symmetric only: every zero point is 0; a UINT8 zero point (onnxruntime's asymmetric activations) is read as
  INT8 on GPUs, and a non-zero one is refused;
- quantised types INT8, FP8 (INT4/FP4 for weights); no zero point means UINT8 in ONNX but INT8 in TensorRT;
- scales are build-time constants with strictly positive values;
- activations are quantised per tensor; per-channel scales only on weights, along the output-channel axis of the
  consuming op: Conv axis 0 (K of KxCxRxS), ConvTranspose axis 1, MatMul axis 1 of a 2-D [K, N] weight, Gemm axis
  1 (transB=0) or 0 (transB=1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeser.trt.graph import GraphFacts, node_attr

ERROR, WARNING = "error", "warning"
SIGNED = {"INT8", "FP8", "INT4", "FP4"}


def weight_axis(consumer: Any, index: int, rank: int) -> int | None:
    """The per-channel axis TensorRT expects for a weight feeding input `index` of `consumer`; None if unknown."""
    op = consumer.op_type
    if index != 1:
        return None
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "MatMul" and rank == 2:
        return 1
    if op == "Gemm":
        return 0 if node_attr(consumer, "transB", 0) else 1
    return None


def check_qdq(facts: GraphFacts, node: Any, add: Any) -> None:
    op = node.op_type
    is_dq = op == "DequantizeLinear"
    data, scale = node.input[0], node.input[1] if len(node.input) > 1 else ""
    zero = node.input[2] if len(node.input) > 2 else ""
    quantised = data if is_dq else node.output[0]
    qtype = facts.dtypes.get(quantised) or (facts.dtypes.get(zero) if zero else None)
    # --- zero point and quantised type
    if not zero:
        if not is_dq and node_attr(node, "output_dtype") is None:
            add(
                ERROR,
                "zero-point",
                f"{op} without a zero point means UINT8 in ONNX but INT8 in TensorRT: add an "
                "INT8 zero point of 0 so the CPU graph computes what TensorRT will",
                node,
            )
    elif not facts.is_weight(zero):
        add(
            ERROR, "zero-point", f"{op} zero point is computed at run time; TensorRT needs a constant 0", node
        )
    else:
        value = facts.weight_value(zero)
        ztype = facts.dtypes.get(zero)
        nonzero = value is not None and np.any(np.asarray(value, dtype=np.float64) != 0)
        if ztype == "UINT8":
            detail = " with a non-zero zero point" if nonzero else ""
            add(
                ERROR,
                "zero-point",
                f"{op} is UINT8{detail} (asymmetric): TensorRT quantises to signed INT8 with "
                "zero point 0 (UINT8 Q/DQ only on DLA); re-quantise with symmetric INT8 "
                "activations",
                node,
            )
        elif nonzero:
            add(
                ERROR,
                "zero-point",
                f"{op} has a non-zero zero point: TensorRT supports symmetric quantisation only",
                node,
            )
    if qtype is not None and qtype not in SIGNED and qtype != "UINT8":
        add(
            ERROR,
            "dtype",
            f"{op} on {qtype}: TensorRT quantises to INT8 or FP8 (INT4/FP4 weights) only"
            + (" — an INT32 bias DequantizeLinear must stay float for TensorRT" if qtype == "INT32" else ""),
            node,
        )
    # --- scale
    if not scale:
        return
    if not facts.is_constant(scale):
        add(
            ERROR,
            "scale",
            f"{op} scale is computed at run time; TensorRT needs build-time constant scales",
            node,
        )
        return
    values = facts.weight_value(scale)
    if values is not None and np.any(np.asarray(values, dtype=np.float64) <= 0):
        add(
            ERROR,
            "scale",
            f"{op} has non-positive scale(s) ({_sample(values[values <= 0])}); TensorRT needs "
            "strictly positive scales",
            node,
        )
    if values is None or values.size <= 1:
        return
    # --- per-channel: weights only, on the consumer's output-channel axis
    weight = data if facts.is_weight(data) else None
    source = facts.producer.get(data)
    if (
        weight is None
        and is_dq
        and source is not None
        and source.op_type == "QuantizeLinear"
        and facts.is_weight(source.input[0])
    ):
        weight = source.input[0]  # a Q/DQ pair on a float weight (onnxruntime's AddQDQPairToWeight)
    if weight is None:
        add(
            ERROR,
            "per-channel",
            f"{op} has {values.size} scales on an activation: TensorRT quantises activations per tensor",
            node,
        )
        return
    shape = facts.shapes.get(weight) or []
    rank = len(shape)
    axis = int(node_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 and rank else axis
    if rank and 0 <= axis < rank and isinstance(shape[axis], int) and shape[axis] != values.size:
        add(
            ERROR, "per-channel", f"{op} has {values.size} scales for axis {axis} of size {shape[axis]}", node
        )
    consumers = facts.consumers.get(node.output[0], []) if is_dq else []
    if not is_dq:  # Q on a float weight: the DQ after it feeds the consumer
        consumers = [
            c
            for dq, _ in facts.consumers.get(node.output[0], [])
            for c in facts.consumers.get(dq.output[0], [])
        ]
    if qtype == "INT32":
        return  # a quantised bias: reported above
    for consumer, index in consumers:
        expected = weight_axis(consumer, index, rank)
        if expected is None:
            add(
                WARNING,
                "per-channel",
                f"per-channel weights feeding {consumer.op_type} input {index}: TensorRT "
                "documents per-channel weights for Conv, ConvTranspose, MatMul and Gemm; "
                "this one may be dequantised to float at build time",
                node,
            )
        elif axis != expected:
            add(
                ERROR,
                "per-channel",
                f"per-channel weights for {consumer.op_type} quantised along axis {axis}; "
                f"TensorRT needs axis {expected} (the output channels)",
                node,
            )


def _sample(values: Any) -> str:
    flat = np.asarray(values).ravel()
    shown = ", ".join(str(v) for v in flat[:3].tolist())
    return shown + (", ..." if flat.size > 3 else "")
