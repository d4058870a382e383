"""The one audio loader: any file soundfile reads, trusted by content, mono, 16 kHz, checked.

Used by the corpus scanner, training, calibration and the lean runtime alike, so it imports
only numpy, soundfile and soxr.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeGuard

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from edgeser.errors import AudioError

SAMPLE_RATE = 16_000
MIN_DURATION_S = 0.1
# Below this a recording cannot carry speech formants; a smaller rate is a mislabelled file.
MIN_SAMPLE_RATE = 8_000
# Peak below this (about -80 dBFS) counts as digital silence.
SILENCE_PEAK = 1e-4

# A path, the bytes of a file, or a binary file object (seekable; read from its start).
AudioSource = str | Path | bytes | BinaryIO
SilencePolicy = Literal["error", "warn", "ignore"]

# Extension -> the soundfile container names it should hold.
_EXTENSION_FORMATS = {
    ".wav": {"WAV", "WAVEX", "RF64", "W64"},
    ".flac": {"FLAC"},
    ".aif": {"AIFF"},
    ".aiff": {"AIFF"},
    ".ogg": {"OGG"},
    ".oga": {"OGG"},
    ".opus": {"OGG"},
    ".mp3": {"MP3"},
}


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, read without decoding the samples."""

    path: str
    container: str  # soundfile's format name, e.g. WAV, FLAC, AIFF
    subtype: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def extension_mismatch(self) -> bool:
        """True when the file's name promises another container than its content (e.g. AIFF in `.wav`)."""
        expected = _EXTENSION_FORMATS.get(Path(self.path).suffix.lower())
        return expected is not None and self.container not in expected


def is_file_object(source: object) -> TypeGuard[BinaryIO]:
    """A binary file object (an open file, `io.BytesIO`...): what soundfile reads besides paths."""
    return (
        not isinstance(source, (str, Path, bytes))
        and callable(getattr(source, "read", None))
        and callable(getattr(source, "seek", None))
    )


def _describe(source: AudioSource) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if is_file_object(source):
        name = getattr(source, "name", None)
        return name if isinstance(name, str) else f"<{type(source).__name__}>"
    return str(source)


def _size(handle: BinaryIO) -> int:
    """The size of a file object's content in bytes (it is read from its start)."""
    return handle.seek(0, io.SEEK_END)


def _open_target(source: AudioSource) -> str | BinaryIO:
    """What soundfile opens: the path as a string, or a file object at its start. Bytes are wrapped without a
    copy (`io.BytesIO` shares the buffer until it is written to or `getbuffer()` is called)."""
    if isinstance(source, bytes):
        if not source:
            raise AudioError(_describe(source), "empty input (0 bytes)")
        return io.BytesIO(source)
    if is_file_object(source):
        if isinstance(source, io.TextIOBase):
            raise AudioError(
                _describe(source), "a text-mode file object; open the file in binary mode ('rb')"
            )
        handle: BinaryIO = source
        try:
            seekable = handle.seekable() if callable(getattr(handle, "seekable", None)) else True
            size = _size(handle) if seekable else 0
        except (OSError, ValueError) as err:  # closed, or a pipe that cannot seek
            raise AudioError(_describe(source), f"cannot read the file object ({_short(err)})") from err
        if not seekable:
            raise AudioError(
                _describe(source), "the file object cannot seek; pass its bytes or a path instead"
            )
        if size == 0:
            raise AudioError(_describe(source), "empty input (0 bytes)")
        handle.seek(0)
        return handle
    path = Path(str(source))
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    return str(path)


def probe(source: AudioSource) -> AudioInfo:
    """Read the header only; raises AudioError for unreadable, empty or zero-rate files."""
    target = _open_target(source)
    try:
        info = sf.info(target)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(_describe(source), f"unreadable or corrupt audio ({_short(err)})") from err
    result = AudioInfo(
        path=_describe(source),
        container=info.format,
        subtype=info.subtype,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
    )
    if result.frames <= 0:
        raise AudioError(result.path, "empty audio (0 samples)")
    if result.sample_rate <= 0:
        raise AudioError(result.path, f"invalid sample rate {result.sample_rate}")
    return result


def _short(err: Exception) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def to_mono_16k(
    samples: npt.ArrayLike, sample_rate: int, *, source: str = "<array>"
) -> npt.NDArray[np.float32]:
    """Down-mix `[S]` or `[S, C]` samples to mono and resample to 16 kHz with soxr (high quality)."""
    audio = np.asarray(samples)
    if audio.ndim not in (1, 2):
        raise AudioError(
            source, f"expected 1-D mono or 2-D [samples, channels] audio, got shape {audio.shape}"
        )
    if audio.dtype == np.bool_ or not (
        np.issubdtype(audio.dtype, np.floating) or np.issubdtype(audio.dtype, np.integer)
    ):
        raise AudioError(source, f"unsupported sample dtype {audio.dtype}")
    if np.issubdtype(audio.dtype, np.integer):
        # PCM scaling: signed ints are two's complement around 0, unsigned ones offset binary around the middle
        # (8-bit WAV); full scale is 2 ** (bits - 1), as soundfile decodes files.
        bits = np.iinfo(audio.dtype).bits
        middle = 0.0 if np.issubdtype(audio.dtype, np.signedinteger) else float(2 ** (bits - 1))
        audio = (audio.astype(np.float64) - middle) / float(2 ** (bits - 1))
    if audio.ndim == 2:
        audio = audio.mean(axis=channel_axis(audio.shape, source))
    if sample_rate <= 0:
        raise AudioError(source, f"invalid sample rate {sample_rate}")
    if sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(
            source, f"sample rate {sample_rate} Hz is below the {MIN_SAMPLE_RATE} Hz minimum for speech"
        )
    audio = audio.astype(np.float32, copy=False)
    if sample_rate != SAMPLE_RATE and audio.size:
        if not np.all(np.isfinite(audio)):
            raise AudioError(source, "contains NaN or infinite samples")
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(audio)


MAX_CHANNELS = 32


def channel_axis(shape: tuple[int, ...], source: str) -> int:
    """The channel axis of a 2-D array: the short one (at most 32 channels); `[S, C]` when both are short."""
    rows, columns = shape
    if columns <= MAX_CHANNELS and (rows > MAX_CHANNELS or rows >= columns):
        return 1
    if rows <= MAX_CHANNELS:
        return 0
    raise AudioError(
        source,
        f"2-D audio of shape {shape} has no channel axis of at most {MAX_CHANNELS}; pass "
        "[samples] or [samples, channels]",
    )


def check_waveform(
    audio: npt.NDArray[np.float32],
    *,
    source: str,
    min_duration: float = MIN_DURATION_S,
    max_duration: float | None = None,
    on_silent: SilencePolicy = "error",
) -> None:
    """Raise AudioError for empty, too short/long, non-finite or (by policy) silent 16 kHz audio."""
    if audio.size == 0:
        raise AudioError(source, "empty audio (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(source, "contains NaN or infinite samples")
    duration = audio.size / SAMPLE_RATE
    if duration < min_duration:
        raise AudioError(source, f"too short: {duration:.3f} s (minimum {min_duration:g} s)")
    if max_duration is not None and duration > max_duration:
        raise AudioError(source, too_long(duration, max_duration))
    if on_silent != "ignore" and float(np.max(np.abs(audio))) < SILENCE_PEAK:
        if on_silent == "error":
            raise AudioError(source, "all-silent audio (peak below -80 dBFS)")
        warnings.warn(f"{source}: all-silent audio (peak below -80 dBFS)", stacklevel=3)


def _wav_shortfall(handle: BinaryIO, total: int) -> int:
    """Bytes missing from a RIFF/WAVE data chunk (libsndfile silently reads what is there); 0 if complete.

    Walks the chunk headers only, so a long recording is not read twice.
    """
    handle.seek(0)
    header = handle.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return 0
    offset = 12
    while offset + 8 <= total:
        handle.seek(offset)
        chunk = handle.read(8)
        name, size = chunk[:4], int.from_bytes(chunk[4:8], "little")
        if name == b"data":
            streaming = size in (0, 0xFFFFFFFF)  # writers that never went back to fill in the size
            return 0 if streaming else max(0, size - (total - offset - 8))
        offset += 8 + size + (size & 1)
    return 0


def _refuse_truncated(source: AudioSource, target: str | BinaryIO) -> None:
    if not isinstance(target, str):  # no getbuffer(): it would copy the bytes
        missing = _wav_shortfall(target, _size(target))
        target.seek(0)
    else:
        with open(target, "rb") as handle:
            missing = _wav_shortfall(handle, Path(target).stat().st_size)
    if missing:
        raise AudioError(_describe(source), f"truncated WAV: {missing} bytes of audio data missing")


def too_long(duration: float, max_duration: float) -> str:
    return (
        f"too long: {duration:.1f} s (maximum {max_duration:g} s); split long recordings with "
        "`edgeser predict --long` or `Pipeline.long`"
    )


def load_audio(
    source: AudioSource,
    *,
    min_duration: float = MIN_DURATION_S,
    max_duration: float | None = None,
    on_silent: SilencePolicy = "error",
) -> npt.NDArray[np.float32]:
    """Decode a file path or the bytes of a file to checked mono float32 at 16 kHz.

    The container is detected from the content (libsndfile), never from the extension. An over-long input (a
    path, bytes or a file object alike) is refused from its header, before anything is decoded or copied.
    """
    name = _describe(source)
    target = _open_target(source)
    _refuse_truncated(source, target)
    if max_duration is not None:
        header = probe(source)
        if header.duration > max_duration:
            raise AudioError(name, too_long(header.duration, max_duration))
        if not isinstance(target, str):
            target.seek(0)
    try:
        samples, sample_rate = sf.read(target, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(name, f"unreadable or corrupt audio ({_short(err)})") from err
    if samples.shape[0] == 0:
        raise AudioError(name, "empty audio (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioError(name, "contains NaN or infinite samples")
    audio = to_mono_16k(samples, int(sample_rate), source=name)
    check_waveform(
        audio, source=name, min_duration=min_duration, max_duration=max_duration, on_silent=on_silent
    )
    return audio


def scan_audio(
    source: AudioSource,
    *,
    min_duration: float = MIN_DURATION_S,
    block_seconds: float = 10.0,
    on_silent: SilencePolicy = "error",
    content: Any = None,
) -> AudioInfo:
    """Check a whole file as `load_audio` would (readable, complete, finite, long enough, not silent), decoding
    it in blocks so memory stays small whatever its length; returns its header. `content` (a hashlib object)
    is fed the decoded samples, so two files holding one recording in different containers hash alike."""
    info = probe(source)
    target = _open_target(source)
    _refuse_truncated(source, target)
    peak, frames = 0.0, 0
    try:
        with sf.SoundFile(target) as handle:
            block = max(1, int(block_seconds * handle.samplerate))
            while True:
                data = handle.read(block, dtype="float32", always_2d=True)
                if data.size == 0:
                    break
                if not np.all(np.isfinite(data)):
                    raise AudioError(info.path, "contains NaN or infinite samples")
                peak = max(peak, float(np.max(np.abs(data.mean(axis=1)))))
                frames += data.shape[0]
                if content is not None:
                    content.update(data.tobytes())
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(info.path, f"unreadable or corrupt audio ({_short(err)})") from err
    if frames == 0:
        raise AudioError(info.path, "empty audio (0 samples)")
    if info.sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(
            info.path,
            f"sample rate {info.sample_rate} Hz is below the {MIN_SAMPLE_RATE} Hz minimum for speech",
        )
    duration = frames / info.sample_rate
    if duration < min_duration:
        raise AudioError(info.path, f"too short: {duration:.3f} s (minimum {min_duration:g} s)")
    if on_silent != "ignore" and peak < SILENCE_PEAK:
        if on_silent == "error":
            raise AudioError(info.path, "all-silent audio (peak below -80 dBFS)")
        warnings.warn(f"{info.path}: all-silent audio (peak below -80 dBFS)", stacklevel=2)
    return info
