"""Live audio in, emotion events out: a `Listener` finds utterances in one stream with Silero VAD and predicts each.

    listener = Listener(pipe, sample_rate=48_000)
    for chunk in microphone():                 # float or int PCM chunks of any size at the stream's rate
        for event in listener.feed(chunk):     # one Utterance per utterance whose end the VAD decided
            print(event.start_s, event.end_s, event.label, event.latency_s)
    for event in listener.flush():             # end of stream: the utterance still open, if any
        ...

    for event in pipe.stream(chunks, sample_rate=16_000):   # the same as a generator
        ...

Thread model: one stream per Listener (feeding one Listener from two threads at once is refused); any number of
Listeners may share one `Pipeline` and the process's one VAD session. Each `feed` runs the VAD on the chunk and,
when an utterance ends, the model on it, in the caller's thread.

Memory is bounded whatever the stream's length: the Listener keeps a ring buffer of the last
`max_speech_s + min_silence_ms + speech_pad_ms + 1 s` of 16 kHz audio, the VAD's state, and the events not yet
taken. Partial events are not offered: speech longer than `VadOptions.max_speech_s` is split at its last pause
(or cut at the bound, `Utterance.cut`), and each piece is an event of its own as soon as it is complete, so a
long monologue gives an event at least every `max_speech_s`.

Bad streams: a chunk of the wrong dtype or shape, with NaN or infinite samples, or at another sample rate is
refused with an `AudioError` naming the chunk; the Listener is unchanged and the stream may go on. Chunks of 0
samples are accepted and do nothing. `Listener.events` / `Pipeline.stream` end at a bad chunk: they first give
the utterance in progress, then raise. A consumer that stops iterating leaves the events it did not take in the
Listener: `flush()` returns them with the utterance in progress.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from edgeser.audio import SAMPLE_RATE, to_mono_16k
from edgeser.errors import AudioError, EdgeserError, OptionError
from edgeser.runtime.options import bounded_int
from edgeser.runtime.results import Prediction, Utterance
from edgeser.runtime.vad import FRAME, Region, SpeechDetector, VadOptions


class WaveformPredictor(Protocol):
    """What a Listener needs of its `Pipeline` (a protocol: the pipeline module builds on this one)."""

    def predict_waveform(self, wave: npt.NDArray[np.float32]) -> Prediction: ...


# A chunk, or (chunk, sample_rate) to have the rate checked against the stream's.
Chunk = npt.ArrayLike | tuple[npt.ArrayLike, int]
STREAM = "<stream>"
# Audio goes to the ring buffer and the VAD in pieces of at most this many 16 kHz samples, so one huge chunk
# cannot overwrite the start of an utterance before the VAD has seen its end.
_PIECE = SAMPLE_RATE
# Arrival times closer than this are merged into one entry (so 1-sample chunks cannot grow the arrival log).
_ARRIVAL_MERGE_S = 0.005


class Listener:
    """Finds utterances in one audio stream with Silero VAD and predicts each with a shared `Pipeline`.

    `sample_rate`: the stream's rate (8 kHz to 384 kHz; resampled to 16 kHz incrementally with soxr);
    `channels`: 1 for chunks `[samples]`, else chunks are `[samples, channels]` and mixed to mono;
    `options`: the VAD's `VadOptions`. Chunks may be float (full scale 1.0) or integer PCM of any length.
    """

    def __init__(
        self,
        pipe: WaveformPredictor,
        sample_rate: int = SAMPLE_RATE,
        *,
        channels: int = 1,
        options: VadOptions | None = None,
    ) -> None:
        self.pipe = pipe
        self.sample_rate = bounded_int("sample_rate", sample_rate)
        self.channels = bounded_int("channels", channels)
        self._detector = SpeechDetector(options)
        self.options = self._detector.options
        opts = self.options
        self._resampler = (
            None
            if self.sample_rate == SAMPLE_RATE
            else soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )
        seconds = opts.max_speech_s + (opts.min_silence_ms + opts.speech_pad_ms) / 1000 + 1.0
        self._ring = np.zeros(int(seconds * SAMPLE_RATE) + 2 * FRAME, dtype=np.float32)
        self._written = 0  # 16 kHz samples written to the ring so far
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()  # (samples written, when)
        self._ready: collections.deque[Utterance] = collections.deque()
        self._lock = threading.Lock()
        self._chunks = 0
        self._count = 0
        self._closed = False

    # ------------------------------------------------------------------ the stream

    @property
    def seconds(self) -> float:
        """Stream time heard so far (16 kHz samples out of the resampler)."""
        return self._written / SAMPLE_RATE

    @property
    def speech_ratio(self) -> float:
        """The fraction of the stream's VAD frames so far that are speech."""
        return self._detector.speech_ratio

    def feed(self, samples: npt.ArrayLike, sample_rate: int | None = None) -> list[Utterance]:
        """Add one chunk (`sample_rate`, when given, must be the stream's); the utterances completed so far."""
        with self._owned():
            self._push(samples, sample_rate)
            return self._take()

    def flush(self) -> list[Utterance]:
        """End the stream: drain the resampler, close the utterance in progress; every event not yet taken.

        The Listener takes no more audio afterwards; calling `flush` again returns what is left (nothing)."""
        with self._owned():
            self._finish()
            return self._take()

    def events(self, chunks: Iterable[Chunk]) -> Iterator[Utterance]:
        """Feed every chunk (an array, or `(array, sample_rate)`) and yield events as they come; flush at the end.

        A bad chunk ends the stream: the utterance in progress is yielded first, then the `AudioError` raised."""
        for chunk in chunks:
            samples, rate = chunk if isinstance(chunk, tuple) else (chunk, None)
            error: EdgeserError | None = None
            with self._owned():
                try:
                    self._push(samples, rate)
                except EdgeserError as err:
                    self._finish()
                    error = err
            yield from self._drain()
            if error is not None:
                raise error
        with self._owned():
            self._finish()
        yield from self._drain()

    # ------------------------------------------------------------------ internals

    def _owned(self) -> _Owned:
        return _Owned(self._lock)

    def _drain(self) -> Iterator[Utterance]:
        while self._ready:  # taken one by one: a consumer that stops leaves the rest for flush()
            yield self._ready.popleft()

    def _take(self) -> list[Utterance]:
        taken = list(self._ready)
        self._ready.clear()
        return taken

    def _push(self, samples: npt.ArrayLike, sample_rate: int | None) -> None:
        if self._closed:
            raise AudioError(
                STREAM, "the stream has ended (flush() was called); make a new Listener for a new one"
            )
        where = f"{STREAM} chunk {self._chunks + 1} (at {self.seconds:.2f} s)"
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise AudioError(
                where,
                f"sample rate changed mid-stream: {sample_rate} Hz in a {self.sample_rate} Hz "
                "stream; a Listener takes one rate (make a new Listener)",
            )
        mono = self._mono(samples, where)  # a bad chunk is refused whole: the stream is as it was
        self._chunks += 1
        arrived = time.perf_counter()
        wave = mono if self._resampler is None else self._resampler.resample_chunk(mono)
        self._take_in(np.asarray(wave, dtype=np.float32), arrived)

    def _mono(self, samples: npt.ArrayLike, where: str) -> npt.NDArray[np.float32]:
        """A chunk as checked mono float32 at the stream's rate."""
        try:
            audio = np.asarray(samples)
        except (TypeError, ValueError) as err:
            raise AudioError(where, f"not an array of samples ({type(samples).__name__}: {err})") from err
        expected = "[samples]" if self.channels == 1 else f"[samples, {self.channels}]"
        if not (audio.ndim == 1 and self.channels == 1) and not (
            audio.ndim == 2 and audio.shape[1] == self.channels
        ):
            raise AudioError(where, f"shape {audio.shape}, expected {expected} ({self.channels} channel(s))")
        flat = to_mono_16k(audio.reshape(-1), SAMPLE_RATE, source=where)  # dtype check and PCM scaling only
        if not np.all(np.isfinite(flat)):
            raise AudioError(
                where, "contains NaN or infinite samples; the chunk was refused, the stream goes on"
            )
        if self.channels > 1:
            flat = flat.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return flat

    def _take_in(self, wave: npt.NDArray[np.float32], arrived: float) -> None:
        """Ring-buffer 16 kHz audio, run the VAD on it, and predict every region it closes."""
        for start in range(0, wave.size, _PIECE):
            piece = wave[start : start + _PIECE]
            self._write(piece)
            self._note_arrival(arrived)
            for region in self._detector.feed(piece):
                self._predict(region)

    def _finish(self) -> None:
        if self._closed:
            return
        arrived = time.perf_counter()
        if self._resampler is not None:
            self._take_in(
                np.asarray(
                    self._resampler.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32
                ),
                arrived,
            )
        for region in self._detector.flush():
            self._predict(region)
        self._closed = True

    def _write(self, piece: npt.NDArray[np.float32]) -> None:
        size = self._ring.size
        at = self._written % size
        head = min(piece.size, size - at)
        self._ring[at : at + head] = piece[:head]
        self._ring[: piece.size - head] = piece[head:]
        self._written += piece.size

    def _note_arrival(self, arrived: float) -> None:
        if self._arrivals and arrived - self._arrivals[-1][1] < _ARRIVAL_MERGE_S:
            self._arrivals[-1] = (self._written, self._arrivals[-1][1])
        else:
            self._arrivals.append((self._written, arrived))
        oldest = self._written - self._ring.size
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= oldest:
            self._arrivals.popleft()

    def _arrival(self, sample: int) -> float:
        """When the chunk holding 16 kHz sample `sample` was fed (the earliest entry covering it)."""
        for written, when in self._arrivals:
            if written >= sample:
                return when
        return self._arrivals[-1][1] if self._arrivals else time.perf_counter()

    def _audio(self, start: int, end: int) -> npt.NDArray[np.float32]:
        size = self._ring.size
        start = max(start, self._written - size)  # never past the ring (its capacity is sized so it is not)
        index = np.arange(start, end) % size
        return self._ring[index]

    def _predict(self, region: Region) -> None:
        wave = self._audio(region.start, region.end)
        prediction = self.pipe.predict_waveform(wave)
        latency = time.perf_counter() - self._arrival(region.end)
        self._ready.append(
            Utterance(
                self._count,
                region.start / SAMPLE_RATE,
                region.end / SAMPLE_RATE,
                prediction,
                round(latency, 4),
                region.cut,
            )
        )
        self._count += 1


class _Owned:
    """Holds a Listener's lock for one call, refusing a second thread instead of waiting for it."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise OptionError(
                "Listener",
                "fed from two threads at once: one stream per Listener (make one Listener "
                "per stream; Listeners may share one Pipeline)",
            )

    def __exit__(self, *_: object) -> None:
        self._lock.release()
