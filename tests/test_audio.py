"""The one audio loader: content over extension, mono, 16 kHz, and a clear error per bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeser.audio import SAMPLE_RATE, load_audio, probe, to_mono_16k
from edgeser.errors import AudioError
from tests.conftest import tone, write_audio


def test_resamples_to_16k_and_keeps_duration(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.flac", seconds=1.5, sample_rate=44_100)
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert abs(audio.size - int(1.5 * SAMPLE_RATE)) <= 1
    # the 220 Hz fundamental survives resampling: its spectral peak is where it should be
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / audio.size - 220.0) < 2.0


def test_aiff_behind_wav_name_is_read_by_content(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "disguised.wav", seconds=1.0, sample_rate=24_414, format="AIFF")
    info = probe(path)
    assert info.container == "AIFF" and info.extension_mismatch
    assert load_audio(path).size == pytest.approx(SAMPLE_RATE, abs=2)


def test_stereo_is_down_mixed(tmp_path: Path) -> None:
    left = tone(1.0)
    stereo = np.stack([left, -left * 0.5], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SAMPLE_RATE)
    np.testing.assert_allclose(load_audio(path), (left - 0.5 * left) / 2, atol=1e-4)


def test_bytes_input_matches_file(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "b.wav", seconds=0.5)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), load_audio(path))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage that is not audio" * 3), "unreadable or corrupt"),
        (lambda p: sf.write(p, tone(0.05), SAMPLE_RATE), "too short"),
        (lambda p: sf.write(p, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE), "all-silent"),
        (
            lambda p: sf.write(p, np.full(SAMPLE_RATE, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT"),
            "NaN",
        ),
        (lambda p: sf.write(p, np.zeros((0,), np.float32), SAMPLE_RATE), "empty"),
    ],
    ids=["zero-bytes", "corrupt", "too-short", "silent", "nan", "no-samples"],
)
def test_bad_audio_names_file_and_problem(tmp_path: Path, make, problem: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_missing_file_and_too_long(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        load_audio(tmp_path / "nope.wav")
    path = write_audio(tmp_path / "long.wav", seconds=3.0)
    with pytest.raises(AudioError, match="too long"):
        load_audio(path, max_duration=2.0)


def test_silence_can_be_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio = load_audio(path, on_silent="warn")
    assert audio.size == SAMPLE_RATE and any("all-silent" in str(w.message) for w in caught)


def test_integer_arrays_are_scaled() -> None:
    pcm = (tone(0.5) * 32767).astype(np.int16)
    np.testing.assert_allclose(to_mono_16k(pcm, SAMPLE_RATE), tone(0.5), atol=1e-4)


def test_real_tess_odd_files(shared_data: Path) -> None:
    testnew = shared_data / "tess" / "datasets" / "testnew"
    for name, container, rate in [
        ("507testYAF_germ_angry29.wav", "AIFF", 24_414),
        ("672testYAF_neat_fear19.wav", "AIFF", 24_414),
        ("762testOAF_food_fear52.wav", "WAV", 96_000),
    ]:
        info = probe(testnew / name)
        assert (info.container, info.sample_rate) == (container, rate)
        audio = load_audio(testnew / name)
        assert abs(audio.size / SAMPLE_RATE - info.duration) < 1e-3
        assert 0.01 < float(np.max(np.abs(audio))) <= 1.0


def test_truncated_wav_and_implausible_rates(tmp_path: Path) -> None:
    full = write_audio(tmp_path / "full.wav", seconds=1.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioError, match=r"cut.wav: truncated WAV: \d+ bytes of audio data missing"):
        load_audio(cut)
    with pytest.raises(AudioError, match="truncated WAV"):
        load_audio(cut.read_bytes())
    low = write_audio(tmp_path / "low.wav", seconds=1.0, sample_rate=4000)
    with pytest.raises(AudioError, match="4000 Hz is below the 8000 Hz minimum"):
        load_audio(low)
