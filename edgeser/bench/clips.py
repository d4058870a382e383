"""Benchmark inputs: clips of exact lengths cut from real speech.

Where the speech comes from, first that exists:

1. `--clips SOURCE` (repeatable): audio files, folders of audio files, or corpus specs (`tess:/data/tess`);
2. the real corpora under `$EDGESER_DATA` or `../shared/data` (EMO-DB, else TESS);
3. the RAVDESS clips that ship in the package for the main job (`edgeser/shipped/demo/ravdess/`, `edgeser.assets.demo_clips`).

A clip of L seconds is consecutive utterances joined end to end and cut to exactly L seconds, so every
length, 1 s to 30 s, is real speech with real pauses. Batches get distinct clips (successive windows).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeser.assets import demo_clips
from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.errors import DataError

DEFAULT_LENGTHS_S = (1.0, 2.0, 4.5, 10.0, 30.0)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3"}
DEFAULT_CORPORA = ("emodb", "tess")
MAX_FILES = 400  # enough speech for a batch of 8 x 30 s; a corpus is read from its start


@dataclass(frozen=True)
class Speech:
    """Real speech to cut clips from: the joined waveform (16 kHz mono float32) and where it came from."""

    wave: np.ndarray
    source: str
    files: int

    @property
    def seconds(self) -> float:
        return self.wave.size / SAMPLE_RATE

    def clips(self, seconds: float, count: int) -> list[np.ndarray]:
        """`count` distinct clips of exactly `seconds` (successive windows, wrapping around the speech)."""
        length = round(seconds * SAMPLE_RATE)
        if length <= 0:
            raise DataError(f"clip length {seconds:g} s: must be positive")
        needed = length * count
        wave = self.wave if self.wave.size >= needed else np.tile(self.wave, needed // self.wave.size + 1)
        return [np.ascontiguousarray(wave[i * length : (i + 1) * length]) for i in range(count)]


def data_root() -> Path | None:
    """`$EDGESER_DATA`, else `../shared/data` from the working folder, when it holds a corpus."""
    for candidate in (os.environ.get("EDGESER_DATA"), str(Path.cwd().parent / "shared" / "data")):
        if candidate and any((Path(candidate) / name).is_dir() for name in DEFAULT_CORPORA):
            return Path(candidate)
    return None


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def resolve_sources(sources: Sequence[str]) -> list[str]:
    """The speech sources to use: the given ones, else the default corpus, else the shipped demo clips."""
    if sources:
        return list(sources)
    root = data_root()
    if root is not None:
        name = next(n for n in DEFAULT_CORPORA if (root / n).is_dir())
        return [f"{name}:{root / name}"]
    shipped = demo_clips()
    if shipped.is_file():
        return [f"manifest:{shipped}"]
    raise DataError(
        "no speech to cut benchmark clips from: pass --clips (audio files, a folder or a corpus "
        "spec such as tess:/data/tess), or set EDGESER_DATA to a folder with emodb/ or tess/"
    )


def source_files(source: str) -> list[Path]:
    """Audio files of one source: a file, a folder (recursively) or a corpus spec (its utterances in order)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = audio_files(path)
        if not files:
            raise DataError(f"{source}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder")
        return files
    if ":" in source:
        from edgeser.data import load_corpus

        corpus = load_corpus(source)
        by_speaker = sorted(corpus.utterances, key=lambda u: (u.speaker or "", u.id))
        return [Path(u.path) for u in by_speaker]
    raise DataError(f"{source}: not an audio file, a folder or a corpus spec (name:path)")


def load_speech(sources: Sequence[str], seconds_needed: float) -> Speech:
    """Join real utterances from `sources` (see the module docstring) until `seconds_needed` are there."""
    chosen = resolve_sources(sources)
    parts: list[np.ndarray] = []
    total, used = 0, 0
    for source in chosen:
        for path in source_files(source)[:MAX_FILES]:
            parts.append(_read(path))
            total += parts[-1].size
            used += 1
            if total >= seconds_needed * SAMPLE_RATE:
                break
        if total >= seconds_needed * SAMPLE_RATE:
            break
    parts = [p for p in parts if p.size]
    if not parts:
        raise DataError(f"{', '.join(chosen)}: no readable speech")
    return Speech(np.concatenate(parts).astype(np.float32), ", ".join(chosen), used)


def _read(path: Path) -> np.ndarray:
    """A clip as 16 kHz mono float32; unreadable or silent files give an empty array (skipped)."""
    from edgeser.errors import AudioError

    try:
        return load_audio(path)
    except AudioError:
        return np.zeros(0, dtype=np.float32)
