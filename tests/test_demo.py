"""The main job (`edgeser demo`) runs end to end on the clips shipped in the repository alone."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edgeser.cli import main
from edgeser.data import load_corpus
from edgeser.demo import SHIPPED_CLIPS, data_spec


def test_shipped_demo_clips_are_the_held_out_actors_and_a_training_side() -> None:
    from edgeser.data.multicorpus import ACTOR_FOLDS, SHIPPED_FOLD, actor_fold_sides
    from edgeser.data.protocols import split_from_provenance

    corpus = load_corpus(f"manifest:{SHIPPED_CLIPS}")
    assert len(corpus) == 128 and not corpus.problems
    split = split_from_provenance(corpus, {"corpus": "multi"})  # the shipped model trained on another corpus
    held_out = {u.speaker for u in corpus.subset(split.eval_ids)}
    assert (
        held_out == {f"ravdess/actor{a:02d}" for a in ACTOR_FOLDS[SHIPPED_FOLD]} and len(split.eval_ids) == 96
    )
    evaluated, validation = actor_fold_sides(SHIPPED_FOLD)
    assert not {u.speaker for u in corpus.subset(split.train_ids)} & (evaluated | validation)
    assert {u.label for u in corpus.subset(split.eval_ids)} == set(corpus.labels) and len(corpus.labels) == 8
    assert (SHIPPED_CLIPS.parent / "README.md").read_text().count("CC BY-NC-SA 4.0") >= 1
    assert data_spec(None) == f"manifest:{SHIPPED_CLIPS}" and data_spec(Path("/nonexistent")) == data_spec(
        None
    )


def test_demo_runs_the_whole_pipeline_on_the_shipped_clips(
    tiny_cmgi_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--out",
            str(out),
            "--checkpoint",
            str(tiny_cmgi_checkpoint),
            "--limit",
            "6",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    for row in ("pytorch", "fp32", "int8", "int8-trt"):
        assert f"\n{row} " in text
    assert "held-out clips (int8, torch-free runtime):" in text and "true " in text and "heard:" in text
    assert "TensorRT 10 readiness" in text and "reports and plots:" in text
    assert (out / "reports" / "variants.md").is_file() and (
        out / "reports" / "doctor-tensorrt10.md"
    ).is_file()
    assert all(f"[{n}/6]" in result.stderr for n in range(1, 7))
