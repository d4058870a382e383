"""Does INT8 pay for a stage on this CPU? Time its fp32 and INT8 graphs on a real-length calibration input.

INT8 is not always faster: on an AVX2-only CPU (no VNNI) the u8 x s8 GEMM runs at only about 2x fp32, and
the Q/DQ work around small GEMMs can cost more than the integer kernel saves (cmgi small's 192-wide audio
encoder). `edgeser quantize` therefore times both graphs of each quantised stage, interleaved, on the largest
cached calibration input (batch 1, the length real clips have), and keeps float the stages INT8 would slow
down. The figures and the CPU they were measured on go into the variant's settings in bundle.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeser.measures import interleaved_times
from edgeser.runtime.options import thread_count

if TYPE_CHECKING:
    pass

SPEED_ROUNDS = 5
SPEED_WARMUP = 1


@dataclass(frozen=True)
class SpeedCheck:
    """fp32 against INT8 latency of one stage graph (medians of interleaved runs, ms)."""

    fp32_ms: float
    int8_ms: float
    input: str  # the calibration group timed (e.g. w64000-t32: 4 s of audio, 32 tokens)
    rounds: int
    threads: int

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms > 0 else float("inf")

    @property
    def pays(self) -> bool:
        """INT8 is kept only where it is faster than fp32."""
        return self.int8_ms < self.fp32_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 3), "kept": "int8" if self.pays else "fp32"}

    def reason(self, cpu_class: str) -> str:
        return (
            f"int8 slower than fp32 on this {cpu_class} CPU: {self.int8_ms:.1f} vs {self.fp32_ms:.1f} ms "
            f"({self.input}, {self.threads} threads)"
        )


def timing_feeds(cache: Any, stage: str, input_names: list[str]) -> tuple[str, dict[str, np.ndarray]]:
    """The first item of the calibration group with the largest inputs (the longest real clips)."""
    best: tuple[int, str, dict[str, np.ndarray]] | None = None
    for key, feeds in cache.stage_feeds(stage, input_names):
        size = sum(int(array.size) for array in feeds[0].values())
        if best is None or size > best[0]:
            best = (size, key, feeds[0])
    if best is None:
        raise ValueError(f"no cached calibration inputs for stage {stage}")
    return best[1], best[2]


Timer = Callable[[Path, Path, dict[str, np.ndarray], int, int], tuple[float, float]]


def interleaved_medians(
    fp32: Path, int8: Path, feeds: dict[str, np.ndarray], threads: int, rounds: int
) -> tuple[float, float]:
    """Median ms of the fp32 and INT8 sessions, one run of each per round, order alternating."""
    from edgeser.runtime.sessions import make_session

    sessions = {"fp32": make_session(fp32, None, threads), "int8": make_session(int8, None, threads)}
    names = {key: {i.name for i in s.get_inputs()} for key, s in sessions.items()}
    runs = {
        key: lambda s=s, n=names[key]: s.run(None, {k: v for k, v in feeds.items() if k in n})
        for key, s in sessions.items()
    }
    times = interleaved_times(runs, rounds, SPEED_WARMUP)
    return float(np.median(times["fp32"])), float(np.median(times["int8"]))


def check_speed(
    cache: Any,
    stage: str,
    fp32: Path,
    int8: Path,
    threads: int | None = None,
    rounds: int = SPEED_ROUNDS,
    timer: Timer | None = None,
) -> SpeedCheck:
    """Time `stage`'s fp32 and INT8 graphs on this CPU (see the module docstring)."""
    import onnx

    threads = thread_count(threads)
    inputs = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]
    key, feeds = timing_feeds(cache, stage, inputs)
    fp32_ms, int8_ms = (timer or interleaved_medians)(fp32, int8, feeds, threads, rounds)
    return SpeedCheck(round(fp32_ms, 3), round(int8_ms, 3), key, rounds, threads)


def measured_on(threads: int | None) -> dict[str, Any]:
    """The CPU and settings a speed decision holds for (kept in the variant's settings)."""
    import onnxruntime

    from edgeser.machine import cpu_info

    return {**cpu_info(), "threads": thread_count(threads), "onnxruntime": onnxruntime.__version__}


def cpu_class_notes(manifest: Any, machine: dict[str, Any]) -> list[str]:
    """Variants whose INT8 speed decisions were measured on another CPU class than `machine` (machine_info)."""
    notes = []
    for precision, settings in manifest.extra.get("quantization", {}).items():
        measured = settings.get("measured_on") or {}
        if measured.get("cpu_class") and measured["cpu_class"] != machine.get("cpu_class"):
            notes.append(
                f"{precision} was quantised on a {measured['cpu_class']} CPU ({measured.get('cpu')}); "
                f"this machine is {machine.get('cpu_class')}: which stages pay in INT8 may differ here"
            )
    return notes
