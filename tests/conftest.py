"""Shared fixtures: the real data folder (EDGESER_DATA or ../shared/data) and synthetic audio writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    """The real corpora folder, or None when this machine truly has none."""
    candidate = Path(os.environ.get("EDGESER_DATA", REPO.parent / "shared" / "data"))
    return candidate if (candidate / "emodb").is_dir() and (candidate / "tess").is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real corpora absent: set EDGESER_DATA or provide ../shared/data (CI always has it)")
    return root


def tone(seconds: float, sample_rate: int = 16_000, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """A voiced-like test signal: a few harmonics plus a little noise, peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = sum(np.sin(2 * np.pi * freq * h * t) / h for h in (1, 2, 3))
    signal = signal * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def write_audio(path: Path, seconds: float = 1.0, sample_rate: int = 16_000, **kwargs: object) -> Path:
    """Write a test clip (format from kwargs, e.g. format='AIFF', subtype='PCM_16')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sample_rate), sample_rate, **kwargs)  # type: ignore[arg-type]
    return path
