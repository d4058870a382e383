"""Character CTC vocabulary, transcript normalisation and greedy CTC decoding (numpy only).

Shared by training (targets), export (bundle.json) and the lean runtime (decoding), so it
must never import torch.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

# What a text branch reads when evaluating: the model's own CTC transcript (deployment) or the reference text.
TextSource = Literal["asr", "ground_truth"]
TEXT_SOURCES: tuple[TextSource, ...] = get_args(TextSource)
BLANK = "<blank>"
WORD_DELIMITER = "|"
# Lower-case Latin letters, the apostrophe and the German letters EMO-DB needs.
DEFAULT_CHARACTERS = [*list("abcdefghijklmnopqrstuvwxyz'"), "ä", "ö", "ü", "ß"]


def normalise_transcript(text: str) -> str:
    """Lower-case, keep letters/apostrophes/spaces, collapse whitespace: the form CTC targets use."""
    text = unicodedata.normalize("NFC", text).lower()
    text = re.sub(r"[^\w' ]+", " ", text)
    text = re.sub(r"[\d_]+", " ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class CtcVocab:
    """A CTC output alphabet: id 0 is the blank, then the word delimiter, then characters."""

    tokens: tuple[str, ...] = field(default_factory=lambda: (BLANK, WORD_DELIMITER, *DEFAULT_CHARACTERS))
    blank_id: int = 0
    word_delimiter: str = WORD_DELIMITER

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("CTC vocabulary has duplicate tokens")
        if self.word_delimiter not in self.tokens:
            raise ValueError(f"CTC vocabulary lacks the word delimiter {self.word_delimiter!r}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def _index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def encode(self, text: str) -> list[int]:
        """Map a transcript to target ids; characters outside the vocabulary are dropped."""
        index = self._index
        delimiter = index[self.word_delimiter]
        ids: list[int] = []
        for char in normalise_transcript(text):
            if char == " ":
                ids.append(delimiter)
            elif char in index and index[char] != self.blank_id:
                ids.append(index[char])
        return ids

    def decode_ids(self, ids: npt.ArrayLike) -> str:
        """Greedy CTC decode of per-frame argmax ids: collapse repeats, drop blanks, delimiter to space."""
        frame_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if frame_ids.size == 0:
            return ""
        keep = np.ones(frame_ids.shape, dtype=bool)
        keep[1:] = frame_ids[1:] != frame_ids[:-1]
        keep &= frame_ids != self.blank_id
        chars = [self.tokens[i] for i in frame_ids[keep]]
        text = "".join(" " if c == self.word_delimiter else c for c in chars)
        return " ".join(text.split())

    def decode_log_probs(self, log_probs: npt.NDArray[np.floating], length: int | None = None) -> str:
        """Greedy decode one utterance's `[F, V]` log-probs, up to its valid frame length."""
        frames = log_probs if length is None else log_probs[: int(length)]
        return self.decode_ids(np.argmax(frames, axis=-1))

    def to_dict(self) -> dict[str, object]:
        return {"tokens": list(self.tokens), "blank_id": self.blank_id, "word_delimiter": self.word_delimiter}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CtcVocab:
        return cls(
            tokens=tuple(data["tokens"]),
            blank_id=int(data.get("blank_id", 0)),
            word_delimiter=str(data.get("word_delimiter", WORD_DELIMITER)),
        )
