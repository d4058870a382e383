"""The record every corpus reader yields, and the corpus that holds them with its bad files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgeser.audio import AudioInfo, probe
from edgeser.errors import AudioError, DataError


@dataclass(frozen=True)
class Utterance:
    """One labelled clip: the same fields whatever corpus it came from."""

    id: str
    path: Path
    label: str
    speaker: str
    group: str  # session (IEMOCAP), speaker (most others) or a user's own grouping
    transcript: str | None
    duration: float  # seconds, from the file header
    sample_rate: int  # the file's own rate, before resampling to 16 kHz


@dataclass(frozen=True)
class FileProblem:
    """A file a reader or scan could not use (`severity="bad"`) or found unusual (`"odd"`)."""

    path: str
    reason: str
    severity: str = "bad"


@dataclass
class Corpus:
    """A corpus's usable utterances plus every problem met while reading it."""

    name: str
    root: Path
    labels: list[str]  # the corpus's label set in a fixed order
    utterances: list[Utterance]
    problems: list[FileProblem] = field(default_factory=list)
    fold_key: str = "speaker"  # attribute giving independent folds: speaker or group
    dropped: Counter[str] = field(default_factory=Counter)  # source labels left out of the label set
    sides: dict[str, str] = field(default_factory=dict)  # id -> train/validation/eval: a manifest's own split

    def __len__(self) -> int:
        return len(self.utterances)

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self.utterances}

    def label_counts(self) -> Counter[str]:
        return Counter(u.label for u in self.utterances)

    def subset(self, ids: Iterable[str]) -> list[Utterance]:
        """Utterances with the given ids, in corpus order."""
        wanted = set(ids)
        return [u for u in self.utterances if u.id in wanted]


class CorpusBuilder:
    """Collects utterances for a reader, probing each file's header and recording problems."""

    def __init__(self, name: str, root: Path, labels: list[str], fold_key: str = "speaker") -> None:
        self.name, self.root, self.labels, self.fold_key = name, root, labels, fold_key
        self.utterances: list[Utterance] = []
        self.problems: list[FileProblem] = []
        self.dropped: Counter[str] = Counter()
        self.sides: dict[str, str] = {}
        self._seen_ids: set[str] = set()

    def problem(self, path: Path | str, reason: str, severity: str = "bad") -> None:
        self.problems.append(FileProblem(str(path), reason, severity))

    def add(self, uid: str, path: Path, label: str, speaker: str, group: str, transcript: str | None) -> None:
        """Probe the file and keep the utterance, or record why it can't be used."""
        if uid in self._seen_ids:
            self.problem(path, f"duplicate utterance id {uid!r}")
            return
        try:
            info: AudioInfo = probe(path)
        except AudioError as err:
            self.problem(path, err.problem)
            return
        if info.extension_mismatch:
            self.problem(path, f"{info.container} data behind a {path.suffix} name (read by content)", "odd")
        self._seen_ids.add(uid)
        self.utterances.append(
            Utterance(uid, path, label, speaker, group, transcript, info.duration, info.sample_rate)
        )

    def build(self) -> Corpus:
        if not self.utterances:
            seen = (
                f"; {len(self.problems)} file(s) unusable, e.g. {self.problems[0].path}: {self.problems[0].reason}"
                if self.problems
                else ""
            )
            raise DataError(f"{self.root}: no {self.name} utterances found (is this the corpus root?){seen}")
        self.utterances.sort(key=lambda u: u.id)
        return Corpus(
            self.name,
            self.root,
            self.labels,
            self.utterances,
            self.problems,
            self.fold_key,
            self.dropped,
            {u.id: self.sides[u.id] for u in self.utterances if u.id in self.sides},
        )
