"""INT8 and FP16 graphs TensorRT takes (symmetric Q/DQ, per-channel axes, explicit FP16 casts), merged
projections, and the INT8 speed gate; on the tiny cmgi and real TESS clips."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeser.audio import load_audio
from edgeser.bench.runners import onnxruntime_runners
from edgeser.bundle import read_manifest, sha256_of, validate_bundle
from edgeser.calibrate import calibrate_bundle
from edgeser.data import load_corpus
from edgeser.data.splits import get_fold
from edgeser.measures import cosine
from edgeser.quantize import Int8Options, convert_fp16, quantize_int8, quantize_int8_tensorrt
from edgeser.quantize.fp16 import convert_int8_fp16, precision_conflicts, tensor_types
from edgeser.quantize.fuse import fuse_parallel_matmuls
from edgeser.quantize.graph import GraphInfo
from edgeser.stages import StageGraph

TRT_EVERY_WIDTH = Int8Options.tensorrt(min_width=0)
# The tiny random model, every width symmetric INT8: its logits are near-tied and its CTC transcript moves with
# the features, so the end-to-end bound is loose; the features' bound is tight.
MIN_TRT_FEATURE_COSINE = 0.99
MIN_TRT_LOGIT_COSINE = 0.95


@pytest.fixture(scope="module")
def trt_bundle(cmgi_bundle: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cmgi calibrated on 8 TESS training-side clips, with int8-trt (every width), int8-trt-fp16 and fp16
    variants."""
    bundle = Path(shutil.copytree(cmgi_bundle, tmp_path_factory.mktemp("trt") / "cmgi"))
    calibrate_bundle(bundle, f"tess:{shared_data / 'tess'}", fold_index=0, samples=8)
    quantize_int8_tensorrt(bundle, TRT_EVERY_WIDTH)
    convert_fp16(bundle)
    convert_int8_fp16(bundle)
    return bundle


@pytest.fixture(scope="module")
def held_out(shared_data: Path) -> list[np.ndarray]:
    corpus = load_corpus(f"tess:{shared_data / 'tess'}")
    utterances = corpus.subset(get_fold(corpus, 0).eval_ids)
    return [load_audio(u.path) for u in utterances[:: len(utterances) // 6][:6]]


def graphs(bundle: Path, precision: str) -> dict[str, onnx.ModelProto]:
    manifest = read_manifest(bundle)
    return {stage: onnx.load(str(bundle / e.path)) for stage, e in manifest.precisions[precision].items()}


def initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_tensorrt_int8_has_zero_points_of_zero_and_constant_scales(trt_bundle: Path) -> None:
    settings = validate_bundle(trt_bundle, "int8-trt").extra["quantization"]["int8-trt"]
    assert (
        settings["target"] == "tensorrt"
        and settings["symmetric_activations"]
        and not settings["quantize_bias"]
    )
    seen = 0
    for stage, model in graphs(trt_bundle, "int8-trt").items():
        assert not [n.op_type for n in model.graph.node if n.domain], (
            f"{stage}: contrib ops TensorRT cannot parse"
        )
        values = initializer_values(model)
        for node in model.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            seen += 1
            scale, zero = node.input[1], node.input[2] if len(node.input) > 2 else None
            assert scale in values, f"{stage}: {node.name} scale is computed, not a constant initializer"
            assert zero in values, f"{stage}: {node.name} has no constant zero point"
            assert values[zero].dtype == np.int8 and not values[zero].any(), (
                f"{stage}: {node.name} zero point"
            )
            if node.op_type == "DequantizeLinear" and node.input[0] in values:  # a stored weight or table
                assert values[node.input[0]].dtype == np.int8, (
                    f"{stage}: {node.name} (no INT32 biases for TensorRT)"
                )
    assert seen > 0


def test_tensorrt_int8_weights_are_per_channel_on_the_output_axis(trt_bundle: Path, tmp_path: Path) -> None:
    from edgeser.calibrate import read_calibration
    from edgeser.quantize.graph import CATEGORIES
    from edgeser.quantize.variants import quantize_stage_static

    # int8-trt keeps the feature-encoder convs float; quantise them here too, to see their axis
    convs = tmp_path / "audio_encoder.onnx"
    quantize_stage_static(
        "audio_encoder",
        trt_bundle / "fp32" / "audio_encoder.onnx",
        convs,
        read_calibration(trt_bundle),
        Int8Options.tensorrt(min_width=0, exclude=CATEGORIES),
        tmp_path,
    )
    checked = {"Conv": 0, "MatMul": 0}
    for stage, model in [
        *graphs(trt_bundle, "int8-trt").items(),
        ("audio_encoder (convs)", onnx.load(str(convs))),
    ]:
        info, values = GraphInfo(model), initializer_values(model)
        for node in model.graph.node:
            if node.op_type not in checked:
                continue
            dq = info.producer.get(node.input[1])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in values:
                continue
            weight, scale = values[dq.input[0]], values[dq.input[1]]
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            # TensorRT: Conv weights [K, C/g, R(, S)] quantised along K (axis 0); MatMul weights [K, N] along N
            expected = 0 if node.op_type == "Conv" else weight.ndim - 1
            assert scale.ndim == 1 and axis % weight.ndim == expected, f"{stage}: {node.name} axis {axis}"
            assert scale.size == weight.shape[expected]
            checked[node.op_type] += 1
    assert checked["Conv"] >= 1 and checked["MatMul"] >= 5


def test_tensorrt_int8_runs_in_onnxruntime_and_follows_fp32(
    trt_bundle: Path, held_out: list[np.ndarray]
) -> None:
    """Checked on CPU like every variant: the quantised arithmetic TensorRT runs, up to kernel rounding."""
    manifest = read_manifest(trt_bundle)
    graph = StageGraph.from_manifest(manifest, trt_bundle)
    runners = {
        p: onnxruntime_runners(
            {s: str(trt_bundle / e.path) for s, e in manifest.precisions[p].items()}, 1, None
        )
        for p in ("fp32", "int8-trt")
    }
    runs = [(graph.run(runners["fp32"], [w]), graph.run(runners["int8-trt"], [w])) for w in held_out]
    assert np.mean([cosine(a.features, b.features) for a, b in runs]) > MIN_TRT_FEATURE_COSINE
    assert np.mean([cosine(a.logits, b.logits) for a, b in runs]) > MIN_TRT_LOGIT_COSINE


def test_float_readers_of_quantised_activations_read_the_float_tensor(trt_bundle: Path) -> None:
    """A Shape or a residual Add reading a quantised GEMM input through its DequantizeLinear would give the Q a
    second DQ, and the residual stream a rounded copy (see detach_float_reads)."""
    from edgeser.quantize.graph import category_nodes

    residual_reads = 0
    for stage, model in graphs(trt_bundle, "int8-trt").items():
        info = GraphInfo(model)
        residual = set(category_nodes(model)["residual-add"])
        for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
            assert len(info.consumers.get(q.output[0], [])) == 1, f"{stage}: {q.name} feeds several DQ nodes"
            dq = info.consumers[q.output[0]][0]
            readers = info.consumers.get(dq.output[0], [])
            if any(r.op_type in ("MatMul", "Conv", "Gemm") for r in readers):  # a quantised GEMM input
                floats = [r.name for r in readers if r.op_type == "Shape" or r.name in residual]
                assert not floats, f"{stage}: {floats} read {dq.name}"
                source = q.input[0]
                smoothing = info.producer.get(source)
                if smoothing is not None and smoothing.name.endswith("/smooth/Mul"):  # GEMMs read X / s
                    source = smoothing.input[0]
                residual_reads += sum(c.name in residual for c in info.consumers.get(source, []))
    # the post-LN text encoder: each layer's residual reads the float activation its q/k/v GEMM quantises
    # (through SmoothQuant's division, quantize/smooth.py)
    assert residual_reads >= 6


def test_projections_reading_one_activation_become_one_gemm(cmgi_bundle: Path) -> None:
    import onnxruntime as ort

    source = cmgi_bundle / "fp32" / "text_encoder.onnx"
    model = onnx.load(str(source))
    keep = next(n.name for n in model.graph.node if n.name.endswith("layer.1/attention/self/query/MatMul"))
    merged = fuse_parallel_matmuls(model, skip=[keep])
    onnx.checker.check_model(model)
    assert len(merged) == 6 and all(len(m) == 3 for n, m in merged.items() if "layer.1/" not in n)
    assert [len(m) for n, m in merged.items() if "layer.1/" in n] == [2]  # key + value; the kept query alone
    assert keep in {n.name for n in model.graph.node}
    ids = np.array([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    before = ort.InferenceSession(str(source)).run(None, feeds)[0]
    after = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_fp16_graph_is_explicitly_typed(trt_bundle: Path, held_out: list[np.ndarray]) -> None:
    """What a strongly typed TensorRT network builds as it is: FP32 io, FP16 inside, Casts around FP32 ops."""
    settings = validate_bundle(trt_bundle, "fp16").extra["quantization"]["fp16"]
    assert settings["strongly_typed"] and settings["explicit_casts"]
    for stage, model in graphs(trt_bundle, "fp16").items():
        assert precision_conflicts(model) == [], stage
        types = tensor_types(model)
        float_io = [
            v
            for v in [*model.graph.input, *model.graph.output]
            if v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
        ]
        assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in float_io), stage
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert types[node.input[0]] == TensorProto.FLOAT, f"{stage}: {node.name} runs in FP32"
            if node.op_type == "MatMul" and all(
                types.get(i) in (TensorProto.FLOAT, TensorProto.FLOAT16) for i in node.input
            ):
                assert types[node.input[0]] == TensorProto.FLOAT16, f"{stage}: {node.name} runs in FP16"
        assert any(n.op_type == "Cast" for n in model.graph.node), stage
    manifest = read_manifest(trt_bundle)
    graph = StageGraph.from_manifest(manifest, trt_bundle)
    runners = {
        p: onnxruntime_runners(
            {s: str(trt_bundle / e.path) for s, e in manifest.precisions[p].items()}, 1, None
        )
        for p in ("fp32", "fp16")
    }
    for wave in held_out[:3]:  # FP16 runs in onnxruntime on CPU too, and follows fp32
        assert (
            cosine(graph.run(runners["fp32"], [wave]).logits, graph.run(runners["fp16"], [wave]).logits)
            > 0.999
        )


def test_int8_with_an_fp16_remainder_keeps_every_qdq_and_runs_it_in_fp16(
    trt_bundle: Path, held_out: list[np.ndarray]
) -> None:
    """int8-trt-fp16: the int8-trt Q/DQ pairs unchanged in number and scale (to FP16 rounding), Q reading and DQ
    writing FP16 (no Cast between a DQ and its GEMM), LayerNorm / Softmax in FP32, no mixed float inputs, FP32 io;
    onnxruntime runs it on CPU and it follows int8-trt."""
    int8, mixed = graphs(trt_bundle, "int8-trt"), graphs(trt_bundle, "int8-trt-fp16")
    settings = validate_bundle(trt_bundle, "int8-trt-fp16").extra["quantization"]["int8-trt-fp16"]
    assert settings["from"] == "int8-trt" and settings["opset"] == 19
    for stage, model in mixed.items():
        assert precision_conflicts(model) == [], stage
        types = tensor_types(model)
        producers = {o: n for n in model.graph.node for o in n.output}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert len(qdq) == sum(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in int8[stage].graph.node
        )
        assert qdq and all(types[n.input[1]] == TensorProto.FLOAT16 for n in qdq), stage
        scales_before = initializer_values(int8[stage])
        for name, value in initializer_values(model).items():
            if name.endswith("_scale") and name in scales_before and value.dtype == np.float16:
                np.testing.assert_allclose(
                    value.astype(np.float32), scales_before[name], rtol=1e-3, atol=6e-8
                )
        for node in model.graph.node:
            if node.op_type in ("MatMul", "Gemm", "Conv") and node.input[0] in producers:
                source = producers[node.input[0]]
                assert not (
                    source.op_type == "Cast"
                    and source.input[0] in producers
                    and producers[source.input[0]].op_type == "DequantizeLinear"
                ), f"{stage}: {node.name}"
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert types[node.input[0]] == TensorProto.FLOAT, f"{stage}: {node.name} runs in FP32"
        assert all(
            v.type.tensor_type.elem_type != TensorProto.FLOAT16
            for v in [*model.graph.input, *model.graph.output]
        )
    manifest = read_manifest(trt_bundle)
    graph = StageGraph.from_manifest(manifest, trt_bundle)
    runners = {
        p: onnxruntime_runners(
            {s: str(trt_bundle / e.path) for s, e in manifest.precisions[p].items()}, 1, None
        )
        for p in ("int8-trt", "int8-trt-fp16")
    }
    for wave in held_out[:3]:
        a, b = graph.run(runners["int8-trt"], [wave]), graph.run(runners["int8-trt-fp16"], [wave])
        assert cosine(a.features, b.features) > 0.99


def test_mixed_float_inputs_are_found() -> None:
    half = numpy_helper.from_array(np.ones(4, np.float16), "h")
    nodes = [
        helper.make_node("Add", ["x", "h"], ["y"], name="mixed"),
        helper.make_node("Pow", ["x", "e"], ["z"], name="pow"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [4]),
        ],
        [half, numpy_helper.from_array(np.array(2, np.float16), "e")],
    )
    assert precision_conflicts(helper.make_model(graph)) == [
        "mixed (Add): float16, float32"
    ]  # Pow's exponent is free


def test_int8_stays_float_where_it_is_slower(
    trt_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed gate: each quantised stage timed against fp32; the slower-in-INT8 stages keep the fp32 graph, and
    the figures and the CPU are in the settings. Timings are injected: nothing here depends on this machine."""
    from edgeser.machine import cpu_info
    from edgeser.quantize import speed

    bundle = Path(shutil.copytree(trt_bundle, tmp_path / "b"))  # calibrated, activation ranges cached
    timed: list[str] = []

    def fake_timer(fp32: Path, int8: Path, feeds: dict, threads: int, rounds: int) -> tuple[float, float]:
        timed.append(fp32.stem)
        assert threads == 3 and all(
            v.shape[0] == 1 for v in feeds.values()
        )  # batch 1, real calibration length
        return (10.0, 12.5) if fp32.stem == "audio_encoder" else (10.0, 4.0)

    monkeypatch.setattr(speed, "interleaved_medians", fake_timer)
    monkeypatch.setattr("edgeser.runtime.options.logical_cores", lambda: 4)  # 3 threads are within the cores
    quantize_int8(bundle, Int8Options(min_width=0, speed_threads=3))
    manifest = validate_bundle(bundle, "int8")
    settings = manifest.extra["quantization"]["int8"]
    assert settings["speed_gate"] and settings["measured_on"]["cpu_class"] == cpu_info()["cpu_class"]
    stages = settings["stages"]
    assert set(timed) == {s for s, r in stages.items() if r["speed"]}
    audio = stages["audio_encoder"]
    assert audio["precision"] == "fp32" and "slower than fp32" in audio["float_nodes"]["*"]
    assert audio["speed"] == {
        "fp32_ms": 10.0,
        "int8_ms": 12.5,
        "input": audio["speed"]["input"],
        "rounds": 5,
        "threads": 3,
        "speedup": 0.8,
        "kept": "fp32",
    }
    assert manifest.precisions["int8"]["audio_encoder"].sha256 == sha256_of(
        bundle / "fp32" / "audio_encoder.onnx"
    )
    text = stages["text_encoder"]
    assert text["precision"] == "int8" and text["speed"]["kept"] == "int8" and text["speed"]["speedup"] == 2.5


def test_first_conv_as_framing_and_one_gemm_computes_the_same(cmgi_bundle: Path) -> None:
    import onnxruntime as ort

    from edgeser.quantize.fuse import frame_first_conv
    from edgeser.quantize.graph import first_conv

    source = cmgi_bundle / "fp32" / "audio_encoder.onnx"
    model = onnx.load(str(source))
    conv = first_conv(GraphInfo(model))[0]
    gemm = frame_first_conv(model, conv)
    onnx.checker.check_model(model)
    assert gemm is not None and conv not in {n.name for n in model.graph.node}
    scope = conv.rsplit("/", 2)[0] + "/"  # .../conv_layers.0/: the Transpose to [B, T, C] went with the conv

    def transposes(graph: onnx.ModelProto) -> int:
        return sum(n.op_type == "Transpose" and n.name.startswith(scope) for n in graph.graph.node)

    assert transposes(model) == transposes(onnx.load(str(source))) - 1
    before, after = ort.InferenceSession(str(source)), ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(0)
    for length in (16_000, 16_003, 40_017):  # frame counts from the lengths; a padded batch of two
        waves = (0.1 * rng.standard_normal((2, length))).astype(np.float32)
        feeds = {"waveform": waves, "lengths": np.array([length, length - 4_000])}
        for x, y in zip(before.run(None, feeds), after.run(None, feeds)):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
    no_stride = onnx.load(str(source))
    assert frame_first_conv(no_stride, "no such node") is None
