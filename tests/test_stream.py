"""Silero VAD, `Pipeline.long` on it, the speech ratio, and the streaming API (`Listener`, `Pipeline.stream`):
real speech with known silences, noise that holds no voice, bad streams, threads, bounded memory."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from click.testing import CliRunner

from edgeser.cli import main
from edgeser.data.streams import SpeechStream, clicks, dc_offset, hum, mix_at_snr, speech_stream, white_noise
from edgeser.errors import AudioError, MissingDependencyError, ModelError, OptionError
from edgeser.runtime import (
    Listener,
    Pipeline,
    SegmentOptions,
    SpeechDetector,
    Utterance,
    VadOptions,
    detect_speech,
)
from edgeser.runtime import vad as vad_module
from edgeser.runtime.vad import FRAME, Region
from tests.conftest import REPO, tone

RATE = 16_000
# Boundary tolerances against EMO-DB's phone labels: starts within 0.25 s; ends within 0.5 s, because Silero's
# probabilities stay high for about 0.2 s after the last phone and the region keeps 0.1 s of padding
# (benchmarks/results/vad_stream.md: mean end error 0.28 s, max 0.47 s, always late).
START_TOLERANCE_S = 0.25
END_TOLERANCE_S = 0.5

NON_SPEECH = {
    "white noise": lambda: white_noise(5 * RATE),
    "hum 50 Hz": lambda: hum(5 * RATE, 50.0),
    "hum 60 Hz": lambda: hum(5 * RATE, 60.0),
    "DC + noise": lambda: dc_offset(5 * RATE),
    "clicks": lambda: clicks(5 * RATE),
}


@pytest.fixture(scope="module")
def pipe(cmgi_bundle: Path) -> Pipeline:
    return Pipeline.load(cmgi_bundle, threads=1)


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> SpeechStream:
    """Five whole EMO-DB clips of five speakers with 1-2.5 s silences between them (about 18 s)."""
    return speech_stream(shared_data / "emodb", count=5, seed=1)


def chunks_of(wave: np.ndarray, size: int) -> list[np.ndarray]:
    return [wave[i : i + size] for i in range(0, wave.size, size)]


def assert_matches(regions: list[tuple[float, float]], stream: SpeechStream) -> None:
    """One region per reference utterance, boundaries within the stated tolerances."""
    assert len(regions) == len(stream.references), regions
    for (start, end), (ref_start, ref_end) in zip(regions, stream.references):
        assert abs(start - ref_start / RATE) <= START_TOLERANCE_S, (start, ref_start / RATE)
        assert abs(end - ref_end / RATE) <= END_TOLERANCE_S, (end, ref_end / RATE)


# ------------------------------------------------------------------------------------------------ the VAD


def test_vad_model_file_is_located_checked_and_named_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    path = vad_module.vad_model_path()
    assert path.name == "silero_vad.onnx" and path.parent.name == "data"
    monkeypatch.setattr(vad_module, "VAD_SHA256", "0" * 64)
    with pytest.raises(ModelError, match=r"silero_vad.onnx: silero-vad .* not the 6.2.3 model .* --no-deps"):
        vad_module.vad_model_path()

    def missing(name: str) -> None:
        raise vad_module.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vad_module.metadata, "distribution", missing)
    with pytest.raises(
        MissingDependencyError, match=r"needs silero-vad, .*: pip install --no-deps silero-vad==6.2.3"
    ):
        vad_module.vad_model_path()


def test_vad_runs_without_torch_or_the_silero_package(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "silero_vad", "torchaudio"}:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from edgeser.runtime import detect_speech
        regions, ratio = detect_speech(np.zeros(16000, np.float32))
        print(len(regions), ratio, [m for m in sys.modules if m.split(".")[0] in {"torch", "silero_vad"}])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=2) == ["0", "0.0", "[]\n"]


def drive(options: VadOptions, probabilities: list[float]) -> list[Region]:
    """The hysteresis alone, on given per-frame probabilities (the model is not run)."""
    detector = SpeechDetector(options)
    regions: list[Region] = []
    for index, p in enumerate(probabilities):
        detector.samples = (index + 1) * FRAME
        detector.frames = index + 1
        regions += detector._step(p, index * FRAME)
    return regions + detector.flush()


def test_vad_hysteresis_follows_the_options() -> None:
    opts = VadOptions(
        threshold=0.5, min_speech_ms=250, min_silence_ms=320, speech_pad_ms=64, max_speech_s=3.0
    )
    pad = 64 * RATE // 1000
    # 20 frames of speech (640 ms), a 5-frame dip (160 ms < min_silence: same region), 20 more, then silence.
    probs = [0.0] * 10 + [0.9] * 20 + [0.1] * 5 + [0.9] * 20 + [0.0] * 30
    (region,) = drive(opts, probs)
    assert region == Region(10 * FRAME - pad, 55 * FRAME + pad)
    # Between neg_threshold (0.35) and threshold the region goes on; a blip of 4 frames (128 ms) is dropped.
    (region,) = drive(opts, [0.9] * 20 + [0.4] * 30 + [0.0] * 20 + [0.9] * 4 + [0.0] * 20)
    assert region == Region(0, 50 * FRAME + pad)
    # A pause of 12 frames (384 ms >= min_silence) splits; the second start's pad never overlaps the first end.
    first, second = drive(opts, [0.9] * 20 + [0.0] * 12 + [0.9] * 20 + [0.0] * 20)
    assert first.end == 20 * FRAME + pad and second.start == 32 * FRAME - pad
    # 5 s of speech without a pause is cut at max_speech_s: contiguous pieces, the first marked `cut`.
    pieces = drive(opts, [0.9] * 160 + [0.0] * 20)
    assert [p.cut for p in pieces] == [True, False] and pieces[0].end == pieces[1].start
    assert (pieces[0].end - pieces[0].start) <= 3.0 * RATE
    # With a 4-frame pause (128 ms >= 98 ms) inside, the long region is split there instead.
    halves = drive(opts, [0.9] * 60 + [0.0] * 4 + [0.9] * 60 + [0.0] * 20)
    assert len(halves) == 2 and not halves[0].cut and halves[0].end <= 64 * FRAME <= halves[1].start + pad
    # Speech still open at the end of the stream is closed there by flush().
    (tail,) = drive(opts, [0.0] * 5 + [0.9] * 20)
    assert tail == Region(5 * FRAME - pad, 25 * FRAME)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("threshold", 1.5, "between 0 and 1"),
        ("neg_threshold", 0.9, "neg_threshold"),
        ("min_speech_ms", 10, "at least 0.1 s"),
        ("min_silence_ms", 0, "min_silence_ms"),
        ("speech_pad_ms", 900, "speech_pad_ms"),
        ("max_speech_s", 120, "<= 30 s"),
        ("threshold", float("nan"), "finite"),
        ("min_silence_ms", True, "finite"),
    ],
)
def test_vad_options_are_checked(field: str, value: object, needle: str) -> None:
    with pytest.raises(OptionError, match=needle) as caught:
        VadOptions(**{field: value})  # type: ignore[arg-type]
    assert caught.value.name == field


def test_vad_on_a_stream_equals_the_whole_clip(speech: SpeechStream) -> None:
    offline, ratio = detect_speech(speech.wave)
    detector = SpeechDetector()
    rng = np.random.default_rng(0)
    streamed: list[Region] = []
    position = 0
    while position < speech.wave.size:
        size = int(rng.choice([0, 1, 7, 320, 511, 512, 513, 4000]))
        streamed += detector.feed(speech.wave[position : position + size])
        position += size
    streamed += detector.flush()
    assert streamed == offline and detector.speech_ratio == ratio
    assert 0.3 < ratio < 0.8  # about half of this stream is speech


# ------------------------------------------------------------------------------------------------ long, predict


def test_long_finds_each_utterance_of_real_speech(pipe: Pipeline, speech: SpeechStream) -> None:
    timeline = pipe.long((speech.wave, RATE))
    assert_matches([(s.start_s, s.end_s) for s in timeline.segments], speech)
    first = timeline.segments[0]
    segment = speech.wave[round(first.start_s * RATE) : round(first.end_s * RATE)]
    np.testing.assert_allclose(first.prediction.logits, pipe((segment, RATE)).logits, atol=1e-5)
    energy = pipe.long((speech.wave, RATE), SegmentOptions())  # still there when asked for
    assert len(energy.segments) == len(speech.references)


@pytest.mark.parametrize("signal", list(NON_SPEECH))
def test_no_speech_found_in_noise_hum_dc_and_clicks(pipe: Pipeline, signal: str, tmp_path: Path) -> None:
    wave = NON_SPEECH[signal]()
    assert pipe.long((wave, RATE)).segments == []
    assert list(pipe.stream(chunks_of(wave, 320))) == []
    result = pipe((wave, RATE))
    assert result.speech_ratio is not None and result.speech_ratio < 0.1
    path = tmp_path / "noise.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    done = CliRunner().invoke(main, ["predict", str(pipe.root), str(path), "--long"])
    assert done.exit_code == 0 and f"{path}\tno speech found\t0 segments (5.00 s)" in done.stdout
    done = CliRunner().invoke(main, ["predict", str(pipe.root), str(path), "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["speech_ratio"] < 0.1
    done = CliRunner().invoke(main, ["predict", str(pipe.root), str(path)])
    assert (
        done.exit_code == 0
        and f"warning: {path}: " in done.stderr
        and "label may mean nothing" in done.stderr
    )


@pytest.mark.parametrize("snr_db", [20.0, 10.0, 5.0])
def test_speech_in_white_noise_is_still_found(pipe: Pipeline, speech: SpeechStream, snr_db: float) -> None:
    noisy = mix_at_snr(speech.wave, white_noise(speech.wave.size, seed=3), snr_db, speech.references)
    segments = pipe.long((noisy, RATE)).segments
    assert_matches([(s.start_s, s.end_s) for s in segments], speech)
    start, end = speech.placements[0]
    assert (pipe((noisy[start:end], RATE)).speech_ratio or 0) > 0.4


def test_predict_json_reports_the_speech_ratio(pipe: Pipeline, speech: SpeechStream, tmp_path: Path) -> None:
    start, end = speech.placements[0]
    clip = tmp_path / "clip.wav"
    sf.write(clip, speech.wave[start:end], RATE)
    done = CliRunner().invoke(main, ["predict", str(pipe.root), str(clip), "--json"])
    record = json.loads(done.stdout)
    assert done.exit_code == 0 and 0.5 < record["speech_ratio"] <= 1.0 and "vad" in record["timings_ms"]
    batch = pipe.batch([(speech.wave[start:end], RATE), (white_noise(RATE), RATE)])
    assert [round(r.speech_ratio, 4) for r in batch] == [record["speech_ratio"], 0.0]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ streams


def test_stream_gives_one_event_per_utterance_matching_pipe_on_the_segment(
    pipe: Pipeline, speech: SpeechStream
) -> None:
    """The acceptance test: real speech with known silences in 320-sample chunks (20 ms)."""
    events = list(pipe.stream(chunks_of(speech.wave, 320)))
    assert [e.index for e in events] == list(range(len(speech.references)))
    assert_matches([(e.start_s, e.end_s) for e in events], speech)
    for event in events:
        segment = speech.wave[round(event.start_s * RATE) : round(event.end_s * RATE)]
        alone = pipe((segment, RATE))
        assert event.label == alone.label and event.prediction.transcript == alone.transcript
        np.testing.assert_allclose(event.prediction.logits, alone.logits, atol=1e-5)
        assert not event.cut and 0 <= event.latency_s < 5.0
        assert {"audio_encoder", "fusion_head", "total"} <= set(event.prediction.timings_ms)


def test_stream_at_another_rate_and_in_stereo(pipe: Pipeline, speech: SpeechStream) -> None:
    wave44 = soxr.resample(speech.wave, RATE, 44_100).astype(np.float32)
    events = list(pipe.stream(chunks_of(wave44, 441), sample_rate=44_100))
    assert_matches([(e.start_s, e.end_s) for e in events], speech)
    pcm = np.round(np.stack([wave44, wave44], axis=1) * 32767).astype(np.int16)
    listener = Listener(pipe, 44_100, channels=2)
    stereo = [e for chunk in chunks_of(pcm, 1000) for e in listener.feed(chunk)] + listener.flush()
    assert len(stereo) == len(events)  # int16 PCM in two channels: the same utterances (the tiny test model's
    for a, b in zip(stereo, events):  # labels may move with 16-bit rounding, its boundaries do not)
        assert abs(a.start_s - b.start_s) <= 0.04 and abs(a.end_s - b.end_s) <= 0.04


def test_long_speech_is_split_into_bounded_pieces(pipe: Pipeline, speech: SpeechStream) -> None:
    voiced = np.concatenate([speech.wave[a:b] for a, b in speech.references])  # the pauses taken out: ~8 s
    options = VadOptions(max_speech_s=2.0)
    events = list(pipe.stream(chunks_of(voiced, 320), options=options))
    assert len(events) >= 4 and all(e.end_s - e.start_s <= 2.0 + 1e-9 for e in events)
    assert all(b.start_s >= a.end_s for a, b in itertools.pairwise(events))
    for event in events:  # each piece's audio came out of the ring buffer whole
        piece = voiced[round(event.start_s * RATE) : round(event.end_s * RATE)]
        np.testing.assert_allclose(event.prediction.logits, pipe((piece, RATE)).logits, atol=1e-5)


def test_bad_chunks_are_refused_and_the_stream_goes_on(pipe: Pipeline, speech: SpeechStream) -> None:
    listener = Listener(pipe)
    assert listener.feed(np.zeros(0, np.float32)) == []  # 0 samples: nothing happens
    first_end = speech.references[0][1]
    events = listener.feed(speech.wave[:first_end])  # speech still open at the end of this chunk
    assert events == [] and listener._detector.in_speech
    bad = [
        (np.array([1 + 2j, 0j]), "unsupported sample dtype complex128"),
        (np.array(["a", "b"]), "unsupported sample dtype <U1"),
        (np.ones(4, dtype=bool), "unsupported sample dtype bool"),
        (np.zeros((10, 2), np.float32), r"shape \(10, 2\), expected \[samples\]"),
        (np.full(320, np.nan, np.float32), "NaN or infinite samples; the chunk was refused"),
        ([0.1, float("inf")], "NaN or infinite"),
    ]
    for chunk, needle in bad:
        with pytest.raises(AudioError, match=needle) as caught:
            listener.feed(chunk)
        assert caught.value.source.startswith("<stream> chunk 3 (at ")
    with pytest.raises(AudioError, match="sample rate changed mid-stream: 48000 Hz in a 16000 Hz stream"):
        listener.feed(np.zeros(960, np.float32), sample_rate=48_000)
    events = listener.feed(speech.wave[first_end : speech.placements[1][0]])  # the first pause: it ends
    assert len(events) == 1 and abs(events[0].start_s - speech.references[0][0] / RATE) <= START_TOLERANCE_S
    tail = listener.feed(speech.wave[speech.placements[1][0] : speech.references[1][1] - RATE // 4])
    assert tail == [] and len(listener.flush()) == 1  # flush emits the utterance in progress
    with pytest.raises(AudioError, match="the stream has ended"):
        listener.feed(np.zeros(320, np.float32))
    assert listener.flush() == []


def test_a_bad_chunk_ends_stream_after_giving_the_pending_utterance(
    pipe: Pipeline, speech: SpeechStream
) -> None:
    cut = speech.references[1][1] - RATE // 4  # inside the second utterance
    chunks = [*chunks_of(speech.wave[:cut], 320), np.full(320, np.nan, np.float32), speech.wave[cut:]]
    seen: list[Utterance] = []
    with pytest.raises(AudioError, match="NaN"):
        for event in pipe.stream(chunks):
            seen.append(event)
    assert len(seen) == 2 and seen[1].end_s <= cut / RATE


def test_a_consumer_that_stops_loses_nothing(pipe: Pipeline, speech: SpeechStream) -> None:
    listener = Listener(pipe)
    taken = []
    for event in listener.events([speech.wave]):  # one chunk: every utterance is ready at once
        taken.append(event)
        break
    rest = listener.flush()
    assert len(taken) == 1 and [e.index for e in rest] == list(range(1, len(speech.references)))


def test_listener_options_are_bounded(pipe: Pipeline) -> None:
    for kwargs, needle in (
        ({"sample_rate": 0}, "sample_rate: 0 is outside 8000..384000"),
        ({"sample_rate": 10**7}, "outside 8000..384000"),
        ({"sample_rate": 44_100.5}, "sample_rate: expected a whole number"),
        ({"channels": 0}, "channels: 0 is outside 1..32"),
        ({"channels": 1000}, "channels: 1000 is outside 1..32"),
        ({"options": SegmentOptions()}, "options: expected VadOptions"),
    ):
        with pytest.raises(OptionError, match=needle):
            Listener(pipe, **kwargs)  # type: ignore[arg-type]


def test_one_listener_refuses_a_second_thread(pipe: Pipeline) -> None:
    listener = Listener(pipe)
    with listener._lock:  # another thread is inside feed()
        with pytest.raises(OptionError, match="fed from two threads at once: one stream per Listener"):
            listener.feed(np.zeros(320, np.float32))
    assert listener.feed(np.zeros(320, np.float32)) == []


def test_four_streams_in_threads_share_one_pipeline(pipe: Pipeline, shared_data: Path) -> None:
    streams = [speech_stream(shared_data / "emodb", count=3, seed=10 + i) for i in range(4)]

    def run(stream: SpeechStream) -> list[tuple[float, float, str, list[float]]]:
        return [
            (e.start_s, e.end_s, e.label, e.prediction.logits)
            for e in pipe.stream(chunks_of(stream.wave, 320))
        ]

    serial = [run(s) for s in streams]
    barrier = threading.Barrier(4)

    def together(stream: SpeechStream) -> list[tuple[float, float, str, list[float]]]:
        barrier.wait(timeout=60)
        return run(stream)

    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(together, streams))
    for alone, shared, stream in zip(serial, parallel, streams):
        assert len(alone) == len(stream.references)
        assert [x[:3] for x in shared] == [x[:3] for x in alone]
        for a, b in zip(alone, shared):
            np.testing.assert_allclose(a[3], b[3], atol=1e-5)


def test_memory_stays_bounded_over_a_long_stream(pipe: Pipeline) -> None:
    """Ten minutes of near-silence with a tone burst now and then, in 20 ms chunks: the Listener's memory does
    not grow (the 1 h figure is in benchmarks/results/stream_runtime.md)."""
    listener = Listener(pipe, 48_000)
    rng = np.random.default_rng(0)
    chunk = 960
    tracemalloc.start()
    try:
        for second in range(600):
            block = (1e-3 * rng.standard_normal(48_000)).astype(np.float32)
            if second % 60 == 30:
                block = block + soxr.resample(tone(1.0), RATE, 48_000).astype(np.float32)
            for i in range(0, block.size, chunk):
                listener.feed(block[i : i + chunk])
            if second == 60:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 2_000_000 and current - base < 500_000, (base, current, peak)
    assert len(listener._arrivals) <= listener._ring.size / (0.005 * RATE) + 2
    assert abs(listener.seconds - 600) < 0.1
