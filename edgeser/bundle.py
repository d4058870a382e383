"""The bundle manifest (`bundle.json`): what export writes and what the runtime validates.

Torch-free: the lean runtime reads bundles with nothing but the standard library.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from edgeser.errors import BundleError
from edgeser.files import sha256_of
from edgeser.stages import STAGE_ORDER, apply_frame_layout

__all__ = [
    "CALIBRATION_METHODS",
    "MANIFEST",
    "PRECISIONS",
    "TOKENIZER",
    "BundleManifest",
    "CalibrationMethod",
    "Precision",
    "StageFile",
    "StageSpec",
    "TensorSpec",
    "apply_frame_layout",
    "read_manifest",
    "sha256_of",
    "validate_bundle",
]

BUNDLE_SCHEMA = 1
MANIFEST = "bundle.json"
TOKENIZER = "tokenizer.json"
# int8: the CPU default (u8 activations); int8-trt: symmetric s8 Q/DQ for TensorRT; int8-dynamic: CPU only.
Precision = Literal["fp32", "fp16", "int8", "int8-trt", "int8-trt-fp16", "int8-dynamic"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
# How static INT8 estimates activation ranges (onnxruntime's CalibrationMethod; `quantize --method`), recorded in
# bundle.json's quantization settings. Here, torch- and onnx-free, so the command line lists it without importing
# the quantiser (`edgeser.quantize.ranges` maps it).
CalibrationMethod = Literal["minmax", "percentile", "entropy"]
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = get_args(CalibrationMethod)
# Variants written for onnxruntime on the CPU, not for TensorRT (the doctor skips them, the TensorRT EP refuses them).
CPU_VARIANTS = {
    "int8": "the CPU INT8 variant (u8 activations); `quantize --int8-trt` writes TensorRT's",
    "int8-dynamic": "dynamic INT8 runs on onnxruntime's CPU kernels only",
}


@dataclass(frozen=True)
class TensorSpec:
    """One stage input or output: name, element type and axes (strings are dynamic axis names)."""

    name: str
    dtype: str
    shape: list[str | int]


@dataclass(frozen=True)
class StageSpec:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class StageFile:
    path: str  # relative to the bundle root
    sha256: str
    bytes: int


@dataclass
class BundleManifest:
    """Everything the runtime needs to chain the stages, plus provenance for the humans."""

    model: str
    size: str
    labels: list[str]
    sample_rate: int
    stages: dict[str, StageSpec]
    precisions: dict[str, dict[str, StageFile]]
    opset: int
    frame_layout: list[list[int]]  # [kernel, stride, total padding, min length] per time-reducing step
    supports_padded_batch: bool
    ctc: dict[str, Any] | None = None
    tokenizer: str | None = None
    text_max_length: int | None = None
    source_checkpoint: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = BUNDLE_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST) -> BundleManifest:
        if not isinstance(data, dict):
            raise BundleError(
                f"{source}: malformed manifest (expected a JSON object, got {type(data).__name__})"
            )
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{source}: no schema_version; not an edgeser bundle")
        if version > BUNDLE_SCHEMA:
            raise BundleError(
                f"{source}: bundle schema {version} is newer than this edgeser supports ({BUNDLE_SCHEMA}); upgrade edgeser"
            )
        try:
            stages = {
                name: StageSpec(
                    [TensorSpec(**t) for t in spec["inputs"]], [TensorSpec(**t) for t in spec["outputs"]]
                )
                for name, spec in data["stages"].items()
            }
            precisions = {
                precision: {stage: StageFile(**f) for stage, f in files.items()}
                for precision, files in data["precisions"].items()
            }
            known = set(cls.__dataclass_fields__)
            fields = {k: v for k, v in data.items() if k in known}
            fields.update(stages=stages, precisions=precisions)
            manifest = cls(**fields)
        except (KeyError, TypeError, AttributeError) as err:
            raise BundleError(f"{source}: malformed manifest ({type(err).__name__}: {err})") from None
        manifest.check(source)
        return manifest

    def check(self, source: str = MANIFEST) -> None:
        """Consistency the runtime relies on: known stages, labels, and a fusion head that outputs one logit each."""
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown:
            raise BundleError(f"{source}: unknown stage(s) {', '.join(unknown)}")
        if (
            not isinstance(self.labels, list)
            or not self.labels
            or not all(isinstance(x, str) for x in self.labels)
        ):
            raise BundleError(f"{source}: labels must be a non-empty list of names, got {self.labels!r}")
        if len(set(self.labels)) != len(self.labels):
            raise BundleError(f"{source}: duplicate labels {self.labels}")
        head = self.stages.get("fusion_head")
        if head is None or not head.outputs:
            raise BundleError(f"{source}: no fusion_head stage with a logits output")
        width = head.outputs[0].shape[-1] if head.outputs[0].shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise BundleError(
                f"{source}: {len(self.labels)} labels but the fusion head outputs {width} logits"
            )
        if not isinstance(self.sample_rate, int) or self.sample_rate != 16_000:
            raise BundleError(
                f"{source}: sample_rate {self.sample_rate!r}; edgeser bundles take 16000 Hz audio"
            )

    def frame_lengths(self, sample_lengths: Any) -> Any:
        """Valid encoder frames for sample lengths, from the layout (never from low-precision engine outputs)."""
        return apply_frame_layout(sample_lengths, self.frame_layout)


def read_manifest(root: Path) -> BundleManifest:
    """Parse `bundle.json` with one-line errors for a missing folder, file or bad JSON."""
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}); create one with `edgeser export`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: corrupt manifest ({err})") from err
    except OSError as err:
        raise BundleError(f"{path}: cannot read the manifest ({err.strerror})") from err
    return BundleManifest.from_dict(data, str(path))


# The quantize flag that writes each derived variant (named in the error when one is missing).
QUANTIZE_FLAGS = {
    "int8": "--int8",
    "int8-trt": "--int8-trt",
    "int8-trt-fp16": "--int8-trt-fp16",
    "int8-dynamic": "--int8-dynamic",
    "fp16": "--fp16",
}


def validate_bundle(root: Path, precision: str = "fp32", verify_checksums: bool = True) -> BundleManifest:
    """Check the manifest, that `precision` exists, and every file it names is present and unchanged."""
    manifest = read_manifest(root)
    if not isinstance(precision, str) or precision not in manifest.precisions:
        available = ", ".join(manifest.precisions) or "none"
        how = QUANTIZE_FLAGS.get(precision) if isinstance(precision, str) else None
        hint = f"; `edgeser quantize {root} {how}` writes it" if how else ""
        raise BundleError(f"{root}: no {precision!r} variant in this bundle (available: {available}){hint}")
    files = manifest.precisions[precision]
    missing_stages = set(manifest.stages) - set(files)
    if missing_stages:
        raise BundleError(f"{root}: {precision} variant lacks stage(s) {', '.join(sorted(missing_stages))}")
    for stage, entry in files.items():
        path = root / entry.path
        if not path.is_file():
            raise BundleError(f"{path}: {stage} graph listed in {MANIFEST} is missing (incomplete bundle)")
        if verify_checksums and (path.stat().st_size != entry.bytes or sha256_of(path) != entry.sha256):
            raise BundleError(f"{path}: checksum mismatch; the {stage} graph was changed after export")
    if manifest.tokenizer is not None and not (root / manifest.tokenizer).is_file():
        raise BundleError(f"{root / manifest.tokenizer}: tokenizer listed in {MANIFEST} is missing")
    return manifest
