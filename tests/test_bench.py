"""`edgeser bench`: real-speech clips cut to length, interleaved rounds, the report, cold start and memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeser.assets import demo_clips
from edgeser.bench import clips as clip_module
from edgeser.bench.clips import Speech, load_speech
from edgeser.bench.measure import Plan, measure_cell
from edgeser.bundle import read_manifest
from edgeser.cli.bench import bench_command
from edgeser.errors import DataError
from edgeser.quantize import convert_fp16
from edgeser.quantize.speed import cpu_class_notes


@pytest.fixture(scope="module")
def bench_bundle(cmgi_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = Path(shutil.copytree(cmgi_bundle, tmp_path_factory.mktemp("bench") / "cmgi"))
    convert_fp16(bundle)
    return bundle


def test_clips_are_exact_windows_of_real_speech(shared_data: Path) -> None:
    speech = load_speech([f"tess:{shared_data / 'tess'}"], 5.0)
    assert speech.seconds >= 5.0 and speech.files >= 2 and speech.source.startswith("tess:")
    clips = speech.clips(2.5, 2)
    assert [c.size for c in clips] == [40_000, 40_000] and not np.array_equal(clips[0], clips[1])
    assert np.array_equal(clips[0], speech.wave[:40_000]) and clips[0].dtype == np.float32
    longer = speech.clips(speech.seconds * 1.5, 1)[0]  # longer than the speech: it wraps around, still real
    assert longer.size == round(speech.seconds * 1.5 * 16_000) and np.array_equal(
        longer[: speech.wave.size], speech.wave
    )


def test_without_speech_bench_says_what_to_pass(
    bench_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESER_DATA", str(tmp_path / "nothing"))
    monkeypatch.chdir(tmp_path)
    assert clip_module.resolve_sources([]) == [f"manifest:{demo_clips()}"]  # a fresh clone: the shipped clips
    assert load_speech([], 3.0).seconds >= 3.0
    monkeypatch.setattr(clip_module, "demo_clips", lambda: tmp_path / "no-demo-clips" / "manifest.csv")
    result = CliRunner().invoke(bench_command, [str(bench_bundle), "--out", str(tmp_path / "r")])
    assert isinstance(result.exception, DataError)
    assert "no speech to cut benchmark clips from: pass --clips" in str(result.exception)
    missing = CliRunner().invoke(bench_command, [str(bench_bundle), "--clips", str(tmp_path / "absent.wav")])
    assert isinstance(missing.exception, DataError) and "absent.wav" in str(missing.exception)
    usage = CliRunner().invoke(bench_command, [str(bench_bundle), "--lengths", "1,-2"])
    assert usage.exit_code == 2 and "positive" in usage.output


def test_rounds_are_interleaved_and_alternate() -> None:
    calls: list[str] = []

    def chain(name: str):  # type: ignore[no-untyped-def]
        def run(waves):  # type: ignore[no-untyped-def]
            calls.append(name)
            return np.ones((1, 3, 4), np.float32), np.array([[0.0, 1.0]]), {"audio_encoder": 1.0}

        return run

    chains = {name: chain(name) for name in ("a", "b", "c")}
    plan = Plan((1.0,), (1,), (1,), rounds=3, warmup=1)
    cells = measure_cell(chains, [np.zeros(16_000, np.float32)], 1.0, 1, 1, plan, "a", lambda _: None)
    assert calls == ["a", "b", "c", "a", "b", "c", "c", "b", "a", "a", "b", "c"]  # warm-up, then three rounds
    summary = cells[0].summary()
    assert (
        summary["runs"] == 3
        and summary["feature_cosine"] == pytest.approx(1.0)
        and summary["label_agreement"] == 1.0
    )
    assert {"p50_ms", "p90_ms", "p99_ms", "rtf", "clips_per_s", "stages_p50_ms"} <= set(summary)


def test_bench_writes_the_table_plots_and_machine(
    bench_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    args = [
        str(bench_bundle),
        "--lengths",
        "1,2",
        "--batch-sizes",
        "1,2",
        "--threads",
        "1",
        "--rounds",
        "2",
        "--warmup",
        "1",
        "--compare",
        "--no-cold-start",
        "--clips",
        f"tess:{shared_data / 'tess'}",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    machine = report["machine"]
    assert machine["cpu"] and machine["cpu_class"] and isinstance(machine["cpu_flags"], list)
    assert {"onnxruntime", "numpy"} <= set(machine["versions"]) and "gpus" in machine
    names = [v["name"] for v in report["variants"]]
    assert names[:2] == ["edgeser fp32", "edgeser fp16"] and {"pytorch float", "quantize_dynamic"} <= set(
        names
    )
    assert report["settings"]["interleaved_rounds"] and report["settings"]["clip_source"].startswith("tess:")
    cells = {(r["variant"], r["seconds"], r["batch"]): r for r in report["results"]}
    assert len(cells) == len(names) * 2 * 2
    for (name, seconds, batch), cell in cells.items():
        if name.startswith("openvino"):
            continue
        assert cell["error"] is None and cell["runs"] == 2, (name, cell["error"])
        assert cell["p50_ms"] <= cell["p99_ms"] and cell["rtf"] == pytest.approx(
            cell["p50_ms"] / 1e3 / (seconds * batch)
        )
        assert {"audio_encoder", "ctc_head", "text_encoder", "fusion_head"} <= set(cell["stages_p50_ms"])
    assert cells[("edgeser fp32", 2.0, 1)]["feature_cosine"] == pytest.approx(1.0)
    assert cells[("pytorch float", 2.0, 1)]["feature_cosine"] > 0.9999  # the same model, in PyTorch
    assert (
        report["headline"]["seconds"] == 2.0 and report["headline"]["fastest"] in names
    )  # no 4.5 s: the middle
    markdown = (out / "bench.md").read_text()
    assert "| edgeser fp32 |" in markdown and "vs PyTorch" in markdown and machine["cpu"] in markdown
    assert {p.name for p in out.glob("bench-*.png")} >= {"bench-latency.png", "bench-speedup.png"}
    assert "| edgeser fp32 |" in result.output  # the table is printed too


def test_spinning_workers_are_a_setting_of_the_report(
    bench_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    args = [
        str(bench_bundle),
        "--lengths",
        "1",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--spin",
        "--precisions",
        "fp32",
        "--no-cold-start",
        "--no-plots",
        "--clips",
        f"tess:{shared_data / 'tess'}",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    assert report["settings"]["spin"] is True and all(v["spin"] for v in report["variants"])
    assert "onnxruntime workers spin during runs" in (out / "bench.md").read_text()


def test_cold_start_and_peak_memory_come_from_a_fresh_interpreter(
    bench_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    args = [
        str(bench_bundle),
        "--lengths",
        "1",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--precisions",
        "fp32",
        "--no-plots",
        "--json",
        "--clips",
        f"tess:{shared_data / 'tess'}",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    cold = json.loads(result.stdout)["cold_start"]["edgeser fp32"]
    assert "error" not in cold, cold
    assert cold["cold_start_s"] == pytest.approx(cold["load_s"] + cold["first_run_s"], rel=1e-6)
    assert 20 < cold["peak_rss_mb"] < 4000 and cold["steady_s"] > 0


def test_a_bundle_quantised_on_another_cpu_class_says_so(bench_bundle: Path) -> None:
    manifest = read_manifest(bench_bundle)
    manifest.extra["quantization"]["int8"] = {"measured_on": {"cpu_class": "avx512-vnni", "cpu": "Xeon"}}
    notes = cpu_class_notes(manifest, {"cpu_class": "avx2"})
    assert notes == [
        (
            "int8 was quantised on a avx512-vnni CPU (Xeon); this machine is avx2: which stages pay in "
            "INT8 may differ here"
        )
    ]
    assert cpu_class_notes(manifest, {"cpu_class": "avx512-vnni"}) == []


def test_speech_from_a_folder_of_files(tmp_path: Path) -> None:
    from tests.conftest import write_audio

    for index in range(3):
        write_audio(tmp_path / f"clip{index}.wav", seconds=1.0)
    speech = load_speech([str(tmp_path)], 2.5)
    assert isinstance(speech, Speech) and speech.files == 3 and speech.seconds == pytest.approx(3.0, abs=0.01)
