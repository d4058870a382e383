"""A tiny IEMOCAP in the official release layout (the real corpus is licensed and not here)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_audio

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
# (dialog, utterance suffix, consensus category, transcript)
TURNS = [
    ("impro01", "F000", "neu", "Excuse me."),
    ("impro01", "M000", "exc", "Do you have your forms?"),
    ("impro01", "F001", "xxx", "Yeah."),
    ("impro01", "M001", "hap", "Let's go, then!"),
    ("impro01", "F002", "oth", "Hmm."),
    ("script01_1", "F000", "ang", "What were you thinking?"),
    ("script01_1", "M000", "sad", "I don't know anymore."),
    ("script01_1", "M001", "fru", "This again."),
]
KEPT_PER_SESSION = 5  # neu, exc->happy, hap->happy, ang, sad


def _evaluator_lines(category: str) -> str:
    names = {"neu": "Neutral", "exc": "Excited", "hap": "Happiness", "ang": "Anger", "sad": "Sadness"}
    word = names.get(category, "Frustration")
    return (
        f"C-E2:\t{word};\t()\nC-E3:\t{word}; Other;\t()\nC-F1:\tNeutral;\t(curious)\n"
        "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 2; act 1; dom  3;\t()\n"
    )


def build_iemocap(root: Path, sessions: int = 3) -> Path:
    """Write Session1..N with wav, EmoEvaluation (header, turn and evaluator lines) and transcriptions."""
    for s in range(1, sessions + 1):
        session = root / f"Session{s}"
        prefix = f"Ses0{s}F"
        dialogs = sorted({d for d, *_ in TURNS})
        for dialog in dialogs:
            name = f"{prefix}_{dialog}"
            evaluation = [HEADER]
            transcript = []
            start = 1.0
            for turn_dialog, suffix, category, text in TURNS:
                if turn_dialog != dialog:
                    continue
                uid = f"{name}_{suffix}"
                end = start + 0.4
                evaluation.append(
                    f"[{start:.4f} - {end:.4f}]\t{uid}\t{category}\t[2.5000, 3.0000, 2.0000]\n"
                    + _evaluator_lines(category)
                    + "\n"
                )
                transcript.append(f"{uid} [{start:08.4f}-{end:08.4f}]: {text}\n")
                write_audio(session / "sentences" / "wav" / name / f"{uid}.wav", seconds=0.4)
                start = end + 0.5
            # transcripts also hold non-turn lines in the real corpus
            transcript.append(f"{prefix}_{dialog}_MXX0 [000.0000-000.5000]: [LAUGHTER]\n")
            for sub, lines in (("EmoEvaluation", evaluation), ("transcriptions", transcript)):
                folder = session / "dialog" / sub
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{name}.txt").write_text("".join(lines), encoding="utf-8")
        # the release also ships a Categorical/ subfolder with per-evaluator files: not turn files
        (session / "dialog" / "EmoEvaluation" / "Categorical").mkdir(exist_ok=True)
    return root
