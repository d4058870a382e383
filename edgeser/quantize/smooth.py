"""SmoothQuant-style scale migration (Xiao et al. 2023, arXiv:2211.10438) before static INT8: per input channel
j of a MatMul's activation X, divide X by s_j and multiply the weight's row j by s_j (exact in float),

    s_j = max|X_j| ** alpha / max_n |W_jn| ** (1 - alpha),

so a few outlier channels no longer set the per-tensor activation scale every other channel is quantised with,
and the per-channel weight scales absorb them instead. The division is one Mul by a constant vector on X (shared
by the MatMuls reading X: q/k/v stay one fusable group); max|X_j| comes from the calibration inputs.

Why: BERT-family text encoders carry a few hidden channels far larger than the rest after each LayerNorm and in
the FFN (GELU) activations. Measured on all-MiniLM-L6-v2 in the cmgi default (56 held-out TESS clips, each node
quantised alone, int8-trt): the q/k/v and FFN-in MatMuls reading LayerNorm outputs cost token-feature cosine
down to 0.9938 each and the FFN-out MatMuls (GELU input) down to 0.9921; the attention-output projection and
the attention products cost < 0.0002. Which MatMuls are smoothed is `smoothable`: every quantised MatMul with a
constant 2-D weight whose activation's channel maxima are uneven (max/median above `MIN_SPREAD`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeser.quantize.graph import GraphInfo

MIN_SPREAD = 4.0  # channel max / median channel max below which migration has nothing to even out


def smoothable(model: onnx.ModelProto, quantised: Iterable[str]) -> dict[str, list[onnx.NodeProto]]:
    """Activation tensor -> the quantised MatMuls with constant 2-D weights (used by no other node) reading it."""
    info = GraphInfo(model)
    weights = {i.name: i for i in model.graph.initializer}
    names = set(quantised)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in info.nodes:
        if node.op_type != "MatMul" or node.name not in names or len(node.input) != 2:
            continue
        source, weight = node.input
        if info.is_constant(source) or weight not in weights or len(weights[weight].dims) != 2:
            continue
        if len(info.consumers.get(weight, [])) != 1:
            continue
        groups.setdefault(source, []).append(node)
    return groups


def channel_maxima(
    path: Path, tensors: list[str], feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor over the feeds (the float graph, no optimisation)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, dict(feed))):
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = channel if name not in maxima else np.maximum(maxima[name], channel)
    return maxima


def migration_scales(x_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j.|^(1-alpha) over every weight reading X; 1 where a channel is silent."""
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.power(x_max, alpha) / np.power(w_max, 1.0 - alpha)
    good = np.isfinite(scales) & (scales > 0) & (x_max > 0) & (w_max > 0)
    return np.where(good, scales, 1.0).astype(np.float32)


def smooth_graph(
    source: Path,
    target: Path,
    quantised: Iterable[str],
    feeds: Iterable[Mapping[str, np.ndarray]],
    alpha: float = 0.5,
) -> list[str]:
    """Write `source` with scales migrated into the weights of its smoothable MatMuls; returns those MatMuls."""
    model = onnx.load(str(source))
    groups = smoothable(model, quantised)
    if not groups:
        onnx.save(model, str(target))
        return []
    maxima = channel_maxima(source, list(groups), feeds)
    weights = {i.name: i for i in model.graph.initializer}
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    inserts: list[tuple[int, onnx.NodeProto]] = []
    smoothed: list[str] = []
    for tensor, nodes in groups.items():
        x_max = maxima[tensor]
        if x_max.max() <= MIN_SPREAD * max(float(np.median(x_max)), 1e-12):
            continue  # even channels: nothing to migrate
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        scales = migration_scales(x_max, arrays, alpha)
        first = min(nodes, key=lambda n: order[n.name])
        scope = first.name.rsplit("/", 1)[0]
        mul_name, inverse, smoothed_x = (
            f"{scope}/smooth/Mul",
            f"{tensor}.smooth_inverse",
            f"{tensor}.smoothed",
        )
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(np.float32), inverse))
        inserts.append(
            (order[first.name], onnx.helper.make_node("Mul", [tensor, inverse], [smoothed_x], name=mul_name))
        )
        for node, array in zip(nodes, arrays):
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((array * scales[:, None]).astype(array.dtype), node.input[1])
            )
            node.input[0] = smoothed_x
            smoothed.append(node.name)
    nodes_out = list(model.graph.node)
    for index, mul in sorted(inserts, key=lambda item: -item[0]):  # back to front: indices stay valid
        nodes_out.insert(index, mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes_out)
    onnx.save(model, str(target))
    return smoothed


def stage_feeds(cache: object, stage: str, inputs: list[str]) -> Iterator[Mapping[str, np.ndarray]]:
    """Every batch-1 calibration feed of `stage` from the bundle's calibration cache."""
    for _, feeds in cache.stage_feeds(stage, inputs):  # type: ignore[attr-defined]
        yield from feeds
