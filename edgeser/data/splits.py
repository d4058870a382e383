"""Speaker/session-independent folds and calibration subsets that can never touch evaluation data."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from edgeser.data.records import Corpus, Utterance
from edgeser.errors import SplitError


@dataclass(frozen=True)
class Fold:
    """One train/evaluation split; `held_out` names what the evaluation side holds."""

    index: int
    held_out: str
    train_ids: tuple[str, ...]
    eval_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        overlap = set(self.train_ids) & set(self.eval_ids)
        if overlap:
            raise SplitError(f"fold {self.index}: {len(overlap)} utterances in both train and eval")


def leave_one_out(utterances: list[Utterance], key: str) -> list[Fold]:
    """One fold per distinct value of `key` (speaker or group), in sorted order."""
    values = sorted({getattr(u, key) for u in utterances})
    if len(values) < 2:
        raise SplitError(f"leave-one-{key}-out needs at least 2 distinct {key}s, found {len(values)}")
    return [
        Fold(
            index=i,
            held_out=f"{key}={value}",
            train_ids=tuple(u.id for u in utterances if getattr(u, key) != value),
            eval_ids=tuple(u.id for u in utterances if getattr(u, key) == value),
        )
        for i, value in enumerate(values)
    ]


def stratified_kfold(utterances: list[Utterance], k: int, seed: int = 0) -> list[Fold]:
    """k folds with each label spread evenly; deterministic for a seed."""
    if k < 2:
        raise SplitError(f"stratified k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    by_label: dict[str, list[str]] = defaultdict(list)
    for utt in utterances:
        by_label[utt.label].append(utt.id)
    offset = 0
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        for position, index in enumerate(rng.permutation(len(ids))):
            assignment[ids[index]] = (position + offset) % k
        offset += len(ids)  # rotate so small classes don't all start in fold 0
    return [
        Fold(
            index=f,
            held_out=f"kfold={f}/{k}",
            train_ids=tuple(u.id for u in utterances if assignment[u.id] != f),
            eval_ids=tuple(u.id for u in utterances if assignment[u.id] == f),
        )
        for f in range(k)
    ]


def corpus_folds(corpus: Corpus, k: int = 5, seed: int = 0) -> list[Fold]:
    """The corpus's standard independent folds: by session (IEMOCAP), speaker, else stratified k-fold."""
    if corpus.fold_key in {"speaker", "group"}:
        return leave_one_out(corpus.utterances, corpus.fold_key)
    return stratified_kfold(corpus.utterances, k, seed)


def get_fold(corpus: Corpus, index: int, k: int = 5, seed: int = 0) -> Fold:
    folds = corpus_folds(corpus, k, seed)
    if not 0 <= index < len(folds):
        raise SplitError(
            f"{corpus.name} has folds 0..{len(folds) - 1} ({folds[0].held_out.split('=')[0]}); got {index}"
        )
    return folds[index]


def calibration_subset(
    corpus: Corpus,
    fold: Fold,
    count: int,
    seed: int = 0,
    ids: list[str] | None = None,
) -> list[Utterance]:
    """A label- and length-stratified calibration set from the fold's training side.

    Explicit `ids` are checked instead of drawn; any that fall in the evaluation split are an error.
    """
    eval_ids = set(fold.eval_ids)
    if ids is not None:
        leaked = sorted(set(ids) & eval_ids)
        if leaked:
            raise SplitError(
                f"calibration set overlaps the evaluation split of fold {fold.index} in {len(leaked)} "
                f"utterances (e.g. {leaked[0]}); calibrate on the training side only"
            )
        known = corpus.by_id()
        missing = [i for i in ids if i not in known]
        if missing:
            raise SplitError(f"calibration ids not in {corpus.name}: {missing[:3]}")
        return [known[i] for i in ids]
    pool = [u for u in corpus.subset(set(fold.train_ids)) if u.id not in eval_ids]
    if count <= 0 or not pool:
        raise SplitError(f"cannot draw {count} calibration clips from {len(pool)} training clips")
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Utterance]] = defaultdict(list)
    for utt in pool:
        by_label[utt.label].append(utt)
    # Round-robin over labels; within a label, round-robin over duration quartiles (shuffled inside
    # each quartile) so short and long clips are both represented in any prefix.
    queues = [_interleave_by_length(by_label[label], rng) for label in sorted(by_label)]
    chosen: list[Utterance] = []
    while len(chosen) < min(count, len(pool)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def _interleave_by_length(clips: list[Utterance], rng: np.random.Generator, bins: int = 4) -> list[Utterance]:
    """Clips ordered so every prefix spans the length range: quartiles taken in turn, shuffled inside."""
    ordered = sorted(clips, key=lambda u: (u.duration, u.id))
    quartiles = [list(part) for part in np.array_split(np.arange(len(ordered)), bins) if len(part)]
    for part in quartiles:
        rng.shuffle(part)
    interleaved: list[Utterance] = []
    for position in range(max(len(part) for part in quartiles)):
        interleaved.extend(ordered[part[position]] for part in quartiles if position < len(part))
    return interleaved
