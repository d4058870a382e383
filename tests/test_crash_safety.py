"""Crash safety: a kill at any rename of export, calibrate and quantize leaves the old or the new bundle complete
at --out, and the next run removes the staging the killed one left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeser.bundle import validate_bundle
from edgeser.errors import EdgeserError, OutputError
from edgeser.files import STAGING_MARK, atomic_dir, clean_stale_staging, staging_dir, write_json_atomic
from tests.conftest import REPO, write_audio

DRIVER = REPO / "tests" / "fault_driver.py"


def run(args: list[str], fault_at: int | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if fault_at is None:
        command = [sys.executable, "-m", "edgeser.cli", *args]
    else:
        command = [sys.executable, str(DRIVER), *args]
        env["EDGESER_FAULT_AT"] = str(fault_at)
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".edgeser-" in p.name)


def each_fault(args: list[str], cwd: Path, check: callable) -> int:  # type: ignore[valid-type]
    """Kill the command before rename 1, 2, ... until it completes; `check()` after every kill. Returns N."""
    fault = 1
    while True:
        done = run(args, fault, cwd)
        if done.returncode != 137:
            assert done.returncode == 0, done.stderr
            check()
            return fault - 1
        check()
        fault += 1
        assert fault < 40, "more renames than expected"


@pytest.fixture(scope="module")
def stfnet_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny stfnet checkpoints with different weights: the old and the new bundle are told apart."""
    import torch

    from edgeser.checkpoint import save_checkpoint
    from edgeser.modelling.registry import build_model

    root = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("stfnet", "small", ["angry", "happy", "sad", "neutral"]).eval()  # 47 k parameters
        paths.append(save_checkpoint(model, root / f"stfnet{seed}", {}, {"data_spec": "tests"}))
    return paths[0], paths[1]


def test_kill_at_every_rename_of_export_keeps_a_complete_bundle(stfnet_checkpoints, tmp_path: Path) -> None:
    old, new = stfnet_checkpoints
    out = tmp_path / "build" / "stfnet"
    assert (
        run(
            ["export", "--model", "stfnet", "--checkpoint", str(old), "--out", str(out)], None, tmp_path
        ).returncode
        == 0
    )

    def check() -> None:
        manifest = validate_bundle(out, "fp32")  # complete: manifest, every graph, checksums
        assert manifest.source_checkpoint["path"] in {str(old), str(new)}

    renames = each_fault(
        ["export", "--model", "stfnet", "--checkpoint", str(new), "--out", str(out)], tmp_path, check
    )
    assert renames >= 2  # the manifest write and the swap at least
    assert validate_bundle(out).source_checkpoint["path"] == str(new)
    assert debris(out.parent) == []  # the last, complete run removed what the killed ones left
    assert list(tmp_path.iterdir()) == [tmp_path / "build"]  # nothing written to the working directory


def test_kill_at_every_rename_of_calibrate_and_quantize(stfnet_checkpoints, tmp_path: Path) -> None:
    old, _ = stfnet_checkpoints
    bundle = tmp_path / "stfnet"
    assert (
        run(
            ["export", "--model", "stfnet", "--checkpoint", str(old), "--out", str(bundle)], None, tmp_path
        ).returncode
        == 0
    )
    rows = ["path,label,speaker"]
    for i in range(8):
        clip = write_audio(tmp_path / "clips" / f"c{i}.wav", seconds=1.0 + 0.2 * i)
        rows.append(f"{clip},{['angry', 'happy', 'sad', 'neutral'][i % 4]},s{i % 2}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    calibrate = ["calibrate", str(bundle), "--data", str(tmp_path / "clips.csv"), "--samples", "4"]
    assert run(calibrate, None, tmp_path).returncode == 0
    first = json.loads((bundle / "calibration" / "calibration.json").read_text())["created"]

    def calibrated() -> None:
        validate_bundle(bundle, "fp32")
        json.loads((bundle / "calibration" / "calibration.json").read_text())  # old or new, never half
        assert (bundle / "calibration" / "inputs.npz").is_file()

    assert each_fault(calibrate, tmp_path, calibrated) >= 2
    assert json.loads((bundle / "calibration" / "calibration.json").read_text())["created"] >= first

    def quantised() -> None:
        manifest = validate_bundle(bundle, "fp32")
        if "int8" in manifest.precisions:
            validate_bundle(bundle, "int8")  # listed means complete

    assert each_fault(["quantize", str(bundle), "--int8", "--min-width", "0"], tmp_path, quantised) >= 2
    validate_bundle(bundle, "int8")
    assert debris(bundle) == [] and debris(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "clips.csv", "stfnet"]  # no scratch in cwd


def test_stale_staging_of_a_dead_process_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import os, sys; from pathlib import Path; from edgeser.files import staging_dir\n"
                f"with staging_dir(Path({str(tmp_path)!r}), 'bundle') as s:\n"
                "    (s / 'big.onnx').write_bytes(b'x' * 1000); os._exit(9)"
            ),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert dead.returncode == 9 and len(debris(tmp_path)) == 2  # the folder and its lock
    with staging_dir(tmp_path, "other") as live:  # the next writer in the folder cleans the dead one's
        (live / "f").write_text("busy")
        assert debris(tmp_path) == sorted([live.name, live.name + ".lock"])
        assert clean_stale_staging(tmp_path) == []  # a live writer's staging is never taken
        assert (live / "f").read_text() == "busy"
    assert debris(tmp_path) == []


def test_atomic_dir_refuses_a_file_and_keeps_the_old_folder_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.write_text("not a folder")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        with atomic_dir(target):
            pass
    target.unlink()
    with atomic_dir(target) as staging:
        write_json_atomic(staging / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            write_json_atomic(staging / "a.json", {"v": 2})
            raise RuntimeError("fails half way")
    assert json.loads((target / "a.json").read_text()) == {"v": 1} and debris(tmp_path) == []
    shutil.rmtree(target)
    assert STAGING_MARK.startswith(".edgeser-")


READER = """
import json, sys, time
from pathlib import Path
from edgeser.bundle import validate_bundle
from edgeser.errors import EdgeserError
bundle, deadline, seen, errors = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2]), set(), []
while time.monotonic() < deadline and not Path(sys.argv[3]).exists():
    try:
        listed = json.loads((bundle / "bundle.json").read_text())["precisions"]
    except (OSError, ValueError) as err:
        errors.append(f"bundle.json: {err}")
        continue
    for precision in listed:
        try:
            validate_bundle(bundle, precision)  # every file listed present, with the checksum listed
            seen.add(precision)
        except EdgeserError as err:
            if precision in json.loads((bundle / "bundle.json").read_text())["precisions"]:
                errors.append(str(err))
print(json.dumps({"seen": sorted(seen), "errors": errors[:5]}))
"""


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize(
    "variants",
    [("--int8-dynamic", "--fp16"), ("--fp16", "--fp16")],
    ids=["two variants", "one variant twice"],
)
def test_two_quantize_runs_on_one_bundle_while_a_reader_checks_it(
    stfnet_checkpoints, tmp_path: Path, variants: tuple[str, str]
) -> None:
    """Two `quantize` runs at once on one bundle, and a reader validating every listed variant all along: both
    variants end up listed and complete (one manifest update at a time), nothing is left staged, and the reader
    never finds a listed variant with a missing file or another checksum than the one listed."""
    bundle = tmp_path / "b"
    done = run(
        ["export", "--model", "stfnet", "--checkpoint", str(stfnet_checkpoints[0]), "--out", str(bundle)],
        None,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    stop = tmp_path / "stop"
    reader = start(["-c", READER, str(bundle), "60", str(stop)], tmp_path)
    writers = [
        start(["-m", "edgeser.cli", "quantize", str(bundle), flag, "--threads", "1"], tmp_path)
        for flag in variants
    ]
    results = [w.communicate(timeout=120) for w in writers]
    stop.touch()
    out, err = reader.communicate(timeout=60)
    assert all(w.returncode == 0 for w in writers), [r[1] for r in results]
    assert reader.returncode == 0, err
    report = json.loads(out)
    assert report["errors"] == [], report
    expected = {"fp32", *(flag.removeprefix("--") for flag in variants)}
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert set(manifest["precisions"]) == expected and set(report["seen"]) >= {"fp32"}
    for precision in expected:
        validate_bundle(bundle, precision)
    assert debris(bundle) == [] and debris(tmp_path) == []


def test_train_resume_after_a_kill_at_every_rename_keeps_every_finished_epoch(
    shared_data: Path, tmp_path: Path
) -> None:
    """`train` killed (os._exit, no clean-up) just before each of its renames, then `train --resume`: every epoch
    finished before the kill is kept (never trained again from scratch), and the resumed run ends with the same
    history, kept epoch and weights as a run never interrupted."""
    args = [
        "train",
        "--model",
        "stfnet",
        "--size",
        "small",
        "--data",
        f"emodb:{shared_data / 'emodb'}",
        "--fold",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--limit",
        "16",
        "--seed",
        "3",
    ]
    straight = run([*args, "--out", str(tmp_path / "straight")], None, tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = json.loads((tmp_path / "straight" / "checkpoint.json").read_text())
    reference_history = [
        json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    fault = 1
    while True:
        out = tmp_path / f"killed{fault}"
        killed = run([*args, "--out", str(out)], fault, tmp_path)
        if killed.returncode != 137:
            assert killed.returncode == 0, killed.stderr[-2000:]
            break
        state = out / "train_state" / "state.json"
        finished = json.loads(state.read_text())["epoch"] if state.is_file() else 0
        resumed = run([*args, "--out", str(out), "--resume"], None, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        if finished:
            assert (
                f"resuming at epoch {finished + 1}/2" in resumed.stderr
            )  # the finished epochs were not rerun
        info = json.loads((out / "checkpoint.json").read_text())
        assert info["weights_sha256"] == reference["weights_sha256"], f"kill before rename {fault}"
        assert info["metrics"]["best"]["epoch"] == reference["metrics"]["best"]["epoch"]
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [h["train"]["loss"] for h in history] == pytest.approx(
            [h["train"]["loss"] for h in reference_history]
        )
        assert debris(out.parent) == [] and debris(out) == []
        fault += 1
        assert fault < 30, "more renames than expected"
    assert fault - 1 >= 4  # checkpoint, state and history of two epochs: at least that many renames


CALIBRATION_READER = """
import json, sys, time
from pathlib import Path
from edgeser.calibrate import read_calibration
from edgeser.errors import EdgeserError
bundle, stop, reads, errors = Path(sys.argv[1]), Path(sys.argv[2]), 0, []
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not stop.exists():
    try:
        cache = read_calibration(bundle)
    except EdgeserError as err:
        if "no calibration cache" not in str(err):
            errors.append(str(err))
        continue
    counts = {k: int(next(iter(t.values())).shape[0]) for k, t in cache.inputs.groups.items()}
    if counts != cache.provenance["groups"]:
        errors.append(f"provenance groups {cache.provenance['groups']} but inputs {counts}")
    reads += 1
print(json.dumps({"reads": reads, "errors": errors[:5]}))
"""


def clip_table(tmp_path: Path) -> Path:
    rows = ["path,label,speaker"]
    for i in range(12):
        clip = write_audio(tmp_path / "clips" / f"c{i}.wav", seconds=1.0 + 0.3 * i)
        rows.append(f"{clip},{['angry', 'happy', 'sad', 'neutral'][i % 4]},s{i % 2}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "clips.csv"


def test_a_calibration_read_never_pairs_one_run_s_provenance_with_another_s_inputs(
    stfnet_checkpoints, tmp_path: Path
) -> None:
    """What a reader racing a `calibrate` would see between its two reads: the provenance of one run and the
    inputs of the next. It is refused (one line), not taken as one cache."""
    from edgeser.calibrate import calibrate_bundle, read_calibration

    table = clip_table(tmp_path)
    bundles = []
    for seed, samples in ((0, 4), (1, 6)):
        bundle = tmp_path / f"b{seed}"
        assert (
            run(
                [
                    "export",
                    "--model",
                    "stfnet",
                    "--checkpoint",
                    str(stfnet_checkpoints[0]),
                    "--out",
                    str(bundle),
                ],
                None,
                tmp_path,
            ).returncode
            == 0
        )
        calibrate_bundle(bundle, str(table), samples=samples, seed=seed)
        bundles.append(bundle)
    mixed = bundles[0] / "calibration"
    shutil.copyfile(bundles[1] / "calibration" / "inputs.npz", mixed / "inputs.npz")
    with pytest.raises(EdgeserError, match="calibration inputs do not match calibration.json"):
        read_calibration(bundles[0])
    assert read_calibration(bundles[1]).provenance["count"] == 6


def test_two_calibrate_runs_on_one_bundle_while_a_reader_reads_the_cache(
    stfnet_checkpoints, tmp_path: Path
) -> None:
    """Two `calibrate` runs at once (different clips and counts): both finish, the cache is one run's whole
    (provenance and inputs agree), nothing stays staged, and a reader all along never gets a mixed cache."""
    table = clip_table(tmp_path)
    bundle = tmp_path / "b"
    assert (
        run(
            ["export", "--model", "stfnet", "--checkpoint", str(stfnet_checkpoints[0]), "--out", str(bundle)],
            None,
            tmp_path,
        ).returncode
        == 0
    )
    stop = tmp_path / "stop"
    reader = start(["-c", CALIBRATION_READER, str(bundle), str(stop)], tmp_path)
    writers = [
        start(
            [
                "-m",
                "edgeser.cli",
                "calibrate",
                str(bundle),
                "--data",
                str(table),
                "--samples",
                str(n),
                "--seed",
                str(n),
                "--threads",
                "1",
                "--json",
            ],
            tmp_path,
        )
        for n in (4, 8)
    ]
    results = [w.communicate(timeout=180) for w in writers]
    stop.touch()
    out, err = reader.communicate(timeout=60)
    assert all(w.returncode == 0 for w in writers), [r[1][-2000:] for r in results]
    assert reader.returncode == 0, err
    assert json.loads(out)["errors"] == []
    from edgeser.calibrate import read_calibration

    cache = read_calibration(bundle)
    assert cache.provenance["ids_sha"] in {json.loads(r[0])["ids_sha"] for r in results}  # one run's, whole
    assert {
        k: int(next(iter(t.values())).shape[0]) for k, t in cache.inputs.groups.items()
    } == cache.provenance["groups"]
    assert debris(bundle) == [] and debris(tmp_path) == []


PIPELINE_READER = """
import json, sys, time
from pathlib import Path
import numpy as np
from edgeser.errors import EdgeserError
from edgeser.runtime import Pipeline
bundle, stop, refs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
wave = np.sin(np.arange(16000, dtype=np.float32) / 7.0) * 0.1
loads, refusals, errors, seen = 0, 0, [], set()
deadline = time.monotonic() + 150
while time.monotonic() < deadline and not stop.exists():
    try:
        pipe = Pipeline.load(bundle, "fp32", threads=1)
        logits = pipe.run_stages([wave]).logits[0].tolist()
    except EdgeserError:
        refusals += 1  # a clean one-line refusal (e.g. the bundle was being swapped)
        continue
    except Exception as err:  # anything else is a reader that saw a half-swapped bundle
        errors.append(f"{type(err).__name__}: {err}")
        continue
    match = [name for name, ref in refs.items() if np.allclose(logits, ref, atol=1e-5)]
    if not match:
        errors.append(f"logits of neither bundle: {logits}")
    seen.update(match)
    loads += 1
print(json.dumps({"loads": loads, "refusals": refusals, "errors": errors[:5], "seen": sorted(seen)}))
"""


def test_export_force_beside_a_reader_never_shows_a_half_swapped_bundle(
    stfnet_checkpoints, tmp_path: Path
) -> None:
    """`export --force` replacing a bundle back and forth between two checkpoints while a reader loads and runs
    it all along: every load computes exactly one of the two models (never stages of both), or is refused in
    one line; the last export leaves a complete bundle and no staging."""
    import numpy as np

    from edgeser.runtime import Pipeline

    wave = np.sin(np.arange(16000, dtype=np.float32) / 7.0) * 0.1
    refs = {}
    for name, checkpoint in zip(("a", "b"), stfnet_checkpoints):
        out = tmp_path / f"ref-{name}"
        assert (
            run(
                ["export", "--model", "stfnet", "--checkpoint", str(checkpoint), "--out", str(out)],
                None,
                tmp_path,
            ).returncode
            == 0
        )
        refs[name] = Pipeline.load(out, "fp32", threads=1).run_stages([wave]).logits[0].tolist()
    assert not np.allclose(refs["a"], refs["b"], atol=1e-3)  # the two models are told apart
    bundle = tmp_path / "bundle"
    shutil.copytree(tmp_path / "ref-a", bundle)
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    stop = tmp_path / "stop"
    reader = start(["-c", PIPELINE_READER, str(bundle), str(stop), str(tmp_path / "refs.json")], tmp_path)
    for checkpoint in [stfnet_checkpoints[1], stfnet_checkpoints[0]] * 2:
        done = run(
            ["export", "--model", "stfnet", "--checkpoint", str(checkpoint), "--out", str(bundle), "--force"],
            None,
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    report = json.loads(out)
    assert report["errors"] == [], report
    assert report["loads"] >= 1, report
    validate_bundle(bundle, "fp32")
    assert Pipeline.load(bundle, "fp32", threads=1).run_stages([wave]).logits[0].tolist() == pytest.approx(
        refs["a"], abs=1e-5
    )
    assert debris(tmp_path) == []
