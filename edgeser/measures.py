"""One definition of each comparison measure: cosine, label agreement, latency percentiles, and the interleaved
rounds latency is measured in."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


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
    return {
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "p99": float(np.percentile(array, 99)),
        "mean": float(array.mean()),
    }


def warm_up(runs: Mapping[K, Callable[[], object]], count: int) -> None:
    """`count` untimed runs of each of `runs`, in order: all of one's before the next one's."""
    for run in runs.values():
        for _ in range(count):
            run()


def interleaved_times(
    runs: Mapping[K, Callable[[], R]],
    rounds: int,
    warmup: int = 0,
    *,
    order: Literal["alternate", "rotate"] = "alternate",
    each: Callable[[K, R], None] | None = None,
) -> dict[K, list[float]]:
    """Milliseconds of every one of `runs` in `rounds` rounds, after `warmup` runs of each (`warm_up`).

    Every round runs each once, so background load on a shared machine spreads over them instead of landing on
    whichever runs last: in the given order, reversed every other round ("alternate"), or rotated by one more
    place each round ("rotate"). `each(key, result)` is called with every timed run's result, after its time is
    taken.
    """
    warm_up(runs, warmup)
    keys = list(runs)
    times: dict[K, list[float]] = {key: [] for key in keys}
    for index in range(rounds if keys else 0):
        if order == "alternate":
            sequence = keys if index % 2 == 0 else keys[::-1]
        else:
            sequence = keys[index % len(keys) :] + keys[: index % len(keys)]
        for key in sequence:
            started = time.perf_counter()
            result = runs[key]()
            times[key].append((time.perf_counter() - started) * 1e3)
            if each is not None:
                each(key, result)
    return times


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
        return {
            "mean": float(np.mean(self.cosines)),
            "min": float(np.min(self.cosines)),
            "max_abs_diff": self.max_abs_diff,
        }
