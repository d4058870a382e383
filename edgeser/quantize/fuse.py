"""Graph rewrites before quantisation, exact in float: one GEMM for the projections that read one activation
(attention q/k/v), and the waveform's first conv as framing + MatMul (`frame_first_conv`).

The three q/k/v MatMuls of a Transformer layer read one LayerNorm output. Quantised, that output gets one
QuantizeLinear feeding three DequantizeLinear nodes (onnxruntime gives each fused node its own). With signed
symmetric activations (what TensorRT takes) onnxruntime's CPU kernels need the s8 Q/DQ rewritten to u8, and its
rewrite only takes a Q with a single DQ: the three projections then stay DequantizeLinear + fp32 MatMul
(cmgi paper audio encoder, 4.5 s, 2 threads: 72 float MatMuls, 856 ms against 584 ms for the u8 graph). Merged
into one MatMul on the concatenated weights `[K, Nq + Nk + Nv]` followed by a Split, every quantised activation
has one consumer, the kernels fuse for u8 and s8 alike, and the one larger GEMM runs at least as fast as three.
TensorRT builds the same graph (MatMul + Split are plain ONNX). Per-channel weight scales stay per output
column, so the quantised weights are exactly those of the three projections.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_SUFFIX = "fused_proj"


def opset_version(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)


def fuse_parallel_matmuls(model: onnx.ModelProto, skip: Iterable[str] = ()) -> dict[str, list[str]]:
    """Merge MatMuls that read one activation with constant 2-D float weights of the same input width.

    Nodes named in `skip` (kept in float) are left alone. Each group becomes `MatMul(x, concat(W, axis=1))` then
    `Split(axis=-1)` into the original output names, at the first member's place in the graph; the merged node
    keeps the members' name scope (so node groups and reports still place it). Edits `model` in place and
    returns {merged node name: member names}.
    """
    skipped = set(skip)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    producers = {o for n in nodes for o in n.output}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        if node.op_type != "MatMul" or node.name in skipped or node.input[0] in inits:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        if node.input[1] in producers:
            continue
        groups.setdefault(node.input[0], []).append(node)
    uses: dict[str, int] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
            consumers.setdefault(name, []).append(node)
    merged: dict[str, list[str]] = {}
    replaced: dict[str, list[onnx.NodeProto]] = {}
    drop: set[str] = set()
    for source, members in groups.items():
        widths = {inits[m.input[1]].dims[0] for m in members}
        if len(members) < 2 or len(widths) != 1:
            continue
        weights = [numpy_helper.to_array(inits[m.input[1]]) for m in members]
        name = merged_name([m.name for m in members])
        weight_name, fused_out, sizes_name = f"{name}.weight", f"{name}_output_0", f"{name}.split"
        model.graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), weight_name))
        sizes = [int(w.shape[1]) for w in weights]
        matmul = helper.make_node("MatMul", [source, weight_name], [fused_out], name=name)
        outputs = [m.output[0] for m in members]
        new_nodes = [matmul]
        adds = bias_adds(members, consumers, inits)
        if adds is not None:  # one bias Add before the Split: onnxruntime folds it into the integer GEMM
            bias_name, biased = f"{name}.bias", f"{name}_biased_0"
            biases = [numpy_helper.to_array(inits[bias]).reshape(-1) for _, bias in adds]
            model.graph.initializer.append(numpy_helper.from_array(np.concatenate(biases), bias_name))
            new_nodes.append(helper.make_node("Add", [fused_out, bias_name], [biased], name=f"{name}/Add"))
            fused_out, outputs = biased, [add.output[0] for add, _ in adds]
            for add, bias in adds:
                drop.add(add.name)
                uses[bias] -= 1
        if opset_version(model) >= 13:
            model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), sizes_name))
            split = helper.make_node("Split", [fused_out, sizes_name], outputs, name=f"{name}/Split", axis=-1)
        else:
            split = helper.make_node(
                "Split", [fused_out], outputs, name=f"{name}/Split", axis=-1, split=sizes
            )
        replaced[members[0].name] = [*new_nodes, split]
        drop |= {m.name for m in members[1:]}
        for member in members:
            uses[member.input[1]] -= 1
        merged[name] = [m.name for m in members]
    if not merged:
        return merged
    rebuilt: list[onnx.NodeProto] = []
    for node in nodes:
        if node.name in replaced:
            rebuilt += replaced[node.name]
        elif node.name not in drop:
            rebuilt.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    unused = [i for i in model.graph.initializer if uses.get(i.name, 1) == 0]
    for init in unused:
        model.graph.initializer.remove(init)
    return merged


def bias_adds(
    members: list[onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
) -> list[tuple[onnx.NodeProto, str]] | None:
    """Each member's only consumer when every one is an Add of a constant bias of its width: (Add, bias name)."""
    found = []
    for member in members:
        after = consumers.get(member.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            return None
        add = after[0]
        bias = next((i for i in add.input if i != member.output[0]), None)
        width = inits[member.input[1]].dims[1]
        if (
            bias not in inits
            or int(np.prod(inits[bias].dims)) != width
            or inits[bias].data_type != onnx.TensorProto.FLOAT
        ):
            return None
        found.append((add, bias))
    return found


def merged_name(members: list[str]) -> str:
    """`/a/b/q_proj/MatMul` + `/a/b/k_proj/MatMul` -> `/a/b/fused_proj/MatMul` (the members' common scope)."""
    parts = [m.split("/") for m in members]
    common: list[str] = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    leaf = "+".join(p[len(common)] if len(p) > len(common) else p[-1] for p in parts)
    return "/".join([*common, f"{FUSED_SUFFIX}[{leaf}]", "MatMul"])


def union_ranges(
    ranges_path: Path,
    merged: dict[str, list[str]],
    before: dict[str, str],
    fused: onnx.ModelProto,
    target: Path,
) -> Path:
    """The cached activation ranges plus, for each merged MatMul's output, the union of its members' output
    ranges (`before`: node name -> output before merging); written to `target`."""
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data

    ranges = load_tensors_data(ranges_path)
    after = {n.name: n.output[0] for n in fused.graph.node}
    for name, members in merged.items():
        known = [ranges.data[before[m]] for m in members if before.get(m) in ranges.data]
        if known:
            low = min(float(np.min(r.range_value[0])) for r in known)
            high = max(float(np.max(r.range_value[1])) for r in known)
            ranges.data[after[name]] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    save_tensors_data(ranges, target)
    return target


def frame_first_conv(model: onnx.ModelProto, conv_name: str) -> str | None:
    """Rewrite the feature encoder's first conv (1 input channel, stride s, kernel r x s, no padding) and the
    Transpose to `[B, T, C]` after it as framing + one Gemm; returns the Gemm's name, None when the graph has
    another shape.

    onnxruntime runs that conv (HuBERT/wav2vec2: 512 x 10 taps, stride 5, on the raw waveform) at a fraction of its
    GEMM speed and then transposes 512 x T values: cmgi paper, 4.5 s, 2 threads, 15 + 19 ms of a 1340 ms INT8
    encoder for 74 MMAC of work. The waveform cut into blocks of s samples gives every frame as r consecutive blocks
    (a Reshape, r Slices and a Concat); `frames [B * T, k] @ W^T [k, C] + b` (one Gemm, bias included) reshaped
    to `[B, T, C]` is the transposed conv output. The Gemm stays float (it is the `first-conv` category).
    """
    info_nodes = {n.name: n for n in model.graph.node}
    conv = info_nodes.get(conv_name)
    inits = {i.name: i for i in model.graph.initializer}
    if conv is None or conv.op_type != "Conv" or conv.input[1] not in inits:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    weight = numpy_helper.to_array(inits[conv.input[1]])
    kernel, stride = weight.shape[-1], (attrs.get("strides") or [1])[0]
    if (
        weight.ndim != 3
        or weight.shape[1] != 1
        or attrs.get("group", 1) != 1
        or any(attrs.get("pads", [0]))
        or any(d != 1 for d in attrs.get("dilations", [1]))
        or kernel % stride
        or opset_version(model) < 13
    ):
        return None
    after = [n for n in model.graph.node if conv.output[0] in n.input]
    if (
        len(after) != 1
        or after[0].op_type != "Transpose"
        or list(helper.get_attribute_value(after[0].attribute[0])) != [0, 2, 1]
    ):
        return None
    transpose, blocks_per_frame = after[0], kernel // stride
    base = conv_name.rsplit("/", 1)[0] + "/framed"

    def const(name: str, value: np.ndarray) -> str:
        model.graph.initializer.append(numpy_helper.from_array(value, f"{base}/{name}"))
        return f"{base}/{name}"

    def node(
        op: str, inputs: list[str], name: str, **kwargs: Any
    ) -> str:  # kwargs: attributes, as make_node's
        out = f"{base}/{name}_output_0"
        new.append(helper.make_node(op, inputs, [out], name=f"{base}/{name}", **kwargs))
        return out

    new: list[onnx.NodeProto] = []
    one = const("one", np.array([1], np.int64))
    wave = node("Squeeze", [conv.input[0], one], "Squeeze")  # [B, L]
    length = node("Gather", [node("Shape", [wave], "Shape"), const("axis1", np.array(1, np.int64))], "Length")
    frames = node(
        "Add",
        [
            node(
                "Div",
                [
                    node("Sub", [length, const("kernel", np.array(kernel, np.int64))], "Sub"),
                    const("stride", np.array(stride, np.int64)),
                ],
                "Div",
            ),
            const("one_s", np.array(1, np.int64)),
        ],
        "Frames",
    )  # T = (L - k) // s + 1
    used = node(
        "Mul",
        [
            node("Add", [frames, const("extra", np.array(blocks_per_frame - 1, np.int64))], "Blocks"),
            const("stride_m", np.array(stride, np.int64)),
        ],
        "Used",
    )
    axes = const("axes", np.array([1], np.int64))
    zero = const("zero", np.array([0], np.int64))
    cut = node(
        "Slice",
        [wave, zero, node("Unsqueeze", [used, const("axes0", np.array([0], np.int64))], "UsedEnd"), axes],
        "Cut",
    )
    blocks = node("Reshape", [cut, const("block_shape", np.array([0, -1, stride], np.int64))], "Reshape")
    parts = []
    for j in range(blocks_per_frame):
        end = node(
            "Unsqueeze",
            [
                node("Add", [frames, const(f"shift{j}", np.array(j, np.int64))], f"End{j}"),
                const(f"axes_end{j}", np.array([0], np.int64)),
            ],
            f"EndU{j}",
        )
        parts.append(
            node("Slice", [blocks, const(f"start{j}", np.array([j], np.int64)), end, axes], f"Slice{j}")
        )
    framed = node("Concat", parts, "Concat", axis=2)  # [B, T, k]
    rows = node("Reshape", [framed, const("rows", np.array([-1, kernel], np.int64))], "Rows")  # [B * T, k]
    gemm_inputs = [rows, const("weight", weight.reshape(weight.shape[0], kernel).T.copy())]
    if len(conv.input) > 2 and conv.input[2]:
        gemm_inputs.append(conv.input[2])  # the bias in the GEMM: one pass over the [B * T, C] output
    projected = node("Gemm", gemm_inputs, "Gemm")
    batch = node(
        "Gather", [node("Shape", [wave], "BatchShape"), const("axis0", np.array([0], np.int64))], "Batch"
    )
    target = node(
        "Concat",
        [
            batch,
            node("Unsqueeze", [frames, const("axes_t", np.array([0], np.int64))], "FramesU"),
            const("channels", np.array([weight.shape[0]], np.int64)),
        ],
        "Target",
        axis=0,
    )
    new.append(helper.make_node("Reshape", [projected, target], [transpose.output[0]], name=f"{base}/Unrows"))
    matmul_name = f"{base}/Gemm"
    rebuilt: list[onnx.NodeProto] = []
    for existing in model.graph.node:
        if existing.name == conv.name:
            rebuilt += new
        elif existing.name != transpose.name:
            rebuilt.append(existing)
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    if not any(conv.input[1] in n.input for n in model.graph.node):
        model.graph.initializer.remove(inits[conv.input[1]])
    return matmul_name
