"""Export: dynamic axes, padded batches, the manifest and its checksums, refusals, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeser.assets import zoo_dir
from edgeser.bundle import validate_bundle
from edgeser.checkpoint import load_checkpoint
from edgeser.errors import BundleError, ModelError
from edgeser.export import exporter
from edgeser.runtime import Pipeline
from tests.conftest import tone


def test_manifest_describes_the_bundle(cmgi_bundle: Path, tiny_cmgi_checkpoint: Path) -> None:
    manifest = json.loads((cmgi_bundle / "bundle.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["model"] == "cmgi" and manifest["size"] == "small"
    assert manifest["labels"] == ["angry", "happy", "sad", "neutral"] and manifest["sample_rate"] == 16_000
    assert set(manifest["stages"]) == {"audio_encoder", "ctc_head", "text_encoder", "fusion_head"}
    assert manifest["stages"]["audio_encoder"]["inputs"][0] == {
        "name": "waveform",
        "dtype": "float32",
        "shape": ["batch", "samples"],
    }
    assert manifest["ctc"]["blank_id"] == 0 and manifest["ctc"]["tokens"][1] == "|"
    assert manifest["frame_layout"][0] == [10, 5, 0, 0] and manifest["opset"] == 18
    checkpoint_info = json.loads((tiny_cmgi_checkpoint / "checkpoint.json").read_text())
    assert manifest["source_checkpoint"]["weights_sha256"] == checkpoint_info["weights_sha256"]
    assert {"torch", "onnx", "onnxruntime", "edgeser"} <= set(manifest["versions"])
    for stage, entry in manifest["precisions"]["fp32"].items():
        graph = onnx.load(str(cmgi_bundle / entry["path"]))
        assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {18}
        assert not {n.op_type for n in graph.graph.node} & exporter.TRAINING_OPS, stage
    assert (cmgi_bundle / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "seconds", [(0.4,), (3.7,), (0.6, 2.2, 5.1)], ids=["b1-short", "b1-long", "b3-mixed"]
)
def test_dynamic_axes_match_torch(
    cmgi_bundle: Path, tiny_cmgi_checkpoint: Path, seconds: tuple[float, ...]
) -> None:
    model = load_checkpoint(tiny_cmgi_checkpoint)
    model.prepare_for_export()
    pipe = Pipeline.load(cmgi_bundle)
    waves = [tone(s, seed=i) for i, s in enumerate(seconds)]
    run = pipe.run_stages(waves)
    batch = torch.zeros(len(waves), max(w.size for w in waves))
    for row, wave in enumerate(waves):
        batch[row, : wave.size] = torch.from_numpy(wave)
    lengths = torch.tensor([w.size for w in waves])
    with torch.no_grad():
        features, frame_lengths = model.audio_encoder(batch, lengths)
        ids, mask = torch.from_numpy(run.input_ids), torch.from_numpy(run.attention_mask)
        logits = model.fusion_head(features, frame_lengths, model.text_encoder(ids, mask), mask)
    np.testing.assert_array_equal(run.frame_lengths, frame_lengths.numpy())
    for row, valid in enumerate(frame_lengths.tolist()):
        np.testing.assert_allclose(run.features[row, :valid], features[row, :valid].numpy(), atol=1e-4)
    np.testing.assert_allclose(run.logits, logits.numpy(), atol=1e-4)
    assert all(isinstance(t, str) for t in run.transcripts or [])


def test_padded_batch_equals_single_clips(cmgi_bundle: Path) -> None:
    pipe = Pipeline.load(cmgi_bundle)
    waves = [tone(s, seed=i, freq=150 + 40 * i) for i, s in enumerate((0.5, 1.9, 3.3))]
    together = pipe.run_stages(waves)
    for row, wave in enumerate(waves):
        alone = pipe.run_stages([wave])
        np.testing.assert_allclose(together.logits[row], alone.logits[0], atol=1e-4)
        assert together.transcripts[row] == alone.transcripts[0]


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_tampered_incomplete_and_newer_bundles_are_refused(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(cmgi_bundle, tmp_path)
    graph = bundle / "fp32" / "fusion_head.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch; the fusion_head graph was changed"):
        validate_bundle(bundle)
    (bundle / "fp32" / "ctc_head.onnx").unlink()
    with pytest.raises(BundleError, match="ctc_head graph listed in bundle.json is missing"):
        validate_bundle(bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["schema_version"] = 99
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema 99 is newer"):
        validate_bundle(bundle)
    (bundle / "bundle.json").write_text("{ not json")
    with pytest.raises(BundleError, match="corrupt manifest"):
        validate_bundle(bundle)
    with pytest.raises(BundleError, match="no 'int8' variant"):
        validate_bundle(cmgi_bundle, "int8")
    with pytest.raises(BundleError, match="not a bundle"):
        validate_bundle(tmp_path)


def test_failed_export_keeps_the_old_bundle(
    cmgi_bundle: Path, tiny_cmgi_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _copy(cmgi_bundle, tmp_path)
    before = (bundle / "bundle.json").read_bytes()
    real_export = exporter.export_stage

    def failing(stage, path, opset=exporter.OPSET):  # type: ignore[no-untyped-def]
        if stage.name == "fusion_head":
            raise RuntimeError("simulated crash mid-export")
        real_export(stage, path, opset)

    monkeypatch.setattr(exporter, "export_stage", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        exporter.export_bundle("cmgi", bundle, checkpoint=tiny_cmgi_checkpoint)
    assert (bundle / "bundle.json").read_bytes() == before
    validate_bundle(bundle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging folder left behind
    monkeypatch.setattr(exporter, "export_stage", real_export)
    exporter.export_bundle("cmgi", bundle, checkpoint=tiny_cmgi_checkpoint)  # a complete export replaces it
    validate_bundle(bundle)


def test_export_refuses_missing_checkpoint_and_wrong_model(
    tiny_cmgi_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="checkpoint folder not found"):
        exporter.export_bundle("cmgi", tmp_path / "b", checkpoint=tmp_path / "nope")
    with pytest.raises(ModelError, match="holds model 'cmgi', not 'gcf2net'"):
        exporter.export_bundle("gcf2net", tmp_path / "b", checkpoint=tiny_cmgi_checkpoint)
    with pytest.raises(ModelError, match="no shipped checkpoint for gcf2net/paper"):
        exporter.export_bundle("gcf2net", tmp_path / "b", size="paper")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["cmgi", "gcf2net", "mscnn_spu_att", "saser", "stfnet"])
def test_export_with_no_other_flag_exports_the_shipped_trained_default(name: str, tmp_path: Path) -> None:
    """`edgeser export --model NAME` exports NAME's shipped default: a trained checkpoint (its card gives the
    held-out figures and INT8 agreement), within the size budget, runnable by the runtime."""
    from click.testing import CliRunner

    from edgeser.cli import main

    shipped = zoo_dir() / "checkpoints" / name
    assert (shipped / "model.safetensors").stat().st_size <= 20e6  # packaged MiniLM / GloVe are referenced
    card = json.loads((shipped / "card.json").read_text())
    assert (
        card["runs"]
        and all("ua" in run["evaluation"] for run in card["runs"])
        and card["int8"]["agreement"] > 0
    )
    result = CliRunner().invoke(main, ["export", "--model", name, "--out", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    manifest = validate_bundle(tmp_path / name)
    assert manifest.source_checkpoint["kind"] == "checkpoint"
    assert Path(str(manifest.source_checkpoint["path"])).resolve() == shipped.resolve()
    prediction = Pipeline.load(tmp_path / name, threads=1)((tone(1.5), 16_000))
    assert prediction.label in manifest.labels
