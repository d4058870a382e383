"""TESS + EMO-DB + RAVDESS as one corpus on one label set, and its speaker-independent folds.

Data spec: `multi:ROOT` where ROOT holds `ravdess/`, `emodb/` and `tess/` (e.g. `multi:../shared/data`);
options `corpora=ravdess,emodb,tess` (which ones, default all three), `labels=ravdess8` (a key of
`LABEL_SETS`) and `tess=FRACTION` (keep that share of TESS, default 1: every k-th clip of each speaker and
label in id order, so the subset is deterministic and balanced; TESS is 2800 clips of 2 voices, 3 of every 4
training clips of a fold, and a model trained on all of it learns those voices). Clip ids and speakers are prefixed with their corpus (`ravdess/03-01-05-01-01-01-12`,
`ravdess/actor12`, `emodb/03`, `tess/OAF`), so the three never collide.

Label sets (how the corpora's own labels map; anything not listed is dropped and counted in `Corpus.dropped`):

| set | classes | RAVDESS | EMO-DB | TESS |
|---|---|---|---|---|
| `ravdess8` | neutral, calm, happy, sad, angry, fear, disgust, surprise | all 8 | boredom dropped | pleasant surprise -> surprise |
| `seven` | neutral, happy, sad, angry, fear, disgust, surprise | calm -> neutral | boredom dropped | pleasant surprise -> surprise |
| `four` | neutral, happy, sad, angry | calm, fear, disgust, surprise dropped | the rest dropped | the rest dropped |

Boredom is dropped, not folded into neutral or sad: no other corpus has it and it is neither. Calm is kept
apart in `ravdess8` (RAVDESS's own classes, the STF-Net table's 8) and folded into neutral in `seven`.

Protocols on this corpus (`edgeser.data.protocols`):
- `actor-folds`: 4 folds; fold k evaluates RAVDESS actors 6k+1 .. 6k+6 and the EMO-DB speakers
  `EMODB_FOLDS[k]`; validation (model selection) is 2 further RAVDESS actors and 1 EMO-DB speaker
  (`ACTOR_FOLD_VALIDATION`); everything else, TESS included, trains. Every actor and every EMO-DB speaker
  is evaluated exactly once over the 4 folds. Fold 3 (actors 19-24, EMO-DB 14, 15, 16) is the shipped one.
- `emodb-loso`: 10 folds, one EMO-DB speaker evaluated each; validation the next EMO-DB speaker; all of
  RAVDESS and TESS train.

RAVDESS's byte-identical pair (Actor_07, 03-01-03-01-02-01-07 and -02-07) lies inside one actor, so a split
by actor never puts one copy on each side; `edgeser data summary` flags it (scan's content hashes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from edgeser.data.corpora import read_emodb, read_ravdess, read_tess
from edgeser.data.records import Corpus, FileProblem, Utterance
from edgeser.errors import DataError

MULTI_CORPORA = ("ravdess", "emodb", "tess")
RAVDESS8 = ["neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"]
LabelSet = Literal["ravdess8", "seven", "four"]
LABEL_SETS: dict[LabelSet, list[str]] = {
    "ravdess8": RAVDESS8,
    "seven": ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"],
    "four": ["neutral", "happy", "sad", "angry"],
}
# corpus label -> label in the set (after the readers' own naming: TESS `ps` is already "surprise").
_FOLDS: dict[LabelSet, dict[str, str]] = {"seven": {"calm": "neutral"}}

EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
EMODB_FOLDS = (("03", "08"), ("09", "10"), ("11", "12", "13"), ("14", "15", "16"))
ACTOR_FOLDS = tuple(tuple(range(6 * k + 1, 6 * k + 7)) for k in range(4))
# Per fold: the RAVDESS actors and EMO-DB speaker that select the model (from the next fold's block).
ACTOR_FOLD_VALIDATION = tuple((ACTOR_FOLDS[(k + 1) % 4][:2], EMODB_FOLDS[(k + 1) % 4][0]) for k in range(4))
SHIPPED_FOLD = 3


def map_label(label: str, label_set: LabelSet) -> str | None:
    """The label of `label_set` a corpus label becomes, or None (dropped)."""
    mapped = _FOLDS.get(label_set, {}).get(label, label)
    return mapped if mapped in LABEL_SETS[label_set] else None


_READERS = {"ravdess": read_ravdess, "emodb": read_emodb, "tess": read_tess}


def read_multicorpus(
    root: Path,
    corpora: tuple[str, ...] = MULTI_CORPORA,
    label_set: str = "ravdess8",
    tess_fraction: float = 1.0,
) -> Corpus:
    """The named corpora under `root`, relabelled onto `label_set`, as one `Corpus` named "multi"; with
    `tess_fraction` < 1 only that share of TESS (every k-th clip per speaker and label, k = round(1 / fraction))."""
    if label_set not in LABEL_SETS:
        raise DataError(
            f"multi:{root}: unknown label set {label_set!r}; choose one of {', '.join(LABEL_SETS)}"
        )
    unknown = [c for c in corpora if c not in MULTI_CORPORA]
    if unknown or not corpora:
        raise DataError(
            f"multi:{root}: corpora must be some of {', '.join(MULTI_CORPORA)}, got {','.join(corpora)}"
        )
    if not 0.0 < tess_fraction <= 1.0:
        raise DataError(f"multi:{root}: tess must be a fraction in (0, 1], got {tess_fraction}")
    tess_step = max(1, round(1.0 / tess_fraction))
    utterances: list[Utterance] = []
    problems: list[FileProblem] = []
    dropped: Counter[str] = Counter()
    for name in corpora:
        part = _READERS[name](root / name)
        problems += part.problems
        dropped.update({f"{name}/{k}": v for k, v in part.dropped.items()})
        seen: Counter[tuple[str, str]] = Counter()
        for utt in sorted(part.utterances, key=lambda u: u.id):
            if name == "tess":
                seen[utt.speaker, utt.label] += 1
                if (seen[utt.speaker, utt.label] - 1) % tess_step:
                    dropped["tess/subsampled"] += 1
                    continue
            label = map_label(utt.label, label_set)
            if label is None:
                dropped[f"{name}/{utt.label}"] += 1
                continue
            speaker = f"{name}/{utt.speaker}"
            utterances.append(
                replace(utt, id=f"{name}/{utt.id}", label=label, speaker=speaker, group=speaker)
            )
    utterances.sort(key=lambda u: u.id)
    return Corpus("multi", root, list(LABEL_SETS[label_set]), utterances, problems, "speaker", dropped)


def corpus_of(utt: Utterance) -> str:
    """Which corpus a clip of the multi corpus came from."""
    return utt.id.split("/", 1)[0]


def actor_fold_sides(index: int) -> tuple[set[str], set[str]]:
    """(evaluated speakers, validation speakers) of `actor-folds` fold `index`, as multi-corpus speakers."""
    evaluated = {f"ravdess/actor{a:02d}" for a in ACTOR_FOLDS[index]} | {
        f"emodb/{s}" for s in EMODB_FOLDS[index]
    }
    actors, emodb = ACTOR_FOLD_VALIDATION[index]
    return evaluated, {f"ravdess/actor{a:02d}" for a in actors} | {f"emodb/{emodb}"}


def emodb_loso_sides(index: int) -> tuple[set[str], set[str]]:
    """(evaluated, validation) speakers of `emodb-loso` fold `index`."""
    return {f"emodb/{EMODB_SPEAKERS[index]}"}, {f"emodb/{EMODB_SPEAKERS[(index + 1) % len(EMODB_SPEAKERS)]}"}


@dataclass(frozen=True)
class SpeakerFold:
    """One fold for the probe: clips to fit on (train + validation) and clips to evaluate."""

    name: str
    train: tuple[Utterance, ...]
    test: tuple[Utterance, ...]


def speaker_folds(corpus: Corpus, protocol: str) -> list[SpeakerFold]:
    """The folds of `actor-folds` / `emodb-loso` with validation speakers kept on the training side."""
    count, sides = (
        (4, actor_fold_sides) if protocol == "actor-folds" else (len(EMODB_SPEAKERS), emodb_loso_sides)
    )
    folds = []
    for index in range(count):
        evaluated, _ = sides(index)
        folds.append(
            SpeakerFold(
                f"{protocol} {index}",
                tuple(u for u in corpus.utterances if u.speaker not in evaluated),
                tuple(u for u in corpus.utterances if u.speaker in evaluated),
            )
        )
    return folds


def describe(corpus: Corpus) -> dict[str, object]:
    """Clip counts per corpus and label (for reports)."""
    counts: Counter[str] = Counter(f"{corpus_of(u)}/{u.label}" for u in corpus.utterances)
    return {
        "labels": corpus.labels,
        "clips": len(corpus.utterances),
        "per_corpus_label": dict(sorted(counts.items())),
        "dropped": dict(sorted(corpus.dropped.items())),
    }


__all__ = [
    "ACTOR_FOLDS",
    "EMODB_FOLDS",
    "LABEL_SETS",
    "SHIPPED_FOLD",
    "actor_fold_sides",
    "corpus_of",
    "describe",
    "emodb_loso_sides",
    "map_label",
    "read_multicorpus",
    "speaker_folds",
]
