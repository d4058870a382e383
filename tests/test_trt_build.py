"""`edgeser build-trt` without TensorRT: profiles, engine folders and manifests, refusals, inspector JSON."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeser.bundle import read_manifest
from edgeser.cli import EdgeserGroup
from edgeser.cli.trt import build_trt_command
from edgeser.errors import EngineError, InspectorError, MissingDependencyError, ProfileError
from edgeser.files import sha256_of, write_json_atomic
from edgeser.runtime.engines import (
    ENGINE_SCHEMA,
    DeviceIdentity,
    check_identity,
    check_sources,
    current_identity,
    engine_dir,
    find_engine_dir,
    read_engine_manifest,
    verified_engine_bytes,
)
from edgeser.runtime.profiles import InputProfile, axis_ranges, parse_profile_option, resolve_profiles
from edgeser.stages import apply_frame_layout
from edgeser.trt.inspector import data_type, parse_engine_information

DATA = Path(__file__).resolve().parent / "data" / "trt_inspector"
H200 = DeviceIdentity("NVIDIA H200", (9, 0), "10.16.1.11")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def calibrated(bundle: Path, tmp_path: Path, samples: dict, tokens: dict | None) -> Path:
    copy = Path(shutil.copytree(bundle, tmp_path / bundle.name))
    (copy / "calibration").mkdir(exist_ok=True)
    stats = {"samples": samples, **({"tokens": tokens} if tokens else {})}
    write_json_atomic(copy / "calibration" / "calibration.json", {"length_stats": stats})
    return copy


# ------------------------------------------------------------------------------------------ profiles


def test_profiles_default_to_calibration_lengths(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = calibrated(
        cmgi_bundle, tmp_path, {"min": 20_000, "opt": 41_000, "max": 70_500}, {"min": 3, "opt": 9, "max": 21}
    )
    manifest = read_manifest(bundle)
    ranges = axis_ranges(
        manifest, json.loads((bundle / "calibration/calibration.json").read_text())["length_stats"]
    )
    assert ranges["samples"] == (20_000, 41_000, 80_000)  # max rounded up to whole seconds
    frames = [int(f) for f in apply_frame_layout([20_000, 41_000, 80_000], manifest.frame_layout)]
    assert ranges["frames"] == tuple(frames)
    assert ranges["tokens"] == (3, 9, manifest.text_max_length)  # the tokenizer truncates there
    assert ranges["batch"] == (1, 1, 8)
    profiles, missing, source = resolve_profiles(bundle, manifest, list(manifest.stages))
    assert missing == [] and source == "calibration length statistics"
    assert profiles["audio_encoder"]["waveform"] == InputProfile((1, 20_000), (1, 41_000), (8, 80_000))
    assert profiles["fusion_head"]["features"].max == (8, frames[2], 32)
    assert profiles["text_encoder"]["attention_mask"].opt == (1, 9)


def test_pipeline_gives_the_tensorrt_ep_its_profiles_and_graph_checksums(
    cmgi_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeser.runtime.pipeline as pipeline
    from edgeser.runtime.sessions import OrtRunner

    bundle = calibrated(
        cmgi_bundle, tmp_path, {"min": 20_000, "opt": 41_000, "max": 70_500}, {"min": 3, "opt": 9, "max": 21}
    )
    seen: dict[str, dict[str, str]] = {}
    on_cpu = OrtRunner.load

    def load(
        path: Path, providers: list, threads: object, options: list, spin: bool, sha256: str | None = None
    ) -> OrtRunner:
        seen[path.stem] = options[0]
        return on_cpu(path)  # on the CPU: the EP is not in this onnxruntime

    monkeypatch.setattr(pipeline.OrtRunner, "load", load)
    pipeline.Pipeline.load(bundle, "fp32", backend="tensorrt-ep")
    manifest = read_manifest(bundle)
    assert set(seen) == set(manifest.stages)
    wave = seen["audio_encoder"]
    assert wave["trt_profile_min_shapes"].startswith("waveform:1x20000")
    assert "waveform:8x80000" in wave["trt_profile_max_shapes"]
    assert "attention_mask:1x9" in seen["text_encoder"]["trt_profile_opt_shapes"]
    for stage, options in seen.items():
        assert (
            options["trt_engine_cache_prefix"] == f"{stage}-{manifest.precisions['fp32'][stage].sha256[:16]}"
        )


def test_profile_overrides_and_their_errors(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = calibrated(cmgi_bundle, tmp_path, {"min": 16_000, "opt": 32_000, "max": 48_000}, None)
    manifest = read_manifest(bundle)
    profiles, missing, _ = resolve_profiles(
        bundle,
        manifest,
        ["audio_encoder", "text_encoder"],
        ("audio_encoder:waveform=1x8000,2x16000,4x96000",),
    )
    assert profiles["audio_encoder"]["lengths"] == InputProfile(
        (1,), (2,), (4,)
    )  # batch follows the override
    assert missing == ["text_encoder:input_ids", "text_encoder:attention_mask"]  # no token statistics
    assert parse_profile_option("ctc_head:features=1x4x32,1x9x32,8x99x32")[2].max == (8, 99, 32)
    for bad, match in [
        ("audio_encoder:waveform=1x8000,1x9000", "expected STAGE:INPUT"),
        ("audio_encoder:waveform=1x8000,1x4000,1x9000", "min <= opt <= max"),
        ("audio_encoder:wave=1x8000,1x8000,1x9000", "no input wave"),
        ("audio_encoder:waveform=8000,8000,9000", "rank 1"),
        ("ctc_head:features=1x4x16,1x4x16,1x4x16", "fixed at 32"),
        ("decoder:x=1,1,1", "no such stage"),
    ]:
        with pytest.raises(ProfileError, match=match):
            resolve_profiles(bundle, manifest, ["audio_encoder"], (bad,))


# ------------------------------------------------------------------------------------------ engine folders


def fake_engine_folder(bundle: Path, identity: DeviceIdentity = H200, precision: str = "fp32") -> Path:
    """An engine folder as build-trt writes it, with placeholder engine bytes (no TensorRT here)."""
    manifest = read_manifest(bundle)
    folder = engine_dir(bundle, identity, precision)
    folder.mkdir(parents=True)
    stages = {}
    for stage, entry in manifest.precisions[precision].items():
        (folder / f"{stage}.engine").write_bytes(f"engine:{stage}".encode())
        stages[stage] = {
            "engine": f"{stage}.engine",
            "sha256": sha256_of(folder / f"{stage}.engine"),
            "bytes": len(f"engine:{stage}"),
            "source": {"path": entry.path, "sha256": entry.sha256},
            "profiles": {},
            "layers": {},
            "build_seconds": 1.0,
        }
    write_json_atomic(
        folder / "manifest.json",
        {"schema": ENGINE_SCHEMA, "precision": precision, "device": identity.as_dict(), "stages": stages},
    )
    return folder


def test_engine_paths_name_gpu_compute_capability_and_version(tmp_path: Path) -> None:
    identity = DeviceIdentity("NVIDIA GeForce RTX 4090", (8, 9), "10.16.1.11")
    assert identity.folder == "nvidia-geforce-rtx-4090-sm89-trt10.16.1.11"
    assert engine_dir(tmp_path, identity, "int8") == tmp_path / "trt" / identity.folder / "int8"
    assert DeviceIdentity.from_dict(identity.as_dict()) == identity


def test_engines_for_another_machine_are_refused(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cmgi_bundle, tmp_path / "cmgi"))
    folder = fake_engine_folder(bundle)
    manifest = read_engine_manifest(folder)
    check_identity(folder, manifest, H200)
    for other, match in [
        (DeviceIdentity("NVIDIA A100-SXM4-80GB", (9, 0), "10.16.1.11"), "GPU 'NVIDIA H200'"),
        (DeviceIdentity("NVIDIA H200", (8, 7), "10.16.1.11"), "compute capability 9.0"),
        (
            DeviceIdentity("NVIDIA H200", (9, 0), "11.4.0.106"),
            r"TensorRT 10.16.1.11 \(this machine: 11.4.0.106\)",
        ),
    ]:
        with pytest.raises(EngineError, match=match):
            check_identity(folder, manifest, other)
    orin = DeviceIdentity("Orin", (8, 7), "10.3.0")
    with pytest.raises(
        EngineError,
        match=r"no TensorRT fp32 engines for this machine .*found only "
        r"nvidia-h200-sm90-trt10.16.1.11/fp32",
    ):
        find_engine_dir(bundle, orin, "fp32")
    assert find_engine_dir(bundle, H200, "fp32") == folder


def test_only_engines_matching_their_manifest_and_graphs_load(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cmgi_bundle, tmp_path / "cmgi"))
    folder = fake_engine_folder(bundle)
    manifest = read_engine_manifest(folder)
    assert verified_engine_bytes(folder, manifest, "ctc_head") == b"engine:ctc_head"
    (folder / "ctc_head.engine").write_bytes(b"engine:ctc_heaD")  # same size, other bytes
    with pytest.raises(EngineError, match="ctc_head.engine: checksum does not match manifest.json"):
        verified_engine_bytes(folder, manifest, "ctc_head")
    graphs = {stage: entry.sha256 for stage, entry in read_manifest(bundle).precisions["fp32"].items()}
    check_sources(folder, manifest, graphs)
    with pytest.raises(
        EngineError, match="the fusion_head engine was built from another fp32/fusion_head.onnx"
    ):
        check_sources(folder, manifest, {**graphs, "fusion_head": "0" * 64})
    (folder / "manifest.json").write_text("{")
    with pytest.raises(EngineError, match="corrupt engine manifest"):
        read_engine_manifest(folder)


# ------------------------------------------------------------------------------------------ inspector


def test_inspector_json_of_tensorrt_10() -> None:
    info = parse_engine_information((DATA / "engine-10x.json").read_text())
    assert info.layout == "10.x" and info.layers == 6 and info.unknown_layers == 0
    assert info.io_tensors == ["waveform", "lengths", "features", "frame_lengths"]
    # q_proj GEMM reads INT8 (and int8 weights) though it writes FP32; the Q layer reads FP32
    assert info.precision_counts == {"FP16": 1, "FP32": 3, "INT64": 1, "INT8": 1}
    assert info.by_layer_type["CaskGemmConvolution"] == {"FP16": 1, "INT8": 1}


def test_inspector_json_of_tensorrt_11() -> None:
    info = parse_engine_information(json.loads((DATA / "engine-11x.json").read_text()))
    assert info.layout == "11.x" and info.io_tensors == ["waveform", "lengths", "features", "frame_lengths"]
    assert info.precision_counts == {"FP16": 1, "FP32": 2, "INT8": 1}


def test_inspector_refuses_what_it_cannot_read() -> None:
    with pytest.raises(InspectorError, match="ProfilingVerbosity.DETAILED"):
        parse_engine_information({"Layers": ["conv", "relu"], "Bindings": []})
    with pytest.raises(InspectorError, match="not JSON"):
        parse_engine_information("Layers: conv")
    assert [
        data_type(t)
        for t in (
            "Half",
            "Row major linear INT8 format (kLINEAR)",
            "Float",
            "BFloat16",
            "FP8",
            "Int64",
            "Bool",
            "Channel major FP16 format where channel % 8 == 0",
        )
    ] == ["FP16", "INT8", "FP32", "BF16", "FP8", "INT64", "BOOL", "FP16"]


# ------------------------------------------------------------------------------------------ without TensorRT


def build_cli(*args: str):
    group = EdgeserGroup()
    group.add_command(build_trt_command)
    return CliRunner().invoke(group, ["build-trt", *args])


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_trt_without_tensorrt_is_one_line_and_exit_1(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(
        shutil.copytree(cmgi_bundle, tmp_path / "cmgi")
    )  # not calibrated either: TensorRT comes first
    result = build_cli(str(bundle), "--fp16", "--variant", "fp32")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(
        "error: building or running TensorRT engines needs tensorrt, which is not installed: "
    )
    assert "edgeser[trt]" in result.output and "https://pypi.nvidia.com" in result.output
    assert not (bundle / "trt").exists()
    with pytest.raises(MissingDependencyError, match="pip install"):
        current_identity()


def test_build_trt_usage_and_bundle_errors(cmgi_bundle: Path) -> None:
    assert build_cli(str(cmgi_bundle)).exit_code == 2
    result = build_cli(str(cmgi_bundle), "--int8")  # the INT8 graphs with the FP16 remainder, by default
    assert result.exit_code == 1 and "no 'int8-trt-fp16' variant" in result.output
    assert "quantize" in result.output and "--int8-trt-fp16" in result.output
    result = build_cli(str(cmgi_bundle), "--int8-fp32-remainder")
    assert (
        result.exit_code == 1 and "no 'int8-trt' variant" in result.output and "--int8-trt`" in result.output
    )


def test_builder_config_makes_one_profile_per_concurrent_context() -> None:
    from types import SimpleNamespace

    from edgeser.trt.build import BuildOptions, builder_config

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            self.shapes[name] = (low, opt, high)

    class Config:
        def __init__(self) -> None:
            self.profiles: list[Profile] = []

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> bytes:
            return data

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            return True

    config = Config()
    builder = SimpleNamespace(create_builder_config=lambda: config, create_optimization_profile=Profile)
    trt = SimpleNamespace(ProfilingVerbosity=SimpleNamespace(DETAILED="detailed"))
    wave = InputProfile((1, 8000), (1, 32000), (8, 160000))
    builder_config(trt, builder, BuildOptions("int8-trt", contexts=3), b"", {"waveform": wave})
    assert len(config.profiles) == 3 and len({id(p) for p in config.profiles}) == 3
    assert all(p.shapes == {"waveform": ((1, 8000), (1, 32000), (8, 160000))} for p in config.profiles)
