"""Which clips calibrate (and which judge) a quantised model: never any of the evaluation split.

- IEMOCAP (folds by session): one held-out session, the one after the evaluation session among the
  training sessions, so calibration speakers are neither the evaluation speakers nor most training ones.
- Every other corpus: the training side of the fold.

Within that pool the draw is stratified by label and by length (`edgeser.data.splits.calibration_subset`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeser.data.records import Corpus, Utterance
from edgeser.data.splits import Fold, calibration_subset
from edgeser.errors import SplitError


@dataclass(frozen=True)
class CalibrationSet:
    """The chosen calibration clips and where they came from."""

    utterances: list[Utterance]
    corpus: str
    fold: int
    held_out: str
    source: str  # human-readable description of the pool

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self.utterances]


def calibration_pool(corpus: Corpus, fold: Fold) -> tuple[Fold, str]:
    """The fold restricted to the pool calibration may draw from, with a description of that pool."""
    eval_ids = set(fold.eval_ids)
    if corpus.fold_key == "group":
        groups = sorted({u.group for u in corpus.utterances})
        eval_groups = {u.group for u in corpus.utterances if u.id in eval_ids}
        candidates = [g for g in groups if g not in eval_groups]
        if not candidates:
            raise SplitError(
                f"{corpus.name} fold {fold.index}: no session outside the evaluation split to calibrate on"
            )
        # The first training session after the evaluation one (cyclically): deterministic per fold.
        start = max((groups.index(g) for g in eval_groups), default=-1)
        session = next(
            (
                groups[(start + k) % len(groups)]
                for k in range(1, len(groups) + 1)
                if groups[(start + k) % len(groups)] in candidates
            ),
            candidates[0],
        )
        pool = tuple(u.id for u in corpus.utterances if u.group == session and u.id not in eval_ids)
        return (
            Fold(fold.index, fold.held_out, pool, fold.eval_ids),
            f"held-out session {session} (not the evaluation {fold.held_out})",
        )
    return fold, f"training side of fold {fold.index} ({fold.held_out} held out for evaluation)"


def select_calibration_set(
    corpus: Corpus, fold: Fold, count: int, *, seed: int = 0, ids: list[str] | None = None
) -> CalibrationSet:
    """`count` clips stratified by label and length from the calibration pool, or the given `ids` checked.

    Raises `SplitError` when explicit ids overlap the evaluation split (or are unknown), or the pool is empty.
    """
    if ids is not None:
        chosen = calibration_subset(corpus, fold, len(ids), seed, ids=ids)
        source = f"explicit ids, checked against the evaluation split of fold {fold.index} ({fold.held_out})"
    else:
        pool, source = calibration_pool(corpus, fold)
        chosen = calibration_subset(corpus, pool, count, seed)
    # Belt and braces: whatever the path, re-check the final list against the evaluation split.
    calibration_subset(corpus, fold, len(chosen), seed, ids=[u.id for u in chosen])
    return CalibrationSet(chosen, corpus.name, fold.index, fold.held_out, source)


def validation_slice(
    corpus: Corpus, fold: Fold, exclude_ids: list[str] | set[str], count: int, *, seed: int = 1
) -> list[Utterance]:
    """A label- and length-stratified slice of the calibration pool minus `exclude_ids` (the calibration clips).

    Used to measure quantisation sensitivity without touching the evaluation split.
    """
    pool, _ = calibration_pool(corpus, fold)
    excluded = set(exclude_ids)
    remaining = tuple(i for i in pool.train_ids if i not in excluded)
    if not remaining:
        raise SplitError(
            f"{corpus.name} fold {fold.index}: no calibration-side clips left for a validation slice "
            f"(all {len(excluded)} are calibration clips); calibrate with fewer --samples"
        )
    return calibration_subset(corpus, Fold(fold.index, fold.held_out, remaining, fold.eval_ids), count, seed)
