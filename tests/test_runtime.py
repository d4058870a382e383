"""The lean runtime: torch-free import, inputs, bad input errors, thread safety, long audio, predict CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgeser.cli import main
from edgeser.errors import AudioError, BundleError, OptionError
from edgeser.runtime import Pipeline, SegmentOptions
from tests.conftest import REPO, tone, write_audio


@pytest.fixture(scope="module")
def pipe(cmgi_bundle: Path) -> Pipeline:
    return Pipeline.load(cmgi_bundle, threads=1)


def test_runtime_predicts_where_torch_cannot_be_imported(cmgi_bundle: Path, tmp_path: Path) -> None:
    clip = write_audio(tmp_path / "clip.wav", seconds=1.2)
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "transformers", "optimum"}}:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        from edgeser.runtime import Pipeline, SegmentOptions
        result = Pipeline.load({str(cmgi_bundle)!r})({str(clip)!r})
        heavy = [m for m in sys.modules if m.split(".")[0] in {{"torch", "transformers", "optimum"}}]
        print(result.label, len(result.probabilities), heavy)
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
    label, count, heavy = done.stdout.split(maxsplit=2)
    labels = Pipeline.load(cmgi_bundle).labels
    assert label in labels and count == str(len(labels)) and heavy.strip() == "[]"


def test_path_bytes_and_array_inputs_agree(pipe: Pipeline, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.flac", seconds=1.5, sample_rate=22_050)
    from_path = pipe(path)
    from_bytes = pipe(path.read_bytes())
    samples, rate = sf.read(path, dtype="float32")
    from_array = pipe((samples, rate))
    assert from_path.label == from_bytes.label == from_array.label
    np.testing.assert_allclose(from_path.logits, from_array.logits, atol=1e-5)
    assert abs(sum(from_path.probabilities.values()) - 1) < 1e-5 and 0 < from_path.confidence <= 1
    assert {"audio_encoder", "ctc_head", "text_encoder", "fusion_head", "total"} <= set(from_path.timings_ms)
    assert isinstance(from_path.transcript, str) and abs(from_path.duration_s - 1.5) < 1e-3


def test_batch_keeps_order_and_matches_single(pipe: Pipeline) -> None:
    clips = [(tone(s, seed=i, freq=120 + 30 * i), 16_000) for i, s in enumerate((2.5, 0.6, 1.7, 0.9))]
    batched = pipe.batch(clips, batch_size=3)
    for clip, result in zip(clips, batched):
        single = pipe(clip)
        assert result.label == single.label and result.transcript == single.transcript
        np.testing.assert_allclose(result.logits, single.logits, atol=1e-4)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 8), "unreadable or corrupt"),
        (lambda p: sf.write(p, np.zeros(16_000, np.float32), 16_000), "all-silent"),
        (
            lambda p: sf.write(p, np.full(8000, np.inf, np.float32), 16_000, subtype="FLOAT"),
            "NaN or infinite",
        ),
        (lambda p: write_audio(p, seconds=31.0), "too long"),
        (lambda p: p.write_text("just text"), "unreadable or corrupt"),
    ],
    ids=["empty", "truncated", "silent", "non-finite", "over-long", "not-audio"],
)
def test_bad_inputs_name_the_input(pipe: Pipeline, tmp_path: Path, make, problem: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=problem) as caught:
        pipe(path)
    assert str(path) in str(caught.value)


def test_array_inputs_need_a_rate_and_stereo_is_mixed(pipe: Pipeline) -> None:
    with pytest.raises(AudioError, match="sample_rate"):
        pipe(tone(1.0))  # type: ignore[arg-type]
    stereo = np.stack([tone(1.0), tone(1.0)], axis=1)
    assert pipe((stereo, 16_000)).label == pipe((tone(1.0), 16_000)).label
    with pytest.raises(AudioError, match="invalid sample rate"):
        pipe((tone(1.0), 0))


def test_unknown_precision_and_missing_variant(cmgi_bundle: Path) -> None:
    with pytest.raises(OptionError, match="unknown precision 'int4'"):
        Pipeline.load(cmgi_bundle, "int4")
    with pytest.raises(BundleError, match="no 'fp16' variant"):
        Pipeline.load(cmgi_bundle, "fp16")


def test_stage_sessions_do_not_spin_between_stages(pipe: Pipeline, cmgi_bundle: Path) -> None:
    """Each stage owns a thread pool: spinning workers of a finished stage would take the next one's cores.
    By default workers wait passively; with `spin` they spin during a run and stop when it returns."""
    spinning = Pipeline.load(cmgi_bundle, spin=True)
    for expected, pipeline in (("0", pipe), ("1", spinning)):
        for stage, runner in pipeline.runners.items():
            options = runner.session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected, stage
            assert options.get_session_config_entry("session.inter_op.allow_spinning") == expected, stage
            assert options.get_session_config_entry("session.force_spinning_stop") == "1", stage
    wave = tone(1.5)
    np.testing.assert_allclose(
        spinning.predict_waveform(wave).logits, pipe.predict_waveform(wave).logits, atol=1e-5
    )


def test_one_pipeline_shared_between_threads(pipe: Pipeline) -> None:
    clips = [(tone(0.8 + 0.3 * i, seed=i, freq=100 + 25 * i), 16_000) for i in range(6)]
    serial = [pipe(c).logits for c in clips]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda c: pipe(c).logits, clips * 3))
    for index, logits in enumerate(parallel):
        np.testing.assert_allclose(logits, serial[index % len(clips)], atol=1e-5)


def test_long_recording_is_split_at_pauses_by_the_energy_splitter(pipe: Pipeline) -> None:
    """`SegmentOptions` picks the energy splitter (tones are not speech to the VAD: tests/test_stream.py)."""
    gap = np.zeros(int(0.8 * 16_000), np.float32)
    parts = [tone(1.2, seed=1), gap, tone(2.0, seed=2, freq=300), gap, tone(0.9, seed=3, freq=180)]
    timeline = pipe.long((np.concatenate(parts), 16_000), SegmentOptions())
    assert len(timeline.segments) == 3
    starts = [round(s.start_s, 1) for s in timeline.segments]
    assert starts[0] == 0.0 and abs(starts[1] - 2.0) <= 0.1 and abs(starts[2] - 4.8) <= 0.1
    assert abs(sum(timeline.probabilities.values()) - 1) < 1e-6 and timeline.label in pipe.labels
    assert abs(timeline.duration_s - 5.7) < 0.01


def test_predict_cli_reports_bad_files_and_keeps_going(cmgi_bundle: Path, tmp_path: Path) -> None:
    good = write_audio(tmp_path / "good.wav", seconds=1.0)
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    result = CliRunner().invoke(main, ["predict", str(cmgi_bundle), str(good), str(bad), "--json"])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert lines[0]["file"] == str(good) and lines[0]["label"] in Pipeline.load(cmgi_bundle).labels
    assert lines[1] == {"file": str(bad), "error": f"{bad}: empty file (0 bytes)"}
    result = CliRunner().invoke(main, ["predict", str(cmgi_bundle), str(good), "--precision", "int9"])
    assert result.exit_code == 2 and "'int9' is not one of" in result.output
    assert "Traceback" not in result.output
