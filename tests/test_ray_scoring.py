"""Corpus-scale scoring on a local Ray instance (2 CPUs): equal to the single-process Pipeline, clip by clip."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import data_root, tone

from edgeser.errors import EdgeserError

pytest.importorskip("ray", reason="ray absent: install the ray extra")

from edgeser.cli.ray_options import check_ray_command, predict_ray_command, resolve_target
from edgeser.ray_scoring.jobs import ClipScorer, RayOptions, read_results, score_corpus

LABELS = ["angry", "happy", "sad", "neutral"]
BAD = {
    "silent.wav": "all-silent",
    "garbage.wav": "unreadable",
    "missing.wav": "not found",
    "long.wav": "too long",
}


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    """One local Ray instance with 2 CPUs for the module."""
    import ray

    from edgeser.ray_scoring.jobs import connect

    connect(RayOptions(local_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest corpus: synthetic clips of many lengths, a few real EMO-DB clips, and bad files of four kinds."""
    root = tmp_path_factory.mktemp("corpus")
    rows = ["path,label,transcript,id"]
    for i in range(14):
        sf.write(root / f"c{i:02d}.wav", tone(0.4 + 0.21 * (i % 7), freq=140.0 + 25 * i, seed=i), 16_000)
        rows.append(f"c{i:02d}.wav,{LABELS[i % 4]},say the word {i},c{i:02d}")
    data = data_root()
    if data is not None:
        for path in sorted((data / "emodb" / "wav").glob("03a0*"))[:4]:
            rows.append(f"{path},angry,,emodb-{path.stem}")
    sf.write(root / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    (root / "garbage.wav").write_bytes(b"not audio at all" * 10)
    sf.write(
        root / "long.wav",
        (0.1 * np.random.default_rng(0).standard_normal(16_000 * 31)).astype(np.float32),
        16_000,
    )
    rows += [f"{name},sad,,bad-{Path(name).stem}" for name in BAD]
    (root / "corpus.csv").write_text("\n".join(rows) + "\n")
    return root / "corpus.csv"


def single_process(bundle: Path, corpus: Path) -> dict[str, object]:
    """What `edgeser predict` does today: one Pipeline, one clip at a time; a Prediction or the error text."""
    import csv

    from edgeser.runtime import Pipeline

    pipe = Pipeline.load(bundle)
    found: dict[str, object] = {}
    for row in csv.DictReader(corpus.read_text().splitlines()):
        path = row["path"] if os.path.isabs(row["path"]) else str(corpus.parent / row["path"])
        try:
            found[path] = pipe(path)
        except EdgeserError as err:
            found[path] = str(err)
    return found


def assert_equal_to_single_process(table, labels: list[str], expected: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    rows = table.to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(expected)
    assert labels == LABELS
    for row in rows:
        reference = expected[row["path"]]
        if isinstance(reference, str):  # the clip the runtime rejects is an error row with the same reason
            assert row["label"] is None and row["probabilities"] is None
            assert row["error"] is not None and reference.split(": ", 1)[1] in row["error"]
            continue
        assert row["error"] is None, row["error"]
        assert row["label"] == reference.label  # type: ignore[attr-defined]
        assert row["transcript"] == reference.transcript  # type: ignore[attr-defined]
        np.testing.assert_allclose(row["logits"], reference.logits, atol=1e-4, rtol=0)  # type: ignore[attr-defined]
        np.testing.assert_allclose(
            row["probabilities"],
            list(reference.probabilities.values()),  # type: ignore[attr-defined]
            atol=1e-5,
            rtol=0,
        )


def test_ray_scoring_equals_the_single_process_run(
    local_ray,
    cmgi_bundle: Path,
    corpus: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.parquet"
    result = CliRunner().invoke(
        predict_ray_command,
        [
            str(cmgi_bundle),
            "--ray",
            f"manifest:{corpus}",
            "--out",
            str(out),
            "--workers",
            "2",
            "--batch-size",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output  # bad files make the run exit 1, after writing every row
    summary = json.loads(result.stdout)
    table, labels = read_results(out)
    expected = single_process(cmgi_bundle, corpus)
    assert summary["clips"] == len(expected) == table.num_rows and summary["errors"] == len(BAD)
    assert_equal_to_single_process(table, labels, expected)
    # in corpus order when asked (the default): the index column counts up, the reader's order kept
    from edgeser.data import load_corpus

    ids = table.column("id").to_pylist()
    assert table.column("index").to_pylist() == list(range(table.num_rows))
    assert ids[: len(expected) - 2] == [u.id for u in load_corpus(f"manifest:{corpus}").utterances]
    for name, reason in BAD.items():
        row = next(r for r in table.to_pylist() if r["path"].endswith(name))
        assert reason in row["error"]


def test_unordered_rows_hold_the_same_results(
    local_ray, cmgi_bundle: Path, corpus: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "unordered.parquet"
    summary = score_corpus(
        cmgi_bundle, f"manifest:{corpus}", out, RayOptions(workers=1, batch_size=5, keep_order=False)
    )
    table, labels = read_results(out)
    assert summary.clips == table.num_rows
    assert_equal_to_single_process(table, labels, single_process(cmgi_bundle, corpus))


class KillOnce(ClipScorer):
    """Kills its own worker process (SIGKILL) on its first batch, once per run (a marker file says it did)."""

    marker = ""

    def __call__(self, batch):  # type: ignore[no-untyped-def]
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(",".join(str(p) for p in batch["id"]))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_a_killed_workers_batch_is_retried(
    local_ray, cmgi_bundle: Path, corpus: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    KillOnce.marker = str(tmp_path / "killed")
    out = tmp_path / "results.parquet"
    summary = score_corpus(
        cmgi_bundle, f"manifest:{corpus}", out, RayOptions(workers=2, batch_size=4), scorer=KillOnce
    )
    killed_batch = Path(KillOnce.marker).read_text().split(",")
    assert killed_batch and all(killed_batch)  # a worker really died holding this batch
    table, labels = read_results(out)
    assert summary.clips == table.num_rows
    assert_equal_to_single_process(table, labels, single_process(cmgi_bundle, corpus))
    assert set(killed_batch) <= set(table.column("id").to_pylist())


def test_ray_check_evaluates_every_clip(local_ray, cmgi_bundle: Path, corpus: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "eval.parquet"
    result = CliRunner().invoke(
        check_ray_command,
        [
            str(cmgi_bundle),
            "--ray",
            "--data",
            f"manifest:{corpus}",
            "--out",
            str(out),
            "--json",
            "--max-errors",
            "0",
        ],
    )
    assert result.exit_code == 1, result.output  # four bad files miss the --max-errors 0 gate
    report = json.loads(result.stdout)
    table, _ = read_results(out)
    good = [r for r in table.to_pylist() if r["error"] is None]
    assert (
        report["clips"] == table.num_rows and report["errors"] == len(BAD) and report["scored"] == len(good)
    )
    agree = sum(r["label"] == r["reference_label"] for r in good)
    assert report["wa"] == pytest.approx(agree / len(good))
    assert report["gates"]["max_errors"] == {"value": len(BAD), "bound": 0, "ok": False}
    assert (tmp_path / "eval.json").is_file() and "Corpus evaluation" in (tmp_path / "eval.md").read_text()


def test_ray_target_and_usage_errors(cmgi_bundle: Path) -> None:
    assert resolve_target("emodb:/data/emodb", ()) == ("local", "emodb:/data/emodb")
    assert resolve_target("auto", ("calls.csv",)) == ("auto", "calls.csv")
    assert resolve_target("ray://head:10001", ("calls.csv",)) == ("ray://head:10001", "calls.csv")
    assert resolve_target("10.0.0.5:6379", ("x.csv",)) == ("10.0.0.5:6379", "x.csv")
    with pytest.raises(EdgeserError, match="one corpus spec"):
        resolve_target("a.csv", ("b.csv",))
    result = CliRunner().invoke(predict_ray_command, [str(cmgi_bundle), "--ray", "x.csv"])
    assert result.exit_code == 2 and "--out" in result.output
    with pytest.raises(EdgeserError, match="--workers: 0 is outside 1..256"):
        RayOptions(workers=0)


def test_a_batch_that_fails_whole_is_scored_clip_by_clip(cmgi_bundle: Path, tmp_path: Path) -> None:
    """No Ray needed: the actor's logic on one batch, with a Pipeline whose batched call fails."""
    from edgeser.runtime import Pipeline

    class BrokenBatch:
        def __init__(self, pipe: Pipeline) -> None:
            self.pipe = pipe

        def read(self, path: str) -> np.ndarray:
            return self.pipe.read(path)

        def batch(self, inputs: list, batch_size: int) -> list:  # type: ignore[type-arg]
            raise RuntimeError("a library failure in the padded batch")

        def __call__(self, audio: tuple) -> object:  # type: ignore[type-arg]
            if np.asarray(audio[0]).size > 24_000:
                raise ValueError("this clip breaks the model")
            return self.pipe(audio)

    scorer = ClipScorer.__new__(ClipScorer)
    pipe = Pipeline.load(cmgi_bundle)
    scorer.pipe, scorer.labels = BrokenBatch(pipe), pipe.labels
    clips = {"short": tone(0.8, seed=1), "long": tone(2.0, seed=2)}
    for name, wave in clips.items():
        sf.write(tmp_path / f"{name}.wav", wave, 16_000)
    paths = [str(tmp_path / "short.wav"), str(tmp_path / "long.wav"), str(tmp_path / "absent.wav")]
    batch = {
        "index": np.arange(3),
        "id": np.array(["s", "l", "a"]),
        "path": np.array(paths),
        "duration_s": np.array([0.8, 2.0, 0.0]),
        "reference_label": np.array(LABELS[:3]),
        "reference_transcript": np.array(["", "", ""]),
    }
    rows = scorer(batch).to_pylist()
    assert [r["id"] for r in rows] == ["s", "l", "a"]
    assert rows[0]["error"] is None and rows[0]["label"] == pipe((clips["short"], 16_000)).label
    assert (
        rows[1]["label"] is None and "unexpected ValueError: this clip breaks the model" in rows[1]["error"]
    )
    assert "file not found" in rows[2]["error"]
