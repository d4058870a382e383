"""`run_bench`: build the rows, measure them interleaved, probe cold start and memory, write the report."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.bench.clips import DEFAULT_LENGTHS_S, load_speech
from edgeser.bench.measure import Plan, measure
from edgeser.bench.probe import probe_in_subprocess
from edgeser.bench.report import (
    REPORT_NAME,
    BenchReport,
    draw_plots,
    fastest,
    headline_setting,
    read_accuracy,
)
from edgeser.bench.runners import (
    OPENVINO,
    OPENVINO_NNCF,
    PYTORCH,
    QUANTIZE_DYNAMIC,
    VariantSpec,
    openvino_available,
    torch_parameter_bytes,
    write_openvino_nncf,
    write_quantize_dynamic,
)
from edgeser.bundle import BundleManifest, validate_bundle
from edgeser.errors import BundleError
from edgeser.machine import machine_info
from edgeser.progress import STDERR, Progress
from edgeser.reports import write_report
from edgeser.runtime.options import thread_count

PRECISION_ORDER = ("fp32", "int8", "int8-trt", "int8-trt-fp16", "int8-dynamic", "fp16")
DEFAULT_INT8 = "int8"  # what `edgeser quantize --int8` writes: the row `--compare` is about
NNCF_SAMPLES = 16


@dataclass(frozen=True)
class BenchOptions:
    """What `edgeser bench` measures (see the command's help)."""

    lengths_s: tuple[float, ...] = DEFAULT_LENGTHS_S
    batches: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = field(default_factory=lambda: (thread_count(),))
    precisions: tuple[str, ...] | None = None  # None: every precision in the bundle
    providers: tuple[str, ...] | None = None  # onnxruntime execution providers of the bundle's rows
    compare: bool = False  # PyTorch float, quantize_dynamic defaults, OpenVINO (when installed)
    nncf: bool = False  # with compare: OpenVINO + NNCF INT8 too
    clips: tuple[str, ...] = ()
    rounds: int = 10
    warmup: int = 2
    cold_start: bool = True
    plots: bool = True
    spin: bool = False  # onnxruntime workers spin during runs; PyTorch's OpenMP keeps its own default then
    force_threads: bool = False  # allow more threads than logical cores (up to 4 per core)

    def __post_init__(self) -> None:
        from edgeser.runtime.options import bounded, check_threads

        for seconds in self.lengths_s:
            bounded("--lengths", seconds, "clip_seconds")
        for batch in self.batches:
            bounded("--batch-sizes", batch, "batch_size")
        for threads in self.threads:
            check_threads("--threads", threads, self.force_threads)
        bounded("--rounds", self.rounds, "rounds")
        bounded("--warmup", self.warmup, "warmup")


def row_name(precision: str, providers: tuple[str, ...] | None) -> str:
    if not providers or providers[0] == "CPUExecutionProvider":
        return f"edgeser {precision}"
    return f"edgeser {precision} @{providers[0].replace('ExecutionProvider', '')}"


def bundle_rows(bundle: Path, manifest: BundleManifest, options: BenchOptions) -> list[VariantSpec]:
    present = list(manifest.precisions)
    wanted = (
        list(options.precisions)
        if options.precisions
        else sorted(
            present, key=lambda p: PRECISION_ORDER.index(p) if p in PRECISION_ORDER else len(PRECISION_ORDER)
        )
    )
    missing = [p for p in wanted if p not in present]
    if missing:
        raise BundleError(f"{bundle}: no precision(s) {', '.join(missing)} (present: {', '.join(present)})")
    from edgeser.bundle import PRECISIONS

    rows = []
    for precision in wanted:
        note = (
            "GPU format: slower than fp32 on a CPU" if precision == "fp16" and not options.providers else ""
        )
        files = manifest.precisions[precision]
        kind, paths = "runtime", {}
        if (
            precision not in PRECISIONS
        ):  # a variant this runtime does not load by name: its graphs, same chain
            kind, paths = "graphs", {stage: str(bundle / e.path) for stage, e in files.items()}
            note = "run as its onnxruntime graphs through the stage graph (the runtime does not list this precision)"
        rows.append(
            VariantSpec(
                row_name(precision, options.providers),
                kind,
                str(bundle),
                precision,
                providers=options.providers,
                paths=paths,
                note=note,
                spin=options.spin,
                bytes=sum(e.bytes for e in files.values()),
            )
        )
    return rows


def comparison_rows(
    bundle: Path, workdir: Path, speech_waves: list[np.ndarray], options: BenchOptions, progress: Progress
) -> list[VariantSpec]:
    rows = [
        VariantSpec(
            PYTORCH,
            "pytorch",
            str(bundle),
            backend="pytorch",
            bytes=torch_parameter_bytes(bundle),
            note="the bundle's source model in PyTorch (eval, inference mode); size: parameter bytes",
        )
    ]
    progress("writing quantize_dynamic graphs (onnxruntime defaults)")
    paths = write_quantize_dynamic(bundle, workdir)
    rows.append(
        VariantSpec(
            QUANTIZE_DYNAMIC,
            "graphs",
            str(bundle),
            "int8-dynamic",
            paths=paths,
            spin=options.spin,
            bytes=sum(Path(p).stat().st_size for p in paths.values()),
            note="onnxruntime quantize_dynamic(model, out) defaults on the fp32 graphs",
        )
    )
    fp32 = {
        stage: str(bundle / e.path)
        for stage, e in validate_bundle(bundle, "fp32", False).precisions["fp32"].items()
    }
    if openvino_available():
        rows.append(
            VariantSpec(
                OPENVINO,
                "openvino",
                str(bundle),
                "fp32",
                backend="openvino",
                paths=fp32,
                bytes=sum(Path(p).stat().st_size for p in fp32.values()),
                note="the fp32 graphs compiled by OpenVINO for the CPU (latency hint)",
            )
        )
        if options.nncf:
            progress(f"NNCF INT8 on {len(speech_waves)} clips")
            ir = write_openvino_nncf(bundle, workdir, speech_waves)
            size = sum(
                Path(p).stat().st_size + Path(p).with_suffix(".bin").stat().st_size for p in ir.values()
            )
            rows.append(
                VariantSpec(
                    OPENVINO_NNCF,
                    "openvino",
                    str(bundle),
                    "int8",
                    backend="openvino",
                    paths=ir,
                    bytes=size,
                    note=f"nncf.quantize defaults on {len(speech_waves)} benchmark clips",
                )
            )
    else:
        progress("OpenVINO rows skipped: the package openvino is not installed")
    return rows


def quiet_torch_threads(spin: bool = False) -> str:
    """PyTorch's OpenMP workers wait passively, as the runtime's onnxruntime workers do (no spinning); with
    `spin` (onnxruntime workers spinning too) OpenMP keeps its own default.

    With spinning workers, a 2-core machine that is busy with anything else turns every parallel region into a
    wait for a preempted thread: the tiny cmgi took 1.2-2.4 s per clip in PyTorch with 2 threads against 73 ms
    passive (load 4). Set before PyTorch loads OpenMP; a value the user set is kept. Returns the policy in force.
    """
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "unset") + " (PyTorch was already loaded)"
    if spin:
        return os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default)")
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_bench(
    bundle: Path,
    options: BenchOptions,
    out_dir: Path | None = None,
    command: str | None = None,
    progress: Progress = STDERR,
) -> BenchReport:
    """Measure every row of `bundle` (and the comparison rows) and write `NAME.{json,md}` and plots."""
    bundle = Path(bundle)
    manifest = validate_bundle(bundle, "fp32")
    for value, what in (
        (options.lengths_s, "clip length"),
        (options.batches, "batch size"),
        (options.threads, "thread count"),
    ):
        if not value or min(value) <= 0:
            raise BundleError(f"{bundle}: every {what} must be positive (got {list(value)})")
    machine = machine_info(options.threads[0])
    seconds, batch, threads = headline_setting(asdict(options) | {"lengths_s": list(options.lengths_s)})
    speech = load_speech(options.clips, max(options.lengths_s) * max(options.batches) + 1.0)
    progress(f"speech: {speech.seconds:.0f} s from {speech.files} files of {speech.source}")
    rows = bundle_rows(bundle, manifest, options)
    torch_threads = quiet_torch_threads(options.spin) if options.compare else None
    with tempfile.TemporaryDirectory(prefix="edgeser-bench-") as tmp:
        if options.compare:
            rows += comparison_rows(bundle, Path(tmp), speech.clips(4.0, NNCF_SAMPLES), options, progress)
        reference = next((r.name for r in rows if r.kind == "runtime" and r.precision == "fp32"), None)
        plan = Plan(
            tuple(options.lengths_s),
            tuple(options.batches),
            tuple(options.threads),
            options.rounds,
            options.warmup,
        )
        load_before = list(os.getloadavg())
        cells, failed = measure(rows, plan, speech, reference, progress)
        load_after = list(os.getloadavg())
        cold: dict[str, dict[str, Any]] = {}
        if options.cold_start:
            clip = Path(tmp) / "clip.npy"
            np.save(clip, speech.clips(seconds, 1)[0])
            for row in rows:
                if row.name not in failed:
                    progress(f"cold start and peak memory of {row.name} (fresh interpreter)")
                    cold[row.name] = probe_in_subprocess(row.to_dict(), threads, clip)
    settings = {
        "lengths_s": list(options.lengths_s),
        "batches": list(options.batches),
        "threads": list(options.threads),
        "rounds": options.rounds,
        "warmup": options.warmup,
        "interleaved_rounds": True,
        "clip_source": speech.source,
        "compare": options.compare,
        "providers": list(options.providers) if options.providers else ["CPUExecutionProvider"],
        "pytorch_omp_wait_policy": torch_threads,
        "spin": options.spin,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "command": command or shlex.join([sys.executable, *sys.argv]),
    }
    variants = [{**r.to_dict(), "error": failed.get(r.name)} for r in rows]
    # Imported here: the edgeser.quantize package imports onnx (the export extra); `edgeser --help` must not.
    from edgeser.quantize.speed import cpu_class_notes

    report = BenchReport(
        str(bundle),
        f"{manifest.model}/{manifest.size}",
        machine,
        settings,
        variants,
        [c.summary() for c in cells],
        cold,
        read_accuracy(bundle),
        notes=cpu_class_notes(manifest, machine) + [f"{n}: not run ({why})" for n, why in failed.items()],
        passed=not failed and all(c.error is None for c in cells),
    )
    report.headline = {
        "seconds": seconds,
        "batch": batch,
        "threads": threads,
        "fastest": fastest(report, seconds, batch, threads),
        "default_int8": row_name(DEFAULT_INT8, options.providers),
    }
    write_report(out_dir or bundle / "reports", REPORT_NAME, report, draw_plots if options.plots else None)
    return report
