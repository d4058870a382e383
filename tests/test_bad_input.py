"""Bad input, as a new user gives it: every case ends with one line naming the input and the problem (exit 1,
or 2 for usage), no traceback, and nothing lost or half written. The Python API raises edgeser's own errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgeser.audio import to_mono_16k
from edgeser.cli import main
from edgeser.errors import AudioError, EdgeserError, OptionError
from edgeser.runtime import Failure, Pipeline, Prediction, SegmentOptions
from tests.conftest import REPO, tone, write_audio


@pytest.fixture(scope="module")
def stfnet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped stfnet default exported once (read-only for tests: copy before changing it)."""
    out = tmp_path_factory.mktemp("bad") / "stfnet"
    result = CliRunner().invoke(main, ["export", "--model", "stfnet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def pipe(stfnet_bundle: Path) -> Pipeline:
    return Pipeline.load(stfnet_bundle, threads=1)


def cli(args: list[str], cwd: Path | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str, *names: str) -> str:
    """The single `error:` line, checked to name each of `names`; no traceback anywhere."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def copy(bundle: Path, target: Path) -> Path:
    return Path(shutil.copytree(bundle, target))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_bad_bundles(stfnet_bundle: Path, tmp_path: Path) -> None:
    clip = write_audio(tmp_path / "clip.wav", seconds=1.0)
    code, _, err = cli(["predict", str(tmp_path / "nope"), str(clip)])
    assert code == 1 and "bundle folder not found" in one_line_error(err, "nope")
    cases = (
        (json.dumps([1, 2]), "expected a JSON object, got list"),
        (json.dumps("text"), "expected a JSON object, got str"),
        ("{not json", "corrupt manifest"),
    )
    for index, (body, problem) in enumerate(cases):
        broken = copy(stfnet_bundle, tmp_path / f"b{index}")
        (broken / "bundle.json").write_text(body)
        code, _, err = cli(["predict", str(broken), str(clip)])
        assert code == 1 and problem in one_line_error(err, "bundle.json")
    labels = copy(stfnet_bundle, tmp_path / "labels")
    manifest = json.loads((labels / "bundle.json").read_text())
    manifest["labels"] = manifest["labels"][:4]
    (labels / "bundle.json").write_text(json.dumps(manifest))
    code, _, err = cli(["predict", str(labels), str(clip)])
    assert code == 1 and "4 labels but the fusion head outputs 7 logits" in one_line_error(err, "bundle.json")
    manifest["stages"]["fusion_head"]["outputs"][0]["shape"] = [
        "batch",
        4,
    ]  # a consistent lie: the graph says 7
    (labels / "bundle.json").write_text(json.dumps(manifest))
    code, _, err = cli(["predict", str(labels), str(clip)])
    assert code == 1 and "lists 4 labels but the fusion head" in one_line_error(err, str(labels))
    tampered = copy(stfnet_bundle, tmp_path / "tampered")
    with (tampered / "fp32" / "fusion_head.onnx").open("ab") as handle:
        handle.write(b"\0")
    code, _, err = cli(["predict", str(tampered), str(clip)])
    assert code == 1 and "checksum mismatch" in one_line_error(err, "fusion_head.onnx")


def test_cli_bad_audio_files_are_reported_and_the_rest_still_run(stfnet_bundle: Path, tmp_path: Path) -> None:
    good = write_audio(tmp_path / "good.wav", seconds=1.0)
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(31 * 16_000, np.float32) + 0.1, 16_000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    code, out, err = cli(
        ["predict", str(stfnet_bundle), str(tmp_path / "missing.wav"), str(empty), str(long), str(good)]
    )
    assert code == 1 and out.startswith(str(good)) and len(out.splitlines()) == 1  # the good file still ran
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3 and "Traceback" not in err
    assert "missing.wav: file not found" in lines[0] and "empty.wav: empty file" in lines[1]
    assert "long.wav: too long: 31.0 s" in lines[2] and "--long" in lines[2]
    assert "3 of 4 file(s) failed" in err


def test_cli_long_without_speech_says_so_and_invents_no_label(stfnet_bundle: Path, tmp_path: Path) -> None:
    short = write_audio(tmp_path / "short.wav", seconds=0.3)
    noise = np.random.default_rng(0).normal(0, 1e-4, 5 * 16_000).astype(np.float32)
    noise[40_000] = 0.9  # one click: the only frame near the loudest level, far shorter than a segment
    clicky = tmp_path / "click.wav"
    sf.write(clicky, noise, 16_000)
    code, out, _ = cli(["predict", str(stfnet_bundle), str(short), str(clicky), "--long"])
    assert code == 0 and out.count("no speech found") == 2
    assert not any(label in out for label in ("angry", "bored", "neutral"))
    code, out, _ = cli(["predict", str(stfnet_bundle), str(short), "--long", "--json"])
    record = json.loads(out)
    assert record["label"] is None and record["segments"] == [] and record["probabilities"] == {}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["predict", "B", "x.wav", "--precision", "int9"], "'int9' is not one of"),
        (["predict", "B", "x.wav", "--backend", "gpu"], "'gpu' is not one of"),
        (["predict", "B"], "give at least one FILE"),
        (["predict", "B", "x.wav", "--threads", "many"], "'many' is not a valid integer"),
        (["bench", "B", "--rounds", "ten"], "'ten' is not a valid integer"),
        (["check", "parity", "B", "--data", "emodb:x", "--limit", "-5"], "-5 is not in the range x>=1"),
        (["check", "parity", "B", "--data", "emodb:x", "--limit", "0"], "0 is not in the range x>=1"),
        (
            ["check", "variants", "B", "--data", "emodb:x", "--min-agreement", "1.5"],
            "1.5 is not in the range",
        ),
        (["export", "--model", "nosuch"], "'nosuch' is not one of 'cmgi', 'gcf2net'"),
        (
            ["train", "--model", "stfnet", "--data", "emodb:x", "--protocol", "nosuch"],
            "'nosuch' is not one of",
        ),
        (
            ["quantize", "B"],
            "choose at least one of --int8, --int8-trt, --int8-trt-fp16, --int8-dynamic, --fp16",
        ),
    ],
)
def test_cli_usage_errors_exit_2_naming_the_option(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-core machine and no forcing, whatever this host is: the bounds are about the rule, not this CPU."""
    from edgeser.runtime import options

    monkeypatch.setattr(options, "logical_cores", lambda: 2)
    monkeypatch.delenv(
        options.FORCE_THREADS_ENV, raising=False
    )  # and `--force-threads` sets it: undone after


RAY = ["--ray", "x.csv", "--out", "o.parquet"]
CORES = "threads is more than the 2 logical cores here"


BOUND_CASES = [
    (["predict", "B", "x.wav", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (["predict", "B", "x.wav", "--threads", "3"], "--threads", f"3 {CORES}"),
    (
        ["predict", "B", "x.wav", "--force-threads", "--threads", "9"],
        "--threads",
        "more than 8 (4 per logical core, 2 here) even when forced",
    ),
    (["predict", "B", "x.wav", "--threads", "9", "--force-threads"], "--threads", "even when forced"),
    (["predict", "B", "x.wav", "--threads", "-3"], "--threads", "expected a positive integer, got -3"),
    (["predict", "B", "x.wav", "--threads", "0"], "--threads", "expected a positive integer, got 0"),
    (["predict", "B", *RAY, "--workers", "100000"], "--workers", "100000 is outside 1..256"),
    (["predict", "B", *RAY, "--workers", "0"], "--workers", "0 is outside 1..256"),
    (["predict", "B", *RAY, "--batch-size", "100000"], "--batch-size", "100000 is outside 1..256"),
    (["predict", "B", *RAY, "--cpus-per-worker", "nan"], "--cpus-per-worker", "expected a finite number"),
    (["predict", "B", *RAY, "--cpus-per-worker", "1000"], "--cpus-per-worker", "1000 is outside 0.01..256"),
    (["predict", "B", *RAY, "--gpus-per-worker", "64"], "--gpus-per-worker", "64 is outside 0..16"),
    (["check", "B", "--data", "emodb:x", *RAY, "--workers", "100000"], "--workers", "outside 1..256"),
    (["calibrate", "B", "--data", "emodb:x", "--samples", "0"], "--samples", "0 is outside 1..4096"),
    (["calibrate", "B", "--data", "emodb:x", "--samples", "1000000"], "--samples", "1000000 is outside"),
    (["calibrate", "B", "--data", "emodb:x", "--buckets", "2,3600"], "--buckets", "3600 is outside 0.1..30"),
    (["calibrate", "B", "--data", "emodb:x", "--buckets", "2,nan"], "--buckets", "expected a finite number"),
    (["calibrate", "B", "--data", "emodb:x", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (["quantize", "B", "--int8", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (["quantize", "B", "--int8", "--speed-threads", "5000"], "--speed-threads", f"5000 {CORES}"),
    (
        ["quantize", "B", "--int8", "--max-ua-drop", "1", "--validation-clips", "100000"],
        "--validation-clips",
        "100000 is outside 1..4096",
    ),
    (["check", "B", "--data", "emodb:x", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (
        ["check", "variants", "B", "--data", "emodb:x", "--warmup", "1000"],
        "--warmup",
        "1000 is outside 0..100",
    ),
    (["bench", "B", "--threads", "1,5000"], "--threads", f"5000 {CORES}"),
    (["bench", "B", "--batch-sizes", "1,100000"], "--batch-sizes", "100000 is outside 1..256"),
    (["bench", "B", "--lengths", "4.5,3600"], "--lengths", "3600 is outside 0.1..30"),
    (["bench", "B", "--rounds", "100000"], "--rounds", "100000 is outside 1..1000"),
    (["bench", "B", "--warmup", "-1"], "--warmup", "-1 is outside 0..100"),
    (
        ["train", "--model", "stfnet", "--data", "emodb:x", "--batch-size", "100000"],
        "--batch-size",
        "100000 is outside 1..4096",
    ),
    (["export-triton", "B", "repo", "--max-batch", "100000"], "--max-batch", "100000 is outside 1..256"),
    (["export-triton", "B", "repo", "--instances", "1000"], "--instances", "1000 is outside 1..64"),
    (["serve", "B", "--max-batch", "0"], "--max-batch", "0 is outside 1..256"),
    (["serve", "B", "--instances", "1000"], "--instances", "1000 is outside 1..64"),
    (["serve", "B", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (["build-trt", "B", "--workspace", "999999999"], "--workspace", "999999999 is outside 1..262144"),
    (["demo", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (["listen", "B", "--input", "x.wav", "--threads", "5000"], "--threads", f"5000 {CORES}"),
    (["listen", "B", "--input", "-", "--chunk-ms", "100000"], "--chunk-ms", "100000 is outside 1..1000"),
    (["listen", "B", "--input", "-", "--rate", "10000000"], "--rate", "10000000 is outside 8000..384000"),
    (["listen", "B", "--input", "-", "--channels", "1000"], "--channels", "1000 is outside 1..32"),
    (["listen", "B", "--device", "100000"], "--device", "100000 is outside 0..1023"),
]


@pytest.mark.parametrize(
    ("args", "option", "problem"), BOUND_CASES, ids=[" ".join(c[0]) for c in BOUND_CASES]
)
def test_cli_resource_bounds_refuse_in_one_line_before_any_work(
    two_cores: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    option: str,
    problem: str,
) -> None:
    """Every option that sizes a resource is bounded: one line naming the option, the bound and why, exit 1.
    The bundle B does not exist, so the refusal comes from the option itself, before any work (nothing written
    in the working folder either)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(args)
    line = one_line_error(err, option, problem)
    assert code == 1 and out == "" and list(tmp_path.iterdir()) == [], line
    if "threads" in problem and "even when forced" not in problem:
        assert "--force-threads" in line and "process table" in line  # why, and the way out


def _spy_sessions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The intra-op thread count of every onnxruntime session opened from now on, in order."""
    import onnxruntime

    opened: list[int] = []
    real = onnxruntime.InferenceSession

    def spy(*args: object, **kwargs: object) -> object:
        opened.append(kwargs["sess_options"].intra_op_num_threads)  # type: ignore[attr-defined]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return opened


def test_cli_too_many_threads_never_open_a_session(
    stfnet_bundle: Path, tmp_path: Path, two_cores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict --threads 5000` took the host's process table; now no onnxruntime session is made. Forced, up to
    4 threads a core run, and every stage session gets exactly that many."""

    opened = _spy_sessions(monkeypatch)
    clip = write_audio(tmp_path / "clip.wav", seconds=1.0)
    for threads in ("5000", "3"):
        code, out, err = cli(["predict", str(stfnet_bundle), str(clip), "--threads", threads])
        assert code == 1 and out == "" and f"{threads} {CORES}" in one_line_error(err, "--threads")
    assert opened == []
    code, out, _ = cli(["predict", str(stfnet_bundle), str(clip), "--threads", "3", "--force-threads"])
    assert code == 0 and out.startswith(str(clip)) and len(opened) >= 2 and set(opened) == {3}


def test_cli_export_never_loses_work(stfnet_bundle: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    code, _, err = cli(["export", "--model", "stfnet", "--out", str(a_file)])
    assert code == 1 and "exists and is not a folder" in one_line_error(err, str(a_file))
    code, _, err = cli(["export", "--model", "stfnet", "--out", str(a_file / "bundle")])
    assert code == 1 and "is a file, not a folder" in one_line_error(err, "a-file")
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    code, _, err = cli(["export", "--model", "stfnet", "--out", str(foreign)])
    assert code == 1 and "not an edgeser bundle; refusing" in one_line_error(err, "photos")
    worked = copy(stfnet_bundle, tmp_path / "worked")
    (worked / "calibration").mkdir()
    (worked / "reports" / "variants.md").write_text("results")
    code, _, err = cli(["export", "--model", "stfnet", "--out", str(worked)])
    assert code == 1 and "calibration, reports/" in one_line_error(err, "--force")
    assert (worked / "reports" / "variants.md").read_text() == "results"
    code, _, err = cli(
        [
            "export",
            "--model",
            "stfnet",
            "--random-weights",
            "--checkpoint",
            str(worked),
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 1 and "exclude each other" in one_line_error(err)
    code, _, err = cli(["export", "--model", "stfnet", "--out", "/sys/edgeser-test-bundle"])
    assert code == 1 and "cannot write" in one_line_error(err, "/sys")


def test_cli_random_weights_means_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(["export", "--model", "stfnet", "--random-weights"])
    assert code == 0 and "build/stfnet-small-random" in out  # not the demo bundle's folder
    manifest = json.loads((tmp_path / "build" / "stfnet-small-random" / "bundle.json").read_text())
    assert manifest["source_checkpoint"]["kind"] == "random_weights"


def test_cli_bad_data(stfnet_bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("path,label\nstimme_ärger.wav,angry\n".encode("latin-1"))
    code, _, err = cli(["data", "summary", str(latin1)])
    assert code == 1 and "UTF-8" in one_line_error(err, "latin1.csv")
    code, _, err = cli(["data", "summary", "foo:bar"])
    assert code == 1 and "expected NAME:PATH" in one_line_error(err, "foo:bar")
    code, _, err = cli(["check", "parity", str(stfnet_bundle), "--data", f"tess:{shared_data / 'emodb'}"])
    assert code == 1 and one_line_error(err, "tess")
    code, _, err = cli(["data", "summary", f"tess:{shared_data / 'emodb'}"])
    assert code == 1 and one_line_error(err, "tess")
    code, _, err = cli(["quantize", str(stfnet_bundle), "--int8"])
    assert code == 1 and "run `edgeser calibrate" in one_line_error(err, str(stfnet_bundle))
    code, _, err = cli(
        [
            "calibrate",
            str(stfnet_bundle),
            "--data",
            f"emodb:{shared_data / 'emodb'}",
            "--ids",
            str(tmp_path / "none.txt"),
        ]
    )
    assert code == 1 and "ids file not found" in one_line_error(err, "none.txt")
    code, _, err = cli(["check", str(stfnet_bundle), "--data", f"tess:{shared_data / 'tess'}", "--fold", "1"])
    assert code == 1 and "trained on tess fold 0" in one_line_error(
        err, "fold 1"
    )  # the shipped default's fold


def test_cli_on_the_lean_install_names_the_extra(tmp_path: Path) -> None:
    """Without torch (the runtime-only install), export says which extra to install; predict still works."""
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "transformers", "optimum"}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from edgeser.cli import main
        main(["export", "--model", "stfnet", "--out", sys.argv[1]], prog_name="edgeser")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "b")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 1 and "pip install 'edgeser[export]'" in one_line_error(done.stderr, "torch")


# ------------------------------------------------------------------------------------------------ Python API


def _raises(call: Callable[[], object], error: type[Exception], *names: str) -> str:
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, EdgeserError) and "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message


def test_api_bad_options(stfnet_bundle: Path, pipe: Pipeline) -> None:
    _raises(lambda: Pipeline.load(stfnet_bundle, threads="two"), OptionError, "threads", "'two'")  # type: ignore[arg-type]
    _raises(lambda: Pipeline.load(stfnet_bundle, threads=0), OptionError, "threads", "0")
    _raises(lambda: Pipeline.load(stfnet_bundle, threads=True), OptionError, "threads")  # type: ignore[arg-type]
    _raises(lambda: Pipeline.load(stfnet_bundle, "int4"), OptionError, "precision", "int4")
    _raises(lambda: Pipeline.load(stfnet_bundle, backend="gpu"), OptionError, "backend", "gpu")
    _raises(lambda: pipe.batch([(tone(1.0), 16_000)], batch_size=0), OptionError, "batch_size", "0")
    _raises(lambda: SegmentOptions(max_segment_s=0), OptionError, "max_segment_s")
    _raises(lambda: SegmentOptions(min_pause_s=-1), OptionError, "min_pause_s")
    _raises(lambda: SegmentOptions(threshold_db=3), OptionError, "threshold_db")
    _raises(lambda: SegmentOptions(min_segment_s=float("nan")), OptionError, "min_segment_s")
    _raises(lambda: pipe.long((tone(2.0), 16_000), "fast"), OptionError, "options")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bogus"):  # Python's own one-line error for an unknown keyword
        pipe.long((tone(2.0), 16_000), bogus=1)  # type: ignore[call-arg]


def test_api_resource_bounds(
    stfnet_bundle: Path, pipe: Pipeline, tmp_path: Path, two_cores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API refuses what the CLI refuses, with the same bound and reason, before opening or reading anything."""

    from edgeser.bench.core import BenchOptions
    from edgeser.calibrate import calibrate_bundle
    from edgeser.checks.fidelity import check_variants
    from edgeser.quantize.controlled import quantize_controlled
    from edgeser.quantize.variants import Int8Options
    from edgeser.ray_scoring.jobs import RayOptions
    from edgeser.runtime.options import FORCE_THREADS_ENV
    from edgeser.runtime.sessions import make_session
    from edgeser.serving.repository import RepositoryOptions, write_serving_repository
    from edgeser.training.config import TrainConfig
    from edgeser.trt.build import BuildOptions

    opened = _spy_sessions(monkeypatch)
    cores = "threads is more than the 2 logical cores here"
    _raises(
        lambda: Pipeline.load(stfnet_bundle, threads=5000),
        OptionError,
        "threads",
        f"5000 {cores}",
        "process table",
        "force_threads=True",
    )
    _raises(lambda: Pipeline.load(stfnet_bundle, threads=3), OptionError, f"3 {cores}")
    _raises(
        lambda: Pipeline.load(stfnet_bundle, threads=9, force_threads=True),
        OptionError,
        "threads",
        "more than 8 (4 per logical core, 2 here) even when forced",
    )
    fp32 = stfnet_bundle / "fp32" / "fusion_head.onnx"
    _raises(lambda: make_session(fp32, threads=9), OptionError, "even when forced")  # every caller's ceiling
    assert opened == []
    assert Pipeline.load(stfnet_bundle, threads=3, force_threads=True).labels == pipe.labels and set(
        opened
    ) == {3}
    monkeypatch.setenv(FORCE_THREADS_ENV, "1")
    opened.clear()
    Pipeline.load(stfnet_bundle, threads=8)
    assert set(opened) == {8}
    _raises(lambda: Pipeline.load(stfnet_bundle, threads=9), OptionError, "even when forced")
    monkeypatch.delenv(FORCE_THREADS_ENV)
    opened.clear()

    wave = (tone(1.0), 16_000)
    _raises(
        lambda: pipe.batch([wave], batch_size=100_000), OptionError, "batch_size", "100000 is outside 1..256"
    )
    _raises(lambda: SegmentOptions(max_segment_s=600), OptionError, "max_segment_s", "<= 30 s")
    five_hours = sparse_wav(tmp_path / "5h.wav", 16_000, 1, 5 * 3600 * 16_000)
    _raises(
        lambda: pipe.long(five_hours),
        AudioError,
        "5h.wav",
        "too long: 18000.0 s (maximum 14400 s)",
        "holds the whole recording in memory",
    )
    five_hours.unlink()
    _raises(lambda: BenchOptions(threads=(1, 5000)), OptionError, "--threads", f"5000 {cores}")
    assert BenchOptions(threads=(3,), force_threads=True).threads == (3,)
    _raises(lambda: BenchOptions(batches=(0,)), OptionError, "--batch-sizes", "0 is outside 1..256")
    _raises(lambda: BenchOptions(lengths_s=(3600.0,)), OptionError, "--lengths", "3600 is outside 0.1..30")
    _raises(lambda: BenchOptions(rounds=10**6), OptionError, "--rounds", "1000000 is outside 1..1000")
    _raises(lambda: RayOptions(workers=10**5), OptionError, "--workers", "100000 is outside 1..256")
    _raises(lambda: RayOptions(cpus_per_worker=float("inf")), OptionError, "--cpus-per-worker", "finite")
    _raises(
        lambda: RepositoryOptions(max_batch=10**5), OptionError, "--max-batch", "100000 is outside 1..256"
    )
    _raises(lambda: RepositoryOptions(instances=1000), OptionError, "--instances", "1000 is outside 1..64")
    _raises(
        lambda: write_serving_repository(stfnet_bundle, tmp_path / "repo", threads=5000),
        OptionError,
        "threads",
        f"5000 {cores}",
    )
    _raises(lambda: Int8Options(speed_threads=5000), OptionError, "speed_threads", f"5000 {cores}")
    # a refusal from the corpus would mean the bound came too late
    nowhere = f"emodb:{tmp_path / 'no-corpus'}"
    _raises(
        lambda: calibrate_bundle(stfnet_bundle, nowhere, samples=10**6),
        OptionError,
        "samples",
        "1000000 is outside 1..4096",
    )
    _raises(
        lambda: calibrate_bundle(stfnet_bundle, nowhere, buckets_s=(2.0, 3600.0)),
        OptionError,
        "buckets_s",
        "3600 is outside 0.1..30",
    )
    _raises(lambda: calibrate_bundle(stfnet_bundle, nowhere, threads=5000), OptionError, f"5000 {cores}")
    _raises(lambda: check_variants(stfnet_bundle, nowhere, threads=5000), OptionError, f"5000 {cores}")
    _raises(
        lambda: check_variants(stfnet_bundle, nowhere, warmup=10**6), OptionError, "warmup", "outside 0..100"
    )
    _raises(
        lambda: quantize_controlled(stfnet_bundle, 1.0, validation_clips=10**6),
        OptionError,
        "validation_clips",
        "1000000 is outside 1..4096",
    )
    _raises(lambda: TrainConfig(batch_size=10**6), OptionError, "batch_size", "1000000 is outside 1..4096")
    _raises(
        lambda: BuildOptions("fp16", workspace_mb=10**9), OptionError, "workspace_mb", "outside 1..262144"
    )
    assert opened == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("audio", "needle"),
    [
        ((tone(1.0), float("nan")), "invalid sample rate nan"),
        ((tone(1.0), 0), "invalid sample rate 0"),
        ((tone(1.0), 16_000.5), "invalid sample rate 16000.5"),
        ((tone(1.0), "16k"), "invalid sample rate '16k'"),
        ((tone(1.0), 4_000), "below the 8000 Hz minimum"),
        (tone(1.0), "pass arrays as (samples, sample_rate)"),
        (123, "unsupported input"),
        ((np.zeros((2, 2, 16_000), np.float32), 16_000), "got shape (2, 2, 16000)"),
        ((np.ones(16_000, bool), 16_000), "unsupported sample dtype bool"),
        ((np.ones(16_000, np.complex64), 16_000), "unsupported sample dtype complex64"),
        ((np.full(16_000, np.nan, np.float32), 16_000), "NaN or infinite"),
        ((np.full(16_000, 128, np.uint8), 16_000), "all-silent"),  # 8-bit PCM silence is 128, not a DC offset
        ((np.zeros(800, np.float32) + 0.1, 16_000), "too short"),
        ((np.zeros(0, np.float32), 16_000), "empty audio"),
        (b"", "empty input"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt garbage", "unreadable or corrupt"),
        ((np.zeros((40, 40), np.float32), 16_000), "no channel axis of at most 32"),
    ],
)
def test_api_bad_audio(pipe: Pipeline, audio: object, needle: str) -> None:
    _raises(lambda: pipe(audio), AudioError, needle)  # type: ignore[arg-type]


def test_api_arrays_are_read_as_people_mean_them(pipe: Pipeline) -> None:
    wave = tone(1.0)
    channels_first = np.stack([wave, wave])  # [2, S]: the short axis is the channels
    assert pipe((channels_first, 16_000)).duration_s == pytest.approx(1.0)
    as_int16 = np.round(wave * 32768).astype(np.int16)
    as_uint8 = (np.round(wave * 128) + 128).clip(0, 255).astype(np.uint8)
    # What the runtime reads from each array: integer PCM scaled as soundfile does, 8-bit unsigned around 128.
    assert np.allclose(to_mono_16k(as_int16, 16_000), wave, atol=1 / 32768)
    assert np.allclose(to_mono_16k(as_uint8, 16_000), wave, atol=1 / 128)  # 8-bit: coarse, but centred
    reference = pipe((wave, 16_000)).logits
    assert np.allclose(pipe((as_int16, 16_000)).logits, reference, atol=1e-3)


def test_api_batch_gives_each_input_its_own_result(pipe: Pipeline, tmp_path: Path) -> None:
    good = write_audio(tmp_path / "good.wav", seconds=1.2)
    results = pipe.batch([good, tmp_path / "missing.wav", (tone(0.8), 16_000), b""], batch_size=2)
    assert [type(r) for r in results] == [Prediction, Failure, Prediction, Failure]
    assert results[1].source.endswith("missing.wav") and "file not found" in results[1].error  # type: ignore[union-attr]
    assert results[3].error == "<0 bytes>: empty input (0 bytes)"  # type: ignore[union-attr]
    assert results[0].label == pipe(good).label  # type: ignore[union-attr]


def wav_header(rate: int, channels: int, frames: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV holding `frames` frames."""
    data_bytes = frames * channels * 2
    return (
        b"RIFF"
        + (36 + data_bytes).to_bytes(4, "little")
        + b"WAVE"
        + b"fmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + channels.to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * channels * 2).to_bytes(4, "little")
        + (channels * 2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + data_bytes.to_bytes(4, "little")
    )


def sparse_wav(path: Path, rate: int, channels: int, frames: int) -> Path:
    """A real 16-bit PCM header; the samples a sparse run of zeros (no disk, no time)."""
    header = wav_header(rate, channels, frames)
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + frames * channels * 2)
    assert sf.info(path).frames == frames
    return path


def test_api_an_hour_as_bytes_or_a_file_object_is_refused_from_its_header(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour of 16 kHz stereo WAV (230 MB) given as bytes, `io.BytesIO` or an open file is refused from its
    header as a path is: nothing decoded, and less than 200 MB allocated on the way (tracemalloc sees Python's
    and numpy's buffers; copying the bytes once would be 230 MB)."""
    import io
    import tracemalloc

    frames = 3600 * 16_000
    path = sparse_wav(tmp_path / "hour.wav", 16_000, 2, frames)
    data = path.read_bytes()

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded an over-long input")

    monkeypatch.setattr(sf, "read", no_decoding)
    with path.open("rb") as handle:
        for audio, name in (
            (data, f"<{len(data)} bytes>"),
            (io.BytesIO(data), "<BytesIO>"),
            (handle, str(path)),
        ):
            tracemalloc.start()
            try:
                message = _raises(
                    lambda: pipe(audio),  # noqa: B023
                    AudioError,
                    name,
                    "too long: 3600.0 s (maximum 30 s)",
                    "--long",
                )
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 200 * 2**20, (message, peak / 2**20)
    del data
    monkeypatch.undo()
    clip = write_audio(tmp_path / "clip.wav", seconds=1.0)
    reference = pipe(clip)
    with clip.open("rb") as handle:
        handle.seek(7)  # read from the start whatever the position
        assert np.array_equal(pipe(handle).logits, reference.logits)
        assert np.array_equal(pipe(io.BytesIO(clip.read_bytes())).logits, reference.logits)
        results = pipe.batch([handle, io.BytesIO(b"")])
        assert isinstance(results[0], Prediction) and isinstance(results[1], Failure)
        assert results[1].error == "<BytesIO>: empty input (0 bytes)"
    _raises(lambda: pipe(handle), AudioError, str(clip), "cannot read the file object", "closed file")
    read_end, write_end = os.pipe()
    with open(read_end, "rb", buffering=0) as stream, open(write_end, "wb") as writer:
        writer.write(clip.read_bytes()[:64])
        writer.flush()
        _raises(lambda: pipe(stream), AudioError, "cannot seek; pass its bytes or a path instead")
    with clip.open("r", encoding="latin-1") as text:
        _raises(lambda: pipe(text), AudioError, str(clip), "text-mode file object", "'rb'")  # type: ignore[arg-type]


def test_refusing_an_hour_of_48k_stereo_decides_from_the_header(tmp_path: Path) -> None:
    """A 1-hour 48 kHz stereo WAV (a sparse file: the header is real, the data zeros) is refused from its header
    with a pointer to --long, in well under 200 MB; `data summary` checks it in blocks, also under 200 MB."""
    path = sparse_wav(tmp_path / "hour.wav", 48_000, 2, 3600 * 48_000)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{path},angry\n")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path

        def peak_mb():  # VmHWM: this process image's peak RSS (ru_maxrss would carry pytest's over exec)
            line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
            return int(line.split()[1]) // 1024

        from edgeser.audio import load_audio
        from edgeser.errors import AudioError
        try:
            load_audio(sys.argv[1], max_duration=30.0)
        except AudioError as err:
            print(err)
        print(peak_mb())
        from edgeser.data import load_corpus
        from edgeser.data.scan import summarise
        print(summarise(load_corpus(sys.argv[2])).problems[0].reason)
        print(peak_mb())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(manifest)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    message, refuse_mb, reason, scan_mb = done.stdout.splitlines()
    assert "too long: 3600.0 s (maximum 30 s)" in message and "--long" in message
    assert int(refuse_mb) < 200 and int(scan_mb) < 200, done.stdout
    assert reason == "all-silent audio (peak below -80 dBFS)"
