"""Corpus readers: IEMOCAP (fixture in the release layout), EMO-DB and TESS (real), RAVDESS, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeser.data import load_corpus
from edgeser.data.scan import summarise
from edgeser.data.splits import corpus_folds
from edgeser.errors import DataError
from tests.conftest import write_audio
from tests.iemocap_fixture import KEPT_PER_SESSION, build_iemocap


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


def test_iemocap_four_classes_with_merge_and_drops(iemocap_root: Path) -> None:
    corpus = load_corpus(f"iemocap:{iemocap_root}")
    assert corpus.labels == ["angry", "happy", "sad", "neutral"]
    assert len(corpus) == 3 * KEPT_PER_SESSION
    by_id = corpus.by_id()
    assert by_id["Ses01F_impro01_M000"].label == "happy"  # exc merged into happy
    assert by_id["Ses01F_impro01_M001"].label == "happy"
    assert by_id["Ses02F_script01_1_F000"].label == "angry"
    assert "Ses01F_impro01_F001" not in by_id and "Ses01F_impro01_F002" not in by_id  # xxx, oth
    assert "Ses01F_script01_1_M001" not in by_id  # fru is outside the 4-class set
    assert dict(corpus.dropped) == {"xxx": 3, "oth": 3, "fru": 3}
    assert corpus.label_counts() == {"happy": 6, "neutral": 3, "angry": 3, "sad": 3}


def test_iemocap_transcripts_speakers_and_sessions(iemocap_root: Path) -> None:
    corpus = load_corpus(f"iemocap:{iemocap_root}")
    utt = corpus.by_id()["Ses03F_impro01_M000"]
    assert utt.transcript == "Do you have your forms?"
    assert (utt.speaker, utt.group) == ("Ses03M", "Session3")
    assert corpus.by_id()["Ses01F_script01_1_M000"].transcript == "I don't know anymore."
    assert abs(utt.duration - 0.4) < 1e-6 and utt.sample_rate == 16_000


def test_iemocap_leave_one_session_out(iemocap_root: Path) -> None:
    corpus = load_corpus(f"iemocap:{iemocap_root}")
    folds = corpus_folds(corpus)
    assert [f.held_out for f in folds] == ["group=Session1", "group=Session2", "group=Session3"]
    for fold in folds:
        session = fold.held_out.split("=")[1]
        assert all(corpus.by_id()[i].group == session for i in fold.eval_ids)
        assert all(corpus.by_id()[i].group != session for i in fold.train_ids)
        assert len(fold.eval_ids) == KEPT_PER_SESSION


def test_iemocap_improvised_only(iemocap_root: Path) -> None:
    corpus = load_corpus(f"iemocap:{iemocap_root}?improvised=1")
    assert len(corpus) == 9 and all("_impro" in u.id for u in corpus.utterances)
    with pytest.raises(DataError, match="unknown option"):
        load_corpus(f"iemocap:{iemocap_root}?improvized=1")


def test_iemocap_missing_wav_is_reported_not_fatal(tmp_path: Path) -> None:
    root = build_iemocap(tmp_path / "IEMOCAP", sessions=1)
    (root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav").unlink()
    corpus = load_corpus(f"iemocap:{root}")
    assert len(corpus) == KEPT_PER_SESSION - 1
    assert [p.reason for p in corpus.problems] == ["audio file listed in EmoEvaluation is missing"]


def test_emodb_counts(shared_data: Path) -> None:
    corpus = load_corpus(f"emodb:{shared_data / 'emodb'}")
    assert len(corpus) == 535
    assert len({u.speaker for u in corpus.utterances}) == 10
    assert corpus.label_counts() == {
        "angry": 127, "bored": 81, "disgust": 46, "fear": 69, "happy": 71, "sad": 62, "neutral": 79,
    }  # fmt: skip
    utt = corpus.by_id()["03a01Fa"]
    assert (utt.speaker, utt.label, utt.transcript) == ("03", "happy", "Der Lappen liegt auf dem Eisschrank.")


def test_tess_counts_and_odd_files(shared_data: Path) -> None:
    corpus = load_corpus(f"tess:{shared_data / 'tess'}")
    assert len(corpus) == 2800
    assert set(corpus.label_counts().values()) == {400} and len(corpus.labels) == 7
    assert {u.speaker for u in corpus.utterances} == {"OAF", "YAF"}
    assert corpus.by_id()["YAF_back_ps"].label == "surprise"
    assert corpus.by_id()["507testYAF_germ_angry29"].transcript == "say the word germ"
    summary = summarise(corpus, decode=False)
    odd = {Path(p.path).name: p.reason for p in summary.problems if p.severity == "odd"}
    assert (
        "AIFF data" in odd["507testYAF_germ_angry29.wav"] and "AIFF data" in odd["672testYAF_neat_fear19.wav"]
    )
    assert "96000 Hz" in odd["762testOAF_food_fear52.wav"]
    assert summary.sample_rates == {"24414": 2799, "96000": 1}


def test_ravdess_codes(tmp_path: Path) -> None:
    write_audio(tmp_path / "Actor_01" / "03-01-05-02-01-01-01.wav")
    write_audio(tmp_path / "Actor_02" / "03-01-08-01-02-02-02.wav")
    write_audio(tmp_path / "Actor_02" / "not-a-code.wav")
    corpus = load_corpus(f"ravdess:{tmp_path}")
    first, second = corpus.utterances
    assert (first.label, first.speaker, first.transcript) == (
        "angry",
        "actor01",
        "Kids are talking by the door",
    )
    assert (second.label, second.transcript) == ("surprise", "Dogs are sitting by the door")
    assert len(corpus.problems) == 1 and "not-a-code.wav" in corpus.problems[0].path


def test_manifest_csv_and_jsonl(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_audio(tmp_path / "clips" / f"{name}.wav", seconds=0.5)
    (tmp_path / "clips" / "broken.wav").write_bytes(b"not audio at all")
    (tmp_path / "m.csv").write_text(
        "path,label,speaker,transcript\nclips/a.wav,happy,s1,hello there\nclips/b.wav,sad,s2,\n"
        "clips/broken.wav,sad,s2,\nclips/c.wav,,s1,\n",
        encoding="utf-8",
    )
    corpus = load_corpus(f"manifest:{tmp_path / 'm.csv'}")
    assert [u.id for u in corpus.utterances] == ["a", "b"]
    assert corpus.by_id()["a"].transcript == "hello there" and corpus.by_id()["b"].transcript is None
    assert corpus.labels == ["happy", "sad"]
    reasons = sorted(p.reason for p in corpus.problems)
    assert reasons[0].startswith("row needs both") and "unreadable or corrupt" in reasons[1]

    rows = [
        {"path": str(tmp_path / "clips" / "a.wav"), "label": "happy"},
        {"path": "clips/b.wav", "label": "sad"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    corpus = load_corpus(str(tmp_path / "m.jsonl"))  # a bare manifest path works too
    assert len(corpus) == 2 and corpus.fold_key == "none"
    (tmp_path / "bad.jsonl").write_text('{"path": "x"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: each line must be a JSON object"):
        load_corpus(f"manifest:{tmp_path / 'bad.jsonl'}")


@pytest.mark.parametrize("spec", ["nosuch:/x", "emodb:", "just-a-path"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(DataError):
        load_corpus(spec)


def test_summary_flags_stereo_files_and_identical_recordings(tmp_path: Path) -> None:
    """One recording stored twice (FLAC and WAV: different bytes, the same samples) and a stereo file are odd
    files of the summary; distinct recordings are not."""
    import numpy as np
    import soundfile as sf

    from tests.conftest import tone

    same = (tone(0.8, freq=180.0) * 32767).astype(
        np.int16
    )  # integer samples: both containers hold them exactly
    sf.write(tmp_path / "a.flac", same, 16_000)
    sf.write(tmp_path / "b.wav", same, 16_000)
    sf.write(tmp_path / "c.wav", tone(0.8, freq=260.0), 16_000, subtype="FLOAT")
    sf.write(tmp_path / "d.wav", np.stack([tone(0.8, freq=300.0)] * 2, axis=1), 16_000, subtype="FLOAT")
    (tmp_path / "m.csv").write_text(
        "path,label,speaker\na.flac,happy,s1\nb.wav,happy,s2\nc.wav,sad,s1\nd.wav,sad,s2\n", encoding="utf-8"
    )
    summary = summarise(load_corpus(f"manifest:{tmp_path / 'm.csv'}"))
    odd = {Path(p.path).name: p.reason for p in summary.problems if p.severity == "odd"}
    assert set(odd) == {"b.wav", "d.wav"}, odd
    assert odd["b.wav"].startswith("identical audio to a") and "speakers s1, s2" in odd["b.wav"]
    assert odd["d.wav"] == "2 channels (averaged to mono)"


def test_random_splits_keep_copies_of_one_recording_on_one_side(tmp_path: Path) -> None:
    """A clip-level random hold-out evaluates no recording it also trains on: byte-identical files (RAVDESS
    holds such a pair) land on one side, in every seed, while the plain random draw separates them."""
    import soundfile as sf

    from edgeser.data import protocols
    from tests.conftest import tone

    for k in range(40):
        sf.write(tmp_path / f"c{k:02d}.wav", tone(0.3, freq=100.0 + 10 * k), 16_000)
    (tmp_path / "c40.wav").write_bytes((tmp_path / "c00.wav").read_bytes())
    rows = "".join(f"c{k:02d}.wav,{'happy' if k % 2 else 'sad'},s{k % 3}\n" for k in range(40))
    (tmp_path / "m.csv").write_text("path,label,speaker\n" + rows + "c40.wav,sad,s0\n", encoding="utf-8")
    corpus = load_corpus(f"manifest:{tmp_path / 'm.csv'}")
    separated = 0
    for seed in range(12):
        plain = protocols._holdout(corpus.utterances, 0.1, seed, "stfnet-holdout")
        separated += ("c00" in plain.eval_ids) != ("c40" in plain.eval_ids)
        split = protocols.make_split(corpus, "stfnet-holdout", 0, seed)
        sides = [{"c00", "c40"} & set(ids) for ids in (split.train_ids, split.validation_ids, split.eval_ids)]
        assert sorted(len(s) for s in sides) == [0, 0, 2], (seed, sides)
        assert len(split.train_ids) + len(split.validation_ids) + len(split.eval_ids) == 41
    assert separated > 0  # the situation the rule exists for did occur


def test_multi_corpus_actor_folds_hold_every_speaker_out_once(shared_data: Path) -> None:
    """multi: three corpora on one label set; the 4 actor folds evaluate each RAVDESS actor and each of the
    EMO-DB speakers they list exactly once, never train or select on an evaluated speaker, and keep RAVDESS's
    byte-identical pair (one actor) on one side."""
    from collections import Counter

    from edgeser.data.multicorpus import ACTOR_FOLDS, corpus_of
    from edgeser.data.protocols import make_split

    corpus = load_corpus(f"multi:{shared_data}")
    assert corpus.labels == ["neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"]
    per_corpus = Counter(corpus_of(u) for u in corpus.utterances)
    assert per_corpus == {
        "ravdess": 1440,
        "tess": 2800,
        "emodb": 535 - 81,
    }  # EMO-DB's 81 boredom clips dropped
    speaker = {u.id: u.speaker for u in corpus.utterances}
    evaluated: Counter[str] = Counter()
    for index in range(len(ACTOR_FOLDS)):
        split = make_split(corpus, "actor-folds", index)
        train, val, test = (
            {speaker[i] for i in ids} for ids in (split.train_ids, split.validation_ids, split.eval_ids)
        )
        assert not train & test and not val & test and not train & val
        assert {s for s in test if s.startswith("ravdess/")} == {
            f"ravdess/actor{a:02d}" for a in ACTOR_FOLDS[index]
        }
        assert not any(s.startswith("tess/") for s in test | val)
        evaluated.update(test)
        pair = {"ravdess/03-01-03-01-02-01-07", "ravdess/03-01-03-01-02-02-07"}
        assert (
            sum(bool(pair & set(ids)) for ids in (split.train_ids, split.validation_ids, split.eval_ids)) == 1
        )
    assert set(evaluated.values()) == {1} and len(evaluated) == 24 + 10
    seven = load_corpus(f"multi:{shared_data}?labels=seven")
    assert (
        "calm" not in seven.labels
        and Counter(u.label for u in seven.utterances)["neutral"] == 96 + 192 + 400 + 79
    )
    quarter = load_corpus(f"multi:{shared_data}?tess=0.25")  # the shipped cmgi edge default's training data
    tess = Counter((u.speaker, u.label) for u in quarter.utterances if corpus_of(u) == "tess")
    assert set(tess.values()) == {50} and len(tess) == 14 and quarter.dropped["tess/subsampled"] == 2100
    assert [u.id for u in quarter.utterances if corpus_of(u) != "tess"] == [
        u.id for u in corpus.utterances if corpus_of(u) != "tess"
    ]
    for bad in ("0", "1.5", "half"):
        with pytest.raises(DataError, match="tess must be a fraction"):
            load_corpus(f"multi:{shared_data}?tess={bad}")


def test_manifest_split_column_fixes_the_split(tmp_path: Path) -> None:
    """A manifest's `split` column is its own split: protocol manifest-split, and what calibrate/check use for a
    model trained on another corpus (the shipped demo clips); a bad or partial column is one clear error."""
    from edgeser.data.protocols import make_split, split_from_provenance
    from edgeser.errors import SplitError

    rows = [
        ("a", "happy", "s1", "eval"),
        ("b", "sad", "s1", "eval"),
        ("c", "happy", "s2", "train"),
        ("d", "sad", "s3", "train"),
        ("e", "sad", "s3", "validation"),
    ]
    for name, *_ in rows:
        write_audio(tmp_path / f"{name}.wav", seconds=0.3)
    text = "path,label,speaker,split\n" + "".join(
        f"{n}.wav,{label},{spk},{side}\n" for n, label, spk, side in rows
    )
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    corpus = load_corpus(f"manifest:{tmp_path / 'm.csv'}")
    split = make_split(corpus, "manifest-split")
    assert (split.eval_ids, split.train_ids, split.validation_ids) == (("a", "b"), ("c", "d"), ("e",))
    assert split_from_provenance(corpus, {"corpus": "multi"}).eval_ids == ("a", "b")  # not speaker fold 0
    assert split_from_provenance(corpus, None).held_out == "split=eval (s1)"
    with pytest.raises(SplitError, match="one fold"):
        make_split(corpus, "manifest-split", 1)
    (tmp_path / "bad.csv").write_text(
        text.replace("d.wav,sad,s3,train", "d.wav,sad,s3,test"), encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"bad.csv:5: split must be one of train, validation, eval"):
        load_corpus(f"manifest:{tmp_path / 'bad.csv'}")
    (tmp_path / "part.csv").write_text(text.replace(",s3,train", ",s3,"), encoding="utf-8")
    with pytest.raises(DataError, match=r"part.csv:5: split must be one of"):
        load_corpus(f"manifest:{tmp_path / 'part.csv'}")
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "path,label,speaker\n" + "".join(f"{n}.wav,{label},{spk}\n" for n, label, spk, _ in rows),
        encoding="utf-8",
    )
    with pytest.raises(SplitError, match="needs a manifest with a split column"):
        make_split(load_corpus(f"manifest:{plain}"), "manifest-split")
