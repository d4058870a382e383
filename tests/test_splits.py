"""Folds are independent and deterministic; calibration never touches the evaluation split."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeser.data import load_corpus
from edgeser.data.records import Corpus, Utterance
from edgeser.data.splits import calibration_subset, corpus_folds, get_fold, leave_one_out, stratified_kfold
from edgeser.errors import SplitError


def synthetic_corpus(fold_key: str = "speaker") -> Corpus:
    utterances = [
        Utterance(f"u{i:03d}", Path(f"u{i}.wav"), ["a", "b", "c"][i % 3], f"s{i % 4}", f"g{i % 2}", None,
                  1.0 + (i % 7) * 0.5, 16_000)
        for i in range(60)
    ]  # fmt: skip
    return Corpus("synthetic", Path("."), ["a", "b", "c"], utterances, fold_key=fold_key)


def test_leave_one_speaker_out_partitions() -> None:
    corpus = synthetic_corpus()
    folds = leave_one_out(corpus.utterances, "speaker")
    assert len(folds) == 4
    all_eval = [i for f in folds for i in f.eval_ids]
    assert sorted(all_eval) == sorted(u.id for u in corpus.utterances)  # each clip evaluated once
    for fold in folds:
        speaker = fold.held_out.split("=")[1]
        assert {corpus.by_id()[i].speaker for i in fold.eval_ids} == {speaker}
        assert speaker not in {corpus.by_id()[i].speaker for i in fold.train_ids}


def test_stratified_kfold_is_deterministic_and_balanced() -> None:
    corpus = synthetic_corpus()
    first = stratified_kfold(corpus.utterances, 5, seed=3)
    assert first == stratified_kfold(corpus.utterances, 5, seed=3)
    assert first != stratified_kfold(corpus.utterances, 5, seed=4)
    for fold in first:
        labels = [corpus.by_id()[i].label for i in fold.eval_ids]
        assert {labels.count(x) for x in "abc"} == {4}


def test_manifest_without_speakers_uses_kfold() -> None:
    folds = corpus_folds(synthetic_corpus(fold_key="none"), k=3)
    assert [f.held_out for f in folds] == ["kfold=0/3", "kfold=1/3", "kfold=2/3"]
    with pytest.raises(SplitError, match="folds 0..3"):
        get_fold(synthetic_corpus(), 4)


def test_calibration_comes_from_training_side_only() -> None:
    corpus = synthetic_corpus()
    fold = get_fold(corpus, 1)
    chosen = calibration_subset(corpus, fold, 12, seed=0)
    assert len(chosen) == 12
    assert not {u.id for u in chosen} & set(fold.eval_ids)
    assert {u.label for u in chosen} == {"a", "b", "c"}  # stratified by label
    durations = sorted(u.duration for u in chosen)
    assert durations[0] <= 1.5 and durations[-1] >= 3.5  # spans short and long clips
    assert [u.id for u in chosen] == [u.id for u in calibration_subset(corpus, fold, 12, seed=0)]


def test_asking_for_overlap_is_an_error() -> None:
    corpus = synthetic_corpus()
    fold = get_fold(corpus, 0)
    with pytest.raises(SplitError, match="overlaps the evaluation split"):
        calibration_subset(corpus, fold, 2, ids=[fold.train_ids[0], fold.eval_ids[0]])
    assert len(calibration_subset(corpus, fold, 2, ids=list(fold.train_ids[:2]))) == 2


def test_real_emodb_loso_has_ten_folds(shared_data: Path) -> None:
    corpus = load_corpus(f"emodb:{shared_data / 'emodb'}")
    folds = corpus_folds(corpus)
    assert len(folds) == 10 and sum(len(f.eval_ids) for f in folds) == 535
