"""One definition of each comparison measure: cosine, label agreement, latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Cosine similarity of two arrays taken as flat vectors (float64).

    Where either vector is all zero the direction is undefined: 1.0 if the two are `np.allclose`, else 0.0.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"cosine of arrays with different sizes ({x.size} and {y.size})")
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    if denominator == 0.0:
        return 1.0 if np.allclose(x, y) else 0.0
    return float(x @ y / denominator)


def max_abs_diff(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def agreement(a: Sequence[object], b: Sequence[object]) -> float:
    """Share of positions where two equally long sequences (labels, transcripts) are equal."""
    if len(a) != len(b):
        raise ValueError(f"agreement of sequences with different lengths ({len(a)} and {len(b)})")
    return float(np.mean([x == y for x, y in zip(a, b)])) if len(a) else 1.0


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean of latency samples (empty for no samples)."""
    if not len(values):
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


class CosineStats:
    """Running comparison of one stage output between two runners: worst and mean cosine, max abs diff."""

    def __init__(self) -> None:
        self.cosines: list[float] = []
        self.max_abs_diff = 0.0

    def add(self, reference: npt.ArrayLike, candidate: npt.ArrayLike) -> None:
        self.cosines.append(cosine(reference, candidate))
        self.max_abs_diff = max(self.max_abs_diff, max_abs_diff(reference, candidate))

    def fail(self) -> None:
        """Record a hard mismatch (e.g. a wrong frame count): cosine -1."""
        self.cosines.append(-1.0)

    @property
    def count(self) -> int:
        return len(self.cosines)

    def summary(self) -> dict[str, float]:
        if not self.cosines:
            return {}
        return {"mean": float(np.mean(self.cosines)), "min": float(np.min(self.cosines)),
                "max_abs_diff": self.max_abs_diff}
