"""`edgeser check BUNDLE --data SPEC`: every variant against the float model on the evaluation split.

Variants: PyTorch float (the source checkpoint, or the same seeded random weights) and each ONNX variant in the
bundle (fp32, int8, int8-dynamic, fp16), all through the same `StageGraph` chain, batch 1; only their runners
differ. The evaluation split is the one the model was trained with (rebuilt from its checkpoint's provenance
and verified), never one its calibration clips come from.

Reported per variant: size on disk; latency p50/p95/p99 per stage and end to end (after warm-up runs);
real-time factor (latency / clip duration); UA/WA/macro-F1 and their change against float (points); label
agreement with float (and with onnxruntime fp32); CTC CER/WER and their change; per-stage cosine with fp32,
each stage fed the fp32 upstream outputs, so damage is attributed to the stage that causes it.

Gates (`max_ua_drop` points, `min_agreement` fraction) apply to every ONNX variant run; a miss fails the check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.bundle import Precision, validate_bundle
from edgeser.checks.compare import compare_stages
from edgeser.errors import BundleError, DataError, SplitError
from edgeser.machine import machine_info
from edgeser.measures import CosineStats, agreement, cosine, percentiles
from edgeser.metrics import cer, classification_report, wer
from edgeser.progress import STDERR, Progress
from edgeser.reports import REPORTS_DIR, write_report
from edgeser.stages import StageRun

ONNX_ORDER: tuple[Precision, ...] = ("fp32", "int8", "int8-trt", "int8-trt-fp16", "int8-dynamic", "fp16")
FLOAT = "pytorch"
REPORT_NAME = "variants"
WARMUP_RUNS = 3


@dataclass
class VariantResult:
    """One variant's figures (fractions for UA/WA/F1/agreement, points for their deltas, ms for latency)."""

    name: str
    status: str = "ok"  # ok | not run
    note: str = ""
    size_bytes: int | None = None
    stage_bytes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # stage/end_to_end -> p50/p95/p99/mean
    latency_clips: int = 0
    rtf: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # ua, wa, macro_f1, [cer, wer]
    delta: dict[str, float] = field(
        default_factory=dict
    )  # against float: ua/wa/macro_f1 in points, cer/wer too
    agreement: float | None = None  # label agreement with PyTorch float
    agreement_fp32: float | None = None  # label agreement with onnxruntime fp32
    transcript_agreement: float | None = None  # with onnxruntime fp32
    logit_cosine: dict[str, float] = field(default_factory=dict)  # end to end, vs fp32: mean/min
    stage_cosine: dict[str, dict[str, float]] = field(default_factory=dict)  # isolated, vs fp32: mean/min


@dataclass
class VariantsReport:
    bundle: str
    data: str
    corpus: str
    fold: int
    held_out: str
    clips: int
    skipped_labels: dict[str, int]
    threads: int | None
    warmup: int
    reference: str  # what "float" is
    variants: list[VariantResult]
    gates: dict[str, float | None]
    passed: bool
    failures: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    protocol: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. a bundle quantised on another CPU class

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def to_markdown(self) -> str:
        from edgeser.checks.fidelity_report import render_markdown

        return render_markdown(self)


@dataclass
class VariantRun:
    """What one variant produced on every clip: predictions, transcripts and (for fp32) the reference runs."""

    result: VariantResult
    predictions: list[int]
    transcripts: list[str | None]
    runs: list[StageRun]


def run_variant(
    pipe: Any,
    name: str,
    waves: list[np.ndarray],
    warmup: int,
    references: list[StageRun] | None,
    keep_runs: bool,
    progress: Progress = STDERR,
) -> VariantRun:
    """Run one variant over every clip (batch 1), timing each run; compare with fp32 `references` if given."""
    result = VariantResult(name)
    for _ in range(warmup if waves else 0):
        pipe.run_stages([waves[0]])
    stage_times: dict[str, list[float]] = {}
    totals, rtfs, predictions, transcripts, runs = [], [], [], [], []
    stage_stats = {s: CosineStats() for s in pipe.graph.stages}
    logit_cosines: list[float] = []
    with progress.bar(list(enumerate(waves)), f"running {name}") as bar:
        for index, wave in bar:
            started = time.perf_counter()
            run = pipe.run_stages([wave])
            elapsed = (time.perf_counter() - started) * 1e3
            totals.append(elapsed)
            rtfs.append(elapsed / 1e3 / (wave.size / SAMPLE_RATE))
            for stage, ms in run.timings_ms.items():
                stage_times.setdefault(stage, []).append(ms)
            predictions.append(int(np.argmax(run.logits[0])))
            transcripts.append(run.transcripts[0] if run.transcripts else None)
            if keep_runs:
                runs.append(run)
            if references is None:
                continue
            reference = references[index]
            logit_cosines.append(cosine(reference.logits, run.logits))
            compare_stages(pipe.graph, pipe.runners, reference, stage_stats, candidate_run=run)
    result.latency_ms = {stage: percentiles(values) for stage, values in stage_times.items()}
    result.latency_ms["end_to_end"] = percentiles(totals)
    result.latency_clips = len(totals)
    result.rtf = {k: v for k, v in percentiles(rtfs).items() if k in ("p50", "p95", "mean")}
    if references is not None:
        result.agreement_fp32 = agreement(predictions, [int(np.argmax(r.logits[0])) for r in references])
        if references[0].transcripts is not None:
            result.transcript_agreement = agreement(
                transcripts, [r.transcripts[0] if r.transcripts else None for r in references]
            )
        result.logit_cosine = {"mean": float(np.mean(logit_cosines)), "min": float(np.min(logit_cosines))}
        result.stage_cosine = {
            s: {k: a.summary()[k] for k in ("mean", "min")} for s, a in stage_stats.items() if a.count
        }
    return VariantRun(result, predictions, transcripts, runs)


def fill_metrics(
    result: VariantResult,
    labels: list[int],
    predictions: list[int],
    num_classes: int,
    references: list[str] | None,
    transcripts: list[str | None],
) -> None:
    report = classification_report(labels, predictions, num_classes)
    result.metrics = {"ua": report.ua, "wa": report.wa, "macro_f1": report.macro_f1}
    if references is not None and transcripts and transcripts[0] is not None:
        hypotheses = [t or "" for t in transcripts]
        result.metrics["cer"] = cer(references, hypotheses)
        result.metrics["wer"] = wer(references, hypotheses)


def check_variants(
    bundle: Path,
    data_spec: str,
    *,
    fold_index: int | None = None,
    limit: int | None = None,
    precisions: list[str] | None = None,
    include_float: bool = True,
    threads: int | None = None,
    warmup: int = WARMUP_RUNS,
    max_ua_drop: float | None = None,
    min_agreement: float | None = None,
    plots: bool = True,
    progress: Progress = STDERR,
) -> VariantsReport:
    """Run every variant on the evaluation split, write `reports/variants.{json,md,png}`, apply the gates."""
    from edgeser.calibrate.cache import bundle_split
    from edgeser.checks.parity import spread
    from edgeser.checks.reference import float_pipeline, float_size
    from edgeser.data import load_corpus
    from edgeser.runtime.options import bounded_int, check_threads
    from edgeser.runtime.pipeline import Pipeline

    warmup = bounded_int("warmup", warmup)
    if threads is not None:
        threads = check_threads("threads", threads)
    manifest = validate_bundle(bundle, "fp32")
    available = [p for p in ONNX_ORDER if p in manifest.precisions]
    missing = [p for p in (precisions or []) if p not in manifest.precisions and p != FLOAT]
    if missing:
        raise BundleError(f"{bundle}: no {', '.join(missing)} variant (available: {', '.join(available)})")
    wanted = available if precisions is None else [p for p in ONNX_ORDER if p in precisions]
    if "fp32" not in wanted:
        wanted = ["fp32", *wanted]  # the reference every other variant is compared with
    corpus = load_corpus(data_spec)
    split = bundle_split(bundle, manifest, corpus, fold_index)
    calibration = check_calibration_leak(bundle, corpus.name, split.fold)
    known = {label: i for i, label in enumerate(manifest.labels)}
    utterances = corpus.subset(split.eval_ids)
    skipped: dict[str, int] = {}
    for utt in utterances:
        if utt.label not in known:
            skipped[utt.label] = skipped.get(utt.label, 0) + 1
    utterances = spread([u for u in utterances if u.label in known], limit)
    if not utterances:
        raise DataError(
            f"{data_spec}: no evaluation clips of fold {split.index} carry the bundle's labels "
            f"({', '.join(manifest.labels)})"
        )
    waves = []
    with progress.bar(utterances, f"loading {len(utterances)} evaluation clips") as bar:
        for utt in bar:
            waves.append(load_audio(utt.path))
    labels = [known[u.label] for u in utterances]
    has_ctc = manifest.ctc is not None and "ctc_head" in manifest.stages
    references = (
        [u.transcript or "" for u in utterances]
        if has_ctc and all(u.transcript for u in utterances)
        else None
    )

    runs: dict[str, VariantRun] = {}
    fp32 = Pipeline.load(bundle, "fp32", threads=threads)
    runs["fp32"] = run_variant(fp32, "fp32", waves, warmup, None, keep_runs=True, progress=progress)
    reference_runs = runs["fp32"].runs
    runs["fp32"].result.agreement_fp32 = 1.0
    runs["fp32"].result.transcript_agreement = 1.0 if reference_runs[0].transcripts is not None else None
    runs["fp32"].result.logit_cosine = {"mean": 1.0, "min": 1.0}
    runs["fp32"].result.stage_cosine = {s: {"mean": 1.0, "min": 1.0} for s in fp32.graph.stages}
    if include_float:
        progress("running PyTorch float")
        torch_pipe = float_pipeline(bundle, threads=threads)
        runs[FLOAT] = run_variant(torch_pipe, FLOAT, waves, warmup, None, keep_runs=False, progress=progress)
        size, note = float_size(
            bundle, [p for r in torch_pipe.runners.values() for p in r.module.parameters()]
        )
        runs[FLOAT].result.size_bytes, runs[FLOAT].result.note = size, note
    for precision in wanted:
        if precision == "fp32":
            continue
        try:
            pipe = Pipeline.load(bundle, precision, threads=threads)
            runs[precision] = run_variant(
                pipe, precision, waves, warmup, reference_runs, keep_runs=False, progress=progress
            )
        except Exception as err:  # fp16 may lack kernels on this provider: say so; anything else is an error
            if precision != "fp16":
                raise
            runs[precision] = VariantRun(
                VariantResult("fp16", status="not run", note=fp16_note(err)), [], [], []
            )
            continue
        if precision == "fp16":
            note = "fp16 on CPU: runs, but FP16 is a GPU format (CPU kernels are slow or cast back to FP32)"
            runs[precision].result.note = note
    for precision in wanted:
        entries = manifest.precisions[precision]
        runs[precision].result.stage_bytes = {s: e.bytes for s, e in entries.items()}
        runs[precision].result.size_bytes = sum(e.bytes for e in entries.values())
    engines = tensorrt_variants(bundle, wanted, waves, warmup, reference_runs, threads, progress)
    runs.update(engines)

    order = ([FLOAT] if include_float else []) + wanted + list(engines)
    results = [runs[name].result for name in order]
    baseline = runs[order[0]]
    for name in order:
        run = runs[name]
        if run.result.status != "ok":
            continue
        fill_metrics(run.result, labels, run.predictions, len(manifest.labels), references, run.transcripts)
        run.result.agreement = agreement(run.predictions, baseline.predictions)
    for result in results:
        if result.status != "ok":
            continue
        result.delta = {
            k: 100.0 * (result.metrics[k] - baseline.result.metrics[k]) for k in ("ua", "wa", "macro_f1")
        }
        for k in ("cer", "wer"):
            if k in result.metrics and k in baseline.result.metrics:
                result.delta[k] = 100.0 * (result.metrics[k] - baseline.result.metrics[k])

    failures = gate_failures(results, max_ua_drop, min_agreement)
    report = VariantsReport(
        bundle=str(bundle),
        data=data_spec,
        corpus=corpus.name,
        fold=split.index,
        held_out=split.held_out,
        clips=len(waves),
        skipped_labels=skipped,
        threads=threads,
        warmup=warmup,
        reference=("PyTorch float (" + (manifest.source_checkpoint.get("kind") or "model") + ")")
        if include_float
        else "onnxruntime fp32",
        variants=results,
        gates={"max_ua_drop": max_ua_drop, "min_agreement": min_agreement},
        passed=not failures,
        failures=failures,
        machine=machine_info(threads),
        calibration=calibration,
        protocol=split.protocol,
    )
    from edgeser.quantize.speed import cpu_class_notes

    report.notes = cpu_class_notes(manifest, report.machine)
    from edgeser.checks.fidelity_report import draw_plots

    write_report(bundle / REPORTS_DIR, REPORT_NAME, report, draw_plots if plots else None)
    return report


def tensorrt_variants(
    bundle: Path,
    precisions: list[Precision],
    waves: list[np.ndarray],
    warmup: int,
    references: list[StageRun],
    threads: int | None,
    progress: Progress = STDERR,
) -> dict[str, VariantRun]:
    """TensorRT engines (`edgeser build-trt`) of these precisions, where this machine can run them: a row
    `tensorrt-<precision>` each; engines built elsewhere or a machine without TensorRT give a `not run` row."""
    from edgeser.errors import EdgeserError
    from edgeser.runtime.pipeline import Pipeline

    built = (
        {p.parent.name for p in (bundle / "trt").glob("*/*/manifest.json")}
        if (bundle / "trt").is_dir()
        else set()
    )
    rows: dict[str, VariantRun] = {}
    for precision in [p for p in precisions if p in built]:
        name = f"tensorrt-{precision}"
        try:
            pipe = Pipeline.load(bundle, precision, backend="tensorrt")  # engines take no onnxruntime threads
        except EdgeserError as err:
            rows[name] = VariantRun(VariantResult(name, status="not run", note=f"{name}: {err}"), [], [], [])
            continue
        rows[name] = run_variant(pipe, name, waves, warmup, references, keep_runs=False, progress=progress)
        rows[name].result.note = "TensorRT engines; frame lengths from the bundle layout"
    return rows


def gate_failures(
    results: list[VariantResult], max_ua_drop: float | None, min_agreement: float | None
) -> list[str]:
    """Every gate an ONNX variant misses: UA drop against float (points) and label agreement with float."""
    failures = []
    for result in results:
        if result.name == FLOAT or result.status != "ok":
            continue
        ua_drop = -result.delta.get("ua", 0.0)
        if max_ua_drop is not None and ua_drop > max_ua_drop:
            failures.append(f"{result.name}: UA drop {ua_drop:.2f} points > {max_ua_drop:g}")
        if min_agreement is not None and result.agreement is not None and result.agreement < min_agreement:
            failures.append(f"{result.name}: label agreement {result.agreement:.2%} < {min_agreement:.2%}")
    return failures


def fp16_note(error: Exception | None) -> str:
    return "fp16: not run on CPU (GPU format)" + (f": {' '.join(str(error).split())[:160]}" if error else "")


def check_calibration_leak(bundle: Path, corpus_name: str, fold: Any) -> dict[str, Any]:
    """Refuse to check on an evaluation split that the bundle's calibration clips come from."""
    from edgeser.calibrate.cache import CALIBRATION_DIR, PROVENANCE_FILE

    path = bundle / CALIBRATION_DIR / PROVENANCE_FILE
    if not path.is_file():
        return {}
    provenance = json.loads(path.read_text(encoding="utf-8"))
    if provenance.get("corpus") == corpus_name:
        leaked = sorted(set(provenance.get("ids", [])) & set(fold.eval_ids))
        if leaked:
            raise SplitError(
                f"{bundle}: its calibration set overlaps the evaluation split of fold {fold.index} in {len(leaked)} "
                f"clips (e.g. {leaked[0]}); recalibrate with --fold {fold.index} or check another fold"
            )
    return {k: provenance.get(k) for k in ("data_spec", "corpus", "fold", "pool", "count", "ids_sha")}
