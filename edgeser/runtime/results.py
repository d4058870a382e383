"""What the runtime returns: one clip's `Prediction`, a bad input's `Failure`, a long recording's `Timeline`."""

from __future__ import annotations

from dataclasses import dataclass, field


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
