"""Interleaved latency rounds: every row runs once per round, in alternating order, so background load on a
shared machine spreads over the rows instead of landing on whichever ran last."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from edgeser.bench.clips import Speech
from edgeser.bench.runners import Chain, VariantSpec, load_chain
from edgeser.measures import agreement, cosine, interleaved_times
from edgeser.progress import STDERR, Progress


@dataclass
class Cell:
    """One row at one (clip length, batch, threads) setting: the samples and their summary."""

    variant: str
    seconds: float
    batch: int
    threads: int
    totals_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    feature_cosine: float | None = None  # against the reference row on the same clips
    label_agreement: float | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """p50/p90/p99/mean (ms), real-time factor, throughput and the per-stage p50 (ms)."""
        out: dict[str, Any] = {
            "variant": self.variant,
            "seconds": self.seconds,
            "batch": self.batch,
            "threads": self.threads,
            "runs": len(self.totals_ms),
            "error": self.error,
            "feature_cosine": self.feature_cosine,
            "label_agreement": self.label_agreement,
        }
        if self.totals_ms:
            t = np.asarray(self.totals_ms)
            p50 = float(np.percentile(t, 50))
            audio_s = self.seconds * self.batch
            out |= {
                "p50_ms": p50,
                "p90_ms": float(np.percentile(t, 90)),
                "p99_ms": float(np.percentile(t, 99)),
                "mean_ms": float(t.mean()),
                "min_ms": float(t.min()),
                "rtf": p50 / 1e3 / audio_s,
                "clips_per_s": self.batch / (p50 / 1e3),
                "audio_s_per_s": audio_s / (p50 / 1e3),
                "stages_p50_ms": {s: float(np.percentile(v, 50)) for s, v in self.stages_ms.items()},
            }
        return out


@dataclass(frozen=True)
class Plan:
    """What to measure: clip lengths (s), batch sizes, thread counts, rounds and warm-up runs per cell."""

    lengths_s: tuple[float, ...]
    batches: tuple[int, ...]
    threads: tuple[int, ...]
    rounds: int
    warmup: int


def measure(
    specs: Sequence[VariantSpec],
    plan: Plan,
    speech: Speech,
    reference: str | None,
    progress: Progress = STDERR,
) -> tuple[list[Cell], dict[str, str]]:
    """Every row at every setting, interleaved; returns the cells and the rows that failed to load (why)."""
    cells: list[Cell] = []
    failed: dict[str, str] = {}
    for threads in plan.threads:
        chains: dict[str, Chain] = {}
        for spec in specs:
            if spec.name in failed:
                continue
            progress(f"loading {spec.name} ({threads} threads)")
            try:
                chains[spec.name] = load_chain(spec, threads)
            except Exception as err:  # one row that cannot load (a missing extra) must not stop the rest
                failed[spec.name] = " ".join(str(err).split())[:300]
                progress(f"  {spec.name}: skipped ({failed[spec.name]})")
        for seconds in plan.lengths_s:
            for batch in plan.batches:
                waves = speech.clips(seconds, batch)
                cells += measure_cell(chains, waves, seconds, batch, threads, plan, reference, progress)
        chains.clear()
        gc.collect()
    return cells, failed


def measure_cell(
    chains: dict[str, Chain],
    waves: list[np.ndarray],
    seconds: float,
    batch: int,
    threads: int,
    plan: Plan,
    reference: str | None,
    progress: Progress,
) -> list[Cell]:
    """One setting: warm-up, then `plan.rounds` rounds of one run per row (order reversed every other round)."""
    cells = {name: Cell(name, seconds, batch, threads) for name in chains}
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, chain in chains.items():
        try:
            for _ in range(max(plan.warmup, 1)):
                features, logits, _ = chain(waves)
            outputs[name] = (features, logits)
        except Exception as err:  # e.g. a graph that refuses this batch size or length
            cells[name].error = " ".join(str(err).split())[:300]
            progress(f"  {name}: failed at {seconds:g} s x {batch} ({cells[name].error})")
    live = [name for name in chains if cells[name].error is None]

    def stage_times(name: str, result: tuple[np.ndarray, np.ndarray, dict[str, float]]) -> None:
        for stage, ms in result[2].items():
            cells[name].stages_ms.setdefault(stage, []).append(ms)

    started = time.perf_counter()
    times = interleaved_times(
        {name: partial(chains[name], waves) for name in live}, plan.rounds, each=stage_times
    )
    for name, totals in times.items():
        cells[name].totals_ms = totals
    if reference in outputs:
        ref_features, ref_logits = outputs[reference]
        for name, (features, logits) in outputs.items():
            if features.shape == ref_features.shape:
                cells[name].feature_cosine = cosine(ref_features, features)
            cells[name].label_agreement = agreement(
                np.argmax(ref_logits, -1).tolist(), np.argmax(logits, -1).tolist()
            )
    load = os.getloadavg()[0]
    summary = ", ".join(f"{n} {np.median(cells[n].totals_ms):.0f} ms" for n in live if cells[n].totals_ms)
    progress(
        f"{seconds:g} s x {batch}, {threads} threads, {plan.rounds} rounds in "
        f"{time.perf_counter() - started:.0f} s (load {load:.1f}): {summary}"
    )
    return list(cells.values())
