"""`edgeser export`: a checkpoint (or zoo default, or random weights) to a bundle of ONNX stage graphs."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from edgeser.assets import zoo_dir
from edgeser.bundle import MANIFEST, TOKENIZER, BundleManifest, StageFile, apply_frame_layout
from edgeser.checkpoint import load_checkpoint, read_checkpoint_info
from edgeser.errors import BundleError, ModelError
from edgeser.export.stages import StageExport, stage_exports
from edgeser.files import atomic_dir, sha256_of, tool_versions, write_json_atomic
from edgeser.modelling.base import SerModel
from edgeser.modelling.registry import build_model, model_class
from edgeser.progress import STDERR, Progress

OPSET = 18
# Ops that only exist for training; an inference graph must not contain them.
TRAINING_OPS = {
    "Dropout",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Bernoulli",
}


@dataclass
class ExportResult:
    bundle: Path
    seconds: float
    bytes: int
    stages: dict[str, float]  # stage -> seconds


def default_checkpoint(model_name: str) -> Path | None:
    """The checkpoint the model zoo ships for `model_name`, if any (`edgeser/shipped/models/checkpoints/<name>`)."""
    path = zoo_dir() / "checkpoints" / model_name
    return path if (path / "checkpoint.json").is_file() else None


def prepare_model(
    model_name: str, size: str, checkpoint: Path | None, random_weights: bool
) -> tuple[SerModel, dict[str, Any]]:
    """Load what is to be exported; returns the model and the source description for the manifest.

    `random_weights` exports fresh weights (never the shipped checkpoint); otherwise `checkpoint`, else the
    zoo's shipped default for `model_name`/`size`.
    """
    model_class(model_name)  # an unknown name is the error, not a missing checkpoint
    if random_weights and checkpoint is not None:
        raise ModelError(f"{checkpoint}: --random-weights and --checkpoint exclude each other")
    if checkpoint is None and not random_weights:
        checkpoint = default_checkpoint(model_name) if size == "small" else None
        if checkpoint is None:
            raise ModelError(
                f"no shipped checkpoint for {model_name}/{size}: pass --checkpoint DIR (from `edgeser train`), "
                "or --random-weights for latency work"
            )
    if checkpoint is not None:
        info = read_checkpoint_info(checkpoint)
        if info["model"] != model_name:
            raise ModelError(f"{checkpoint}: checkpoint holds model {info['model']!r}, not {model_name!r}")
        model = load_checkpoint(checkpoint)
        source = {
            "kind": "checkpoint", "path": str(checkpoint), "weights_sha256": info.get("weights_sha256"),
            "provenance": info.get("provenance", {}), "metrics": (info.get("metrics") or {}).get("best"),
        }  # fmt: skip
    else:
        torch.manual_seed(0)
        labels = ["angry", "happy", "sad", "neutral"]
        overrides = {"random_weights": True} if size == "paper" else None
        model = build_model(model_name, size, labels, overrides=overrides)
        source = {"kind": "random_weights", "seed": 0}
    return model.prepare_for_export(), source  # e.g. fold HuBERT/wav2vec2 positional-conv weight norm


def export_stage(stage: StageExport, path: Path, opset: int = OPSET) -> None:
    """Trace one stage to ONNX with dynamic axes, then check it and refuse training-only ops."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            stage.module,
            stage.example,
            str(path),
            input_names=stage.input_names,
            output_names=stage.output_names,
            dynamic_axes=stage.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path), load_external_data=True)
    onnx.checker.check_model(model, full_check=True)
    found = {node.op_type for node in model.graph.node} & TRAINING_OPS
    if found:
        raise BundleError(f"{path}: exported graph still contains training-only ops {sorted(found)}")
    written = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise BundleError(f"{path}: expected opset {opset}, file declares {sorted(written)}")
    model.producer_name = "edgeser"
    onnx.save(model, str(path))


def frame_layout(model: SerModel) -> list[list[int]]:
    """[kernel, stride, total padding, min length] per time-reducing step of the audio encoder."""
    return [list(step) for step in model.frame_layout()]


# What `edgeser export` writes into a bundle; anything else there (calibration, variants, engines, reports)
# would be lost by replacing it.
EXPORTED = {MANIFEST, TOKENIZER, "fp32", "reports"}


def check_output(out: Path, force: bool) -> None:
    """Refuse to replace what export did not write: a file, a foreign folder, or a bundle's later work."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a folder; choose another --out")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise BundleError(f"{out}: {parent} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    if MANIFEST not in names:
        raise BundleError(f"{out}: a non-empty folder that is not an edgeser bundle; refusing to replace it")
    later = sorted(names - EXPORTED)
    if (out / "reports").is_dir() and any((out / "reports").iterdir()):
        later.append("reports/")
    if later and not force:
        raise BundleError(
            f"{out}: holds {', '.join(later)}, which re-exporting would delete; pass --force to "
            "replace them, or choose another --out"
        )


def check_frame_layout(model: SerModel, layout: list[list[int]]) -> None:
    """The declared layout must reproduce the encoder's own frame lengths on a range of clip lengths."""
    import numpy as np

    lengths = torch.tensor([400, 1601, 4001, 8000, 16_000, 24_017, 40_000, 72_000])
    with torch.no_grad():
        waves = torch.zeros(len(lengths), int(lengths.max()))
        _, frame_lengths = model.audio_encoder(waves, lengths)
    expected = apply_frame_layout(lengths.numpy(), layout)
    if not np.array_equal(expected, frame_lengths.numpy()):
        raise ModelError(
            f"{model.name}: frame layout {layout} gives {expected}, encoder gives {frame_lengths}"
        )


def export_bundle(
    model_name: str,
    out: Path,
    *,
    size: str = "small",
    checkpoint: Path | None = None,
    random_weights: bool = False,
    opset: int = OPSET,
    force: bool = False,
    progress: Progress = STDERR,
) -> ExportResult:
    """Export a zoo model (checkpoint, shipped default or random weights) into a bundle at `out`.

    An existing bundle is replaced whole when the new one is complete; one that holds calibration, variants,
    engines or reports is only replaced with `force`.
    """
    started = time.perf_counter()
    check_output(out, force)
    model, source = prepare_model(model_name, size, checkpoint, random_weights)
    result = write_bundle(model, out, source, opset, progress)
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def write_bundle(
    model: SerModel, out: Path, source: dict[str, Any], opset: int = OPSET, progress: Progress = STDERR
) -> ExportResult:
    """Export every stage into `out/fp32/`, write tokenizer and manifest; replaces `out` only when complete."""
    started = time.perf_counter()
    model_name, size = model.name, str(model.config.get("size", ""))
    layout = frame_layout(model)
    check_frame_layout(model, layout)
    stages = stage_exports(model)
    timings: dict[str, float] = {}
    with atomic_dir(out) as staging:
        (staging / "fp32").mkdir()
        files: dict[str, StageFile] = {}
        with progress.bar(stages, f"exporting {model_name}/{size}", lambda s: s.name) as bar:
            for stage in bar:
                stage_started = time.perf_counter()
                relative = f"fp32/{stage.name}.onnx"
                export_stage(stage, staging / relative, opset)
                files[stage.name] = StageFile(
                    relative, sha256_of(staging / relative), (staging / relative).stat().st_size
                )
                timings[stage.name] = round(time.perf_counter() - stage_started, 2)
        tokenizer = None
        if model.tokenizer is not None:
            model.tokenizer.save(str(staging / TOKENIZER))
            tokenizer = TOKENIZER
        manifest = BundleManifest(
            model=model_name,
            size=str(model.config.get("size", size)),
            labels=model.labels,
            sample_rate=16_000,
            stages={s.name: s.spec for s in stages},
            precisions={"fp32": files},
            opset=opset,
            frame_layout=layout,
            supports_padded_batch=bool(model.supports_padded_batch),
            ctc=model.vocab.to_dict() if model.ctc_head is not None and model.vocab is not None else None,
            tokenizer=tokenizer,
            text_max_length=model.config.get("text", {}).get("max_length") if model.uses_text else None,
            source_checkpoint=source,
            versions=tool_versions(),
        )
        write_json_atomic(staging / MANIFEST, manifest.to_dict())
        (staging / "reports").mkdir()
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return ExportResult(out, round(time.perf_counter() - started, 2), total, timings)
