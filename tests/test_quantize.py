"""Calibration, INT8 / dynamic INT8 / FP16 variants, accuracy-controlled INT8 and the variant check, on real clips."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeser.audio import load_audio
from edgeser.bundle import validate_bundle
from edgeser.calibrate import calibrate_bundle, read_calibration, select_calibration_set
from edgeser.calibrate.capture import calibration_sentences
from edgeser.checks.fidelity import VariantResult, check_calibration_leak, gate_failures
from edgeser.cli import main
from edgeser.data import load_corpus
from edgeser.data.splits import get_fold
from edgeser.errors import BundleError, SplitError
from edgeser.quantize import Int8Options, convert_fp16, quantize_int8, quantize_int8_dynamic
from edgeser.quantize.controlled import quantize_controlled
from edgeser.runtime import Pipeline
from tests.conftest import label_flipping_graph, write_label_flipping_variant
from tests.test_splits import synthetic_corpus

# A tiny random model: fidelity bounds are loose on labels (near-tied logits), tight on cosines.
MIN_INT8_LOGIT_COSINE = 0.99
MIN_INT8_AGREEMENT_TINY = 0.5
MIN_FP16_LOGIT_COSINE = 0.999
# The tiny test models are narrower than the default `--min-width` everywhere: quantise every width.
# ... and no stage kept float by timing (the speed gate): test graphs must not depend on the machine's load.
EVERY_WIDTH = Int8Options(min_width=0, speed_gate=False)


def tess(shared_data: Path) -> str:
    return f"tess:{shared_data / 'tess'}"


def copy_bundle(bundle: Path, target: Path) -> Path:
    return Path(shutil.copytree(bundle, target))


@pytest.fixture(scope="module")
def quantised(cmgi_bundle: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cmgi bundle calibrated on 8 TESS training-side clips, with int8, int8-dynamic and fp16
    variants (every width quantised)."""
    bundle = copy_bundle(cmgi_bundle, tmp_path_factory.mktemp("quantised") / "cmgi")
    workdir = tmp_path_factory.mktemp("cwd")
    with contextlib.chdir(workdir):  # onnxruntime's shape inference falls back to scratch files in the cwd
        calibrate_bundle(bundle, tess(shared_data), fold_index=0, samples=8)
        quantize_int8(bundle, EVERY_WIDTH)
        quantize_int8_dynamic(bundle, min_width=0)
        convert_fp16(bundle)
    assert list(workdir.iterdir()) == []  # the working directory holds nothing new
    assert not [p for p in bundle.iterdir() if ".edgeser-" in p.name]  # nor the bundle any scratch
    return bundle


@pytest.fixture(scope="module")
def eval_waves(shared_data: Path) -> list[np.ndarray]:
    corpus = load_corpus(tess(shared_data))
    utterances = corpus.subset(get_fold(corpus, 0).eval_ids)
    return [load_audio(u.path) for u in utterances[:: len(utterances) // 12][:12]]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# ------------------------------------------------------------------------------------------ calibration


def test_calibration_draws_the_training_side_and_caches_provenance(
    quantised: Path, shared_data: Path
) -> None:
    cache = read_calibration(quantised)
    corpus = load_corpus(tess(shared_data))
    fold = get_fold(corpus, 0)
    p = cache.provenance
    assert p["corpus"] == "tess" and p["fold"] == 0 and p["count"] == 8 == len(p["ids"])
    assert set(p["ids"]) <= set(fold.train_ids) and not set(p["ids"]) & set(fold.eval_ids)
    assert len(p["labels"]) == 7 and "training side" in p["pool"]  # stratified: every label present
    assert p["fp32_sha256"] == {s: e.sha256 for s, e in validate_bundle(quantised).precisions["fp32"].items()}
    clips = {k: t for k, t in cache.inputs.groups.items() if not k.startswith("text-")}
    for key, tensors in clips.items():  # fixed shapes per bucket group, as the calibrators need
        assert key.startswith(("w32000", "w64000"))
        assert tensors["waveform"].shape[1] in (32_000, 64_000) and tensors["waveform"].dtype == np.float32
        assert tensors["input_ids"].dtype == np.int64 and tensors["input_ids"].shape[1] % 8 == 0
        assert {t.shape[0] for t in tensors.values()} == {p["groups"][key]}
    assert sum(p["groups"][k] for k in clips) == 8


def test_the_text_encoder_calibrates_on_real_text_too(quantised: Path) -> None:
    """Besides the clips' CTC transcripts: their reference transcripts and the shipped sentences, as text-only
    groups that feed the text encoder and nothing after it."""
    cache = read_calibration(quantised)
    p = cache.provenance
    text = {k: t for k, t in cache.inputs.groups.items() if k.startswith("text-")}
    sentences = calibration_sentences()
    assert len(sentences) >= 100 and p["text"]["sentences"] == len(sentences)
    assert 1 <= p["text"]["reference_transcripts"] <= 8  # TESS: "say the word <word>"
    assert p["text"]["items"] == sum(int(t["input_ids"].shape[0]) for t in text.values())
    assert p["text"]["items"] >= len(sentences)
    for key, tensors in text.items():
        assert (
            set(tensors) == {"input_ids", "attention_mask"}
            and int(key[len("text-t") :]) == tensors["input_ids"].shape[1]
        )
    count = lambda stage, names: sum(len(f) for _, f in cache.stage_feeds(stage, names))  # noqa: E731
    assert count("text_encoder", ["input_ids", "attention_mask"]) == 8 + p["text"]["items"]
    assert count("fusion_head", ["features", "frame_lengths", "token_features", "attention_mask"]) == 8


def test_calibration_refuses_evaluation_clips(cmgi_bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(cmgi_bundle, tmp_path / "b")
    corpus = load_corpus(tess(shared_data))
    fold = get_fold(corpus, 0)
    ids = [fold.train_ids[0], fold.eval_ids[3]]
    with pytest.raises(SplitError, match="overlaps the evaluation split of fold 0"):
        calibrate_bundle(bundle, tess(shared_data), fold_index=0, ids=ids)
    assert not (bundle / "calibration").exists()
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    result = CliRunner().invoke(
        main, ["calibrate", str(bundle), "--data", tess(shared_data), "--ids", str(ids_file)]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().startswith("error: calibration set overlaps the evaluation split")


def test_iemocap_like_corpora_calibrate_on_one_held_out_session() -> None:
    corpus = synthetic_corpus(fold_key="group")  # two groups, like sessions
    fold = get_fold(corpus, 0)
    chosen = select_calibration_set(corpus, fold, 10)
    sessions = {u.group for u in chosen.utterances}
    assert len(sessions) == 1 and not sessions & {corpus.by_id()[i].group for i in fold.eval_ids}
    assert "held-out session" in chosen.source and len({u.label for u in chosen.utterances}) == 3


def test_quantize_needs_a_calibration_cache(cmgi_bundle: Path) -> None:
    with pytest.raises(
        BundleError, match=r"no calibration cache; run `edgeser calibrate .* --data \.\.\.` first"
    ):
        quantize_int8(cmgi_bundle)
    result = CliRunner().invoke(main, ["quantize", str(cmgi_bundle), "--int8"])
    assert result.exit_code == 1 and f"error: {cmgi_bundle}: no calibration cache" in result.output


# ------------------------------------------------------------------------------------------ variants


def test_int8_is_qdq_with_float_exclusions_and_listed(quantised: Path) -> None:
    manifest = validate_bundle(quantised, "int8")  # listed, every file present with its checksum
    settings = manifest.extra["quantization"]["int8"]
    assert settings["format"] == "QDQ" and settings["method"] == "percentile" and settings["per_channel"]
    assert settings["op_types"] == ["MatMul", "Conv", "Gemm", "Gather"]
    assert settings["calibration"]["count"] == 8
    for stage, entry in manifest.precisions["int8"].items():
        graph = onnx.load(str(quantised / entry.path)).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, stage
        producer = {o: n for n in graph.node for o in n.output}
        for node in graph.node:  # LayerNorm / Softmax stay float ops, not fed by a DequantizeLinear
            if node.op_type in {"LayerNormalization", "Softmax"}:
                assert (
                    producer.get(node.input[0]) is None
                    or producer[node.input[0]].op_type != "DequantizeLinear"
                )
            assert not node.op_type.startswith("QLinear")
    text = onnx.load(str(quantised / "int8/text_encoder.onnx")).graph
    producer = {o: n for n in text.node for o in n.output}
    bias_adds = [n for n in text.node if n.op_type == "Add" and n.name.endswith("output/dense/Add")]
    assert len(bias_adds) == 12  # attention output and FFN output of 6 layers, feeding residual Adds
    for add in bias_adds:  # the residual stream gets the MatMul output at full precision
        assert {producer[i].op_type for i in add.input if i in producer} == {"MatMul"}, add.name
    assert settings["stages"]["text_encoder"]["float_outputs"] >= 12
    # attention runs as onnxruntime's float MultiHeadAttention in the CPU graph (quantize/ort_fusions.py)
    assert (
        settings["fuse_attention"]
        and settings["stages"]["text_encoder"]["op_counts"]["MultiHeadAttention"] == 6
    )
    assert [n.op_type for n in text.node].count("MultiHeadAttention") == 6
    audio = onnx.load(str(quantised / "int8/audio_encoder.onnx")).graph
    producer = {o: n for n in audio.node for o in n.output}
    # the first conv is framing + a float Gemm in the int8 graph (quantize/fuse.py: frame_first_conv)
    first_conv = next(n for n in audio.node if n.name.endswith("conv_layers.0/conv/framed/Gemm"))
    assert all(i not in producer or producer[i].op_type != "DequantizeLinear" for i in first_conv.input)
    pos_conv = next(n for n in audio.node if n.name.endswith("pos_conv_embed/conv/Conv"))
    assert settings["stages"]["audio_encoder"]["float_nodes"] == {
        first_conv.name.replace("/framed/Gemm", "/Conv"): "first-conv",
        pos_conv.name: "grouped-conv",
    }
    second_conv = next(n for n in audio.node if n.name.endswith("conv_layers.1/conv/Conv"))
    assert {producer[i].op_type for i in second_conv.input[:2]} == {"DequantizeLinear"}


def test_matmul_weights_only_keeps_activation_matmuls_float(quantised: Path, tmp_path: Path) -> None:
    """`matmul_weights_only`: the attention MatMuls (two activations, no weight) get no Q/DQ in the QDQ graph,
    while the projections keep theirs (onnxruntime's MatMulConstBOnly alone changed nothing in QDQ mode)."""
    bundle = copy_bundle(quantised, tmp_path / "cmgi")
    with contextlib.chdir(tmp_path):
        quantize_int8(bundle, replace(EVERY_WIDTH, matmul_weights_only=True, fuse_attention=False))
    settings = validate_bundle(bundle, "int8").extra["quantization"]["int8"]
    for stage in ("audio_encoder", "text_encoder"):
        graph = onnx.load(str(bundle / "int8" / f"{stage}.onnx")).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        constants = {i.name for i in graph.initializer}
        matmuls = [n for n in graph.node if n.op_type == "MatMul"]
        # in the int8 graph a weight arrives through its DequantizeLinear; an activation x activation MatMul is
        # one whose two inputs come from float ops
        float_fed = [
            n for n in matmuls if all(producer.get(i) not in {"DequantizeLinear", None} for i in n.input)
        ]
        weight_fed = [
            n
            for n in matmuls
            if any(i in constants or producer.get(i) == "DequantizeLinear" for i in n.input[1:])
        ]
        assert len(float_fed) >= 2 and len(weight_fed) >= 4, stage  # attention (QK^T, PV) and the projections
        kept = {
            name
            for name, why in settings["stages"][stage]["float_nodes"].items()
            if why == "matmul_weights_only"
        }
        assert {n.name for n in float_fed} <= kept, stage
        assert all(
            producer.get(n.input[0]) == "DequantizeLinear" for n in weight_fed if n.name not in kept
        ), stage


def test_attention_can_stay_in_standard_onnx_ops(quantised: Path, tmp_path: Path) -> None:
    """`--no-fuse-attention`: an int8 graph for onnxruntime builds without contrib ops."""
    bundle = copy_bundle(quantised, tmp_path / "cmgi")
    args = ["quantize", str(bundle), "--int8", "--no-fuse-attention", "--no-speed-gate", "--min-width", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    settings = validate_bundle(bundle, "int8").extra["quantization"]["int8"]
    assert settings["fuse_attention"] is False
    assert not any("MultiHeadAttention" in stage["op_counts"] for stage in settings["stages"].values())
    for stage in ("audio_encoder", "text_encoder"):
        ops = {n.op_type: n.domain for n in onnx.load(str(bundle / "int8" / f"{stage}.onnx")).graph.node}
        assert "Softmax" in ops and not any(ops.values()), stage  # plain ONNX ops only


def test_narrow_gemms_are_found_from_weights_and_inferred_shapes() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from edgeser.quantize.graph import resolve_exclusions

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x40", "w40"], ["a"], name="proj40"),  # 40 -> 40: narrow
        helper.make_node("MatMul", ["x128", "w128"], ["b"], name="proj128"),  # 128 -> 128: wide
        helper.make_node("Gemm", ["x128", "w7"], ["c"], name="classifier", transB=1),  # 128 -> 7 classes
        helper.make_node("Conv", ["img", "k8"], ["d"], name="conv8"),  # 8 output channels
        helper.make_node("Conv", ["img", "k64"], ["e"], name="conv64"),  # 64 channels, 9 inputs: narrow
        helper.make_node("MatMul", ["q", "kt"], ["f"], name="scores"),  # head size 10 (inferred)
        helper.make_node("MatMul", ["probs", "v128"], ["g"], name="mix"),  # keys x 128: wide (keys unknown)
        helper.make_node("Conv", ["seq", "kg"], ["h"], name="pos_conv", group=16),  # 128 in, 128 out, grouped
    ]
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(n, f, s)
        for n, s in [
            ("x40", ["T", 40]),
            ("x128", ["T", 128]),
            ("img", [1, 1, 20, "T"]),
            ("q", [4, "T", 10]),
            ("kt", [4, 10, "T"]),
            ("probs", [1, "T", "T"]),
            ("v128", [1, "T", 128]),
            ("seq", [1, 128, "T"]),
        ]
    ]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in "abcdefgh"]
    inits = [
        weight("w40", 40, 40),
        weight("w128", 128, 128),
        weight("w7", 7, 128),
        weight("k8", 8, 1, 3, 3),
        weight("k64", 64, 1, 3, 3),
        weight("kg", 128, 8, 16),
    ]
    model = helper.make_model(helper.make_graph(nodes, "widths", inputs, outputs, inits))
    narrow = {n for n, why in resolve_exclusions(model).reasons.items() if why == "narrow"}
    assert narrow == {"proj40", "classifier", "conv8", "conv64", "scores"}
    assert resolve_exclusions(model).reasons["pos_conv"] == "grouped-conv"
    assert {n for n, why in resolve_exclusions(model, min_width=32).reasons.items() if why == "narrow"} == {
        "classifier",
        "conv8",
        "conv64",
        "scores",
    }
    assert set(resolve_exclusions(model, min_width=0).reasons) == {"pos_conv"}


def test_front_end_and_narrow_models_stay_float(tmp_path: Path, shared_data: Path) -> None:
    """An in-graph STFT/mel front end (stfnet) is excluded whole: its conv and mel MatMul see no Q/DQ. By
    default the small stfnet, every layer narrower than 64, is not quantised at all (and the CLI says so)."""
    from edgeser.export.exporter import export_bundle

    bundle = export_bundle("stfnet", tmp_path / "stfnet", random_weights=True).bundle
    calibrate_bundle(bundle, f"emodb:{shared_data / 'emodb'}", samples=6)
    result = CliRunner().invoke(main, ["quantize", str(bundle), "--int8"])
    assert result.exit_code == 0, result.output
    assert "int8 quantised no node" in result.output
    stages = validate_bundle(bundle, "int8").extra["quantization"]["int8"]["stages"]
    assert {r["precision"] for r in stages.values()} == {"fp32"}
    assert "narrow" in stages["audio_encoder"]["float_nodes"].values()
    assert stages["fusion_head"]["float_nodes"] == {"/classifier/Gemm": "narrow"}  # a 7-class classifier
    quantize_int8(bundle, EVERY_WIDTH)
    graph = onnx.load(str(bundle / "int8/audio_encoder.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    front = [n for n in graph.node if n.name.startswith("/frontend/") and n.op_type in {"Conv", "MatMul"}]
    assert {n.op_type for n in front} == {"Conv", "MatMul"} and len(front) >= 3  # STFT, mel, DCT
    for node in front:
        assert all(i not in producer or producer[i].op_type != "DequantizeLinear" for i in node.input), (
            node.name
        )
    assert any(
        n.name.startswith("/cnns")
        and n.op_type == "Conv"
        and producer[n.input[0]].op_type == "DequantizeLinear"
        for n in graph.node
    )


def test_int8_agrees_with_fp32_on_real_clips(quantised: Path, eval_waves: list[np.ndarray]) -> None:
    fp32 = Pipeline.load(quantised, "fp32", threads=1)
    int8 = Pipeline.load(quantised, "int8", threads=1)
    runs = [(fp32.run_stages([w]), int8.run_stages([w])) for w in eval_waves]
    logit_cos = [cos(a.logits, b.logits) for a, b in runs]
    feature_cos = [cos(a.features, b.features) for a, b in runs]
    agreement = np.mean([np.argmax(a.logits) == np.argmax(b.logits) for a, b in runs])
    assert np.mean(feature_cos) > 0.99 and np.mean(logit_cos) > MIN_INT8_LOGIT_COSINE
    assert agreement >= MIN_INT8_AGREEMENT_TINY
    assert sum(e.bytes for e in int8.manifest.precisions["int8"].values()) < 0.7 * sum(
        e.bytes for e in fp32.manifest.precisions["fp32"].values()
    )


# Conversational sentences none of which is in edgeser/calibrate/data/sentences.txt.
HELD_OUT_SENTENCES = [
    "kids are talking by the door",
    "i can't believe you did that to me again",
    "that is the best news i have heard all year",
    "please leave me alone right now",
    "what time does the train leave tomorrow",
    "this is absolutely ridiculous and i want a refund",
    "oh my god there is a spider on the wall",
    "my flight was cancelled and nobody told me",
    "thank you so much for the lovely present",
    "i have been waiting on hold for forty minutes",
    "why would anyone eat that it smells awful",
    "my mother passed away last week",
]


def sentence_cosines(bundle: Path, precision: str) -> list[float]:
    """Token-feature cosine of the `precision` text encoder with fp32 on HELD_OUT_SENTENCES (the same tokens)."""
    fp32, other = (Pipeline.load(bundle, p, threads=1) for p in ("fp32", precision))
    cosines = []
    for sentence in HELD_OUT_SENTENCES:
        ids, mask = fp32.graph.tokenize([sentence])
        feeds = {"input_ids": ids, "attention_mask": mask}
        a, b = (
            pipe.graph.run_stage(pipe.runners, "text_encoder", feeds)["token_features"]
            for pipe in (fp32, other)
        )
        cosines.append(cos(a, b))
    return cosines


def test_int8_text_encoder_follows_fp32_on_sentences_it_never_saw(quantised: Path, tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 of the tiny cmgi. Calibrated on the CTC transcripts alone (a handful of
    letter strings) its ranges and SmoothQuant scales do not hold for real text; with the shipped sentences
    they do. Both margins are far from INT8 rounding differences between CPUs."""
    calibrated = sentence_cosines(quantised, "int8")
    assert np.mean(calibrated) > 0.99 and min(calibrated) > 0.98, calibrated
    bundle = copy_bundle(quantised, tmp_path / "b")
    with contextlib.chdir(tmp_path):
        calibrate_bundle(
            bundle,
            read_calibration(quantised).provenance["data_spec"],
            fold_index=0,
            samples=8,
            text_sentences=False,
        )
        quantize_int8(bundle, replace(EVERY_WIDTH, stages=("text_encoder",)))
    transcripts_only = sentence_cosines(bundle, "int8")
    assert np.mean(calibrated) > np.mean(transcripts_only) + 0.01, (calibrated, transcripts_only)


def test_dynamic_and_fp16_variants_load_and_run(quantised: Path, eval_waves: list[np.ndarray]) -> None:
    manifest = validate_bundle(quantised, "int8-dynamic")
    graph = onnx.load(str(quantised / manifest.precisions["int8-dynamic"]["text_encoder"].path)).graph
    assert "MatMulInteger" in {n.op_type for n in graph.node} and "ConvInteger" not in {
        n.op_type for n in graph.node
    }
    manifest = validate_bundle(quantised, "fp16")
    graph = onnx.load(str(quantised / manifest.precisions["fp16"]["text_encoder"].path)).graph
    dtypes = {i.data_type for i in graph.initializer if i.dims and np.prod(i.dims) > 1000}
    assert dtypes == {onnx.TensorProto.FLOAT16}  # big weights are float16
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT64}  # io types kept
    fp32 = Pipeline.load(quantised, "fp32", threads=1)
    for precision, bound in (("int8-dynamic", MIN_INT8_LOGIT_COSINE), ("fp16", MIN_FP16_LOGIT_COSINE)):
        pipe = Pipeline.load(quantised, precision, threads=1)
        wave = eval_waves[0]
        assert cos(pipe.run_stages([wave]).features, fp32.run_stages([wave]).features) > bound, precision


def test_failed_quantisation_leaves_the_manifest_unchanged(
    quantised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime.quantization as ortq

    bundle = copy_bundle(quantised, tmp_path / "b")
    shutil.rmtree(bundle / "int8")
    manifest = json.loads((bundle / "bundle.json").read_text())
    del manifest["precisions"]["int8"]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    before = (bundle / "bundle.json").read_bytes()
    real = ortq.quantize_static

    def failing(model_input, model_output, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(model_output).name == "ctc_head.onnx":
            raise RuntimeError("simulated crash mid-quantisation")
        return real(model_input, model_output, *args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        quantize_int8(bundle, EVERY_WIDTH)
    assert (bundle / "bundle.json").read_bytes() == before
    assert not (bundle / "int8").exists() and not [p for p in bundle.iterdir() if p.name.startswith(".int8")]
    with pytest.raises(BundleError, match="no 'int8' variant"):
        Pipeline.load(bundle, "int8")
    validate_bundle(bundle, "int8-dynamic")  # the other variants are untouched


# ------------------------------------------------------------------------------------------ checks


def test_check_writes_reports_and_gates_fail(quantised: Path, shared_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(quantised, tmp_path / "b")
    write_label_flipping_variant(bundle, "int8-dynamic")  # deliberately broken: every label changes
    args = [
        "check",
        str(bundle),
        "--data",
        tess(shared_data),
        "--limit",
        "6",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--min-agreement",
        "1.0",
        "--json",
    ]
    result = CliRunner().invoke(main, args)  # plain `check BUNDLE` routes to `check variants`
    assert result.exit_code == 1, result.output
    report = json.loads((bundle / "reports" / "variants.json").read_text())
    assert not report["passed"] and "int8-dynamic: label agreement 0.00% < 100.00%" in report["failures"]
    names = [v["name"] for v in report["variants"]]
    assert names == ["pytorch", "fp32", "int8", "int8-dynamic", "fp16"]
    variants = {v["name"]: v for v in report["variants"]}
    assert (
        variants["fp32"]["agreement"] == 1.0
        and variants["fp32"]["stage_cosine"]["fusion_head"]["min"] > 0.9999
    )
    flipped = variants["int8-dynamic"]
    assert (
        flipped["agreement_fp32"] == 0.0 and flipped["stage_cosine"]["fusion_head"]["min"] < 0
    )  # attributed
    assert flipped["stage_cosine"]["audio_encoder"]["min"] > 0.9999  # upstream stages are untouched
    assert (
        report["clips"] == 6 and report["skipped_labels"]
    )  # TESS labels the 4-class model lacks are skipped
    int8 = variants["int8"]
    assert int8["size_bytes"] < variants["fp32"]["size_bytes"]
    assert {"p50", "p95", "p99"} <= set(int8["latency_ms"]["end_to_end"]) and int8["rtf"]["p50"] > 0
    assert {"ua", "wa", "macro_f1", "cer", "wer"} <= set(int8["metrics"]) and "ua" in int8["delta"]
    assert set(int8["stage_cosine"]) == {"audio_encoder", "ctc_head", "text_encoder", "fusion_head"}
    assert variants["fp16"]["status"] in {"ok", "not run"}
    for name in (
        "variants.md",
        "variants-latency.png",
        "variants-size-rtf.png",
        "variants-accuracy.png",
        "variants-fidelity.png",
    ):
        assert (bundle / "reports" / name).stat().st_size > 0
    markdown = (bundle / "reports" / "variants.md").read_text()
    assert "**FAILED**" in markdown and "![variants-fidelity](variants-fidelity.png)" in markdown
    assert "reports:" in result.stderr and "variants-latency.png" in result.stderr
    passing = CliRunner().invoke(
        main,
        [
            "check",
            "variants",
            str(bundle),
            "--data",
            tess(shared_data),
            "--limit",
            "3",
            "--no-float",
            "--precisions",
            "int8",
            "--no-plots",
            "--warmup",
            "0",
        ],
    )
    assert passing.exit_code == 0, passing.output
    assert "| int8 |" in passing.output and "| int8-dynamic |" not in passing.output


def test_gates_name_each_missed_bound() -> None:
    def variant(name: str, ua_delta: float, agreement: float) -> VariantResult:
        return VariantResult(name, delta={"ua": ua_delta}, agreement=agreement)

    results = [
        variant("pytorch", 0.0, 1.0),
        variant("fp32", 0.0, 1.0),
        variant("int8", -1.5, 0.98),
        variant("fp16", 0.4, 1.0),
        VariantResult("int8-dynamic", status="not run"),
    ]
    assert gate_failures(results, None, None) == []
    assert gate_failures(results, 1.0, 0.99) == [
        "int8: UA drop 1.50 points > 1",
        "int8: label agreement 98.00% < 99.00%",
    ]
    assert gate_failures(results, 1.5, 0.98) == []


def test_check_refuses_an_evaluation_split_that_was_calibrated_on(quantised: Path, shared_data: Path) -> None:
    corpus = load_corpus(tess(shared_data))
    assert check_calibration_leak(quantised, "tess", get_fold(corpus, 0))["corpus"] == "tess"
    with pytest.raises(SplitError, match="calibration set overlaps the evaluation split of fold 1"):
        check_calibration_leak(
            quantised, "tess", get_fold(corpus, 1)
        )  # fold 1 evaluates the calibration speaker


def test_accuracy_controlled_mode_keeps_a_stage_float_at_bound_zero(quantised: Path, tmp_path: Path) -> None:
    """The search is driven by measurements: a fusion head whose "INT8" graph flips every label (built that way
    on purpose; the other stages' candidates compute exactly what fp32 does) must end up float, with the rest
    quantised, whatever CPU runs the test."""
    from edgeser.quantize import StageReport

    bundle = copy_bundle(quantised, tmp_path / "b")
    built: list[tuple[str, int]] = []

    def build_stage(stage: str, fp32: Path, out: Path, float_nodes: frozenset[str]) -> StageReport:
        built.append((stage, len(float_nodes)))
        if stage == "fusion_head" and len(float_nodes) < quantisable_in_fusion_head:
            label_flipping_graph(fp32, out)
        else:
            shutil.copyfile(fp32, out)
        return StageReport("int8")

    from edgeser.quantize.graph import quantisable_nodes

    fusion = onnx.load(str(bundle / "fp32" / "fusion_head.onnx"))
    quantisable_in_fusion_head = len(quantisable_nodes(fusion, EVERY_WIDTH.op_types))
    report = quantize_controlled(
        bundle,
        0.0,
        options=EVERY_WIDTH,
        validation_clips=8,
        max_evaluations=12,
        threads=1,
        build_stage=build_stage,
    )
    assert report.validation["clips"] == 8
    cache = read_calibration(bundle)
    assert not set(report.validation["ids"]) & set(cache.ids)  # measured off the calibration clips too
    assert report.measurements[0].what == "all stages int8" and not report.measurements[0].within
    assert report.measurements[0].agreement == 0.0
    assert set(report.float_stages) == {"fusion_head"}
    assert report.stage_sensitivity["fusion_head"]["agreement"] == 0.0
    assert all(
        report.stage_sensitivity[s]["agreement"] == 1.0
        for s in report.stage_sensitivity
        if s != "fusion_head"
    )
    assert report.final is not None and report.final.within and report.final.drop_bound == 0.0
    assert set(report.quantized_stages) == {"audio_encoder", "ctc_head", "text_encoder"}
    assert all(
        report.float_groups["fusion_head"].values()
    )  # every group of it flips labels alone: kept, with why
    manifest = validate_bundle(bundle, "int8")
    assert manifest.extra["quantization"]["int8"]["stages"]["fusion_head"]["precision"] == "fp32"
    written = json.loads((bundle / "reports" / "quantization.json").read_text())
    assert (
        written["float_stages"]
        and "Kept in float, and why" in (bundle / "reports" / "quantization.md").read_text()
    )


def test_accuracy_controlled_mode_keeps_everything_int8_within_a_loose_bound(
    quantised: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(quantised, tmp_path / "b")
    report = quantize_controlled(bundle, 100.0, options=EVERY_WIDTH, validation_clips=4, threads=1)
    assert report.evaluations == 1 and report.final is not None and report.final.within
    assert not report.float_stages and set(report.quantized_stages) == {
        "audio_encoder",
        "ctc_head",
        "text_encoder",
        "fusion_head",
    }
    assert "Nothing kept in float" in (bundle / "reports" / "quantization.md").read_text()


def test_check_lists_tensorrt_engines_and_says_why_they_did_not_run(
    quantised: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Engines built by `build-trt` join the check where this machine can run them; here (no TensorRT, no GPU)
    their row says why not, and the ONNX variants are still checked."""
    from edgeser.checks.fidelity import check_variants

    bundle = copy_bundle(quantised, tmp_path / "b")
    folder = bundle / "trt" / "nvidia-h200-sm90-trt10.16.1" / "int8"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    report = check_variants(
        bundle,
        tess(shared_data),
        limit=2,
        precisions=["int8"],
        include_float=False,
        warmup=0,
        threads=1,
        plots=False,
    )
    row = report.variant("tensorrt-int8")
    assert row is not None and row.status == "not run" and "TensorRT" in row.note
    assert report.variant("int8").status == "ok" and report.passed
