"""Which nodes of a stage graph stay in float, and how quantisable nodes group for sensitivity analysis.

Default float set (DESIGN "Known pitfalls"), by category:

- `frontend`: the feature front end (STFT conv, power, mel MatMul, log, DCT): nodes in a `frontend` name scope,
  plus every ancestor of the first Log reached from the waveform when those ancestors are only fixed linear
  maps (98-99.5 % of linear power values fall below one INT8 step: the mel MatMul must stay float);
- `first-conv`: the first Conv on the waveform (HuBERT/wav2vec2 feature extractor layer 0);
- `layernorm`, `softmax` (with the Add/Where/Div feeding it), `residual-add` (Adds of two activations),
  `gelu` (Erf-based GELU subgraphs and fused Gelu ops);
- `narrow`: MatMul/Gemm/Conv nodes with fewer than `NARROW_WIDTH` input features (reduction size) or output
  channels, where known: the d=40 attention of STF-Net, 10-wide attention heads, 7-class classifiers, CTC
  heads over a 30-letter alphabet. INT8 does not pay there (the Q/DQ around a tiny GEMM costs more than the
  integer kernel saves) and their error is large for their size. The trained small stfnet (fold 0, EMO-DB
  speaker 03, 49 clips) is narrower than 64 everywhere; quantised at every width its INT8 is slower than fp32
  (3.6 against 2.7 ms on a 4.5 s clip, 2 threads) with logit RMSE 0.040 and 1 label flip, and keeping only its
  40-wide Transformer branch float already takes the RMSE to 0.017;
- `grouped-conv`: Conv nodes with more than one group: the positional convolution of HuBERT/wav2vec2 (16
  groups, a 128-frame kernel, added to the residual stream). It is the most sensitive single node measured: on
  the trained cmgi small (TESS fold 0, 1400 held-out clips) keeping it float took the logit RMSE against fp32
  from 0.061 to 0.050 and label flips from 10 to 7; it costs 18 of 326 ms on cmgi paper (4.5 s, 2 threads);
- `gather-activations`: Gather nodes that index activations or shapes, not a constant table: only embedding
  tables are worth storing in INT8.

With the default op types (MatMul, Conv, Gemm, Gather) `frontend`, `first-conv`, `narrow`, `grouped-conv` and
`gather-activations` change what is quantised; the others matter when `op_types` is widened, and are listed so
reports say what is float.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

# Gather: embedding tables (BERT's 30522 x 768 words) stored INT8, which alone keeps cmgi paper's INT8 files
# under 30 % of fp32; on the trained cmgi small (TESS fold 0, 1400 clips) label flips stayed 7, logit RMSE
# 0.050 -> 0.052.
DEFAULT_OP_TYPES = ("MatMul", "Conv", "Gemm", "Gather")
DYNAMIC_OP_TYPES = ("MatMul",)
CATEGORIES = (
    "frontend",
    "first-conv",
    "layernorm",
    "softmax",
    "residual-add",
    "gelu",
    "narrow",
    "grouped-conv",
    "gather-activations",
)
# TensorRT's symmetric activations waste half the INT8 range on one-sided tensors. A wav2vec2/HuBERT feature
# encoder feeds every conv a GELU output with a wide range: symmetric, it cost the tiny cmgi's features cosine
# 0.998 -> 0.980 (TESS, 6 held-out clips) and cmgi paper's 0.9987 -> 0.9977 (6 clips of 4 s); kept float,
# 0.994 and 0.9990. The Transformer's GELU and softmax outputs cost little (0.9977 -> 0.9981 / 0.9978).
TENSORRT_CATEGORIES = (*CATEGORIES, "feature-convs")
NARROW_WIDTH = 64
WAVEFORM_INPUT = "waveform"
# Ops a fixed feature front end is made of; a Log whose ancestry has anything else is not a front end.
_FRONTEND_OPS = {
    "Cast", "Shape", "Constant", "Gather", "Range", "Unsqueeze", "Squeeze", "Less", "Greater", "Mul", "Add", "Sub",
    "Div", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Pad", "Conv", "MatMul", "Clip", "Max",
    "Min", "Pow", "Sqrt", "Abs", "Where", "Not", "Equal", "Expand", "Identity", "Log", "ReduceMax", "Neg",
}  # fmt: skip
_WRAPPERS = {"backbone", "model", "module"}
_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze"}  # move values, compute nothing
_INDEXED = re.compile(r"^[A-Za-z_]+[A-Za-z0-9_]*\.\d+$")


@dataclass
class GraphInfo:
    """Node lookups of one graph."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto] = field(init=False)
    producer: dict[str, onnx.NodeProto] = field(init=False)
    consumers: dict[str, list[onnx.NodeProto]] = field(init=False)
    constants: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = list(self.model.graph.node)
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {i.name for i in self.model.graph.initializer}
        self.constants |= {out for n in self.nodes if n.op_type == "Constant" for out in n.output}

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants or (
            tensor in self.producer
            and self.producer[tensor].op_type in {"DequantizeLinear", "Identity"}
            and all(self.is_constant(i) for i in self.producer[tensor].input if i)
        )

    def descendants(self, tensor: str) -> list[onnx.NodeProto]:
        seen: dict[str, onnx.NodeProto] = {}
        stack = [tensor]
        while stack:
            for node in self.consumers.get(stack.pop(), []):
                if node.name not in seen:
                    seen[node.name] = node
                    stack.extend(node.output)
        order = {n.name: i for i, n in enumerate(self.nodes)}
        return sorted(seen.values(), key=lambda n: order[n.name])

    def ancestors(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        seen: dict[str, onnx.NodeProto] = {}
        stack = [i for i in node.input if i]
        while stack:
            producer = self.producer.get(stack.pop())
            if producer is not None and producer.name not in seen:
                seen[producer.name] = producer
                stack.extend(i for i in producer.input if i)
        return list(seen.values())


def scope_parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p]


def frontend_nodes(info: GraphInfo) -> list[str]:
    """Front-end nodes: a `frontend` name scope, plus the pure-linear ancestry of the first Log on the waveform."""
    names = {n.name for n in info.nodes if "frontend" in scope_parts(n.name)[:-1]}
    if any(i.name == WAVEFORM_INPUT for i in info.model.graph.input):
        first_log = next((n for n in info.descendants(WAVEFORM_INPUT) if n.op_type == "Log"), None)
        if first_log is not None:
            ancestry = info.ancestors(first_log)
            if all(n.op_type in _FRONTEND_OPS for n in ancestry):
                names |= {n.name for n in ancestry} | {first_log.name}
    return [n.name for n in info.nodes if n.name in names]


def first_conv(info: GraphInfo) -> list[str]:
    if not any(i.name == WAVEFORM_INPUT for i in info.model.graph.input):
        return []
    conv = next((n for n in info.descendants(WAVEFORM_INPUT) if n.op_type == "Conv"), None)
    return [conv.name] if conv is not None else []


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each tensor's shape as far as the graph records it (value_info from shape inference, inputs, outputs,
    initializers); unknown or symbolic dimensions are None."""
    shapes: dict[str, list[int | None]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
            ]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def gemm_widths(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> tuple[int | None, int | None]:
    """(reduction size K, output channels N) of a MatMul/Gemm/Conv, None where the graph does not say."""
    a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
    if node.op_type == "Conv":
        if not b or any(d is None for d in b):
            return None, None
        reduction = 1
        for d in b[1:]:
            reduction *= d  # type: ignore[operator]
        return reduction, b[0]
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        k_from_b = (b[1] if attrs.get("transB") else b[0]) if b and len(b) == 2 else None
        n = (b[0] if attrs.get("transB") else b[1]) if b and len(b) == 2 else None
        k_from_a = (a[0] if attrs.get("transA") else a[1]) if a and len(a) == 2 else None
        return k_from_b or k_from_a, n
    k = (a[-1] if a else None) or (b[-2] if b and len(b) >= 2 else None)
    n = b[-1] if b and len(b) >= 2 else None
    return k, n


def feature_convs(info: GraphInfo) -> list[str]:
    """Ungrouped convolutions on the waveform's path before any MatMul/Gemm (a wav2vec2/HuBERT feature encoder)."""
    if not any(i.name == WAVEFORM_INPUT for i in info.model.graph.input):
        return []
    found, seen, stack = [], set(), [WAVEFORM_INPUT]
    while stack:
        for node in info.consumers.get(stack.pop(), []):
            if node.name in seen or node.op_type in {"MatMul", "Gemm"}:
                continue
            seen.add(node.name)
            if node.op_type == "Conv" and not any(a.name == "group" and a.i > 1 for a in node.attribute):
                found.append(node.name)
            stack.extend(node.output)
    order = {n.name: i for i, n in enumerate(info.nodes)}
    return sorted(found, key=order.__getitem__)


def activation_matmuls(info: GraphInfo) -> list[str]:
    """MatMuls of two activations (attention scores and their weighted sum), which have no weight to quantise.

    `Int8Options.matmul_weights_only` keeps these float by excluding them: onnxruntime's `MatMulConstBOnly`
    extra option is read by its QOperator quantiser only, so in QDQ mode (what edgeser writes) it changes
    nothing (onnxruntime 1.32: the int8 graph came out with Q/DQ on every attention MatMul).
    """
    return [
        n.name
        for n in info.nodes
        if n.op_type == "MatMul" and not any(info.is_constant(t) for t in n.input[:2])
    ]


def narrow_nodes(info: GraphInfo, min_width: int = NARROW_WIDTH) -> list[str]:
    """MatMul/Gemm/Conv nodes with a known reduction size or output width below `min_width`."""
    shapes = tensor_shapes(info.model)
    names = []
    for node in info.nodes:
        if node.op_type in {"MatMul", "Gemm", "Conv"} and len(node.input) >= 2:
            widths = [w for w in gemm_widths(node, shapes) if w]
            if widths and min(widths) < min_width:
                names.append(node.name)
    return names


def gather_activations(info: GraphInfo) -> list[str]:
    """Gather nodes indexing a float activation (not a constant table, not a shape), per shape inference."""
    graph = info.model.graph
    floats = {
        v.name
        for v in [*graph.input, *graph.value_info, *graph.output]
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    return [
        n.name
        for n in info.nodes
        if n.op_type == "Gather" and n.input[0] in floats and not info.is_constant(n.input[0])
    ]


def softmax_nodes(info: GraphInfo) -> list[str]:
    names = []
    for node in info.nodes:
        if node.op_type == "Softmax":
            names.append(node.name)
            producer = info.producer.get(node.input[0])
            if producer is not None and producer.op_type in {"Add", "Where", "Div", "Mul"}:
                names.append(producer.name)
    return names


def residual_adds(info: GraphInfo) -> list[str]:
    return [
        n.name
        for n in info.nodes
        if n.op_type == "Add" and len(n.input) == 2 and not any(info.is_constant(i) for i in n.input)
    ]


def gelu_nodes(info: GraphInfo) -> list[str]:
    """Fused Gelu ops, and each Erf with its Div before and the Add/Mul chain after (x * 0.5 * (1 + erf(x/√2)))."""
    names = [n.name for n in info.nodes if n.op_type in {"Gelu", "FastGelu", "BiasGelu", "QuickGelu"}]
    for node in info.nodes:
        if node.op_type != "Erf":
            continue
        names.append(node.name)
        producer = info.producer.get(node.input[0])
        if producer is not None and producer.op_type in {"Div", "Mul"}:
            names.append(producer.name)
        frontier = list(node.output)
        for _ in range(3):  # Add(1) -> Mul(x) -> Mul(0.5), in either order
            nxt = [c for t in frontier for c in info.consumers.get(t, []) if c.op_type in {"Add", "Mul"}]
            names.extend(c.name for c in nxt)
            frontier = [o for c in nxt for o in c.output]
    return list(dict.fromkeys(names))


def category_nodes(model: onnx.ModelProto, min_width: int = NARROW_WIDTH) -> dict[str, list[str]]:
    """Every default float category's nodes in `model` (`narrow`: GEMMs narrower than `min_width`)."""
    info = GraphInfo(model)
    return {
        "frontend": frontend_nodes(info),
        "first-conv": first_conv(info),
        "layernorm": [
            n.name
            for n in info.nodes
            if n.op_type in {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"}
        ],
        "softmax": softmax_nodes(info),
        "residual-add": residual_adds(info),
        "gelu": gelu_nodes(info),
        "narrow": narrow_nodes(info, min_width),
        "grouped-conv": [
            n.name
            for n in info.nodes
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
        ],
        "gather-activations": gather_activations(info),
        "feature-convs": feature_convs(info),
        "activation-matmuls": activation_matmuls(info),
    }


@dataclass(frozen=True)
class Exclusions:
    """The nodes kept in float, each with the reason (category or user pattern)."""

    reasons: dict[str, str]

    @property
    def names(self) -> list[str]:
        return list(self.reasons)

    def effective(self, model: onnx.ModelProto, op_types: Iterable[str]) -> dict[str, str]:
        """Only the excluded nodes that would otherwise be quantised (see `quantisable_nodes`)."""
        quantisable = set(quantisable_nodes(model, op_types))
        return {name: why for name, why in self.reasons.items() if name in quantisable}


def quantisable_nodes(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Nodes of an op type in `op_types`; a Gather only when it looks up a constant (an embedding table)."""
    info, kinds = GraphInfo(model), set(op_types)
    return [
        n.name
        for n in info.nodes
        if n.op_type in kinds and (n.op_type != "Gather" or info.is_constant(n.input[0]))
    ]


def resolve_exclusions(
    model: onnx.ModelProto, patterns: Iterable[str] | None = None, min_width: int = NARROW_WIDTH
) -> Exclusions:
    """Nodes to keep in float: the default categories, or, when `patterns` is given, exactly those.

    A pattern is a category name (see `CATEGORIES`), `none`, or a glob over node names (`*/layers.23/*`);
    `min_width` sets the `narrow` category (0: no GEMM counts as narrow).
    """
    categories = category_nodes(model, min_width)
    chosen = list(CATEGORIES) if patterns is None else [p for p in patterns if p and p != "none"]
    reasons: dict[str, str] = {}
    names = [n.name for n in model.graph.node]
    for pattern in chosen:
        if pattern in categories:
            for name in categories[pattern]:
                reasons.setdefault(name, pattern)
        else:
            for name in fnmatch.filter(names, pattern):
                reasons.setdefault(name, f"--exclude {pattern}")
    return Exclusions(reasons)


def node_group(name: str) -> str:
    """A node's group for sensitivity analysis: its scope up to the first indexed module (`encoder/layers.3`),
    else its top-level module (below a `backbone` wrapper)."""
    parts = scope_parts(name)[:-1]
    for depth, part in enumerate(parts):
        if _INDEXED.match(part):
            return "/".join(parts[: depth + 1])
    width = 2 if parts and parts[0] in _WRAPPERS else 1
    return "/".join(parts[:width]) or "(root)"


def quantisable_groups(
    model: onnx.ModelProto, op_types: Iterable[str], excluded: Iterable[str]
) -> dict[str, list[str]]:
    """Quantisable node names (see `quantisable_nodes`, not excluded) by `node_group`, in graph order."""
    skip = set(excluded)
    groups: dict[str, list[str]] = {}
    for name in quantisable_nodes(model, op_types):
        if name not in skip:
            groups.setdefault(node_group(name), []).append(name)
    return groups


def strip_output_qdq(
    model: onnx.ModelProto, categories: Iterable[str], producers: Iterable[str] = ()
) -> list[str]:
    """Remove the Q/DQ pair on a quantised MatMul/Gemm/Conv output when the value only flows (directly or through
    a bias Add) into float nodes of `categories` (e.g. residual Adds, GELU), so those get it at full precision.

    onnxruntime's QDQ quantiser puts Q/DQ on every quantised node's output. Before a residual Add that rounds
    the residual stream to the 256 levels of a range set by its outliers: on all-MiniLM-L6 that alone took the
    token-feature cosine from 0.97 to 0.89. The outputs of the nodes named in `producers` (merged projections,
    see fuse.py, whose output only feeds a Split) lose their Q/DQ wherever they go. Returns the tensors made
    float again; edits `model` in place.
    """
    wanted, always = set(categories), set(producers)
    if not wanted and not always:
        return []
    found = category_nodes(model)
    protected = {name for category in wanted for name in found.get(category, [])}
    info = GraphInfo(model)

    def into_protected(node: onnx.NodeProto, depth: int = 0) -> bool:
        if node.name in protected:
            return True
        bias_add = node.op_type == "Add" and any(info.is_constant(i) for i in node.input)
        if depth < 3 and (bias_add or node.op_type in _LAYOUT_OPS):  # look through a bias Add or a Transpose
            after = info.consumers.get(node.output[0], [])
            return bool(after) and all(into_protected(n, depth + 1) for n in after)
        return False

    stripped, drop = [], set()
    for q in info.nodes:
        if q.op_type != "QuantizeLinear":
            continue
        producer = info.producer.get(q.input[0])
        if producer is None or producer.op_type not in {"MatMul", "Gemm", "Conv"}:
            continue
        dqs = info.consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        targets = [t for d in dqs for t in info.consumers.get(d.output[0], [])]
        if producer.name not in always and (not targets or not all(into_protected(t) for t in targets)):
            continue
        source = q.input[0]
        for d in dqs:
            for t in info.consumers.get(d.output[0], []):
                for index, name in enumerate(t.input):
                    if name == d.output[0]:
                        t.input[index] = source
            drop.add(d.name)
        drop.add(q.name)
        stripped.append(source)
    if drop:
        keep = [n for n in model.graph.node if n.name not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        used = {i for n in model.graph.node for i in n.input}
        unused = [init for init in model.graph.initializer if init.name not in used]
        for init in unused:
            model.graph.initializer.remove(init)
    return stripped


FLOAT_READERS = ("residual-add", "layernorm", "gelu", "softmax")


def detach_float_reads(model: onnx.ModelProto, categories: Iterable[str] = FLOAT_READERS) -> int:
    """Point float readers of a quantised activation at the float tensor itself instead of its DequantizeLinear:
    Shape nodes, and the nodes of `categories` (the residual stream, LayerNorm, GELU, Softmax), wherever a
    quantised node also reads a Q/DQ of that activation (which stays; `strip_output_qdq` decides the rest). Q/DQ
    pairs that then feed nothing go.

    onnxruntime's quantiser rewires every consumer of a quantised activation to the DequantizeLinear. For a float
    node that is a needless rounding (a post-LN Transformer's residual Add then adds the 256-level copy of its
    input) and it gives the activation's QuantizeLinear a second DequantizeLinear (onnxruntime duplicates a shared
    one per consumer), while onnxruntime's s8 -> u8 rewrite of symmetric activations only takes a QuantizeLinear
    with one DequantizeLinear: the GEMM behind it then runs in float (all-MiniLM-L6 in int8-trt: 12 float
    MatMuls, text encoder 3.7x slower than u8). A Shape is the same either way. Returns how many inputs moved;
    edits `model` in place.
    """
    protected = {name for category in categories for name in category_nodes(model).get(category, [])}
    info = GraphInfo(model)
    moved = 0
    for source in list(info.consumers):
        dqs = [
            d
            for q in info.consumers[source]
            if q.op_type == "QuantizeLinear" and q.input[0] == source
            for d in info.consumers.get(q.output[0], [])
            if d.op_type == "DequantizeLinear"
        ]
        readers = [(d, r) for d in dqs for r in info.consumers.get(d.output[0], [])]
        floats = [(d, r) for d, r in readers if r.op_type == "Shape" or r.name in protected]
        if not floats or len(floats) == len(readers):  # only where a quantised node keeps a Q/DQ of `source`
            continue
        for dq, reader in floats:
            for index, name in enumerate(reader.input):
                if name == dq.output[0]:
                    reader.input[index] = source
                    moved += 1
    if moved:  # Q/DQ pairs (DedicatedQDQPair) that only fed the float readers go
        for _ in range(2):
            used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
            keep = [
                n
                for n in model.graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.output[0] in used
            ]
            del model.graph.node[:]
            model.graph.node.extend(keep)
    return moved
