"""Long recordings: split at pauses with an energy detector, predict each segment, aggregate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeser.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from edgeser.runtime.pipeline import Pipeline, Prediction

FRAME_S = 0.03


@dataclass(frozen=True)
class Segment:
    """One utterance-sized piece of a long recording and its prediction."""

    start_s: float
    end_s: float
    prediction: Prediction


@dataclass(frozen=True)
class Timeline:
    """Per-segment predictions plus a duration-weighted aggregate over the whole recording."""

    segments: list[Segment]
    label: str
    probabilities: dict[str, float]
    duration_s: float


def speech_regions(
    wave: np.ndarray,
    *,
    min_pause_s: float = 0.3,
    min_segment_s: float = 0.5,
    max_segment_s: float = 12.0,
    threshold_db: float = -35.0,
) -> list[tuple[int, int]]:
    """Sample ranges of speech: frames within `threshold_db` of the loudest, split at pauses >= `min_pause_s`."""
    frame = int(FRAME_S * SAMPLE_RATE)
    count = wave.size // frame
    if count == 0:
        return [(0, wave.size)] if wave.size else []
    energy = np.sqrt(np.mean(wave[: count * frame].reshape(count, frame) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(energy / energy.max())
    active = level > threshold_db
    regions: list[tuple[int, int]] = []
    gap_frames = int(round(min_pause_s / FRAME_S))
    start, silent_run = None, 0
    for index, is_active in enumerate(active):
        if is_active:
            start = index if start is None else start
            silent_run = 0
        elif start is not None:
            silent_run += 1
            if silent_run >= gap_frames:
                regions.append((start, index - silent_run + 1))
                start, silent_run = None, 0
    if start is not None:
        regions.append((start, count - silent_run))
    samples = [(s * frame, min(wave.size, e * frame)) for s, e in regions]
    return _fit_lengths(samples, int(min_segment_s * SAMPLE_RATE), int(max_segment_s * SAMPLE_RATE))


def _fit_lengths(regions: list[tuple[int, int]], shortest: int, longest: int) -> list[tuple[int, int]]:
    """Cut over-long regions into equal pieces and drop blips shorter than `shortest`."""
    fitted: list[tuple[int, int]] = []
    for start, end in regions:
        pieces = max(1, int(np.ceil((end - start) / longest)))
        bounds = np.linspace(start, end, pieces + 1).astype(int)
        fitted += [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= shortest]
    return fitted


def predict_timeline(pipeline: Pipeline, wave: np.ndarray, **options: float) -> Timeline:
    """Predict each speech region of `wave`; the aggregate weights class probabilities by duration."""
    regions = speech_regions(wave, **options)
    predictions = pipeline.batch([(wave[a:b], SAMPLE_RATE) for a, b in regions]) if regions else []
    segments = [Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, p) for (a, b), p in zip(regions, predictions)]
    weights = np.array([s.end_s - s.start_s for s in segments])
    if segments:
        matrix = np.array([[s.prediction.probabilities[label] for label in pipeline.labels] for s in segments])
        mean = (weights[:, None] * matrix).sum(axis=0) / weights.sum()
    else:
        mean = np.full(len(pipeline.labels), 1.0 / len(pipeline.labels))
    probabilities = {label: float(p) for label, p in zip(pipeline.labels, mean)}
    return Timeline(segments, max(probabilities, key=probabilities.get), probabilities, wave.size / SAMPLE_RATE)  # type: ignore[arg-type]
