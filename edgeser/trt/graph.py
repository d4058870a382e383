"""What the doctor needs to know about one ONNX graph: element types, producers and consumers, and which
tensors are constants (initializers, Constant nodes, and what folds from them)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.errors import BundleError, MissingDependencyError
from edgeser.trt.operators import ONNX_TYPES

# Ops whose output is never a build-time constant, whatever their inputs.
NEVER_CONSTANT = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
    "DynamicQuantizeLinear",
}
PASS_THROUGH = {"Identity", "Cast"}  # the parser imports these on weights as weights


@dataclass
class GraphFacts:
    """One graph's nodes with types, producers, consumers and constant-ness."""

    path: Path
    model: Any  # onnx.ModelProto (shape-inferred)
    opset: int
    dtypes: dict[str, str] = field(default_factory=dict)  # tensor -> table type name ("FP32", "INT8", ...)
    shapes: dict[str, list[int | str]] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[tuple[Any, int]]] = field(default_factory=lambda: defaultdict(list))
    values: dict[str, np.ndarray] = field(default_factory=dict)  # initializers and Constant outputs
    foldable: set[str] = field(default_factory=set)
    graph_inputs: set[str] = field(default_factory=set)
    graph_outputs: set[str] = field(default_factory=set)

    @property
    def nodes(self) -> list[Any]:
        return list(self.model.graph.node)

    def is_weight(self, name: str) -> bool:
        """An initializer or Constant output, possibly through Identity/Cast (what the parser holds as weights)."""
        return self.weight_value(name) is not None

    def weight_value(self, name: str) -> np.ndarray | None:
        seen = 0
        while name and name not in self.values and seen < 8:
            node = self.producer.get(name)
            if node is None or node.op_type not in PASS_THROUGH:
                return None
            name, seen = node.input[0], seen + 1
        return self.values.get(name) if name else None

    def is_constant(self, name: str) -> bool:
        """A build-time constant: a weight, or computed only from weights and static shapes."""
        return name in self.foldable


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def node_attr(node: Any, name: str, default: Any = None) -> Any:
    """An attribute's Python value (bytes decoded), or `default`."""
    value = _attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


def load_graph(path: Path) -> GraphFacts:
    """Load, shape-infer and index `path`; one-line error when it is not a readable ONNX graph."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise MissingDependencyError("onnx", "export", "the TensorRT doctor (it reads ONNX graphs)") from err
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise BundleError(f"{path}: not a readable ONNX graph ({' '.join(str(err).split())[:160]})") from err
    with contextlib.suppress(Exception):  # inference helps with element types; graphs without it still check
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    facts = GraphFacts(path, model, opset)
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        kind = info.type.tensor_type
        if kind.elem_type:
            facts.dtypes[info.name] = ONNX_TYPES.get(kind.elem_type, f"ONNX{kind.elem_type}")
        if kind.HasField("shape"):
            facts.shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in kind.shape.dim
            ]
    for init in graph.initializer:
        facts.values[init.name] = numpy_helper.to_array(init)
        facts.dtypes[init.name] = ONNX_TYPES.get(init.data_type, f"ONNX{init.data_type}")
        facts.shapes[init.name] = list(init.dims)
    initializer_names = set(facts.values)
    facts.graph_inputs = {i.name for i in graph.input if i.name not in initializer_names}
    facts.graph_outputs = {o.name for o in graph.output}
    facts.foldable = set(initializer_names)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                facts.consumers[name].append((node, index))
        for name in node.output:
            facts.producer[name] = node
        if node.op_type == "Constant" and node.output:
            tensor = _attr(node, "value")
            if tensor is not None:
                facts.values[node.output[0]] = numpy_helper.to_array(tensor)
                facts.dtypes[node.output[0]] = ONNX_TYPES.get(tensor.data_type, f"ONNX{tensor.data_type}")
                facts.shapes[node.output[0]] = list(tensor.dims)
            facts.foldable.add(node.output[0])
        elif node.op_type == "Shape":
            shape = facts.shapes.get(node.input[0])
            if shape is not None and all(isinstance(d, int) and d > 0 for d in shape):
                facts.foldable.update(node.output)
        elif (
            node.op_type not in NEVER_CONSTANT
            and any(node.input)
            and all(not n or n in facts.foldable for n in node.input)
        ):
            facts.foldable.update(o for o in node.output if o)
    return facts
