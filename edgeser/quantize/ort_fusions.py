"""Attention as onnxruntime's CPU contrib op `com.microsoft.MultiHeadAttention`, for the CPU `int8` graph only:
TensorRT and other runtimes do not know the op, so `Int8Options.tensorrt()` and the float variants never get it.

`fuse_attention` runs before quantisation: each multi-head attention core in the layout the exporter writes for
HF eager attention, `Softmax(scale * Q K^T + mask) V` with its Reshape/Transpose plumbing, becomes one
`MultiHeadAttention` that reads the projections' outputs and adds their biases itself. The quantiser then leaves
attention in float (no INT8 scores or probabilities; the INT8 q/k/v and output projections around it are as
before). Measured on cmgi paper's audio encoder (4.5 s of TESS speech, 2 threads, onnxruntime 1.32, AMD EPYC
AVX2), onnxruntime's profiler: the quantised core (two QLinearMatMuls, five QuantizeLinear, four Transposes, the
scale Mul, mask Add, Softmax, a DequantizeLinear and the q/k/v bias Add) took about 67 ms, `MultiHeadAttention`
52 ms. End to end, 30 interleaved rounds against the unfused int8 graph (`benchmarks/stage_ab.py`, results in
benchmarks/results/stage_ab-cmgi-paper-attention-avx2): 654 -> 633 ms p50, per-round ratio median 0.962; feature
cosine against fp32 unchanged (mean 0.99866, min 0.99824 over 6 clips). With spinning workers the unfused graph's
many small ops cost less and the gain shrinks to a per-round median of 0.995. The result equals the unfused graph
up to float summation order (tests/test_ort_fusions.py).

Not done, measured: `SkipLayerNormalization` for residual Add + LayerNorm (onnxruntime.transformers' fusion)
made the same encoder slower (0.75 ms per op against 0.3 ms for the Adds and LayerNorm it replaced, 49 of them),
and onnxruntime's CPU kernel refuses packed QKV (`(B, L, N, 3, H) not implemented for CPU`), so the projections'
Split stays.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeser.quantize.fuse import opset_version
from edgeser.quantize.graph import GraphInfo

MS_DOMAIN = "com.microsoft"


class _Graph(GraphInfo):
    """The quantiser's node lookups of a graph, plus its initializers and outputs."""

    initializers: dict[str, onnx.TensorProto]
    outputs: set[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.initializers = {i.name: i for i in self.model.graph.initializer}
        self.outputs = {o.name for o in self.model.graph.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (an initializer, a Constant, or an Identity of one: the exporter shares
        equal initializers that way), else None."""
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":
            return self.const(node.input[0])
        if node is not None and node.op_type == "Constant" and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        init = self.initializers.get(name)
        return numpy_helper.to_array(init) if init is not None else None

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        after = self.consumers.get(tensor, [])
        return after[0] if len(after) == 1 and tensor not in self.outputs else None

    def parent(self, node: onnx.NodeProto, index: int = 0) -> onnx.NodeProto | None:
        return self.producer.get(node.input[index]) if len(node.input) > index else None


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)


def _heads(graph: _Graph, reshape: onnx.NodeProto) -> tuple[int, int] | None:
    """(num_heads, head_size) of a `Reshape(x, [B, T, N, H])`: from a constant shape or a Concat whose last two
    inputs are constants. N may be -1 (HF's `view(B, T, -1, H)`): then it is the projection width over H."""
    shape = graph.const(reshape.input[1])
    if shape is None:
        concat = graph.parent(reshape, 1)
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            return None
        parts = [graph.const(name) for name in concat.input[2:]]
        if any(p is None or p.size != 1 for p in parts):
            return None
        shape = np.array([0, 0, *(int(np.asarray(p).reshape(-1)[0]) for p in parts if p is not None)])
    if shape.size != 4 or shape[3] <= 0:
        return None
    heads, size = int(shape[2]), int(shape[3])
    if heads == -1:
        width = _width(graph, reshape.input[0])
        heads = width // size if width and width % size == 0 else 0
    return (heads, size) if heads > 0 else None


def _width(graph: _Graph, tensor: str) -> int | None:
    """The last dimension of a projection's output: `x @ W` or `x @ W + b` with constant W."""
    node = graph.producer.get(tensor)
    if node is not None and node.op_type == "Add":
        node = next(
            (
                p
                for p in (graph.producer.get(i) for i in node.input)
                if p is not None and p.op_type == "MatMul"
            ),
            None,
        )
    if node is None or node.op_type != "MatMul":
        return None
    weight = graph.initializers.get(node.input[1])
    return int(weight.dims[-1]) if weight is not None and len(weight.dims) == 2 else None


def _split_heads(
    graph: _Graph, tensor: str, perm: list[int]
) -> tuple[onnx.NodeProto, onnx.NodeProto, tuple[int, int]] | None:
    """The Transpose(perm) of a Reshape to [B, T, N, H] producing `tensor`, each read only there."""
    transpose = graph.producer.get(tensor)
    if _perm(transpose) != perm or transpose is None or graph.only_consumer(transpose.output[0]) is None:
        return None
    reshape = graph.parent(transpose)
    if reshape is None or reshape.op_type != "Reshape" or graph.only_consumer(reshape.output[0]) is None:
        return None
    heads = _heads(graph, reshape)
    return (transpose, reshape, heads) if heads else None


def _scalar(graph: _Graph, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(the non-constant input, the constant) of a binary node with one scalar constant input."""
    for index in (0, 1):
        value = graph.const(node.input[index])
        if value is not None and value.size == 1:
            return node.input[1 - index], float(np.asarray(value).reshape(-1)[0])
    return None


def _leads_to_matmul(graph: _Graph, node: onnx.NodeProto) -> bool:
    """`node` is the scores MatMul, or a scaling of it by a scalar constant (the mask side is neither)."""
    if node.op_type in ("Mul", "Div"):
        found = _scalar(graph, node)
        parent = graph.producer.get(found[0]) if found else None
        return parent is not None and parent.op_type == "MatMul"
    return node.op_type == "MatMul"


class _Attention(TypedDict):
    """One matched attention core: the q/k/v projections' outputs, the additive mask (or ""), the scores' scale,
    the heads and model width, the core's output, the nodes it replaces and the Reshape it ends in."""

    inputs: list[str]
    mask: str
    scale: float
    heads: int
    width: int
    output: str
    removed: list[onnx.NodeProto]
    at: onnx.NodeProto


def _match(graph: _Graph, softmax: onnx.NodeProto) -> _Attention | None:
    axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    removed = [softmax]
    scores, mask = softmax.input[0], ""
    node = graph.producer.get(scores)
    if node is not None and node.op_type == "Add" and graph.only_consumer(node.output[0]) is softmax:
        path = [
            (i, p)
            for i, p in ((i, graph.producer.get(node.input[i])) for i in (0, 1))
            if p is not None and _leads_to_matmul(graph, p)
        ]
        if len(path) != 1 or graph.const(node.input[1 - path[0][0]]) is not None:
            return None
        mask = node.input[1 - path[0][0]]
        removed.append(node)
        node = path[0][1]
    scale = 1.0
    if (
        node is not None
        and node.op_type in ("Mul", "Div")
        and graph.only_consumer(node.output[0]) is not None
    ):
        found = _scalar(graph, node)
        if found is None or (node.op_type == "Div" and found[0] != node.input[0]):
            return None
        scale = found[1] if node.op_type == "Mul" else 1.0 / found[1]
        removed.append(node)
        node = graph.producer.get(found[0])
    if node is None or node.op_type != "MatMul" or graph.only_consumer(node.output[0]) is None:
        return None
    qk = node
    av = graph.only_consumer(softmax.output[0])
    if av is None or av.op_type != "MatMul" or av.input[0] != softmax.output[0]:
        return None
    merge = graph.only_consumer(av.output[0])
    if _perm(merge) != [0, 2, 1, 3] or merge is None or merge.output[0] in graph.outputs:
        return None
    after = graph.consumers.get(merge.output[0], [])
    out = next((n for n in after if n.op_type == "Reshape" and n.input[0] == merge.output[0]), None)
    if out is None or any(n is not out and not _shape_only(graph, n, out) for n in after):
        return None
    q = _split_heads(graph, qk.input[0], [0, 2, 1, 3])
    k = _split_heads(graph, qk.input[1], [0, 2, 3, 1])
    v = _split_heads(graph, av.input[1], [0, 2, 1, 3])
    if q is None or k is None or v is None or len({q[2], k[2], v[2]}) != 1:
        return None
    removed += [qk, av, merge, out, *q[:2], *k[:2], *v[:2]]
    return {
        "inputs": [q[1].input[0], k[1].input[0], v[1].input[0]],
        "mask": mask,
        "scale": scale,
        "heads": q[2][0],
        "width": q[2][0] * q[2][1],
        "output": out.output[0],
        "removed": removed,
        "at": out,
    }


_SHAPE_OPS = {
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Slice",
    "Mul",
    "Div",
    "Add",
    "Sub",
}


def _shape_only(graph: _Graph, node: onnx.NodeProto, target: onnx.NodeProto) -> bool:
    """`node` (a Shape of the merged heads, as BERT's exporter writes) feeds only shape arithmetic that ends in
    `target`'s shape input: it dies with the core."""
    if node.op_type != "Shape":
        return False
    todo, seen = [node], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.op_type not in _SHAPE_OPS or any(o in graph.outputs for o in current.output):
            return False
        for output in current.output:
            for after in graph.consumers.get(output, []):
                if after is target:
                    if target.input[0] == output:
                        return False
                    continue
                todo.append(after)
    return True


def _bias(graph: _Graph, tensor: str, width: int) -> tuple[str, np.ndarray, onnx.NodeProto] | None:
    """(the unbiased tensor, the bias, the Add) when `tensor` is `x + constant bias [width]` read only here."""
    add = graph.producer.get(tensor)
    if add is None or add.op_type != "Add" or graph.only_consumer(tensor) is None:
        return None
    for index in (0, 1):
        value = graph.const(add.input[index])
        if value is not None and value.size == width and value.dtype == np.float32:
            return add.input[1 - index], value.reshape(-1), add
    return None


def fuse_attention(model: onnx.ModelProto) -> list[str]:
    """Replace each matched attention core with `com.microsoft.MultiHeadAttention` (in place); returns the names
    of the new nodes. The q/k/v bias Adds (constants of the model width) move into the op's `bias` input; the
    additive mask becomes `attention_bias`. HF writes it 4-D, `[B, 1, T, T]` (HuBERT) or `[B, 1, 1, T]` (BERT);
    the op wants the query axis in full, so each distinct mask is expanded to `[B, 1, S, T]` once."""
    made: list[str] = []
    if opset_version(model) < 15:  # Shape(start, end) expands the mask
        return made
    graph = _Graph(model)
    matches = [m for m in (_match(graph, s) for s in model.graph.node if s.op_type == "Softmax") if m]
    if not matches:
        return made
    drop: set[int] = set()
    replace: dict[int, list[onnx.NodeProto]] = {}
    expanded: dict[str, str] = {}
    for found in matches:
        biases = [_bias(graph, t, found["width"]) for t in found["inputs"]]
        inputs, bias_name = found["inputs"], ""
        if all(b is not None for b in biases):
            inputs = [b[0] for b in biases if b is not None]
            bias_name = f"{found['at'].name}/mha_bias"
            model.graph.initializer.append(
                numpy_helper.from_array(
                    np.concatenate([b[1] for b in biases if b is not None]).astype(np.float32), bias_name
                )
            )
            drop |= {id(b[2]) for b in biases if b is not None}
        scope = found["at"].name.rsplit("/", 1)[0]
        new: list[onnx.NodeProto] = []
        mask = found["mask"]
        if mask and mask not in expanded:
            expanded[mask] = _expand_mask(model, mask, inputs[0], f"{scope}/mask", new)
        node = helper.make_node(
            "MultiHeadAttention",
            [*inputs, bias_name, "", expanded.get(mask, "")],
            [found["output"]],
            name=f"{scope}/MultiHeadAttention",
            domain=MS_DOMAIN,
            num_heads=found["heads"],
            scale=found["scale"],
        )
        while node.input and not node.input[-1]:
            node.input.pop()
        drop |= {id(n) for n in found["removed"]}
        replace[id(found["at"])] = [*new, node]
        made.append(node.name)
    rebuilt = [
        new
        for n in model.graph.node
        if id(n) not in drop or id(n) in replace
        for new in replace.get(id(n), [n])
    ]
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    remove_dead_nodes(model)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return made


def _expand_mask(model: onnx.ModelProto, mask: str, query: str, base: str, new: list[onnx.NodeProto]) -> str:
    """`Expand(mask, [1, 1, S, 1])` with S the query length (`Shape(query)[1:2]`): appends the nodes to `new` and
    returns the expanded tensor's name."""
    ones = f"{base}/ones"
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1], np.int64), ones))
    length, target, out = f"{base}/length", f"{base}/target", f"{base}/expanded"
    new += [
        helper.make_node("Shape", [query], [length], name=f"{base}/Shape", start=1, end=2),
        helper.make_node("Concat", [ones, length, f"{ones}_last"], [target], name=f"{base}/Concat", axis=0),
        helper.make_node("Expand", [mask, target], [out], name=f"{base}/Expand"),
    ]
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{ones}_last"))
    return out


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop the nodes and initializers nothing reads any more (the shape arithmetic a rewrite left behind), with
    onnxruntime.transformers' pruning, which also keeps what If/Loop/Scan subgraphs read; graph inputs stay."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel(model).prune_graph(allow_remove_graph_inputs=False)
