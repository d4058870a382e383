"""Readers for IEMOCAP, EMO-DB, TESS, RAVDESS and generic manifests, all yielding `Utterance`s."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Literal, get_args

from edgeser.data.records import Corpus, CorpusBuilder
from edgeser.errors import DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".aif", ".aiff", ".ogg"}
SplitSide = Literal["train", "validation", "eval"]  # a manifest's `split` column
SPLIT_SIDES: tuple[SplitSide, ...] = get_args(SplitSide)


def _require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise DataError(f"{root}: {what} folder not found")
    return root


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


# --------------------------------------------------------------------------- IEMOCAP

IEMOCAP_LABELS = ["angry", "happy", "sad", "neutral"]
# The standard 4-class set: excited merges into happy; everything else is dropped.
IEMOCAP_MAP = {"ang": "angry", "hap": "happy", "exc": "happy", "sad": "sad", "neu": "neutral"}
_IEMOCAP_TURN = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\S+)\s+(\w+)\s+\[")
_IEMOCAP_TEXT = re.compile(r"^(Ses\S+)\s+\[[\d.]+\s*-\s*[\d.]+\]:\s*(.*)$")


def read_iemocap(root: Path, improvised_only: bool = False) -> Corpus:
    """IEMOCAP release layout: 4 classes (happy+excited), transcripts, one group per session."""
    _require_dir(root, "IEMOCAP")
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise DataError(f"{root}: no Session1..Session5 folders (expected the IEMOCAP_full_release root)")
    builder = CorpusBuilder("iemocap", root, IEMOCAP_LABELS, fold_key="group")
    for session in sessions:
        evaluation_dir = session / "dialog" / "EmoEvaluation"
        if not evaluation_dir.is_dir():
            builder.problem(evaluation_dir, "missing EmoEvaluation folder")
            continue
        transcripts = _iemocap_transcripts(session / "dialog" / "transcriptions")
        for evaluation in sorted(evaluation_dir.glob("*.txt")):
            dialog = evaluation.stem
            if improvised_only and "_impro" not in dialog:
                continue
            for uid, code in _iemocap_turns(evaluation):
                label = IEMOCAP_MAP.get(code)
                if label is None:
                    builder.dropped[code] += 1
                    continue
                wav = session / "sentences" / "wav" / dialog / f"{uid}.wav"
                if not wav.is_file():
                    builder.problem(wav, "audio file listed in EmoEvaluation is missing")
                    continue
                speaker = f"{uid[:5]}{uid.rsplit('_', 1)[-1][0]}"  # e.g. Ses01 + F/M of the speaking actor
                transcript = transcripts.get(uid)
                if transcript is None:
                    builder.problem(wav, "no transcript line for this utterance", "odd")
                builder.add(uid, wav, label, speaker, session.name, transcript)
    return builder.build()


def _iemocap_turns(path: Path) -> list[tuple[str, str]]:
    """(utterance id, consensus category) from the turn lines; evaluator lines (C-E1:...) are skipped."""
    turns = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _IEMOCAP_TURN.match(line.strip())
        if match:
            turns.append((match.group(1), match.group(2)))
    return turns


def _iemocap_transcripts(folder: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    if not folder.is_dir():
        return texts
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _IEMOCAP_TEXT.match(line.strip())
            if match:
                texts[match.group(1)] = match.group(2).strip()
    return texts


# --------------------------------------------------------------------------- EMO-DB

EMODB_CODES = {
    "W": "angry", "L": "bored", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral",
}  # fmt: skip
EMODB_SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
_EMODB_NAME = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")


def read_emodb(root: Path) -> Corpus:
    """EMO-DB: `<speaker:2><sentence:3><emotion:1><version:1>`; transcript from the sentence code."""
    folder = _require_dir(root / "wav" if (root / "wav").is_dir() else root, "EMO-DB")
    builder = CorpusBuilder("emodb", root, list(EMODB_CODES.values()))
    for path in _audio_files(folder):
        match = _EMODB_NAME.match(path.stem)
        if not match:
            builder.problem(
                path, "name does not follow the EMO-DB code <speaker><sentence><emotion><version>"
            )
            continue
        speaker, sentence, emotion, _ = match.groups()
        transcript = EMODB_SENTENCES.get(sentence)
        if transcript is None:
            builder.problem(path, f"unknown sentence code {sentence!r} (no transcript)", "odd")
        builder.add(path.stem, path, EMODB_CODES[emotion], speaker, speaker, transcript)
    return builder.build()


# --------------------------------------------------------------------------- TESS

TESS_EMOTIONS = {
    "angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
    "neutral": "neutral", "ps": "surprise", "sad": "sad",
}  # fmt: skip
_TESS_NAME = re.compile(
    r"^(?:\d+test)?(OAF|YAF|OA|YA)_(\w+?)_(angry|disgust|fear|happy|neutral|ps|sad)\d*$", re.I
)


def read_tess(root: Path) -> Corpus:
    """TESS: speaker, target word and emotion from the file name; transcript 'say the word <word>'."""
    _require_dir(root, "TESS")
    builder = CorpusBuilder("tess", root, list(TESS_EMOTIONS.values()))
    for path in _audio_files(root):
        match = _TESS_NAME.match(path.stem)
        if not match:
            builder.problem(path, "name does not follow <OAF|YAF>_<word>_<emotion>")
            continue
        speaker, word, emotion = match.group(1).upper(), match.group(2).lower(), match.group(3).lower()
        if len(speaker) == 2:  # one test file is named '...testOA_...': the speaker code lost its F
            builder.problem(path, f"speaker code {speaker!r} in the name read as {speaker}F", "odd")
            speaker += "F"
        builder.add(path.stem, path, TESS_EMOTIONS[emotion], speaker, speaker, f"say the word {word}")
    return builder.build()


# --------------------------------------------------------------------------- RAVDESS

RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}  # fmt: skip
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def read_ravdess(root: Path) -> Corpus:
    """RAVDESS: modality-channel-emotion-intensity-statement-repetition-actor; audio-only files."""
    _require_dir(root, "RAVDESS")
    builder = CorpusBuilder("ravdess", root, list(RAVDESS_EMOTIONS.values()))
    for path in _audio_files(root):
        match = _RAVDESS_NAME.match(path.stem)
        if not match:
            builder.problem(path, "name does not follow the RAVDESS code MM-VV-EE-II-SS-RR-AA")
            continue
        modality, _channel, emotion, _intensity, statement, _rep, actor = match.groups()
        if modality != "03":
            builder.problem(path, f"modality {modality} is not audio-only (03)", "odd")
        if emotion not in RAVDESS_EMOTIONS or statement not in RAVDESS_STATEMENTS:
            builder.problem(path, f"unknown emotion {emotion} or statement {statement} code")
            continue
        speaker = f"actor{actor}"
        builder.add(
            path.stem, path, RAVDESS_EMOTIONS[emotion], speaker, speaker, RAVDESS_STATEMENTS[statement]
        )
    return builder.build()


# --------------------------------------------------------------------------- manifest

MANIFEST_FIELDS = ("path", "label", "speaker", "group", "transcript", "id")


def read_manifest(path: Path) -> Corpus:
    """CSV (with header) or JSONL rows: path, label, and optionally speaker, group, transcript, id, split.

    Relative audio paths are taken from the manifest's own folder. A `split` column (train, validation or eval
    on every row) fixes the manifest's own split: protocol `manifest-split` uses it, and calibrate and check
    use it for a model trained elsewhere (the shipped demo clips: held-out voices to check, training-side
    voices to calibrate on).
    """
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    rows = _manifest_rows(path)
    if not rows:
        raise DataError(f"{path}: manifest has no rows")
    labels = sorted({str(row.get("label") or "").strip() for row in rows} - {""})
    has_speakers = all(str(row.get("speaker") or "").strip() for row in rows)
    first_line = 2 if path.suffix.lower() == ".csv" else 1
    given_sides = [str(row.get("split") or "").strip() for row in rows]
    if any(given_sides):
        for line_no, side in enumerate(given_sides, start=first_line):
            if side not in SPLIT_SIDES:
                raise DataError(
                    f"{path}:{line_no}: split must be one of {', '.join(SPLIT_SIDES)} on every row "
                    f"once one row has it, got {side!r}"
                )
    builder = CorpusBuilder("manifest", path.parent, labels, fold_key="speaker" if has_speakers else "none")
    for line_no, (row, side) in enumerate(zip(rows, given_sides), start=first_line):
        audio = str(row.get("path") or "").strip()
        label = str(row.get("label") or "").strip()
        if not audio or not label:
            builder.problem(f"{path}:{line_no}", "row needs both 'path' and 'label'")
            continue
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        speaker = str(row.get("speaker") or "").strip() or "unknown"
        group = str(row.get("group") or "").strip() or speaker
        uid = str(row.get("id") or "").strip() or audio_path.stem
        transcript = str(row["transcript"]).strip() if row.get("transcript") not in (None, "") else None
        builder.add(uid, audio_path, label, speaker, group, transcript)
        if side:
            builder.sides.setdefault(uid, side)
    return builder.build()


def _manifest_rows(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the manifest as UTF-8"
        ) from err
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object")
            rows.append(row)
        return rows
    if path.suffix.lower() in {".csv", ".tsv"}:
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: CSV header must name at least the columns 'path' and 'label'")
        return list(reader)
    raise DataError(f"{path}: manifest must be .csv, .tsv or .jsonl")
