"""Evaluation protocols on the real EMO-DB: each split has the geometry its paper describes, and each model's
paper protocol trains end to end (tiny architecture, one epoch) with its split recorded and reproducible."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edgeser import training
from edgeser.data import load_corpus
from edgeser.data.protocols import PROTOCOLS, fingerprint, make_split, split_from_provenance
from edgeser.errors import SplitError
from edgeser.modelling.registry import load_recipe
from edgeser.progress import SILENT
from edgeser.training import TrainConfig
from tests.test_training import tiny


@pytest.fixture(scope="module")
def emodb(shared_data: Path):  # type: ignore[no-untyped-def]
    return load_corpus(f"emodb:{shared_data / 'emodb'}")


def test_speaker_independent_holds_out_one_speaker_and_selects_on_other_speakers(emodb) -> None:  # type: ignore[no-untyped-def]
    speaker = {u.id: u.speaker for u in emodb.utterances}
    for index in range(10):
        split = make_split(emodb, "speaker-independent", index)
        held_out = {speaker[i] for i in split.eval_ids}
        assert len(held_out) == 1 and len(split.eval_ids) == sum(s in held_out for s in speaker.values())
        validation_speakers = {speaker[i] for i in split.validation_ids}
        assert not validation_speakers & held_out and not validation_speakers & {
            speaker[i] for i in split.train_ids
        }
        assert len(split.validation_ids) >= 0.10 * (len(split.train_ids) + len(split.validation_ids))
        assert len(split.train_ids) + len(split.validation_ids) + len(split.eval_ids) == len(emodb.utterances)


@pytest.mark.parametrize(
    ("protocol", "folds", "eval_share", "validation_share"),
    [
        ("gcf2net-random-5fold", 5, 0.2, 0.08),  # 10 % of the remaining 80 %
        ("mscnn-10fold", 10, 0.1, 0.1),
        ("saser-60-20-20", 1, 0.2, 0.2),
        ("stfnet-holdout", 1, 0.1, 0.1),
    ],
)
def test_paper_protocols_split_as_their_papers(
    emodb,
    protocol: str,
    folds: int,
    eval_share: float,  # type: ignore[no-untyped-def]
    validation_share: float,
) -> None:
    n = len(emodb.utterances)
    label = {u.id: u.label for u in emodb.utterances}
    splits = [make_split(emodb, protocol, k) for k in range(folds)]
    with pytest.raises(SplitError, match=f"has folds 0..{folds - 1}"):
        make_split(emodb, protocol, folds)
    for split in splits:
        assert abs(len(split.eval_ids) - eval_share * n) <= 0.02 * n
        assert abs(len(split.validation_ids) - validation_share * n) <= 0.02 * n
        assert len(split.train_ids) + len(split.validation_ids) + len(split.eval_ids) == n
        assert set(Counter(label[i] for i in split.eval_ids)) == set(emodb.labels)  # stratified: every class
    if folds > 1:  # k-fold: the evaluation folds partition the corpus
        evaluated = [i for split in splits for i in split.eval_ids]
        assert len(evaluated) == len(set(evaluated)) == n
    if protocol == "mscnn-10fold":  # 8/1/1: fold k+1 is fold k's dev set
        assert all(set(a.validation_ids) == set(b.eval_ids) for a, b in zip(splits, splits[1:] + splits[:1]))
    assert make_split(emodb, protocol, 0, seed=0) == splits[0]
    assert make_split(emodb, protocol, 0, seed=1).eval_ids != splits[0].eval_ids  # random: the seed matters


@pytest.mark.parametrize("name", ["cmgi", "gcf2net", "mscnn_spu_att", "saser", "stfnet"])
def test_each_models_paper_protocol_trains_end_to_end(name: str, shared_data: Path, tmp_path: Path) -> None:
    """The protocol the paper recipe names, on a seeded 40-clip subset of EMO-DB with a tiny architecture."""
    protocol = TrainConfig.from_recipe(load_recipe(name), "paper", {}).protocol
    assert protocol in PROTOCOLS
    data = f"emodb:{shared_data / 'emodb'}"
    metrics = training.train(
        name,
        "small",
        data,
        0,
        tmp_path / "run",
        protocol=protocol,
        seed=0,
        device_name="cpu",
        limit=40,
        overrides={"epochs": 1, "batch_size": 8},
        model_overrides=tiny(name),
        progress=SILENT,
    )
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    provenance = info["provenance"]
    assert provenance["protocol"] == protocol and "ua" in metrics["evaluation"]
    split = split_from_provenance(load_corpus(data), provenance)  # rebuilt from the record and verified
    assert split.protocol == protocol and fingerprint(split.eval_ids) == provenance["eval_ids_sha"]
