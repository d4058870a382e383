"""Per-layer precision counts from TensorRT's engine inspector JSON (`get_engine_information(JSON)` of an engine
built with `ProfilingVerbosity.DETAILED`), for both documented layouts:

- TensorRT 10.x: `{"Layers": [...], "Bindings": ["in", "out"]}`; each layer's `Inputs`/`Outputs` entries carry
  one `"Format/Datatype"` string ("Row major linear FP32 format", or just "Half" / "Int8" without a context);
- TensorRT 11.x: `Bindings` is replaced by `"I/O Tensors"` (objects with Name, IOMode, DataType, ...) and the
  `"Format/Datatype"` field is split into `"Format"` and `"DataType"`.

A layer's precision is the narrowest floating or quantised type among its inputs and weights (a convolution
reading INT8 runs INT8 even when it writes FP32); layers that only touch integer or boolean tensors (shapes,
indices) count under that type. Silent fallback shows as FP32/FP16 counts where INT8 was meant.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edgeser.errors import InspectorError

# Most narrow first: the first that a layer touches is its precision.
FLOAT_ORDER = ("FP4", "INT4", "FP8", "INT8", "FP16", "BF16", "FP32")
INT_ORDER = ("INT32", "INT64", "UINT8", "BOOL")
_TOKENS = [  # (regex on the lowercased text, type) - checked in order
    (r"\bfp4\b|float4|e2m1", "FP4"),
    (r"\bint4\b", "INT4"),
    (r"\bfp8\b|e4m3|float8", "FP8"),
    (r"\buint8\b", "UINT8"),
    (r"\bint8\b|\bi8\b", "INT8"),
    (r"\bbf16\b|bfloat16", "BF16"),
    (r"\bfp16\b|\bhalf\b|float16", "FP16"),
    (r"\bint32\b", "INT32"),
    (r"\bint64\b", "INT64"),
    (r"\bbool\b", "BOOL"),
    (r"\bfp32\b|\bfloat\b|float32", "FP32"),
]


def data_type(text: str) -> str | None:
    """The TensorRT data type named in an inspector type or format string, or None."""
    lowered = str(text).lower()
    for pattern, name in _TOKENS:
        if re.search(pattern, lowered):
            return name
    return None


@dataclass
class LayerPrecisions:
    """What the engine inspector says about an engine's layers."""

    layout: str  # "10.x" (Bindings, Format/Datatype) or "11.x" (I/O Tensors, Format + DataType)
    layers: int
    precision_counts: dict[str, int]
    by_layer_type: dict[str, dict[str, int]]
    io_tensors: list[str] = field(default_factory=list)
    unknown_layers: int = 0  # layers whose tensors name no data type


def tensor_type(entry: dict[str, Any]) -> str | None:
    for key in ("DataType", "Format/Datatype", "Format"):
        if key in entry:
            found = data_type(entry[key])
            if found:
                return found
    return None


def layer_precision(layer: dict[str, Any]) -> str | None:
    types = [tensor_type(t) for t in layer.get("Inputs", []) if isinstance(t, dict)]
    weights = layer.get("Weights")
    if isinstance(weights, dict) and weights.get("Count", 1):
        types.append(data_type(weights.get("Type", "")))
    found = [t for t in types if t]
    if not found:  # constants and generators: what they write
        found = [t for t in (tensor_type(o) for o in layer.get("Outputs", []) if isinstance(o, dict)) if t]
    for name in FLOAT_ORDER + INT_ORDER:
        if name in found:
            return name
    return None


def parse_engine_information(text: str | dict[str, Any]) -> LayerPrecisions:
    """Parse `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` of either layout."""
    try:
        data = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as err:
        raise InspectorError(f"engine inspector output is not JSON ({err.msg} at {err.pos})") from err
    if not isinstance(data, dict) or not isinstance(data.get("Layers"), list):
        raise InspectorError("engine inspector output has no Layers list")
    layers = data["Layers"]
    if layers and all(isinstance(layer, str) for layer in layers):
        raise InspectorError(
            "engine inspector lists layer names only: the engine was not built with "
            "ProfilingVerbosity.DETAILED"
        )
    if "I/O Tensors" in data:
        layout = "11.x"
        io = [t["Name"] for t in data["I/O Tensors"] if isinstance(t, dict) and "Name" in t]
    else:
        layout = "10.x"
        io = [str(name) for name in data.get("Bindings", [])]
    counts: Counter[str] = Counter()
    by_type: dict[str, Counter[str]] = {}
    unknown = 0
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        precision = layer_precision(layer)
        if precision is None:
            unknown += 1
            precision = "unknown"
        counts[precision] += 1
        by_type.setdefault(str(layer.get("LayerType", "unknown")), Counter())[precision] += 1
    return LayerPrecisions(
        layout,
        sum(counts.values()),
        dict(sorted(counts.items())),
        {k: dict(sorted(v.items())) for k, v in sorted(by_type.items())},
        io,
        unknown,
    )
