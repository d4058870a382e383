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
    assert "AIFF data" in odd["507testYAF_germ_angry29.wav"] and "AIFF data" in odd["672testYAF_neat_fear19.wav"]
    assert "96000 Hz" in odd["762testOAF_food_fear52.wav"]
    assert summary.sample_rates == {"24414": 2799, "96000": 1}


def test_ravdess_codes(tmp_path: Path) -> None:
    write_audio(tmp_path / "Actor_01" / "03-01-05-02-01-01-01.wav")
    write_audio(tmp_path / "Actor_02" / "03-01-08-01-02-02-02.wav")
    write_audio(tmp_path / "Actor_02" / "not-a-code.wav")
    corpus = load_corpus(f"ravdess:{tmp_path}")
    first, second = corpus.utterances
    assert (first.label, first.speaker, first.transcript) == ("angry", "actor01", "Kids are talking by the door")
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

    rows = [{"path": str(tmp_path / "clips" / "a.wav"), "label": "happy"}, {"path": "clips/b.wav", "label": "sad"}]
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
