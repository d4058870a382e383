"""The `edgeser` CLI: data summary in text and JSON, one-line errors with non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgeser.cli import main
from tests.conftest import write_audio
from tests.iemocap_fixture import build_iemocap


def test_summary_emodb_text(shared_data: Path) -> None:
    result = CliRunner().invoke(main, ["data", "summary", f"emodb:{shared_data / 'emodb'}"])
    assert result.exit_code == 0, result.output
    assert "utterances: 535" in result.output
    assert "angry 127, bored 81, disgust 46, fear 69, happy 71, sad 62, neutral 79" in result.output
    assert "speakers (10)" in result.output and "bad files: 0" in result.output


def test_summary_json_reports_bad_files_and_dropped_labels(tmp_path: Path) -> None:
    root = build_iemocap(tmp_path / "IEMOCAP", sessions=2)
    silent = root / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_F000.wav"
    write_audio(silent, seconds=0.4)
    silent.write_bytes(silent.read_bytes()[:44] + b"\x00" * (len(silent.read_bytes()) - 44))
    result = CliRunner().invoke(main, ["data", "summary", f"iemocap:{root}", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert data["utterances"] == 9 and data["labels"] == {"angry": 2, "happy": 4, "sad": 2, "neutral": 1}
    assert data["groups"] == {"Session1": 5, "Session2": 4}
    assert data["dropped_labels"] == {"fru": 2, "oth": 2, "xxx": 2}
    assert data["bad_files"] == 1 and "all-silent" in data["problems"][0]["reason"]


def test_errors_are_one_line_with_exit_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["data", "summary", f"tess:{tmp_path / 'missing'}"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {tmp_path / 'missing'}: TESS folder not found"]
    result = CliRunner().invoke(main, ["data", "summary", "what:ever"])
    assert result.exit_code == 1 and "expected NAME:PATH" in result.output


def test_unexpected_failures_are_one_line_too(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import edgeser.data.scan as scan

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(scan, "summarise", boom)
    write_audio(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("path,label\na.wav,happy\n")
    result = CliRunner().invoke(main, ["data", "summary", str(tmp_path / "m.csv")])
    assert result.exit_code == 2
    assert "error: unexpected RuntimeError: disk on fire second line (set EDGESER_DEBUG=1" in result.output
    assert "Traceback" not in result.output
