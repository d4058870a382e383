"""Voice activity: Silero VAD on onnxruntime, speech probabilities per 32 ms frame and utterance regions with
hysteresis, offline on a whole clip or incrementally on a stream.

    regions, ratio = detect_speech(wave)              # a whole 16 kHz clip: speech regions, speech ratio
    detector = SpeechDetector(VadOptions())           # a stream: feed 16 kHz samples of any length
    for region in detector.feed(chunk): ...           # regions whose end is decided
    last = detector.flush()                           # end of stream: the region still open, if any

The model is `silero_vad/data/silero_vad.onnx` (MIT) of the `silero-vad` package, read as a file: the package
itself (which imports torch) is never imported. Its wheel declares torch as a dependency, so install it with
`pip install --no-deps silero-vad==6.2.3`; the file is checked against the SHA-256 below before it is loaded.
One onnxruntime session (one intra-op thread) serves every detector in the process: the recurrent state is an
input and an output of each call, so detectors share it safely between threads.

Regions follow Silero's `get_speech_timestamps` (and faster-whisper's `VadOptions`): speech starts at the first
frame with probability >= `threshold`; it ends once probabilities stay below `neg_threshold` for
`min_silence_ms`; regions shorter than `min_speech_ms` are dropped; each side is padded by `speech_pad_ms`; a
region longer than `max_speech_s` is split at its last pause of at least 98 ms, else cut at the bound.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgeser.audio import MIN_DURATION_S, SAMPLE_RATE
from edgeser.errors import MissingDependencyError, ModelError, OptionError
from edgeser.files import sha256_of
from edgeser.runtime.options import MAX_CLIP_SECONDS

VAD_PACKAGE = "silero-vad"
VAD_VERSION = "6.2.3"
VAD_FILE = "silero_vad/data/silero_vad.onnx"
VAD_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
VAD_INSTALL = f"pip install --no-deps {VAD_PACKAGE}=={VAD_VERSION}"
FRAME = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame the model sees before each frame
FRAME_S = FRAME / SAMPLE_RATE
# A pause this long inside an over-long region is where it is split (Silero's `min_silence_at_max_speech`).
SPLIT_PAUSE_S = 0.098


@dataclass(frozen=True)
class VadOptions:
    """How speech regions are found (Silero VAD's hysteresis; times in ms unless named `_s`).

    `threshold`: a frame is speech at or above this probability; `neg_threshold` (default `threshold - 0.15`):
    speech ends only below it; `min_speech_ms`: shorter regions are dropped; `min_silence_ms`: the pause that
    ends a region (and the least delay before a region's end is known); `speech_pad_ms` (<= `min_silence_ms`):
    audio kept on each side; `max_speech_s` (<= 30 s, the longest clip the models take): longer regions are
    split at a pause, else cut.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_ms: float = 250.0
    min_silence_ms: float = 400.0
    speech_pad_ms: float = 100.0
    max_speech_s: float = 12.0

    def __post_init__(self) -> None:
        for name in (
            "threshold",
            "neg_threshold",
            "min_speech_ms",
            "min_silence_ms",
            "speech_pad_ms",
            "max_speech_s",
        ):
            value = getattr(self, name)
            if value is None and name == "neg_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise OptionError(name, f"expected a finite number, got {value!r}")
        if not 0 < self.threshold < 1:
            raise OptionError(
                "threshold", f"must be between 0 and 1 (a speech probability), got {self.threshold}"
            )
        if self.neg_threshold is not None and not 0 < self.neg_threshold <= self.threshold:
            raise OptionError(
                "neg_threshold", f"must be in (0, threshold={self.threshold}], got {self.neg_threshold}"
            )
        if not 1000 * MIN_DURATION_S <= self.min_speech_ms <= 1000 * MAX_CLIP_SECONDS:
            raise OptionError(
                "min_speech_ms",
                f"must be {1000 * MIN_DURATION_S:g}..{1000 * MAX_CLIP_SECONDS:g} ms (the "
                f"models take clips of at least {MIN_DURATION_S:g} s), got {self.min_speech_ms}",
            )
        if not 0 < self.min_silence_ms <= 10_000:
            raise OptionError(
                "min_silence_ms",
                f"must be in (0, 10000] ms (an utterance is known to have ended only "
                f"after it), got {self.min_silence_ms}",
            )
        if not 0 <= self.speech_pad_ms <= self.min_silence_ms:
            raise OptionError(
                "speech_pad_ms",
                f"must be 0..min_silence_ms ({self.min_silence_ms:g} ms): the end pad "
                f"is audio heard before the end is decided, got {self.speech_pad_ms}",
            )
        if not 1000 * self.max_speech_s > self.min_speech_ms or self.max_speech_s > MAX_CLIP_SECONDS:
            raise OptionError(
                "max_speech_s",
                f"must be above min_speech_ms and <= {MAX_CLIP_SECONDS:g} s (the longest "
                f"clip the models take as one utterance), got {self.max_speech_s}",
            )

    @property
    def off_threshold(self) -> float:
        """The probability below which speech may end."""
        return self.neg_threshold if self.neg_threshold is not None else max(0.01, self.threshold - 0.15)


class Region(NamedTuple):
    """Sample range `[start, end)` of speech at 16 kHz; `cut`: the speech went on past `max_speech_s` with no
    pause, and the next region continues it."""

    start: int
    end: int
    cut: bool = False


def vad_model_path() -> Path:
    """The installed `silero_vad.onnx`, checked against `VAD_SHA256`; the package is located, never imported."""
    try:
        dist = metadata.distribution(VAD_PACKAGE)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(
            VAD_PACKAGE, "vad", "voice-activity detection (Silero VAD)", VAD_INSTALL
        ) from None
    path = Path(str(dist.locate_file(VAD_FILE)))
    if not path.is_file():
        raise ModelError(f"{path}: {VAD_PACKAGE} {dist.version} has no {VAD_FILE}: {VAD_INSTALL}")
    digest = sha256_of(path)
    if digest != VAD_SHA256:
        raise ModelError(
            f"{path}: {VAD_PACKAGE} {dist.version}'s model has SHA-256 {digest[:12]}..., not the "
            f"{VAD_VERSION} model edgeser was measured with: {VAD_INSTALL}"
        )
    return path


@functools.cache
def vad_available() -> bool:
    """Whether the `silero-vad` package is installed (its model is checked when first loaded)."""
    try:
        metadata.distribution(VAD_PACKAGE)
    except metadata.PackageNotFoundError:
        return False
    return True


@functools.cache
def vad_session() -> ort.InferenceSession:
    """The one Silero VAD session of this process (CPU, one thread: the model is 2 MB and runs per frame)."""
    from edgeser.runtime.sessions import make_session

    return make_session(vad_model_path(), threads=1)


class SpeechDetector:
    """Silero VAD over one 16 kHz stream: `feed` samples of any length, get the regions whose end is decided.

    Memory is constant: the detector keeps the model state, 64 samples of context and under one frame of
    pending samples. Not for concurrent use: one detector per stream (they share one session).
    """

    def __init__(self, options: VadOptions | None = None) -> None:
        if options is not None and not isinstance(options, VadOptions):
            raise OptionError("options", f"expected VadOptions, got {type(options).__name__}")
        self.options = options or VadOptions()
        self._session = vad_session()
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._window = np.zeros((1, CONTEXT + FRAME), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        opts = self.options
        self._min_speech = int(opts.min_speech_ms * SAMPLE_RATE / 1000)
        self._min_silence = int(opts.min_silence_ms * SAMPLE_RATE / 1000)
        self._pad = int(opts.speech_pad_ms * SAMPLE_RATE / 1000)
        self._max_speech = int(opts.max_speech_s * SAMPLE_RATE)
        self._split_pause = int(SPLIT_PAUSE_S * SAMPLE_RATE)
        self.frames = 0  # frames scored so far
        self.speech_frames = 0  # of which at or above `threshold`
        self.samples = 0  # samples fed so far
        self._start: int | None = None  # start of the open region
        self._quiet_from: int | None = None  # where the current run of frames below neg_threshold began
        self._split: tuple[int, int] | None = None  # the last pause >= 98 ms inside the open region
        self._last_end = 0  # padded end of the last region given out

    @property
    def speech_ratio(self) -> float:
        """The fraction of frames so far with speech probability >= `threshold` (0 before any frame)."""
        return self.speech_frames / self.frames if self.frames else 0.0

    @property
    def in_speech(self) -> bool:
        """Whether a region is open (speech started and its end is not decided)."""
        return self._start is not None

    @property
    def open_start(self) -> int | None:
        """The padded start of the open region, if any (where its audio begins)."""
        return None if self._start is None else max(self._start - self._pad, self._last_end)

    def feed(self, wave: npt.NDArray[np.float32]) -> list[Region]:
        """Score every whole frame of `wave` (checked mono float32 at 16 kHz, any length, 0 included)."""
        self.samples += wave.size
        data = np.concatenate([self._pending, wave]) if self._pending.size else wave
        whole = data.size // FRAME
        regions: list[Region] = []
        for index in range(whole):
            regions += self._score(data[index * FRAME : (index + 1) * FRAME])
        self._pending = np.array(data[whole * FRAME :], dtype=np.float32)
        return regions

    def flush(self) -> list[Region]:
        """End of stream: score the last partial frame (zero-padded) and close the open region at the end."""
        regions: list[Region] = []
        if self._pending.size:
            frame = np.zeros(FRAME, dtype=np.float32)
            frame[: self._pending.size] = self._pending
            self._pending = np.zeros(0, dtype=np.float32)
            regions += self._score(frame)
        if self._start is not None:
            end = self._quiet_from if self._quiet_from is not None else self.samples
            end = min(end, self.samples)
            if end - self._start >= self._min_speech:
                regions.append(self._close(self._start, end, min(end + self._pad, self.samples)))
            self._start = self._quiet_from = self._split = None
        return regions

    def _score(self, frame: npt.NDArray[np.float32]) -> list[Region]:
        window = self._window
        window[0, :CONTEXT] = window[0, FRAME:]
        window[0, CONTEXT:] = frame
        probability, self._state = self._session.run(
            None, {"input": window, "state": self._state, "sr": self._rate}
        )
        position = self.frames * FRAME
        self.frames += 1
        return self._step(float(probability[0, 0]), position)

    def _step(self, probability: float, position: int) -> list[Region]:
        """Advance the hysteresis by one frame starting at `position`; regions decided at this frame."""
        opts = self.options
        regions: list[Region] = []
        if probability >= opts.threshold:
            self.speech_frames += 1
            if self._quiet_from is not None:
                if position - self._quiet_from >= self._split_pause:
                    self._split = (self._quiet_from, position)
                self._quiet_from = None
            if self._start is None:
                self._start = position
        if self._start is None:
            return regions
        if position + FRAME - max(self._start - self._pad, self._last_end) > self._max_speech:
            if self._split is not None and self._split[0] - self._start >= self._min_speech:
                end, resume = self._split
                regions.append(self._close(self._start, end, min(end + self._pad, resume)))
                self._start, self._split = resume, None
            else:
                regions.append(self._close(self._start, position, position, cut=True))
                self._start, self._split = position, None
                self._quiet_from = position if self._quiet_from is not None else None
        if probability < opts.off_threshold:
            if self._quiet_from is None:
                self._quiet_from = position
            if position + FRAME - self._quiet_from >= self._min_silence:
                end = self._quiet_from
                if end - self._start >= self._min_speech:
                    regions.append(self._close(self._start, end, end + self._pad))
                self._start = self._quiet_from = self._split = None
        return regions

    def _close(self, start: int, end: int, padded_end: int, cut: bool = False) -> Region:
        region = Region(max(start - self._pad, self._last_end, 0), padded_end, cut)
        self._last_end = padded_end
        return region


def detect_speech(
    wave: npt.NDArray[np.float32], options: VadOptions | None = None
) -> tuple[list[Region], float]:
    """The speech regions of a whole 16 kHz clip and its speech ratio (as a stream fed in one piece)."""
    detector = SpeechDetector(options)
    regions = detector.feed(wave) + detector.flush()
    return regions, detector.speech_ratio
