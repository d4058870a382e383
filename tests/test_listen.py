"""`edgeser listen`: files at real time or fast, s16le PCM on stdin, a microphone (a stand-in sounddevice), bounds
and bad input; and the kiosk example in examples/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgeser.cli import main
from edgeser.data.streams import SpeechStream, speech_stream
from tests.conftest import REPO

RATE = 16_000


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> SpeechStream:
    return speech_stream(shared_data / "emodb", count=3, seed=2)


@pytest.fixture(scope="module")
def speech_file(speech: SpeechStream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("listen") / "speech.flac"
    sf.write(path, speech.wave, RATE)
    return path


def listen(args: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["listen", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_listen_to_a_file_prints_one_line_per_utterance(
    cmgi_bundle: Path, speech: SpeechStream, speech_file: Path
) -> None:
    code, out, err = listen(
        [str(cmgi_bundle), "--input", str(speech_file), "--fast", "--json", "--threads", "1"]
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    events, end = records[:-1], records[-1]
    assert len(events) == len(speech.references) and end["end"] is True and end["utterances"] == len(events)
    for event, (start, stop) in zip(events, speech.references):
        assert abs(event["start_s"] - start / RATE) <= 0.25 and abs(event["end_s"] - stop / RATE) <= 0.5
        assert event["label"] == event["prediction"]["label"] and set(event) >= {"latency_s", "cut", "index"}
    assert abs(end["duration_s"] - speech.wave.size / RATE) < 0.01
    code, out, _ = listen([str(cmgi_bundle), "--input", str(speech_file), "--fast", "--threads", "1"])
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(events)
    assert [line.split("\t")[1] for line in lines] == [e["label"] for e in events]


def test_listen_plays_a_file_at_real_time_unless_fast(cmgi_bundle: Path, tmp_path: Path) -> None:
    clip = tmp_path / "quiet.wav"
    sf.write(clip, np.zeros(int(1.5 * RATE), np.float32), RATE)
    started = time.perf_counter()
    code, out, _ = listen([str(cmgi_bundle), "--input", str(clip), "--threads", "1"])
    assert code == 0 and out.strip() == "no speech found (1.50 s)"
    assert time.perf_counter() - started >= 1.4


def test_listen_to_pcm_on_stdin(cmgi_bundle: Path, speech: SpeechStream) -> None:
    pcm = np.round(speech.wave * 32767).astype("<i2")
    stereo = np.stack([pcm, pcm], axis=1).tobytes() + b"\x01"  # and one stray byte
    code, out, err = listen(
        [str(cmgi_bundle), "--input", "-", "--rate", "16000", "--channels", "2", "--json", "--threads", "1"],
        stdin=stereo,
    )
    assert code == 0 and "1 trailing byte(s) do not make a whole s16le frame of 2 channel(s)" in err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(speech.references) + 1 and records[-1]["utterances"] == len(speech.references)


class FakeInputStream:
    """sounddevice.InputStream's shape: calls `callback` with [frames, channels] float32 blocks from a thread."""

    wave = np.zeros(0, np.float32)

    def __init__(
        self, *, device: int, samplerate: int, channels: int, dtype: str, blocksize: int, callback: Any
    ) -> None:
        self.blocksize, self.channels, self.callback = blocksize, channels, callback
        self.active = False
        self._thread = threading.Thread(target=self._play)

    def __enter__(self) -> FakeInputStream:
        self.active = True
        self._thread.start()
        return self

    def _play(self) -> None:
        for at in range(0, self.wave.size, self.blocksize):
            block = self.wave[at : at + self.blocksize]
            self.callback(np.repeat(block[:, None], self.channels, axis=1), block.size, None, None)
            time.sleep(0.0005)
        self.active = False

    def __exit__(self, *_: object) -> None:
        self._thread.join()


def fake_sounddevice(wave: np.ndarray) -> types.ModuleType:
    module = types.ModuleType("sounddevice")
    error = type("PortAudioError", (Exception,), {})

    def query_devices(device: int, kind: str) -> dict[str, float]:
        if device != 0:
            raise ValueError(f"No input device matching {device}")
        return {"default_samplerate": float(RATE)}

    FakeInputStream.wave = wave
    module.PortAudioError = error  # type: ignore[attr-defined]
    module.query_devices = query_devices  # type: ignore[attr-defined]
    module.InputStream = FakeInputStream  # type: ignore[attr-defined]
    return module


def test_listen_to_a_microphone(
    cmgi_bundle: Path, speech: SpeechStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "sounddevice", fake_sounddevice(speech.wave[: speech.placements[1][1] + RATE])
    )
    code, out, err = listen([str(cmgi_bundle), "--device", "0", "--json", "--threads", "1"])
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3 and records[-1]["utterances"] == 2 and "dropped" not in err
    code, _, err = listen([str(cmgi_bundle), "--device", "3"])
    assert code == 1 and err.startswith(
        "error: --device 3: no such input device (No input device matching 3)"
    )
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # not installed
    code, _, err = listen([str(cmgi_bundle), "--device", "0"])
    assert code == 1 and err.strip().splitlines() == [
        "error: edgeser listen --device needs sounddevice, which is not installed: pip install 'edgeser[mic]'"
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input", "x.wav", "--chunk-ms", "0"], "--chunk-ms: 0 is outside 1..1000"),
        (["--input", "x.wav", "--chunk-ms", "100000"], "--chunk-ms: 100000 is outside 1..1000"),
        (["--input", "-", "--rate", "100"], "--rate: 100 is outside 8000..384000"),
        (["--input", "-", "--rate", "10000000"], "--rate: 10000000 is outside 8000..384000"),
        (["--input", "-", "--channels", "64"], "--channels: 64 is outside 1..32"),
        (["--device", "-1"], "--device: -1 is outside 0..1023"),
        (
            ["--input", "-", "--max-speech-s", "600"],
            "--max-speech-s: must be above min_speech_ms and <= 30 s",
        ),
        (["--input", "-", "--threshold", "2"], "--threshold: must be between 0 and 1"),
        (["--input", "-", "--min-silence-ms", "0"], "--min-silence-ms: must be in (0, 10000] ms"),
        (["--input", "x.wav", "--threads", "5000"], "--threads: 5000 threads is more than"),
    ],
)
def test_listen_options_are_bounded(args: list[str], needle: str) -> None:
    code, _, err = listen(["B", *args])
    assert code == 1 and err.startswith(f"error: {needle}") and len(err.strip().splitlines()) == 1, err


def test_listen_bad_sources(cmgi_bundle: Path, tmp_path: Path) -> None:
    code, _, err = listen([str(cmgi_bundle)])
    assert code == 2 and "give one source" in err
    code, _, err = listen([str(cmgi_bundle), "--input", "-", "--device", "0"])
    assert code == 2 and "give one source" in err
    code, _, err = listen([str(cmgi_bundle), "--input", "-", "--fast"])
    assert code == 2 and "--fast applies to --input FILE only" in err
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    for path, problem in (
        (tmp_path / "missing.wav", "file not found"),
        (text, "unreadable or corrupt audio"),
    ):
        code, _, err = listen([str(cmgi_bundle), "--input", str(path)])
        assert code == 1 and err.startswith(f"error: {path}: {problem}") and "Traceback" not in err


def test_kiosk_example_runs_on_a_file(cmgi_bundle: Path, speech: SpeechStream, speech_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "kiosk.py"), str(cmgi_bundle), str(speech_file), "--fast"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    reactions = [line for line in done.stdout.splitlines() if line.startswith("kiosk:")]
    assert len(reactions) == len(speech.references)
    assert (
        done.stdout.rstrip()
        .splitlines()[-1]
        .startswith(f"session over: {len(speech.references)} utterance(s)")
    )
