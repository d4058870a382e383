"""Classification and transcription metrics: WA, UA, macro-F1, confusion matrix, CER, WER."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from edgeser.text import normalise_transcript


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> npt.NDArray[np.int64]:
    """`[C, C]` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def weighted_accuracy(matrix: npt.NDArray[np.int64]) -> float:
    """WA: plain accuracy over all clips."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def unweighted_accuracy(matrix: npt.NDArray[np.int64]) -> float:
    """UA: mean per-class recall over the classes present in the ground truth."""
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def macro_f1(matrix: npt.NDArray[np.int64]) -> float:
    """Mean F1 over classes present in truth or predictions (F1 = 0 where one side is empty)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


@dataclass(frozen=True)
class ClassificationReport:
    """The SER metrics of one evaluation, in fractions (0..1)."""

    wa: float
    ua: float
    macro_f1: float
    count: int
    confusion: list[list[int]]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
) -> ClassificationReport:
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    return ClassificationReport(
        wa=weighted_accuracy(matrix),
        ua=unweighted_accuracy(matrix),
        macro_f1=macro_f1(matrix),
        count=int(matrix.sum()),
        confusion=matrix.tolist(),
    )


def edit_distance(reference: Sequence[object], hypothesis: Sequence[object]) -> int:
    """Levenshtein distance between two token sequences (substitution, insertion, deletion cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_token in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_token in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_token != hyp_token))
        previous = current
    return previous[-1]


def error_rate(references: Sequence[str], hypotheses: Sequence[str], unit: str) -> float:
    """Corpus-level CER (`unit="char"`) or WER (`unit="word"`) on normalised transcripts."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = 0
    length = 0
    for ref, hyp in zip(references, hypotheses):
        ref_norm, hyp_norm = normalise_transcript(ref), normalise_transcript(hyp)
        ref_units = list(ref_norm) if unit == "char" else ref_norm.split()
        hyp_units = list(hyp_norm) if unit == "char" else hyp_norm.split()
        errors += edit_distance(ref_units, hyp_units)
        length += len(ref_units)
    return errors / length if length else float(errors > 0)


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return error_rate(references, hypotheses, "char")


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return error_rate(references, hypotheses, "word")
