"""Option values of the API and the command line, checked in one place: types, and a bound on every option
that sizes a resource (threads, workers, batch sizes, rounds, samples, clip lengths), each with its reason.

    threads = check_threads("threads", 4)            # <= logical cores, unless forced
    batch = bounded("batch_size", 32)               # within LIMITS["batch_size"]

A value past a bound is refused with one line naming the option, the bound and why: an option must never be
able to take the host down (onnxruntime starts one thread per `threads` in every stage session, and thousands
of threads exhaust the process table of the whole machine).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from edgeser.errors import OptionError

# onnxruntime on the CPU (or `providers`), onnxruntime's CUDA or TensorRT execution providers, or edgeser's
# own TensorRT engines (`edgeser build-trt`).
Backend = Literal["onnxruntime", "cuda", "tensorrt-ep", "tensorrt"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

# The longest clip the models take as one utterance; longer recordings go through `Pipeline.long`.
MAX_CLIP_SECONDS = 30.0
# The longest recording `Pipeline.long` decodes (it holds the whole recording in memory): 4 hours.
MAX_RECORDING_SECONDS = 4 * 3600.0
# `force_threads` / `--force-threads` / EDGESER_FORCE_THREADS=1 allow up to this many threads per logical core.
OVERSUBSCRIBE = 4
FORCE_THREADS_ENV = "EDGESER_FORCE_THREADS"


@dataclass(frozen=True)
class Bound:
    """The accepted range `[least, most]` of an option and why it stops there."""

    least: float
    most: float
    why: str
    whole: bool = True


_BATCH = "a batch holds every clip's audio and every stage's activations in memory at once"
LIMITS: dict[str, Bound] = {
    "batch_size": Bound(1, 256, _BATCH),
    "max_batch": Bound(1, 256, _BATCH),
    "train_batch_size": Bound(1, 4096, _BATCH),
    "workers": Bound(1, 256, "each worker is a process holding its own copy of the model"),
    "instances": Bound(1, 64, "each instance is a process holding its own copy of the model"),
    "cpus_per_worker": Bound(0.01, 256, "a worker's CPUs are also its onnxruntime threads", whole=False),
    "gpus_per_worker": Bound(0, 16, "no machine has more GPUs per worker", whole=False),
    "rounds": Bound(1, 1000, "rounds add time, not precision, past a few hundred"),
    "warmup": Bound(0, 100, "warm-up runs past a few add time, not stability"),
    "samples": Bound(1, 4096, "calibration keeps every clip's stage inputs in memory"),
    "validation_clips": Bound(1, 4096, "every clip's outputs of every variant are kept in memory"),
    "clip_seconds": Bound(
        0.1,
        MAX_CLIP_SECONDS,
        "the models take utterances; longer recordings go through `--long` / `Pipeline.long`",
        whole=False,
    ),
    "workspace_mb": Bound(1, 256 * 1024, "no GPU has more memory than 256 GiB"),
    "sample_rate": Bound(8000, 384_000, "speech needs 8 kHz; no audio interface records above 384 kHz"),
    "channels": Bound(1, 32, "a stream is mixed to mono; no microphone array here has more than 32 channels"),
    "chunk_ms": Bound(
        1, 1000, "a chunk is the unit of audio read and fed at once; past a second, events wait for it"
    ),
    "device": Bound(0, 1023, "PortAudio numbers input devices from 0; no host has a thousand"),
}


def logical_cores() -> int:
    """The logical cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_count(threads: int | None = None, *, most: int | None = None) -> int:
    """The threads to run with where an option may be left out: `threads` where given, else every logical core
    (at most `most`)."""
    if threads:
        return threads
    cores = logical_cores()
    return cores if most is None else min(most, cores)


def positive_int(name: str, value: object) -> int:
    """`value` as a positive int, or an OptionError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise OptionError(name, f"expected a positive integer, got {value!r}")
    return int(value)


def check_threads(name: str, value: object, force: bool = False) -> int:
    """A thread count: 1 to the logical cores; with `force` (or EDGESER_FORCE_THREADS=1) up to OVERSUBSCRIBE
    times that, never more."""
    threads = positive_int(name, value)
    cores = logical_cores()
    ceiling = OVERSUBSCRIBE * cores
    forced = force or os.environ.get(FORCE_THREADS_ENV) == "1"
    if threads <= cores or (forced and threads <= ceiling):
        return threads
    why = "each stage's onnxruntime session starts that many threads; thousands exhaust the host's process table"
    if forced:
        raise OptionError(
            name,
            f"{threads} threads is more than {ceiling} ({OVERSUBSCRIBE} per logical core, "
            f"{cores} here) even when forced: {why}",
        )
    raise OptionError(
        name,
        f"{threads} threads is more than the {cores} logical cores here: {why} (force up to "
        f"{ceiling} with --force-threads, force_threads=True or {FORCE_THREADS_ENV}=1)",
    )


def bounded(name: str, value: object, limit: str | None = None) -> float:
    """`value` within `LIMITS[limit or name]`, or an OptionError naming the option, the bound and why."""
    bound = LIMITS[limit or name]
    if bound.whole:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise OptionError(name, f"expected a whole number, got {value!r}")
    elif (
        isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value)
    ):
        raise OptionError(name, f"expected a finite number, got {value!r}")
    if not bound.least <= value <= bound.most:
        raise OptionError(
            name,
            f"{_number(float(value))} is outside {_number(bound.least)}..{_number(bound.most)}: {bound.why}",
        )
    return float(value)


def _number(value: float) -> str:
    """A number as people write it: 1000000, not 1e+06; 0.5 as 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


def bounded_int(name: str, value: object, limit: str | None = None) -> int:
    return int(bounded(name, value, limit))


def check_backend(
    backend: object,
    *,
    providers: Sequence[str] | None = None,
    threads: object = None,
    spin: bool = False,
    force_threads: bool = False,
    device: object = None,
) -> int:
    """Refuse an unknown backend, and every option the backend would ignore (one line naming it), instead of
    dropping it; return the GPU index (0 unless `device` is given)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise OptionError("backend", f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    ignored: list[tuple[str, str]] = []
    if backend == "tensorrt":
        why = "edgeser's TensorRT engines run on the GPU, not on onnxruntime"
        ignored += [("threads", why)] if threads is not None else []
        ignored += [("providers", why)] if providers is not None else []
        ignored += [("spin", why)] if spin else []
    elif providers is not None and backend != "onnxruntime":
        ignored.append(
            (
                "providers",
                f"backend {backend!r} sets its own execution providers (give providers with "
                "backend='onnxruntime')",
            )
        )
    if backend == "onnxruntime" and device is not None:
        ignored.append(
            (
                "device",
                "backend 'onnxruntime' runs on the CPU or the given providers; choose a GPU with "
                "backend 'cuda', 'tensorrt-ep' or 'tensorrt'",
            )
        )
    if force_threads and threads is None:
        ignored.append(("force_threads", "it only lifts the bound on `threads`, and no threads were given"))
    if ignored:
        name, why = ignored[0]
        raise OptionError(name, f"not used with backend {backend!r}: {why}")
    if device is None:
        return 0
    if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or int(device) < 0:
        raise OptionError("device", f"expected a GPU index (a whole number >= 0), got {device!r}")
    return int(device)
