"""`edgeser doctor --target tensorrt`: each rule on a small hand-built graph, then real exported bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeser.cli import EdgeserGroup
from edgeser.cli.trt import doctor_command
from edgeser.errors import TargetError
from edgeser.trt.doctor import check_graph, run_doctor
from edgeser.trt.graph import load_graph
from edgeser.trt.operators import parse_target, table_source

T10, T103, T11 = parse_target("tensorrt:10"), parse_target("tensorrt:10.3"), parse_target("tensorrt:11")
F32 = TensorProto.FLOAT


def init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def save(
    tmp_path: Path,
    nodes: list,
    inputs: list,
    outputs: list,
    inits: list = (),
    opset: int = 18,
    name: str = "g",
) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def findings(path: Path, target=T10) -> list:
    return check_graph(load_graph(path), target, "int8", "stage")[0]


def rules(path: Path, target=T10, severity: str = "error") -> set[str]:
    return {f.rule for f in findings(path, target) if f.severity == severity}


def qdq_matmul(
    tmp_path: Path,
    *,
    zp_dtype=np.int8,
    zp_value=0,
    act_scales=1,
    weight_axis=1,
    weight_zp=True,
    scale_value=0.02,
    name="mm",
) -> Path:
    """x -> Q -> DQ -> MatMul(DQ(W int8, per-channel)) -> y, with knobs for each Q/DQ rule."""
    weight = np.arange(8 * 6, dtype=np.int8).reshape(8, 6) - 20
    channels = weight.shape[weight_axis]
    scale = np.full(act_scales, scale_value, np.float32) if act_scales > 1 else np.float32(scale_value)
    zp = np.full(act_scales, zp_value, zp_dtype) if act_scales > 1 else np.array(zp_value, zp_dtype)
    inits = [
        init("s", scale),
        init("z", zp),
        init("W", weight),
        init("ws", np.full(channels, 0.01, np.float32)),
        init("wz", np.zeros(channels, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q", axis=2),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq", axis=2),
        helper.make_node(
            "DequantizeLinear",
            ["W", "ws", "wz"] if weight_zp else ["W", "ws"],
            ["Wd"],
            name="dqw",
            axis=weight_axis,
        ),
        helper.make_node("MatMul", ["xd", "Wd"], ["y"], name="matmul"),
    ]
    x = helper.make_tensor_value_info("x", F32, ["batch", "frames", 8])
    y = helper.make_tensor_value_info("y", F32, ["batch", "frames", 6])
    return save(tmp_path, nodes, [x], [y], inits, name=name)


# ------------------------------------------------------------------------------------------ Q/DQ rules


def test_symmetric_int8_qdq_with_per_channel_weights_passes(tmp_path: Path) -> None:
    path = qdq_matmul(tmp_path)
    assert [f for f in findings(path) if f.severity == "error"] == []
    assert [f for f in findings(path, T11) if f.severity == "error"] == []


def test_asymmetric_uint8_activations_are_errors(tmp_path: Path) -> None:
    found = [
        f for f in findings(qdq_matmul(tmp_path, zp_dtype=np.uint8, zp_value=128)) if f.rule == "zero-point"
    ]
    assert {f.node for f in found} == {"q", "dq"} and all(f.severity == "error" for f in found)
    assert "UINT8 with a non-zero zero point" in found[0].message
    # uint8 with a zero zero point still means [0, 255] on CPU and [-128, 127] in TensorRT
    assert "zero-point" in rules(qdq_matmul(tmp_path, zp_dtype=np.uint8, zp_value=0, name="u0"))


def test_non_zero_int8_zero_point_and_missing_zero_point_are_errors(tmp_path: Path) -> None:
    found = findings(qdq_matmul(tmp_path, zp_value=3))
    assert any(f.rule == "zero-point" and "non-zero" in f.message for f in found)
    path = qdq_matmul(tmp_path, name="nozp")
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.name == "q":
            del node.input[2]
    onnx.save(model, str(path))
    assert any(f.rule == "zero-point" and "without a zero point" in f.message for f in findings(path))


def test_per_channel_activation_and_wrong_weight_axis_are_errors(tmp_path: Path) -> None:
    act = findings(qdq_matmul(tmp_path, act_scales=8, name="act"))
    assert any(f.rule == "per-channel" and "activations per tensor" in f.message for f in act)
    axis = findings(qdq_matmul(tmp_path, weight_axis=0, name="axis"))
    assert any(f.rule == "per-channel" and "needs axis 1" in f.message for f in axis)


def test_qdq_pairs_on_float_weights_count_as_weights(tmp_path: Path) -> None:
    """Q -> DQ on a float weight (onnxruntime's AddQDQPairToWeight) is per-channel weight quantisation."""
    path = qdq_matmul(tmp_path, name="pair")
    model = onnx.load(str(path))
    weight = next(i for i in model.graph.initializer if i.name == "W")
    weight.CopyFrom(init("W", (numpy_helper.to_array(weight).astype(np.float32) * 0.01)))
    model.graph.node.insert(
        0, helper.make_node("QuantizeLinear", ["W", "ws", "wz"], ["Wq"], name="qw", axis=1)
    )
    for node in model.graph.node:
        if node.name == "dqw":
            node.input[0] = "Wq"
    onnx.save(model, str(path))
    assert [f for f in findings(path) if f.severity == "error"] == []


def test_computed_and_negative_scales_are_errors(tmp_path: Path) -> None:
    assert "scale" in rules(qdq_matmul(tmp_path, scale_value=-0.5, name="neg"))
    path = qdq_matmul(tmp_path, name="computed")
    model = onnx.load(str(path))
    model.graph.node.insert(0, helper.make_node("ReduceMax", ["x"], ["s_run"], keepdims=0, name="range"))
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] == "s":
            node.input[1] = "s_run"
    onnx.save(model, str(path))
    assert any(f.rule == "scale" and "computed at run time" in f.message for f in findings(path))


def test_int32_bias_dequantize_is_an_error(tmp_path: Path) -> None:
    inits = [init("b", np.arange(6, dtype=np.int32)), init("bs", np.float32(0.001))]
    nodes = [
        helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"], name="dqb"),
        helper.make_node("Add", ["x", "bd"], ["y"]),
    ]
    x, y = (helper.make_tensor_value_info(n, F32, [2, 6]) for n in ("x", "y"))
    found = findings(save(tmp_path, nodes, [x], [y], inits))
    assert any(f.rule == "dtype" and "INT32" in f.message and f.node == "dqb" for f in found)


# ------------------------------------------------------------------------------------------ operator table


@pytest.mark.parametrize("op", ["ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"])
def test_qoperator_ops_are_errors(tmp_path: Path, op: str) -> None:
    if op == "DynamicQuantizeLinear":
        node = helper.make_node(op, ["x"], ["q", "s", "z"])
        outs = [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 4])]
        x = helper.make_tensor_value_info("x", F32, [2, 4])
        inits = []
    else:
        node = helper.make_node(op, ["x", "w"], ["q"])
        x = helper.make_tensor_value_info(
            "x", TensorProto.UINT8, [1, 2, 5, 5] if op == "ConvInteger" else [2, 4]
        )
        inits = [init("w", np.ones([3, 2, 3, 3] if op == "ConvInteger" else [4, 3], np.int8))]
        outs = [helper.make_tensor_value_info("q", TensorProto.INT32, None)]
    found = findings(save(tmp_path, [node], [x], outs, inits))
    assert any(
        f.rule == "qoperator" and f.op == op and "QuantizeLinear/DequantizeLinear" in f.message for f in found
    )


def slice_graph(tmp_path: Path, computed: bool) -> Path:
    """Slice whose axes come from a Constant, or are computed from the input's rank at run time."""
    inits = [init("starts", np.array([0], np.int64)), init("ends", np.array([2], np.int64))]
    nodes = []
    if computed:
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Size", ["shape"], ["rank"]),
            helper.make_node("Sub", ["rank", "one"], ["last"]),
            helper.make_node("Unsqueeze", ["last", "zero"], ["axes"]),
        ]
        inits += [init("one", np.array(1, np.int64)), init("zero", np.array([0], np.int64))]
    else:
        nodes.append(helper.make_node("Constant", [], ["axes"], value=init("v", np.array([1], np.int64))))
    nodes.append(helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice"))
    x = helper.make_tensor_value_info("x", F32, ["batch", "frames"])
    y = helper.make_tensor_value_info("y", F32, None)
    return save(tmp_path, nodes, [x], [y], inits, name=f"slice{int(computed)}")


def test_computed_slice_axes_need_tensorrt_10_3(tmp_path: Path) -> None:
    computed, constant = slice_graph(tmp_path, True), slice_graph(tmp_path, False)
    found = [f for f in findings(computed, T10) if f.rule == "constant-input"]
    assert found and found[0].node == "slice" and "axes" in found[0].message
    assert "constant-input" not in rules(constant, T10)
    # the ONNX-TensorRT changelog: tensor axes for Slice from 10.3 on
    assert "constant-input" not in rules(computed, T103) and "constant-input" not in rules(computed, T11)


def test_computed_reduce_axes_are_errors_on_every_line(tmp_path: Path) -> None:
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0, name="mean")]
    x = helper.make_tensor_value_info("x", F32, [2, 3])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    path = save(tmp_path, nodes, [x, axes], [helper.make_tensor_value_info("y", F32, None)])
    for target in (T10, T11):
        assert "constant-input" in rules(path, target)


def test_unsupported_custom_and_future_ops_are_errors(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", F32, [4])
    y = helper.make_tensor_value_info("y", F32, None)
    assert "unsupported-op" in rules(
        save(tmp_path, [helper.make_node("Unique", ["x"], ["y"])], [x], [y], name="u")
    )
    custom = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.microsoft")
    model = helper.make_model(
        helper.make_graph([custom], "c", [x], [y]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
    )
    onnx.save(model, str(tmp_path / "c.onnx"))
    assert "custom-op" in rules(tmp_path / "c.onnx")
    dft = save(tmp_path, [helper.make_node("Swish", ["x"], ["y"])], [x], [y], opset=24, name="swish")
    assert "unsupported-op" in rules(dft, T10) and "unsupported-op" not in rules(dft, T11)
    assert "opset" in rules(
        save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=25, name="o25")
    )


def test_element_types(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4])
    path = save(
        tmp_path,
        [helper.make_node("Relu", ["x"], ["y"])],
        [x],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        name="d",
    )
    assert any(
        f.rule == "dtype" and f.severity == "warning" and "DOUBLE" in f.message for f in findings(path)
    )
    x16 = helper.make_tensor_value_info("x", TensorProto.UINT16, [4])
    path = save(
        tmp_path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [x16],
        [helper.make_tensor_value_info("y", TensorProto.UINT16, None)],
        name="u16",
    )
    assert "dtype" in rules(path)
    # an INT8 tensor anywhere but into DequantizeLinear
    q = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("Transpose", ["q"], ["y"]),
    ]
    path = save(
        tmp_path,
        q,
        [helper.make_tensor_value_info("x", F32, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        [init("s", np.float32(0.1)), init("z", np.int8(0))],
        name="i8",
    )
    assert any(f.rule == "dtype" and f.op == "Transpose" for f in findings(path))


def test_targets_and_table_sources() -> None:
    assert parse_target("tensorrt") == T10 and T10.floor == (10, 0) and T103.floor == (10, 3)
    with pytest.raises(TargetError, match="tensorrt:9"):
        parse_target("tensorrt:9")
    with pytest.raises(TargetError, match="onnxruntime"):
        parse_target("onnxruntime")
    source = table_source(10)
    assert source["commit"] == "fa5aa9f61e7781d2ca8f5351d42c1f19525a6124" and not source["derived"]
    assert table_source(11)["derived"] and "11.2" in table_source(11)["note"]


# ------------------------------------------------------------------------------------------ real bundles


@pytest.fixture(scope="module")
def variants(cmgi_bundle: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cmgi bundle calibrated on 4 TESS clips with today's int8, int8-dynamic and fp16 variants."""
    from edgeser.calibrate import calibrate_bundle
    from edgeser.quantize import Int8Options, convert_fp16, quantize_int8, quantize_int8_dynamic

    bundle = Path(shutil.copytree(cmgi_bundle, tmp_path_factory.mktemp("trt") / "cmgi"))
    calibrate_bundle(bundle, f"tess:{shared_data / 'tess'}", fold_index=0, samples=4)
    quantize_int8(bundle, Int8Options(min_width=0))
    quantize_int8_dynamic(bundle, min_width=0)
    convert_fp16(bundle)
    return bundle


def doctor_cli(*args: str):
    group = EdgeserGroup()
    group.add_command(doctor_command)
    return CliRunner().invoke(group, ["doctor", *args])


@pytest.mark.parametrize("target", ["tensorrt:10", "tensorrt:11"])
def test_fp32_and_fp16_graphs_pass(variants: Path, target: str) -> None:
    report = run_doctor(variants, parse_target(target), ["fp32", "fp16"])
    assert report.passed, [f.message for f in report.errors][:5]
    assert report.profile_source == "calibration length statistics"
    waveform = report.profiles["audio_encoder"]["waveform"]
    stats = json.loads((variants / "calibration" / "calibration.json").read_text())["length_stats"]["samples"]
    assert waveform["min"] == [1, stats["min"]] and waveform["opt"] == [1, stats["opt"]]
    assert waveform["max"][1] >= stats["max"] and waveform["max"][1] % 16000 == 0


def test_int8_zero_points_decide_the_verdict(variants: Path) -> None:
    """The rule, whatever the quantiser writes: a non-zero or UINT8 zero point anywhere is an error."""
    report = run_doctor(variants, T10, ["int8"])
    asymmetric = 0
    for entry in json.loads((variants / "bundle.json").read_text())["precisions"]["int8"].values():
        facts = load_graph(variants / entry["path"])
        for node in facts.nodes:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zp = facts.weight_value(node.input[2])
                asymmetric += int(facts.dtypes.get(node.input[2]) == "UINT8" or bool(np.any(zp != 0)))
    zero_point_errors = [f for f in report.errors if f.rule == "zero-point"]
    assert bool(zero_point_errors) == bool(asymmetric)
    if asymmetric:
        assert not report.passed


def test_int8_dynamic_is_refused(variants: Path) -> None:
    report = run_doctor(variants, T11, ["int8-dynamic"])
    assert not report.passed and {f.rule for f in report.errors} == {"qoperator"}
    assert {f.op for f in report.errors} >= {"DynamicQuantizeLinear", "MatMulInteger"}


def test_cli_writes_reports_and_exits_1_on_errors(variants: Path) -> None:
    result = doctor_cli(str(variants), "--precision", "int8-dynamic", "--json")
    assert result.exit_code == 1
    data = json.loads(result.output[: result.output.rindex("}") + 1])
    assert data["target"] == "tensorrt10" and not data["passed"]
    assert (variants / "reports" / "doctor-tensorrt10-int8-dynamic.md").is_file()
    ok = doctor_cli(str(variants), "--precision", "fp32", "--target", "tensorrt:11")
    assert ok.exit_code == 0 and "— PASS" in ok.output
    assert (variants / "reports" / "doctor-tensorrt11-fp32.json").is_file()


def test_uncovered_dynamic_axes_are_errors(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cmgi_bundle, tmp_path / "cmgi"))  # not calibrated: no length statistics
    report = run_doctor(bundle, T10, ["fp32"])
    uncovered = {f.message.split("axes of ")[1].split(":")[1] for f in report.errors if f.rule == "profile"}
    assert {"waveform", "features", "input_ids", "token_features"} <= uncovered
    options = (
        "audio_encoder:waveform=1x8000,1x32000,4x64000",
        "ctc_head:features=1x24x32,1x99x32,4x199x32",
        "text_encoder:input_ids=1x1,1x8,4x32",
        "fusion_head:features=1x24x32,1x99x32,4x199x32",
        "fusion_head:token_features=1x1x384,1x8x384,4x32x384",
    )  # lengths, masks: from the named axes
    assert run_doctor(bundle, T10, ["fp32"], options).passed


def test_small_stfnet_passes(tmp_path: Path) -> None:
    from edgeser.export.exporter import export_bundle

    bundle = export_bundle("stfnet", tmp_path / "stfnet").bundle
    options = (
        "audio_encoder:waveform=1x16000,1x48000,8x96000",
        "fusion_head:features=1x25x104,1x75x104,8x150x104",
    )
    result = doctor_cli(str(bundle), "--profile", options[0], "--profile", options[1])
    assert result.exit_code == 0, result.output[-800:]
