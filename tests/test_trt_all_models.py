"""`edgeser doctor --target tensorrt` passes the fp32, int8-trt and fp16 graphs of all five zoo models (their
small architectures, random weights; tiny acoustic encoders for the two HuBERT/wav2vec2 models), and flags the
CPU-only dynamic INT8 variant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeser.calibrate import calibrate_bundle
from edgeser.export.exporter import write_bundle
from edgeser.modelling.registry import build_model
from edgeser.quantize import Int8Options, convert_fp16, quantize_int8_dynamic
from edgeser.quantize.variants import quantize_int8_tensorrt
from edgeser.trt.doctor import run_doctor
from edgeser.trt.operators import parse_target
from tests.conftest import TINY_HUBERT

MODELS = ["cmgi", "gcf2net", "mscnn_spu_att", "saser", "stfnet"]
OVERRIDES = {"cmgi": {"acoustic": TINY_HUBERT}, "gcf2net": {"acoustic": {**TINY_HUBERT, "type": "wav2vec2"}}}


@pytest.mark.parametrize("name", MODELS)
def test_doctor_passes_every_tensorrt_variant_of_every_model(
    name: str, shared_data: Path, tmp_path: Path, torch_one_thread: None
) -> None:
    from edgeser.data import load_corpus

    labels = load_corpus(f"emodb:{shared_data / 'emodb'}").labels
    torch.manual_seed(0)
    model = build_model(name, "small", labels, overrides=OVERRIDES.get(name)).prepare_for_export()
    bundle = tmp_path / name
    write_bundle(model, bundle, {"kind": "random_weights", "seed": 0})
    calibrate_bundle(bundle, f"emodb:{shared_data / 'emodb'}", samples=4, threads=1)
    quantize_int8_tensorrt(bundle, Int8Options.tensorrt(min_width=0))  # every width: all op kinds get Q/DQ
    convert_fp16(bundle)
    for target in ("tensorrt:10", "tensorrt:11"):
        report = run_doctor(bundle, parse_target(target))
        assert report.precisions == ["fp32", "int8-trt", "fp16"]
        assert report.passed, [f"{f.precision}/{f.stage}: {f.message}" for f in report.errors][:5]
    quantize_int8_dynamic(bundle, min_width=0)
    dynamic = run_doctor(bundle, parse_target("tensorrt:10"), ["int8-dynamic"])  # CPU-only: must be refused
    assert not dynamic.passed
    assert any("DynamicQuantizeLinear" in f.message or "MatMulInteger" in f.message for f in dynamic.errors)
