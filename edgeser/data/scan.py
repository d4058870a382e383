"""Corpus summary: counts, durations, sample rates, and every bad or odd file with its reason."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeser.audio import scan_audio
from edgeser.data.records import Corpus, FileProblem, Utterance
from edgeser.errors import AudioError


@dataclass
class CorpusSummary:
    """What `edgeser data summary` reports, JSON-serialisable through `to_dict`."""

    corpus: str
    root: str
    utterances: int
    labels: dict[str, int]
    speakers: dict[str, int]
    groups: dict[str, int]
    total_duration_s: float
    mean_duration_s: float
    sample_rates: dict[str, int]
    with_transcript: int
    dropped_labels: dict[str, int]
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def bad(self) -> list[FileProblem]:
        return [p for p in self.problems if p.severity == "bad"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bad_files"] = len(self.bad)
        return data


def decode_check(
    utterances: Iterable[Utterance], on_each: Callable[[Utterance], None] | None = None
) -> tuple[list[Utterance], list[FileProblem]]:
    """Decode and check every clip in blocks (what the toolkit's loader refuses is bad); memory stays small
    whatever the files' lengths. Also odd: files with more than one channel (the runtime averages them) and
    files whose decoded samples are identical to another's (one recording twice: a split must keep the copies
    on one side)."""
    good: list[Utterance] = []
    problems: list[FileProblem] = []
    copies: dict[str, list[Utterance]] = defaultdict(list)
    for utt in utterances:
        content = hashlib.sha256()
        try:
            info = scan_audio(utt.path, content=content)
        except AudioError as err:
            problems.append(FileProblem(str(utt.path), err.problem))
        else:
            good.append(utt)
            copies[content.hexdigest()].append(utt)
            if info.channels > 1:
                problems.append(
                    FileProblem(str(utt.path), f"{info.channels} channels (averaged to mono)", "odd")
                )
        if on_each is not None:
            on_each(utt)
    for same in copies.values():
        for utt in same[1:] if len(same) > 1 else []:
            others = ", ".join(o.id for o in same if o is not utt)
            speakers = {o.speaker for o in same}
            where = "same speaker" if len(speakers) == 1 else f"speakers {', '.join(sorted(speakers))}"
            problems.append(
                FileProblem(
                    str(utt.path),
                    f"identical audio to {others} ({where}; label "
                    f"{'/'.join(sorted({o.label for o in same}))})",
                    "odd",
                )
            )
    return good, problems


def summarise(
    corpus: Corpus, *, decode: bool = True, on_each: Callable[[Utterance], None] | None = None
) -> CorpusSummary:
    """Summarise a corpus; with `decode`, every clip is fully decoded and checked first."""
    utterances = corpus.utterances
    problems = list(corpus.problems)
    if decode:
        utterances, decode_problems = decode_check(utterances, on_each)
        problems.extend(decode_problems)
    rates = Counter(u.sample_rate for u in utterances)
    if rates:
        usual_rate = rates.most_common(1)[0][0]
        problems.extend(
            FileProblem(
                str(u.path),
                f"sample rate {u.sample_rate} Hz (corpus mostly {usual_rate} Hz; resampled)",
                "odd",
            )
            for u in utterances
            if u.sample_rate != usual_rate
        )
    total = sum(u.duration for u in utterances)
    label_counts = Counter(u.label for u in utterances)
    return CorpusSummary(
        corpus=corpus.name,
        root=str(corpus.root),
        utterances=len(utterances),
        labels={label: label_counts.get(label, 0) for label in corpus.labels},
        speakers=dict(sorted(Counter(u.speaker for u in utterances).items())),
        groups=dict(sorted(Counter(u.group for u in utterances).items())),
        total_duration_s=round(total, 3),
        mean_duration_s=round(total / len(utterances), 3) if utterances else 0.0,
        sample_rates={str(rate): n for rate, n in sorted(rates.items())},
        with_transcript=sum(u.transcript is not None for u in utterances),
        dropped_labels=dict(sorted(corpus.dropped.items())),
        problems=sorted(problems, key=lambda p: (p.severity, p.path)),
    )


def format_summary(summary: CorpusSummary) -> str:
    """Human-readable summary text for the terminal."""

    def counts(title: str, values: dict[str, int]) -> str:
        return f"{title}: " + ", ".join(f"{k} {v}" for k, v in values.items())

    lines = [
        f"{summary.corpus} at {summary.root}",
        f"utterances: {summary.utterances} ({summary.with_transcript} with transcripts)",
        counts(f"labels ({len(summary.labels)})", summary.labels),
        counts(f"speakers ({len(summary.speakers)})", summary.speakers),
    ]
    if summary.groups != summary.speakers:
        lines.append(counts(f"groups ({len(summary.groups)})", summary.groups))
    lines += [
        f"duration: total {summary.total_duration_s / 60:.1f} min, mean {summary.mean_duration_s:.2f} s",
        counts("sample rates (Hz: files)", summary.sample_rates),
    ]
    if summary.dropped_labels:
        lines.append(counts("dropped source labels", summary.dropped_labels))
    bad = summary.bad
    odd = [p for p in summary.problems if p.severity != "bad"]
    lines.append(f"bad files: {len(bad)}" + ("" if bad else " (none)"))
    lines += [f"  {p.path}: {p.reason}" for p in bad]
    lines.append(f"odd files: {len(odd)}" + ("" if odd else " (none)"))
    lines += [f"  {p.path}: {p.reason}" for p in odd]
    return "\n".join(lines)
