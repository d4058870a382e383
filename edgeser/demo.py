"""`edgeser demo`: the whole edge pipeline on the shipped cmgi default, ending in one table a person reads.

    export -> calibrate -> INT8 (CPU and TensorRT variants) -> TensorRT readiness (doctor) -> check against float
      -> predict a few clips

Data: the three corpora when `--data DIR` holds `ravdess/`, `emodb/` and `tess/` (the data spec the shipped
checkpoint trained on, `multi:DIR` with its recorded options; the check runs on the fold's held-out RAVDESS
actors 19-24 and EMO-DB speakers, calibration on the training side), else the clips shipped in the package
(`edgeser/shipped/demo/ravdess/`: 96 clips of the held-out actors 19-24 to check and predict, 32 training-side clips to
calibrate on; unmodified RAVDESS files, CC BY-NC-SA 4.0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeser.assets import demo_clips
from edgeser.errors import DataError
from edgeser.progress import STDERR, Progress

SHIPPED_CLIPS = demo_clips()
MODEL = "cmgi"


@dataclass
class DemoResult:
    """What the demo did, with the figures of its closing table."""

    bundle: str
    data: str
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per variant
    predictions: list[dict[str, Any]] = field(default_factory=list)
    doctor: dict[str, Any] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)


def data_spec(data: Path | None, checkpoint: Path | None = None) -> str:
    """The three corpora under `data` when present (with the options the checkpoint recorded, e.g. its TESS
    share), else the shipped demo clips."""
    from edgeser.data.multicorpus import MULTI_CORPORA

    if data is not None and all((data / name).is_dir() for name in MULTI_CORPORA):
        return f"multi:{data}{recorded_options(checkpoint)}"
    if not SHIPPED_CLIPS.is_file():
        raise DataError(
            f"{SHIPPED_CLIPS}: the shipped demo clips are missing and no --data DIR holding "
            f"{', '.join(MULTI_CORPORA)} was given"
        )
    return f"manifest:{SHIPPED_CLIPS}"


def recorded_options(checkpoint: Path | None) -> str:
    """The `?key=value` part of the data spec a multi-corpus checkpoint (default: the shipped one) trained on."""
    from edgeser.checkpoint import read_checkpoint_info
    from edgeser.export.exporter import default_checkpoint

    folder = checkpoint or default_checkpoint(MODEL)
    if folder is None:
        return ""
    spec = str(read_checkpoint_info(Path(folder)).get("provenance", {}).get("data_spec", ""))
    return f"?{spec.partition('?')[2]}" if spec.startswith("multi:") and "?" in spec else ""


def run_demo(
    out: Path,
    data: Path | None = None,
    *,
    checkpoint: Path | None = None,
    limit: int = 200,
    threads: int | None = 2,
    predict_clips: int = 6,
    progress: Progress = STDERR,
) -> DemoResult:
    """Run every step into `out/` (replaced whole each run), reporting to `progress`; return the closing figures."""
    from edgeser.calibrate import calibrate_bundle
    from edgeser.checks.fidelity import check_variants
    from edgeser.data import load_corpus
    from edgeser.export.exporter import export_bundle
    from edgeser.quantize import Int8Options, quantize_int8
    from edgeser.quantize.fp16 import convert_int8_fp16
    from edgeser.quantize.variants import quantize_int8_tensorrt
    from edgeser.reports import REPORTS_DIR
    from edgeser.runtime import Pipeline, Prediction

    started = time.perf_counter()
    spec = data_spec(data, checkpoint)
    result = DemoResult(str(out), spec, 0.0)

    def step(name: str, what: str) -> Any:
        progress(f"[{len(result.steps) + 1}/6] {what}")
        return time.perf_counter(), name

    mark = step("export", f"export the {MODEL} default to {out}")
    export_bundle(MODEL, out, checkpoint=checkpoint, force=True, progress=progress)
    result.steps[mark[1]] = time.perf_counter() - mark[0]
    mark = step("calibrate", f"calibrate on training-side clips of {spec}")
    calibrate_bundle(out, spec, samples=64, threads=threads, progress=progress)
    result.steps[mark[1]] = time.perf_counter() - mark[0]
    mark = step(
        "quantize",
        "write the INT8 variants: int8 for this CPU, int8-trt and int8-trt-fp16 (FP16 remainder) "
        "for TensorRT",
    )
    quantize_int8(out, Int8Options(), progress=progress)
    quantize_int8_tensorrt(out, Int8Options.tensorrt(), progress=progress)
    convert_int8_fp16(out, progress=progress)
    result.steps[mark[1]] = time.perf_counter() - mark[0]
    mark = step("doctor", "check TensorRT readiness offline (doctor)")
    result.doctor = doctor(out)
    result.steps[mark[1]] = time.perf_counter() - mark[0]
    mark = step("check", f"check every variant against PyTorch float on {limit} held-out clips")
    report = check_variants(
        out,
        spec,
        limit=limit,
        threads=threads,
        precisions=["fp32", "int8", "int8-trt", "int8-trt-fp16"],
        progress=progress,
    )
    result.steps[mark[1]] = time.perf_counter() - mark[0]
    for v in report.variants:
        if v.status != "ok":
            continue
        e2e = v.latency_ms.get("end_to_end", {})
        result.rows.append(
            {
                "variant": v.name,
                "size_mb": (v.size_bytes or 0) / 1e6,
                "p50_ms": e2e.get("p50"),
                "rtf": v.rtf.get("p50"),
                "agreement": v.agreement,
                "ua": v.metrics.get("ua"),
                "cer": v.metrics.get("cer"),
            }
        )
    mark = step("predict", f"predict {predict_clips} held-out clips with the torch-free runtime (int8)")
    corpus = load_corpus(spec)
    from edgeser.calibrate.cache import bundle_split

    split = bundle_split(out, Pipeline.load(out, "fp32").manifest, corpus, None)
    held_out = corpus.subset(split.eval_ids)
    picks = [held_out[i * len(held_out) // predict_clips] for i in range(min(predict_clips, len(held_out)))]
    pipe = Pipeline.load(out, "int8", threads=threads)
    for utt, prediction in zip(picks, pipe.batch([u.path for u in picks])):
        if isinstance(prediction, Prediction):  # a Failure (an unreadable clip) is left out
            result.predictions.append(
                {
                    "clip": utt.path.name,
                    "true": utt.label,
                    "predicted": prediction.label,
                    "confidence": prediction.confidence,
                    "transcript": prediction.transcript,
                    "reference": utt.transcript,
                }
            )
    result.steps[mark[1]] = time.perf_counter() - mark[0]
    reports = out / REPORTS_DIR
    result.reports = [
        str(reports / "variants.md"),
        *[str(p) for p in report.plots],
        str(reports / f"doctor-{result.doctor.get('target', '')}.md"),
    ]
    result.seconds = time.perf_counter() - started
    return result


def doctor(bundle: Path) -> dict[str, Any]:
    """TensorRT 10 readiness of the graphs meant for it (fp32, int8-trt, int8-trt-fp16): errors and warnings, and the report."""
    from edgeser.reports import REPORTS_DIR, write_report
    from edgeser.trt.doctor import run_doctor
    from edgeser.trt.operators import parse_target

    target = parse_target("tensorrt:10")
    report = run_doctor(bundle, target)
    write_report(bundle / REPORTS_DIR, f"doctor-{target.label}", report)
    return {
        "target": target.label,
        "passed": report.passed,
        "errors": len(report.errors),
        "warnings": len(report.findings) - len(report.errors),
        "first_error": report.errors[0].message if report.errors else "",
    }


def render(result: DemoResult) -> str:
    """The closing table, predictions, TensorRT readiness and where everything is."""

    def fmt(value: Any, spec: str, scale: float = 1.0) -> str:
        return "-" if value is None else format(scale * value, spec)

    lines = [
        f"edgeser demo: {MODEL} default, data {result.data}, {result.seconds:.0f} s",
        "",
        f"{'variant':<13} {'size MB':>8} {'p50 ms':>8} {'RTF':>7} {'agree float':>12} {'UA %':>6} {'CER %':>6}",
    ]
    for row in result.rows:
        lines.append(
            f"{row['variant']:<13} {fmt(row['size_mb'], '.1f'):>8} {fmt(row['p50_ms'], '.1f'):>8} "
            f"{fmt(row['rtf'], '.3f'):>7} {fmt(row['agreement'], '.1f', 100):>11}% "
            f"{fmt(row['ua'], '.1f', 100):>6} {fmt(row['cer'], '.1f', 100):>6}"
        )
    lines += ["", "held-out clips (int8, torch-free runtime):"]
    for p in result.predictions:
        verdict = "right" if p["predicted"] == p["true"] else "WRONG"
        lines.append(
            f"  {p['clip']:<28} true {p['true']:<8} predicted {p['predicted']:<8} {p['confidence']:.2f} "
            f"{verdict:<5}  heard: {p['transcript']!r} (said: {p['reference']!r})"
        )
    d = result.doctor
    lines += [
        "",
        (
            f"TensorRT 10 readiness ({d.get('target')}): "
            + (
                "ready"
                if d.get("passed")
                else f"NOT ready, {d.get('errors')} error(s), e.g. {d.get('first_error')}"
            )
            + f"; {d.get('warnings')} warning(s)"
        ),
        "",
        "reports and plots:",
        *[f"  {p}" for p in result.reports],
        "",
        "next: edgeser predict BUNDLE your.wav --precision int8 | edgeser bench BUNDLE | "
        "edgeser build-trt BUNDLE --int8 (on a GPU)",
    ]
    return "\n".join(lines)
