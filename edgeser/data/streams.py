"""Test streams from real speech: EMO-DB clips joined by silences of known length, with reference speech
boundaries from EMO-DB's own phone labels, and the non-speech signals (white noise, mains hum, DC offset,
clicks) a voice-activity detector must not answer for. Used by the stream tests and `benchmarks/vad_stream.py`.

    stream = speech_stream(emodb_root, count=6, seed=0)
    stream.wave                     # float32 mono 16 kHz
    stream.references               # [(start, end)] samples: where each clip's speech is (phone labels)
    noisy = mix_at_snr(stream.wave, white_noise(stream.wave.size), 10.0, stream.references)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.errors import DataError

# EMO-DB's copy here is padded or cut to 2.0 s: only clips whose speech ends before this are whole.
_WHOLE_BEFORE_S = 1.9


def emodb_speech_extent(label_file: Path) -> tuple[float, float]:
    """Where speech starts and ends in an EMO-DB clip (seconds), from its `lablaut` phone label file.

    Each label line gives the end time of a segment; a first segment named `_x` is a stop's silent closure
    (speech is heard from its end), and the last segment `.` is the pause after the final phone."""
    text = label_file.read_text(encoding="latin-1")
    if "\n#" not in text:
        raise DataError(f"{label_file}: no '#' line before the labels (not an xlabel file)")
    rows = [line.split() for line in text.split("\n#", 1)[1].splitlines() if line.strip()]
    rows = [row for row in rows if len(row) >= 2]
    if len(rows) < 2:
        raise DataError(f"{label_file}: fewer than two labels")
    times = [float(row[0]) for row in rows]
    names = [row[2] if len(row) > 2 else "" for row in rows]
    start = times[0] if names[0].startswith("_") else 0.0
    end = times[-2] if names[-1] == "." else times[-1]
    return start, end


@dataclass(frozen=True)
class SpeechStream:
    """Real speech with inserted silences: the waveform, the clips used, and each clip's speech range."""

    wave: npt.NDArray[np.float32]
    clips: list[Path]
    references: list[tuple[int, int]]  # speech [start, end) in samples, one per clip, in order
    placements: list[tuple[int, int]]  # where each whole clip was put, [start, end) in samples


def speech_stream(
    emodb_root: Path,
    count: int = 6,
    seed: int = 0,
    gap_s: tuple[float, float] = (1.0, 2.5),
    lead_s: float = 1.0,
) -> SpeechStream:
    """`count` whole EMO-DB clips (one per speaker in turn, chosen by `seed`) with silences of `gap_s` seconds
    (uniform) between them and `lead_s` before the first; digital silence, so noise can be mixed in after."""
    wav_dir = emodb_root / "wav"
    label_dir = emodb_root / "lablaut"
    if not wav_dir.is_dir() or not label_dir.is_dir():
        raise DataError(f"{emodb_root}: an EMO-DB folder with wav/ and lablaut/ is needed")
    whole: dict[str, list[Path]] = {}
    for label in sorted(label_dir.glob("*.lablaut")):
        clip = wav_dir / f"{label.stem[:7]}.flac"
        try:
            extent = emodb_speech_extent(label)
        except DataError:  # a few label files of the corpus are empty
            continue
        if clip.is_file() and extent[1] < _WHOLE_BEFORE_S:
            whole.setdefault(label.stem[:2], []).append(clip)
    rng = np.random.default_rng(seed)
    speakers = sorted(whole)
    chosen = [
        whole[speakers[i % len(speakers)]][int(rng.integers(len(whole[speakers[i % len(speakers)]])))]
        for i in range(count)
    ]
    parts = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    references, placements = [], []
    position = parts[0].size
    for clip in chosen:
        wave = load_audio(clip)
        start, end = emodb_speech_extent(label_dir / f"{clip.stem}xx.lablaut")
        references.append(
            (position + int(start * SAMPLE_RATE), position + min(wave.size, int(end * SAMPLE_RATE)))
        )
        placements.append((position, position + wave.size))
        gap = np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), np.float32)
        parts += [wave, gap]
        position += wave.size + gap.size
    return SpeechStream(np.concatenate(parts), chosen, references, placements)


def white_noise(samples: int, level: float = 0.1, seed: int = 0) -> npt.NDArray[np.float32]:
    """Gaussian white noise of RMS `level`."""
    return (level * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


def hum(samples: int, mains_hz: float = 50.0, level: float = 0.3, seed: int = 0) -> npt.NDArray[np.float32]:
    """Mains hum: the fundamental and its first harmonics (falling 1/k), with a little noise."""
    t = np.arange(samples) / SAMPLE_RATE
    signal = sum(np.sin(2 * np.pi * mains_hz * k * t + k) / k for k in range(1, 8))
    peak = float(np.max(np.abs(signal)))
    return np.asarray(level * signal / peak + white_noise(samples, 0.002, seed), dtype=np.float32)


def dc_offset(samples: int, offset: float = 0.3, seed: int = 0) -> npt.NDArray[np.float32]:
    """A DC offset with a little noise."""
    return (offset + white_noise(samples, 0.003, seed)).astype(np.float32)


def clicks(samples: int, per_second: float = 3.0, seed: int = 0) -> npt.NDArray[np.float32]:
    """Sparse clicks (single full-scale samples and 1 ms bursts) over near-silence."""
    rng = np.random.default_rng(seed)
    wave = white_noise(samples, 1e-4, seed)
    for at in rng.integers(0, max(1, samples - 16), int(per_second * samples / SAMPLE_RATE)):
        wave[at : at + int(rng.choice([1, 16]))] = rng.choice([-0.9, 0.9])
    return wave


def mix_at_snr(
    speech: npt.NDArray[np.float32],
    noise: npt.NDArray[np.float32],
    snr_db: float,
    references: list[tuple[int, int]],
) -> npt.NDArray[np.float32]:
    """`speech` plus `noise` scaled so the speech power (over the reference speech ranges) is `snr_db` above the
    noise power."""
    power = float(np.mean(np.concatenate([speech[a:b] for a, b in references]).astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    scale = float(np.sqrt(power / (noise_power * 10 ** (snr_db / 10))))
    return np.asarray(speech + scale * noise[: speech.size], dtype=np.float32)
