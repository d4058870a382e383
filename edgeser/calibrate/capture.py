"""Capture every stage's real inputs by running the upstream fp32 stages, bucketed to fixed shapes.

onnxruntime's histogram calibrators (entropy, percentile) stack each tensor over the calibration items and
fail or mislead on variable-length outputs, so every clip is brought to one of a few fixed lengths:

- waveforms: to a bucket of `buckets_s` seconds. Bundles whose encoder is batch-safe (masked) zero-pad up to the
  smallest bucket that holds the clip (and crop clips longer than the largest); encoders that must not see
  padding are cropped (centre window) down to the largest bucket the clip fills, padded only below the smallest;
- frame features: zero-padded to the bucket's frame count (`frame_layout`), with the true frame lengths;
- token ids / mask / token features: the CTC transcript as at inference, zero-padded to a power of two >= 8.

Items are grouped by bucket (`w<samples>-t<tokens>`); inside a group every tensor has one shape.

The text encoder also gets text of its own (`add_text_inputs`, groups `text-t<tokens>`): the calibration clips'
reference transcripts where the corpus has them, and the sentences in `data/sentences.txt`. The CTC transcripts
of a weak ASR head are a degenerate sample ("ay", "say" on the small TESS default: 64 clips, 2 distinct
strings), and ranges and SmoothQuant scales fitted to them clip real speech's text. Measured on all-MiniLM-L6-v2
in the small cmgi bundle, static INT8 with SmoothQuant 0.7, token-feature cosine with fp32 on 30 held-out
conversational sentences: mean / min 0.917 / 0.852 calibrated on the transcripts alone, 0.996 / 0.992 with the
sentences added (alpha 0.8: 0.997 / 0.993).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeser.audio import SAMPLE_RATE
from edgeser.progress import STDERR, Progress
from edgeser.runtime.pipeline import Pipeline
from edgeser.stages import stack_padded

DEFAULT_BUCKETS_S = (2.0, 4.0)
MIN_TOKEN_BUCKET = 8
TEXT_GROUP = "text"  # prefix of the groups that hold text-encoder inputs only
SENTENCES_FILE = Path(__file__).parent / "data" / "sentences.txt"


@dataclass
class CapturedInputs:
    """Stacked stage inputs per bucket group: `groups[key][tensor]` is `[n, ...]`, row i one batch-1 item."""

    groups: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    clip_groups: list[str] = field(default_factory=list)  # group of each captured clip, in input order
    clip_samples: list[int] = field(
        default_factory=list
    )  # each clip's own length in samples (before bucketing)
    clip_tokens: list[int] = field(default_factory=list)  # each clip's token count at inference (text models)

    def length_stats(self) -> dict[str, dict[str, int]]:
        """min / opt (median) / max of the clips' real lengths: samples, and tokens for text models.

        What deployment shapes look like; TensorRT optimisation profiles default to these.
        """
        stats: dict[str, dict[str, int]] = {}
        for name, values in (("samples", self.clip_samples), ("tokens", self.clip_tokens)):
            if values:
                stats[name] = {
                    "min": int(min(values)),
                    "opt": int(np.median(values)),
                    "max": int(max(values)),
                }
        return stats

    def counts(self) -> dict[str, int]:
        return {key: int(next(iter(t.values())).shape[0]) for key, t in self.groups.items()}

    def flat(self) -> dict[str, np.ndarray]:
        """`{"<group>.<tensor>": array}` for `np.savez`."""
        return {
            f"{key}.{name}": array for key, tensors in self.groups.items() for name, array in tensors.items()
        }

    @classmethod
    def from_flat(cls, arrays: dict[str, np.ndarray]) -> CapturedInputs:
        groups: dict[str, dict[str, np.ndarray]] = {}
        for name, array in arrays.items():
            key, _, tensor = name.partition(".")
            groups.setdefault(key, {})[tensor] = array
        return cls(groups)


def bucket_samples(length: int, buckets: Sequence[int], batch_safe: bool) -> int:
    """The fixed length (samples) a clip of `length` samples is brought to."""
    ordered = sorted(buckets)
    if batch_safe:
        return next((b for b in ordered if b >= length), ordered[-1])
    return max((b for b in ordered if b <= length), default=ordered[0])


def fit_waveform(wave: np.ndarray, target: int) -> tuple[np.ndarray, int]:
    """Centre-crop or zero-pad to `target` samples; returns the fixed waveform and its valid length."""
    if wave.size >= target:
        start = (wave.size - target) // 2
        return np.ascontiguousarray(wave[start : start + target], dtype=np.float32), target
    fixed = np.zeros(target, dtype=np.float32)
    fixed[: wave.size] = wave
    return fixed, int(wave.size)


def token_bucket(length: int) -> int:
    size = MIN_TOKEN_BUCKET
    while size < length:
        size *= 2
    return size


def _pad_axis1(array: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((array.shape[0], size, *array.shape[2:]), dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out


def capture_stage_inputs(
    pipeline: Pipeline,
    waves: Sequence[np.ndarray],
    buckets_s: Sequence[float] = DEFAULT_BUCKETS_S,
    label: str = "capturing stage inputs",
    progress: Progress = STDERR,
) -> CapturedInputs:
    """Run each clip through the fp32 `pipeline` (batch 1) and keep every stage's inputs at fixed shapes
    (`label`: the progress bar's)."""
    manifest = pipeline.manifest
    assert manifest is not None  # for mypy: Pipeline.load sets it
    buckets = sorted({round(s * SAMPLE_RATE) for s in buckets_s})
    batch_safe = bool(manifest.supports_padded_batch)
    wanted = {t.name for spec in manifest.stages.values() for t in spec.inputs}
    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    captured = CapturedInputs()
    with progress.bar(list(waves), label) as bar:
        for wave in bar:
            target = bucket_samples(wave.size, buckets, batch_safe)
            fixed, valid = fit_waveform(wave, target)
            run = pipeline.run_stages([fixed[:valid]])
            captured.clip_samples.append(int(wave.size))
            frames = int(manifest.frame_lengths(np.array([target]))[0])
            tensors: dict[str, np.ndarray] = {
                "waveform": fixed[None],
                "lengths": np.array([valid], dtype=np.int64),
                "features": _pad_axis1(run.features, max(frames, run.features.shape[1])),
                "frame_lengths": run.frame_lengths.astype(np.int64),
            }
            key = f"w{target}"
            if (
                run.input_ids is not None
                and run.attention_mask is not None
                and run.token_features is not None
            ):
                tokens = token_bucket(run.input_ids.shape[1])
                tensors["input_ids"] = _pad_axis1(run.input_ids, tokens)
                tensors["attention_mask"] = _pad_axis1(run.attention_mask, tokens)
                tensors["token_features"] = _pad_axis1(run.token_features, tokens)
                key += f"-t{tokens}"
                captured.clip_tokens.append(int(run.input_ids.shape[1]))
            group = rows.setdefault(key, {})
            for name, value in tensors.items():
                if name in wanted:
                    group.setdefault(name, []).append(value)
            captured.clip_groups.append(key)
    # Encoders may emit a few padding frames beyond the layout's count: one width per group, zero-padded.
    captured.groups = {
        key: {name: stack_padded(values) for name, values in tensors.items()}
        for key, tensors in sorted(rows.items())
    }
    return captured


def calibration_sentences() -> list[str]:
    """The shipped text-encoder calibration sentences (`data/sentences.txt`, comments and blanks skipped)."""
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def add_text_inputs(pipeline: Pipeline, captured: CapturedInputs, texts: Sequence[str]) -> int:
    """Add `texts` (distinct, non-empty) as text-encoder calibration items, grouped `text-t<tokens>`; returns
    how many. Only `input_ids` / `attention_mask`: the stages after the text encoder calibrate on clips only."""
    manifest = pipeline.manifest
    assert manifest is not None  # for mypy: Pipeline.load sets it
    wanted = {t.name for spec in manifest.stages.values() for t in spec.inputs}
    if not {"input_ids", "attention_mask"} <= wanted:
        return 0
    unique = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    for text in unique:
        ids, mask = pipeline.graph.tokenize([text])
        tokens = token_bucket(ids.shape[1])
        group = rows.setdefault(f"{TEXT_GROUP}-t{tokens}", {"input_ids": [], "attention_mask": []})
        group["input_ids"].append(_pad_axis1(ids, tokens))
        group["attention_mask"].append(_pad_axis1(mask, tokens))
    for key, tensors in sorted(rows.items()):
        captured.groups[key] = {name: np.concatenate(values) for name, values in tensors.items()}
    return len(unique)
