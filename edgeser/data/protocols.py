"""Evaluation protocols and the one `Split` object train, calibrate, check and the controlled search share.

A protocol turns a corpus and a fold index into training, validation and evaluation clips:

| protocol | folds | evaluation | validation (model selection) |
|---|---|---|---|
| `speaker-independent` (default) | one per speaker (IEMOCAP: session; no speakers: stratified 5-fold) | the held-out speaker/session | whole training speakers next to the held-out one (>= 10 % of training clips); with one training speaker, a stratified 15 % of its clips |
| `gcf2net-random-5fold` | 5, random stratified 80/20 (GCF2-Net, IEMOCAP) | one fifth | stratified 10 % of the rest |
| `mscnn-10fold` | 10, 8/1/1 train/dev/test (MSCNN-SPU-ATT) | fold k | fold k+1 |
| `saser-60-20-20` | 1, random 60/20/20 (SASER) | 20 % | 20 % |
| `stfnet-holdout` | 1, random hold-out (STF-Net; its implementation splits 80/10/10 per emotion) | 10 % | 10 % |
| `actor-folds` (multi corpus only) | 4: RAVDESS actors 1-6, 7-12, 13-18, 19-24 with fixed EMO-DB speakers | those actors and speakers | 2 more actors + 1 EMO-DB speaker (`edgeser.data.multicorpus`) |
| `emodb-loso` (multi corpus only) | 10: one EMO-DB speaker each, RAVDESS and TESS always train | that speaker | the next EMO-DB speaker |
| `manifest-split` (manifest with a `split` column) | 1: the manifest's own | rows marked eval | rows marked validation |

The paper protocols split clips at random, so one speaker's clips sit on both sides: they reproduce the papers'
tables, and they overstate accuracy on unseen speakers. The default is the honest deployment estimate.

A checkpoint records its split (`Split.provenance()`); `split_from_provenance` rebuilds exactly that split on a
corpus and verifies it against the recorded ids hashes, so calibration and checks never run on clips the model
was trained or selected on.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from edgeser.data.corpora import SPLIT_SIDES
from edgeser.data.records import Corpus, Utterance
from edgeser.data.splits import Fold, corpus_folds, stratified_kfold
from edgeser.errors import SplitError

ProtocolName = Literal[
    "speaker-independent",
    "gcf2net-random-5fold",
    "mscnn-10fold",
    "saser-60-20-20",
    "stfnet-holdout",
    "actor-folds",
    "emodb-loso",
    "manifest-split",
]
PROTOCOLS: tuple[ProtocolName, ...] = get_args(ProtocolName)
DEFAULT_PROTOCOL: ProtocolName = "speaker-independent"
PAPER_PROTOCOL = "paper"  # what `edgeser train --protocol` also takes: the protocol the model's recipe names
SPEAKER_LIST_PROTOCOLS: tuple[ProtocolName, ...] = (
    "actor-folds",
    "emodb-loso",
)  # fixed speaker lists (multi corpus)
MIN_VALIDATION_SHARE = 0.10
SINGLE_SPEAKER_VALIDATION_SHARE = 0.15


def fingerprint(ids: list[str] | tuple[str, ...]) -> str:
    """Order-free 16-hex-digit hash of a set of clip ids."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """One fold of a protocol: which clips train, which select the model, which evaluate it."""

    protocol: ProtocolName
    corpus: str
    index: int
    held_out: str
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    eval_ids: tuple[str, ...]
    seed: int = 0
    validation_note: str = ""

    def __post_init__(self) -> None:
        sides = [set(self.train_ids), set(self.validation_ids), set(self.eval_ids)]
        for a, b, what in (
            (0, 2, "training and evaluation"),
            (1, 2, "validation and evaluation"),
            (0, 1, "training and validation"),
        ):
            overlap = sides[a] & sides[b]
            if overlap:
                raise SplitError(f"{self.corpus} fold {self.index}: {len(overlap)} clips in both {what}")

    @property
    def fold(self) -> Fold:
        """The fold view: everything not evaluated (training + validation) against the evaluation clips."""
        return Fold(self.index, self.held_out, self.train_ids + self.validation_ids, self.eval_ids)

    def provenance(self, data_spec: str) -> dict[str, Any]:
        """What a checkpoint records to rebuild and verify this split."""
        return {
            "data_spec": data_spec, "corpus": self.corpus, "protocol": self.protocol, "fold": self.index,
            "held_out": self.held_out, "seed": self.seed,
            "train_count": len(self.train_ids), "validation_count": len(self.validation_ids),
            "eval_count": len(self.eval_ids), "train_ids_sha": fingerprint(self.train_ids),
            "validation_ids_sha": fingerprint(self.validation_ids), "eval_ids_sha": fingerprint(self.eval_ids),
            "validation": self.validation_note,
        }  # fmt: skip


# --------------------------------------------------------------------------------------------- protocols


def _stratified_share(utterances: list[Utterance], share: float, seed: int) -> set[str]:
    """A label-stratified random `share` of the clips (at least one per label with >= 2 clips)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for utt in utterances:
        by_label[utt.label].append(utt.id)
    chosen: set[str] = set()
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        count = round(share * len(ids)) or (1 if len(ids) >= 2 else 0)
        chosen |= {ids[i] for i in rng.permutation(len(ids))[:count]}
    return chosen


def _speaker_validation(corpus: Corpus, fold: Fold, seed: int) -> tuple[set[str], str]:
    """Whole training speakers after the held-out one (cyclically) until >= 10 % of training clips."""
    train = corpus.subset(set(fold.train_ids))
    speakers = sorted({u.speaker for u in train})
    evaluated = sorted({u.speaker for u in corpus.subset(set(fold.eval_ids))})
    if len(speakers) < 2:
        chosen = _stratified_share(train, SINGLE_SPEAKER_VALIDATION_SHARE, seed)
        return chosen, (
            f"stratified {SINGLE_SPEAKER_VALIDATION_SHARE:.0%} of the only training speaker's "
            f"clips ({', '.join(speakers)}): not speaker-independent"
        )
    everyone = sorted({u.speaker for u in corpus.utterances})
    start = max((everyone.index(s) for s in evaluated), default=-1)
    order = [everyone[(start + k) % len(everyone)] for k in range(1, len(everyone) + 1)]
    picked: list[str] = []
    count = 0
    for speaker in (s for s in order if s in speakers):
        if count >= MIN_VALIDATION_SHARE * len(train) or len(picked) == len(speakers) - 1:
            break
        picked.append(speaker)
        count += sum(u.speaker == speaker for u in train)
    return (
        {u.id for u in train if u.speaker in picked},
        f"training speaker(s) {', '.join(picked)} held out for model selection",
    )


def make_split(
    corpus: Corpus,
    protocol: ProtocolName = DEFAULT_PROTOCOL,
    index: int = 0,
    seed: int = 0,
    validation: bool = True,
) -> Split:
    """Fold `index` of `protocol` on `corpus`; `validation=False` keeps every non-evaluation clip for training."""
    if protocol not in PROTOCOLS:
        raise SplitError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    utterances = corpus.utterances
    if protocol == "manifest-split":
        return _given_split(corpus, index, seed)
    if protocol in SPEAKER_LIST_PROTOCOLS:
        return _speaker_list_split(corpus, protocol, index, seed, validation)
    if protocol == "speaker-independent":
        folds = corpus_folds(corpus, seed=seed)
    elif protocol == "gcf2net-random-5fold":
        folds = stratified_kfold(utterances, 5, seed)
    elif protocol == "mscnn-10fold":
        folds = stratified_kfold(utterances, 10, seed)
    else:
        folds = [_holdout(utterances, 0.2 if protocol == "saser-60-20-20" else 0.1, seed, protocol)]
    if not 0 <= index < len(folds):
        raise SplitError(f"{corpus.name} under {protocol} has folds 0..{len(folds) - 1}; got {index}")
    fold = folds[index]
    validation_ids: set[str] = set()
    note = "none: the model is kept at its last epoch"
    if validation:
        if protocol == "speaker-independent" and corpus.fold_key in {"speaker", "group"}:
            validation_ids, note = _speaker_validation(corpus, fold, seed)
        elif protocol == "mscnn-10fold":
            validation_ids = set(folds[(index + 1) % len(folds)].eval_ids)
            note = f"fold {(index + 1) % len(folds)} of 10 (the paper's dev set)"
        elif protocol in ("saser-60-20-20", "stfnet-holdout"):
            share = 0.2 if protocol == "saser-60-20-20" else 0.1
            rest = corpus.subset(set(fold.train_ids))
            validation_ids = _stratified_share(
                rest, share / (1 - share), seed + 1
            )  # `share` of the whole corpus
            note = f"random {share:.0%} of the corpus (the paper's validation set)"
        else:
            validation_ids = _stratified_share(
                corpus.subset(set(fold.train_ids)), MIN_VALIDATION_SHARE, seed + 1
            )
            note = f"stratified {MIN_VALIDATION_SHARE:.0%} of the training clips"
    train_ids = tuple(i for i in fold.train_ids if i not in validation_ids)
    train_ids, val_ids, eval_ids = _copies_together(
        corpus, [train_ids, tuple(i for i in fold.train_ids if i in validation_ids), fold.eval_ids]
    )
    return Split(protocol, corpus.name, fold.index, fold.held_out, train_ids, val_ids, eval_ids, seed, note)


def _given_split(corpus: Corpus, index: int, seed: int) -> Split:
    """The split a manifest's `split` column fixes (one fold)."""
    if not corpus.sides:
        raise SplitError(
            f"{corpus.root}: protocol manifest-split needs a manifest with a split column "
            "(train, validation or eval on every row)"
        )
    if index != 0:
        raise SplitError(f"{corpus.name} under manifest-split has one fold (0); got {index}")
    ids = {
        side: tuple(u.id for u in corpus.utterances if corpus.sides.get(u.id) == side) for side in SPLIT_SIDES
    }
    if not ids["eval"]:
        raise SplitError(f"{corpus.root}: no row of the manifest has split=eval")
    held_out = ", ".join(sorted({u.speaker for u in corpus.subset(list(ids["eval"]))}))
    note = (
        "the manifest's rows marked validation"
        if ids["validation"]
        else "none: the model is kept at its last epoch"
    )
    return Split(
        "manifest-split",
        corpus.name,
        0,
        f"split=eval ({held_out})",
        ids["train"],
        ids["validation"],
        ids["eval"],
        seed,
        note,
    )


def _copies_together(
    corpus: Corpus, sides: list[tuple[str, ...]]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """`sides` (train, validation, evaluation ids) with every set of byte-identical files on one side: the
    side of the copy whose id sorts first (RAVDESS holds one recording twice, under two names; a clip-level
    random split could otherwise evaluate on a recording it trained on)."""
    digests: dict[str, list[str]] = defaultdict(list)
    for utt in corpus.utterances:
        try:
            digests[hashlib.sha256(Path(utt.path).read_bytes()).hexdigest()].append(utt.id)
        except OSError:  # unreadable files are the loader's to refuse; they have no copy to keep together
            continue
    side_of = {uid: k for k, ids in enumerate(sides) for uid in ids}
    for ids in digests.values():
        present = sorted(i for i in ids if i in side_of)
        for uid in present[1:]:
            side_of[uid] = side_of[present[0]]
    train, validation, evaluation = (
        tuple(i for ids in sides for i in ids if side_of[i] == k) for k in range(3)
    )
    return train, validation, evaluation


def _speaker_list_split(
    corpus: Corpus, protocol: ProtocolName, index: int, seed: int, validation: bool
) -> Split:
    """A fold of `actor-folds` / `emodb-loso`: fixed lists of evaluated and validation speakers."""
    from edgeser.data.multicorpus import ACTOR_FOLDS, EMODB_SPEAKERS, actor_fold_sides, emodb_loso_sides

    if corpus.name != "multi":
        raise SplitError(
            f"protocol {protocol} needs the multi corpus (data spec multi:ROOT), not {corpus.name}"
        )
    count, sides = (
        (len(ACTOR_FOLDS), actor_fold_sides)
        if protocol == "actor-folds"
        else (len(EMODB_SPEAKERS), emodb_loso_sides)
    )
    if not 0 <= index < count:
        raise SplitError(f"{corpus.name} under {protocol} has folds 0..{count - 1}; got {index}")
    evaluated, validating = sides(index)
    if not validation:
        validating = set()
    present = {u.speaker for u in corpus.utterances}
    if not evaluated & present:
        raise SplitError(
            f"{protocol} fold {index}: none of its evaluation speakers ({', '.join(sorted(evaluated))}) "
            f"is in the corpus"
        )
    eval_ids = tuple(u.id for u in corpus.utterances if u.speaker in evaluated)
    val_ids = tuple(u.id for u in corpus.utterances if u.speaker in validating)
    train_ids = tuple(u.id for u in corpus.utterances if u.speaker not in evaluated | validating)
    note = (
        f"speaker(s) {', '.join(sorted(validating & present))} held out for model selection"
        if validating
        else "none: the model is kept at its last epoch"
    )
    return Split(
        protocol, corpus.name, index, ", ".join(sorted(evaluated)), train_ids, val_ids, eval_ids, seed, note
    )


def _holdout(utterances: list[Utterance], share: float, seed: int, protocol: ProtocolName) -> Fold:
    evaluated = _stratified_share(utterances, share, seed)
    return Fold(
        0,
        f"{protocol}: random {share:.0%}",
        tuple(u.id for u in utterances if u.id not in evaluated),
        tuple(u.id for u in utterances if u.id in evaluated),
    )


def split_from_provenance(
    corpus: Corpus,
    provenance: dict[str, Any] | None,
    fold_index: int | None = None,
    source: str = "the checkpoint",
) -> Split:
    """The split a checkpoint was trained with, rebuilt on `corpus` and verified; or a default fold.

    With provenance for this corpus, `fold_index` may only repeat the recorded fold (another fold's evaluation
    clips are this model's training clips). Without provenance for this corpus (random weights, another corpus),
    the manifest's own split where it has a `split` column, else fold `fold_index` (default 0) of the default
    protocol.
    """
    provenance = provenance or {}
    if provenance.get("corpus") != corpus.name:
        if corpus.sides:  # a manifest that fixes its own split (the shipped demo clips)
            return make_split(corpus, "manifest-split", 0 if fold_index is None else fold_index)
        return make_split(corpus, DEFAULT_PROTOCOL, 0 if fold_index is None else fold_index)
    recorded = int(provenance.get("fold", 0))
    if fold_index is not None and fold_index != recorded:
        raise SplitError(
            f"{source} was trained on {corpus.name} fold {recorded}: fold {fold_index}'s evaluation "
            f"clips are its training clips; use fold {recorded}"
        )
    protocol = provenance.get("protocol", DEFAULT_PROTOCOL)  # make_split refuses an unknown one
    split = make_split(
        corpus,
        protocol,
        recorded,
        int(provenance.get("seed", 0)),
        validation="validation_ids_sha" in provenance,
    )
    limit = provenance.get("limit")
    if limit:  # a smoke run trained on a seeded subset: the same subset
        split = limited(split, int(limit), int(provenance.get("seed", 0)))
    expected = provenance.get("eval_ids_sha")
    if expected and fingerprint(split.eval_ids) != expected:
        raise SplitError(
            f"{corpus.name} at {provenance.get('data_spec', '?')}: does not reproduce the evaluation "
            f"split {source} recorded (ids hash {fingerprint(split.eval_ids)} != {expected}); "
            f"the corpus changed or is another copy"
        )
    return split


def limited(split: Split, limit: int, seed: int) -> Split:
    """A seeded subset for smoke runs: `limit` training clips, `limit // 2` evaluation and validation clips."""
    rng = np.random.default_rng(seed)

    def pick(ids: tuple[str, ...], count: int) -> tuple[str, ...]:
        if count >= len(ids):
            return ids
        chosen = sorted(rng.permutation(len(ids))[:count])
        return tuple(ids[i] for i in chosen)

    train = pick(split.train_ids, limit)
    evaluated = pick(split.eval_ids, max(1, limit // 2))
    validation = pick(split.validation_ids, max(1, limit // 2)) if split.validation_ids else ()
    return Split(
        split.protocol,
        split.corpus,
        split.index,
        split.held_out,
        train,
        validation,
        evaluated,
        split.seed,
        split.validation_note + f" (smoke subset: --limit {limit})",
    )
