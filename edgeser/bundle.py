"""The bundle manifest (`bundle.json`): what export writes and what the runtime validates.

Torch-free: the lean runtime reads bundles with nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeser.errors import BundleError

BUNDLE_SCHEMA = 1
MANIFEST = "bundle.json"
TOKENIZER = "tokenizer.json"
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


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
            return cls(**fields)
        except (KeyError, TypeError) as err:
            raise BundleError(f"{source}: malformed manifest ({type(err).__name__}: {err})") from None

    def frame_lengths(self, sample_lengths: Any) -> Any:
        """Valid encoder frames for sample lengths, from the layout (never from low-precision engine outputs)."""
        return apply_frame_layout(sample_lengths, self.frame_layout)


def apply_frame_layout(sample_lengths: Any, layout: list[list[int]]) -> Any:
    """Frame lengths through time-reducing steps `[kernel, stride, total_padding, min_length]`:
    `max((L + total_padding - kernel) // stride + 1, min_length)`, never below 0."""
    import numpy as np

    lengths = np.asarray(sample_lengths, dtype=np.int64)
    for kernel, stride, total_padding, min_length in layout:
        lengths = np.maximum((lengths + total_padding - kernel) // stride + 1, max(min_length, 0))
    return lengths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        raise BundleError(f"{path}: corrupt manifest ({err})") from None
    return BundleManifest.from_dict(data, str(path))


def validate_bundle(root: Path, precision: str = "fp32", verify_checksums: bool = True) -> BundleManifest:
    """Check the manifest, that `precision` exists, and every file it names is present and unchanged."""
    manifest = read_manifest(root)
    if precision not in manifest.precisions:
        available = ", ".join(manifest.precisions) or "none"
        raise BundleError(f"{root}: no {precision!r} variant in this bundle (available: {available})")
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
