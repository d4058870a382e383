"""What the runtime returns: one clip's `Prediction` (its probabilities and label from `class_probabilities`), a
bad input's `Failure`, a long recording's `Timeline`, a stream's `Utterance` events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


def class_probabilities(
    logits: npt.NDArray[np.floating[Any]], dtype: type[np.floating[Any]] = np.float64
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.intp]]:
    """A batch of logits `[B, C]` to each row's class probabilities (softmax over the last axis, computed in
    float64, then cast to `dtype`) and its most probable class (arg-max of the cast probabilities, the first of
    equals)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities = np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=dtype)
    return probabilities, probabilities.argmax(axis=-1)


@dataclass(frozen=True)
class Prediction:
    """One clip's result: the label, its probability, every class's probability, and the CTC transcript."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    transcript: str | None
    duration_s: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    logits: list[float] = field(default_factory=list)
    # The fraction of the clip's 32 ms frames that Silero VAD scores as speech (`edgeser.runtime.vad`); an app
    # may ignore clips with little speech. None where the VAD is not installed, or not run (stream utterances
    # are speech by construction).
    speech_ratio: float | None = None


@dataclass(frozen=True)
class Failure:
    """An input that could not be predicted (in `Pipeline.batch` results): which one, and why, in one line."""

    source: str
    error: str


@dataclass(frozen=True)
class Segment:
    """One utterance-sized piece of a long recording and its prediction."""

    start_s: float
    end_s: float
    prediction: Prediction


@dataclass(frozen=True)
class Timeline:
    """Per-segment predictions plus a duration-weighted aggregate over the whole recording.

    When no speech segment was found, `segments` is empty and `label` is None: no model saw any speech.
    """

    segments: list[Segment]
    label: str | None
    probabilities: dict[str, float]
    duration_s: float

    @property
    def found_speech(self) -> bool:
        return bool(self.segments)


@dataclass(frozen=True)
class Utterance:
    """One utterance found in a stream (`Listener`, `Pipeline.stream`) and its prediction.

    `start_s`/`end_s`: where its audio lies in the stream (seconds from the stream's first sample, VAD padding
    included). `latency_s`: wall-clock seconds from the `feed` call that delivered the utterance's last sample to
    this event; it includes the VAD's wait for `min_silence_ms` of silence and the model's run. `cut`: speech
    went on past `VadOptions.max_speech_s` without a pause; the next event continues this utterance.
    """

    index: int
    start_s: float
    end_s: float
    prediction: Prediction
    latency_s: float
    cut: bool = False

    @property
    def label(self) -> str:
        return self.prediction.label
