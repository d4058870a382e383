"""Long recordings: find speech regions with an energy detector, and aggregate per-segment predictions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeser.audio import SAMPLE_RATE
from edgeser.errors import OptionError
from edgeser.runtime.options import MAX_CLIP_SECONDS
from edgeser.runtime.results import Prediction, Segment, Timeline

FRAME_S = 0.03


@dataclass(frozen=True)
class SegmentOptions:
    """How `Pipeline.long` splits a recording.

    Speech is every 30 ms frame within `threshold_db` of the loudest frame; pauses of at least `min_pause_s`
    split it; pieces shorter than `min_segment_s` are dropped and longer than `max_segment_s` cut evenly.
    """

    min_pause_s: float = 0.3
    min_segment_s: float = 0.5
    max_segment_s: float = 12.0
    threshold_db: float = -35.0

    def __post_init__(self) -> None:
        for name in ("min_pause_s", "min_segment_s", "max_segment_s", "threshold_db"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise OptionError(name, f"expected a finite number, got {value!r}")
        if self.min_pause_s <= 0:
            raise OptionError("min_pause_s", f"must be > 0 s, got {self.min_pause_s}")
        if self.min_segment_s <= 0:
            raise OptionError("min_segment_s", f"must be > 0 s, got {self.min_segment_s}")
        if self.max_segment_s < self.min_segment_s:
            raise OptionError(
                "max_segment_s",
                f"must be >= min_segment_s ({self.min_segment_s} s), got {self.max_segment_s}",
            )
        if self.max_segment_s > MAX_CLIP_SECONDS:
            raise OptionError(
                "max_segment_s",
                f"must be <= {MAX_CLIP_SECONDS:g} s (the longest clip the models "
                f"take as one utterance), got {self.max_segment_s}",
            )
        if self.threshold_db >= 0:
            raise OptionError(
                "threshold_db", f"must be below 0 dB (relative to the loudest frame), got {self.threshold_db}"
            )


def speech_regions(
    wave: npt.NDArray[np.float32], options: SegmentOptions | None = None
) -> list[tuple[int, int]]:
    """Sample ranges `[start, end)` of speech in a 16 kHz waveform (see `SegmentOptions`)."""
    options = options or SegmentOptions()
    frame = int(FRAME_S * SAMPLE_RATE)
    count = wave.size // frame
    if count == 0:
        return _fit_lengths([(0, wave.size)] if wave.size else [], options)
    energy = np.sqrt(
        np.mean(wave[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1) + 1e-12
    )
    level = 20 * np.log10(energy / energy.max())
    active = level > options.threshold_db
    regions: list[tuple[int, int]] = []
    gap_frames = max(1, round(options.min_pause_s / FRAME_S))
    start: int | None = None
    silent_run = 0
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
    return _fit_lengths([(s * frame, min(wave.size, e * frame)) for s, e in regions], options)


def _fit_lengths(regions: list[tuple[int, int]], options: SegmentOptions) -> list[tuple[int, int]]:
    """Cut over-long regions into equal pieces and drop blips shorter than the minimum segment."""
    shortest = int(options.min_segment_s * SAMPLE_RATE)
    longest = max(1, int(options.max_segment_s * SAMPLE_RATE))
    fitted: list[tuple[int, int]] = []
    for start, end in regions:
        pieces = max(1, int(np.ceil((end - start) / longest)))
        bounds = np.linspace(start, end, pieces + 1).astype(int)
        fitted += [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b - a >= shortest]
    return fitted


def timeline(
    regions: Sequence[tuple[int, int]],
    predictions: Sequence[Prediction],
    labels: Sequence[str],
    total_samples: int,
) -> Timeline:
    """Segments and their duration-weighted mean class probabilities; no segments gives no label."""
    segments = [Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, p) for (a, b), p in zip(regions, predictions)]
    duration = total_samples / SAMPLE_RATE
    if not segments:
        return Timeline([], None, {}, duration)
    weights = np.array([s.end_s - s.start_s for s in segments])
    matrix = np.array([[s.prediction.probabilities[label] for label in labels] for s in segments])
    mean = (weights[:, None] * matrix).sum(axis=0) / weights.sum()
    probabilities = {label: float(p) for label, p in zip(labels, mean)}
    return Timeline(segments, labels[int(np.argmax(mean))], probabilities, duration)
