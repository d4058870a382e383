"""SmoothQuant scale migration (edgeser/quantize/smooth.py): exact in float, and it evens out outlier channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeser.quantize.smooth import smooth_graph


def two_projections(path: Path, weights: list[np.ndarray]) -> None:
    """x [1, T, 8] -> LayerNormalization-free q and k projections reading the same activation."""
    nodes = [
        helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"layer.0/proj{i}/MatMul")
        for i in range(len(weights))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 8])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, "T", 4]) for i in range(len(weights))],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_migration_is_exact_in_float_and_evens_the_outlier_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(2)]
    source, target = tmp_path / "g.onnx", tmp_path / "smoothed.onnx"
    two_projections(source, weights)
    feeds = []
    for _ in range(4):
        x = rng.standard_normal((1, 5, 8)).astype(np.float32)
        x[..., 3] *= 100.0  # one outlier channel, as after a BERT LayerNorm
        feeds.append({"x": x})
    smoothed = smooth_graph(
        source, target, ["layer.0/proj0/MatMul", "layer.0/proj1/MatMul"], feeds, alpha=0.5
    )
    assert smoothed == ["layer.0/proj0/MatMul", "layer.0/proj1/MatMul"]
    model = onnx.load(str(target))
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and all(
        n.input[0] == muls[0].output[0] for n in model.graph.node if n.op_type == "MatMul"
    )
    plain = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    moved = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for feed in feeds:
        for a, b in zip(plain.run(None, feed), moved.run(None, feed)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    inverse = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == muls[0].input[1]))
    before = np.max([np.abs(f["x"]).reshape(-1, 8).max(0) for f in feeds], axis=0)
    after = before * inverse
    spread_before, spread_after = before.max() / np.median(before), after.max() / np.median(after)
    assert spread_before > 50 and spread_after < spread_before / 5  # alpha 0.5: about its square root


def test_even_channels_are_left_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    source, target = tmp_path / "g.onnx", tmp_path / "smoothed.onnx"
    two_projections(source, [rng.standard_normal((8, 4)).astype(np.float32)])
    feeds = [{"x": rng.standard_normal((1, 5, 8)).astype(np.float32)} for _ in range(3)]
    assert smooth_graph(source, target, ["layer.0/proj0/MatMul"], feeds) == []
    assert not [n for n in onnx.load(str(target)).graph.node if n.op_type == "Mul"]
