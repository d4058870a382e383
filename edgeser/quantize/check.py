"""`edgeser check BUNDLE --data SPEC`: every variant against the float model on the evaluation split.

Variants: PyTorch float (the source checkpoint, or the same seeded random weights), then each ONNX variant in
the bundle (fp32, int8, int8-dynamic, fp16) through the lean runtime (`Pipeline.run_stages`, batch 1).

Reported per variant: size on disk; latency p50/p95/p99 per stage and end to end (after warm-up runs);
real-time factor (latency / clip duration); UA/WA/macro-F1 and their change against float (points); label
agreement with float (and with onnxruntime fp32); CTC CER/WER and their change; per-stage cosine with fp32,
each stage fed the fp32 upstream outputs, so damage is attributed to the stage that causes it.

Gates (`max_ua_drop` points, `min_agreement` fraction) apply to every ONNX variant run; a miss fails the check.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.bundle import BundleManifest, read_manifest, validate_bundle
from edgeser.checkpoint import write_json_atomic
from edgeser.errors import BundleError, DataError, SplitError
from edgeser.metrics import cer, classification_report, wer

ONNX_ORDER = ("fp32", "int8", "int8-dynamic", "fp16")
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
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # stage/end_to_end -> p50/p95/p99/mean
    latency_clips: int = 0
    rtf: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # ua, wa, macro_f1, [cer, wer]
    delta: dict[str, float] = field(default_factory=dict)  # against float: ua/wa/macro_f1 in points, cer/wer too
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

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def to_markdown(self) -> str:
        return render_markdown(self)


# ------------------------------------------------------------------------------------------------ helpers


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    if denominator == 0.0:
        return 1.0 if np.allclose(x, y) else 0.0
    return float(x @ y / denominator)


class CosineStats:
    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.values.append(cosine(a, b))

    def summary(self) -> dict[str, float]:
        return {"mean": float(np.mean(self.values)), "min": float(np.min(self.values))} if self.values else {}


def machine_info(threads: int | None) -> dict[str, Any]:
    """CPU model, cores and library versions, for reports and benchmarks."""
    from importlib import metadata

    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                wanted = ("avx512_vnni", "avx512f", "avx2", "amx", "avx_vnni")
                flags = {f for f in value.split() if f.startswith(wanted)}
    except OSError:
        pass
    versions = {}
    for package in ("edgeser", "onnxruntime", "onnx", "torch", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        load = []
    return {"cpu": cpu, "cpu_flags": sorted(flags), "logical_cores": os.cpu_count(), "load_average": load,
            "threads": threads, "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions}


def _feeds(session: Any, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in values.items() if k in wanted}


@dataclass
class ClipRef:
    """onnxruntime fp32 outputs of one clip, kept to compare the other variants with."""

    features: np.ndarray  # [1, F, D] as run
    frames: int
    log_probs: np.ndarray | None
    input_ids: np.ndarray | None
    attention_mask: np.ndarray | None
    token_features: np.ndarray | None
    logits: np.ndarray
    transcript: str | None


# ------------------------------------------------------------------------------------------------ runs


def run_onnx_variant(
    bundle: Path, precision: str, waves: list[np.ndarray], threads: int | None, warmup: int,
    references: list[ClipRef] | None, label: str,
) -> tuple[VariantResult, list[int], list[str | None], list[ClipRef]]:
    """Run one bundle variant over every clip (batch 1); predictions, transcripts and per-clip outputs."""
    from edgeser.runtime.pipeline import Pipeline

    result = VariantResult(precision)
    pipe = Pipeline.load(bundle, precision, threads=threads)
    entries = pipe.manifest.precisions[precision]
    result.stage_bytes = {s: e.bytes for s, e in entries.items()}
    result.size_bytes = sum(result.stage_bytes.values())
    for _ in range(warmup):
        pipe.run_stages([waves[0]])
    stage_times: dict[str, list[float]] = {}
    totals, rtfs, predictions, transcripts, outputs = [], [], [], [], []
    stage_cos = {s: CosineStats() for s in pipe.sessions}
    logit_cos = CosineStats()
    agree = transcripts_same = 0
    with click.progressbar(list(enumerate(waves)), label=label, file=sys.stderr) as bar:
        for index, wave in bar:
            started = time.perf_counter()
            run = pipe.run_stages([wave])
            elapsed = (time.perf_counter() - started) * 1e3
            totals.append(elapsed)
            rtfs.append(elapsed / 1e3 / (wave.size / SAMPLE_RATE))
            for stage, ms in run.timings_ms.items():
                stage_times.setdefault(stage, []).append(ms)
            frames = int(run.frame_lengths[0])
            predictions.append(int(np.argmax(run.logits[0])))
            transcript = run.transcripts[0] if run.transcripts else None
            transcripts.append(transcript)
            current = ClipRef(run.features, frames, run.log_probs, run.input_ids, run.attention_mask,
                              run.token_features, run.logits, transcript)
            if references is None:
                outputs.append(current)
                continue
            ref = references[index]
            agree += int(predictions[-1] == int(np.argmax(ref.logits[0])))
            transcripts_same += int(transcript == ref.transcript)
            logit_cos.add(ref.logits, run.logits)
            isolated_stage_cosines(pipe, ref, run.features, stage_cos)
    result.latency_ms = {stage: percentiles(values) for stage, values in stage_times.items()}
    result.latency_ms["end_to_end"] = percentiles(totals)
    result.latency_clips = len(totals)
    result.rtf = {k: v for k, v in percentiles(rtfs).items() if k in ("p50", "p95", "mean")}
    if references is not None:
        result.agreement_fp32 = agree / len(waves)
        if references[0].transcript is not None:
            result.transcript_agreement = transcripts_same / len(waves)
        result.logit_cosine = logit_cos.summary()
        result.stage_cosine = {s: c.summary() for s, c in stage_cos.items() if c.values}
    else:
        result.agreement_fp32 = 1.0
        result.transcript_agreement = 1.0 if outputs and outputs[0].transcript is not None else None
        result.logit_cosine = {"mean": 1.0, "min": 1.0}
        result.stage_cosine = {s: {"mean": 1.0, "min": 1.0} for s in pipe.sessions}
    return result, predictions, transcripts, outputs


def isolated_stage_cosines(pipe: Any, ref: ClipRef, features: np.ndarray, stats: dict[str, CosineStats]) -> None:
    """Each stage of `pipe` fed the fp32 upstream outputs, compared with the fp32 stage outputs."""
    valid = ref.frames
    stats["audio_encoder"].add(ref.features[0, :valid], features[0, :valid])
    sessions = pipe.sessions
    if "ctc_head" in sessions and ref.log_probs is not None:
        out = sessions["ctc_head"].run(None, _feeds(sessions["ctc_head"], {"features": ref.features}))[0]
        stats["ctc_head"].add(ref.log_probs[0, :valid], out[0, :valid])
    feeds: dict[str, np.ndarray] = {"features": ref.features, "frame_lengths": np.array([valid], dtype=np.int64)}
    if "text_encoder" in sessions and ref.input_ids is not None and ref.attention_mask is not None:
        tokens = sessions["text_encoder"].run(None, _feeds(sessions["text_encoder"], {
            "input_ids": ref.input_ids, "attention_mask": ref.attention_mask}))[0]
        used = int(ref.attention_mask[0].sum())
        stats["text_encoder"].add(ref.token_features[0, :used], tokens[0, :used])  # type: ignore[index]
        feeds |= {"token_features": ref.token_features, "attention_mask": ref.attention_mask}  # type: ignore[dict-item]
    logits = sessions["fusion_head"].run(None, _feeds(sessions["fusion_head"], feeds))[0]
    stats["fusion_head"].add(ref.logits, logits)


def run_float(bundle: Path, clips: list[Any], threads: int | None, warmup: int, latency_clips: int
              ) -> tuple[VariantResult, list[int], list[str]]:
    """PyTorch float through `edgeser.training.evaluate` (as deployed: its own CTC transcripts), plus a timed
    batch-1 pass over up to `latency_clips` clips."""
    import torch

    from edgeser.export.parity import reference_model
    from edgeser.training import evaluate

    manifest = read_manifest(bundle)
    if threads:
        torch.set_num_threads(int(threads))
    model = reference_model(bundle, None)
    model.eval()
    prepare = getattr(model, "prepare_for_export", None)
    if prepare is not None:
        prepare()
    result = VariantResult(FLOAT)
    source = manifest.source_checkpoint
    weights = Path(str(source.get("path", ""))) / "model.safetensors" if source.get("kind") == "checkpoint" else None
    if weights is not None and weights.is_file():
        result.size_bytes = weights.stat().st_size
        result.note = "size: the checkpoint's safetensors file"
    else:
        result.size_bytes = int(sum(p.numel() * p.element_size() for p in model.parameters()))
        result.note = "size: parameter bytes (random weights, no file)"
    evaluation = evaluate(model, clips, batch_size=1)
    order = {clip_id: i for i, clip_id in enumerate(evaluation.ids)}
    predictions = [evaluation.predictions[order[c.id]] for c in clips]
    transcripts = [evaluation.transcripts[order[c.id]] for c in clips]
    result.latency_ms, result.rtf, result.latency_clips = torch_latency(model, clips[:latency_clips], warmup)
    return result, predictions, transcripts


def torch_stage_times(model: Any, audio: np.ndarray) -> tuple[dict[str, float], float]:
    """One batch-1 pass of the PyTorch model as the runtime chains it: seconds per stage, and in total.

    Call it under `torch.inference_mode()`.
    """
    import torch

    marks: dict[str, float] = {}
    start = time.perf_counter()
    wave = torch.from_numpy(audio)[None]
    lengths = torch.tensor([audio.size])
    t = time.perf_counter()
    features, frame_lengths = model.audio_encoder(wave, lengths)
    marks["audio_encoder"] = time.perf_counter() - t
    transcript = ""
    if model.ctc_head is not None and model.vocab is not None:
        t = time.perf_counter()
        log_probs = model.ctc_head(features)
        marks["ctc_head"] = time.perf_counter() - t
        t = time.perf_counter()
        transcript = model.vocab.decode_log_probs(log_probs[0].numpy(), int(frame_lengths[0]))
        marks["ctc_decode"] = time.perf_counter() - t
    if model.uses_text:
        t = time.perf_counter()
        ids, mask = model.tokenize([transcript])
        marks["tokenize"] = time.perf_counter() - t
        t = time.perf_counter()
        tokens = model.text_encoder(ids, mask)
        marks["text_encoder"] = time.perf_counter() - t
        t = time.perf_counter()
        model.fusion_head(features, frame_lengths, tokens, mask)
    else:
        t = time.perf_counter()
        model.fusion_head(features, frame_lengths)
    marks["fusion_head"] = time.perf_counter() - t
    return marks, time.perf_counter() - start


def torch_latency(model: Any, clips: list[Any], warmup: int
                  ) -> tuple[dict[str, dict[str, float]], dict[str, float], int]:
    """Per-stage and end-to-end batch-1 latency of the PyTorch model, as `evaluate` runs it."""
    import torch

    def once(audio: np.ndarray, times: dict[str, list[float]] | None) -> float:
        marks, total = torch_stage_times(model, audio)
        if times is not None:
            for stage, seconds in marks.items():
                times.setdefault(stage, []).append(seconds * 1e3)
        return total

    times: dict[str, list[float]] = {}
    totals, rtfs = [], []
    with torch.inference_mode():
        for _ in range(warmup if clips else 0):
            once(clips[0].audio, None)
        for clip in clips:
            seconds = once(clip.audio, times)
            totals.append(seconds * 1e3)
            rtfs.append(seconds / (clip.audio.size / SAMPLE_RATE))
    latency = {stage: percentiles(values) for stage, values in times.items()}
    latency["end_to_end"] = percentiles(totals)
    return latency, {k: v for k, v in percentiles(rtfs).items() if k in ("p50", "p95", "mean")}, len(totals)


def fill_metrics(result: VariantResult, labels: list[int], predictions: list[int], num_classes: int,
                 references: list[str] | None, transcripts: list[str | None] | list[str]) -> None:
    report = classification_report(labels, predictions, num_classes)
    result.metrics = {"ua": report.ua, "wa": report.wa, "macro_f1": report.macro_f1}
    if references is not None and transcripts and transcripts[0] is not None:
        hypotheses = [t or "" for t in transcripts]
        result.metrics["cer"] = cer(references, hypotheses)
        result.metrics["wer"] = wer(references, hypotheses)


def fp16_note(error: Exception | None) -> str:
    return "fp16: not run on CPU (GPU format)" + (f": {' '.join(str(error).split())[:160]}" if error else "")


# ------------------------------------------------------------------------------------------------ main


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
    latency_clips: int = 100,
    max_ua_drop: float | None = None,
    min_agreement: float | None = None,
    plots: bool = True,
) -> VariantsReport:
    """Run every variant on the evaluation split, write `reports/variants.{json,md,png}`, apply the gates."""
    from edgeser.calibrate.cache import default_fold
    from edgeser.data import load_corpus
    from edgeser.data.splits import get_fold
    from edgeser.export.parity import spread
    from edgeser.training import Clip

    manifest = validate_bundle(bundle, "fp32")
    available = [p for p in ONNX_ORDER if p in manifest.precisions]
    wanted = available if precisions is None else [p for p in ONNX_ORDER if p in precisions]
    missing = [p for p in (precisions or []) if p not in manifest.precisions and p != FLOAT]
    if missing:
        raise BundleError(f"{bundle}: no {', '.join(missing)} variant (available: {', '.join(available)})")
    if "fp32" not in wanted:
        wanted = ["fp32", *wanted]  # the reference every other variant is compared with
    corpus = load_corpus(data_spec)
    fold_index = default_fold(manifest.source_checkpoint, corpus.name) if fold_index is None else fold_index
    fold = get_fold(corpus, fold_index)
    calibration = check_calibration_leak(bundle, corpus.name, fold)
    utterances = corpus.subset(fold.eval_ids)
    known = {label: i for i, label in enumerate(manifest.labels)}
    skipped: dict[str, int] = {}
    for utt in utterances:
        if utt.label not in known:
            skipped[utt.label] = skipped.get(utt.label, 0) + 1
    utterances = spread([u for u in utterances if u.label in known], limit)
    if not utterances:
        raise DataError(f"{data_spec}: no evaluation clips of fold {fold.index} carry the bundle's labels "
                        f"({', '.join(manifest.labels)})")
    clips = []
    with click.progressbar(utterances, label=f"loading {len(utterances)} evaluation clips", file=sys.stderr) as bar:
        for utt in bar:
            clips.append(Clip(utt.id, load_audio(utt.path), known[utt.label], utt.transcript or ""))
    labels = [c.label for c in clips]
    waves = [c.audio for c in clips]
    has_ctc = manifest.ctc is not None and "ctc_head" in manifest.stages
    references = [c.transcript for c in clips] if has_ctc and all(c.transcript for c in clips) else None

    results: list[VariantResult] = []
    float_predictions: list[int] | None = None
    float_transcripts: list[str] | None = None
    if include_float:
        click.echo("running PyTorch float", err=True)
        float_result, float_predictions, float_transcripts = run_float(bundle, clips, threads, warmup, latency_clips)
        fill_metrics(float_result, labels, float_predictions, len(manifest.labels), references, float_transcripts)
        float_result.agreement = 1.0
        results.append(float_result)

    fp32_refs: list[ClipRef] | None = None
    fp32_predictions: list[int] = []
    for precision in wanted:
        try:
            result, predictions, transcripts, outputs = run_onnx_variant(
                bundle, precision, waves, threads, warmup, fp32_refs, f"running {precision}")
        except Exception as err:  # fp16 may lack kernels on this provider: say so; anything else is an error
            if precision != "fp16":
                raise
            results.append(VariantResult("fp16", status="not run", note=fp16_note(err)))
            continue
        if precision == "fp32":
            fp32_refs, fp32_predictions = outputs, predictions
        if precision == "fp16":
            result.note = "fp16 on CPU: runs, but FP16 is a GPU format (CPU kernels are slow or cast back to FP32)"
        fill_metrics(result, labels, predictions, len(manifest.labels), references, transcripts)
        if float_predictions is not None:
            result.agreement = float(np.mean([a == b for a, b in zip(predictions, float_predictions)]))
        else:
            result.agreement = float(np.mean([a == b for a, b in zip(predictions, fp32_predictions)]))
        results.append(result)

    baseline = results[0] if results else None
    for result in results:
        if result.status != "ok" or baseline is None:
            continue
        result.delta = {k: 100.0 * (result.metrics[k] - baseline.metrics[k]) for k in ("ua", "wa", "macro_f1")}
        for k in ("cer", "wer"):
            if k in result.metrics and k in baseline.metrics:
                result.delta[k] = 100.0 * (result.metrics[k] - baseline.metrics[k])

    failures = []
    for result in results:
        if result.name == FLOAT or result.status != "ok":
            continue
        ua_drop = -result.delta.get("ua", 0.0)
        if max_ua_drop is not None and ua_drop > max_ua_drop:
            failures.append(f"{result.name}: UA drop {ua_drop:.2f} points > {max_ua_drop:g}")
        if min_agreement is not None and result.agreement is not None and result.agreement < min_agreement:
            failures.append(f"{result.name}: label agreement {result.agreement:.2%} < {min_agreement:.2%}")
    report = VariantsReport(
        bundle=str(bundle), data=data_spec, corpus=corpus.name, fold=fold.index, held_out=fold.held_out,
        clips=len(clips), skipped_labels=skipped, threads=threads, warmup=warmup,
        reference=("PyTorch float (" + (manifest.source_checkpoint.get("kind") or "model") + ")") if include_float
        else "onnxruntime fp32",
        variants=results, gates={"max_ua_drop": max_ua_drop, "min_agreement": min_agreement},
        passed=not failures, failures=failures, machine=machine_info(threads), calibration=calibration,
    )
    write_reports(bundle, report, plots)
    return report


def check_calibration_leak(bundle: Path, corpus_name: str, fold: Any) -> dict[str, Any]:
    """Refuse to check on an evaluation split that the bundle's calibration clips come from."""
    import json

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


# ------------------------------------------------------------------------------------------------ reports


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(scale * value, spec)


def _latency_cell(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f} / {d['p95']:.2f} / {d['p99']:.2f}" if d else "-"


def _cosine_cell(d: dict[str, float]) -> str:
    return f"{d['mean']:.5f} / {d['min']:.5f}" if d else "-"


def _summary_row(v: VariantResult) -> str:
    if v.status != "ok":
        return f"| {v.name} | {_fmt(v.size_bytes, '.1f', 1e-6)} | {v.note} |" + " |" * 15
    e2e, m, d = v.latency_ms.get("end_to_end", {}), v.metrics, v.delta
    cells = [
        v.name, _fmt(v.size_bytes, ".1f", 1e-6), _fmt(e2e.get("p50"), ".1f"), _fmt(e2e.get("p95"), ".1f"),
        _fmt(e2e.get("p99"), ".1f"), _fmt(v.rtf.get("p50"), ".3f"),
        _fmt(m["ua"], ".2f", 100), _fmt(d.get("ua"), "+.2f"), _fmt(m["wa"], ".2f", 100), _fmt(d.get("wa"), "+.2f"),
        _fmt(m["macro_f1"], ".2f", 100), _fmt(d.get("macro_f1"), "+.2f"),
        _fmt(v.agreement, ".2f", 100), _fmt(v.agreement_fp32, ".2f", 100),
        _fmt(m.get("cer"), ".2f", 100), _fmt(d.get("cer"), "+.2f"), _fmt(m.get("wer"), ".2f", 100),
        _fmt(d.get("wer"), "+.2f"),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: VariantsReport) -> str:
    m = report.machine
    load = "/".join(f"{x:.1f}" for x in m.get("load_average", [])) or "?"
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    skipped = f"; skipped (labels the model lacks): {report.skipped_labels}" if report.skipped_labels else ""
    lines = [
        f"# Variants: {report.bundle}",
        "",
        (f"{report.clips} evaluation clips of `{report.data}` fold {report.fold} ({report.held_out}){skipped}. "
         f"Float reference: {report.reference}. Batch 1, {report.warmup} warm-up runs, threads "
         f"{report.threads or 'default'}; {m.get('cpu', '?')} ({m.get('logical_cores')} logical cores, load {load}), "
         f"{versions}."),
        "",
        ("| variant | size MB | e2e p50 ms | p95 | p99 | RTF p50 | UA | ΔUA | WA | ΔWA | F1 | ΔF1 | agree float "
         "| agree fp32 | CER | ΔCER | WER | ΔWER |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_summary_row(v) for v in report.variants],
    ]
    stages = [s for s in ("audio_encoder", "ctc_head", "ctc_decode", "tokenize", "text_encoder", "fusion_head")
              if any(s in v.latency_ms for v in report.variants)]
    lines += ["", "Latency per stage (ms, p50 / p95 / p99):", "",
              "| variant | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for v in report.variants:
        if v.status == "ok":
            cells = " | ".join(_latency_cell(v.latency_ms.get(s, {})) for s in stages)
            lines.append(f"| {v.name} ({v.latency_clips} clips) | {cells} |")
    cos_stages = [s for s in ("audio_encoder", "ctc_head", "text_encoder", "fusion_head")
                  if any(s in v.stage_cosine for v in report.variants)]
    lines += ["", ("Cosine with onnxruntime fp32 (mean / min); each stage fed the fp32 upstream outputs; "
                   "end to end on the logits:"), "",
              "| variant | " + " | ".join(cos_stages) + " | logits end to end | transcripts = fp32 |",
              "|---|" + "---|" * (len(cos_stages) + 2)]
    for v in report.variants:
        if v.status == "ok" and v.name != FLOAT:
            cells = " | ".join(_cosine_cell(v.stage_cosine.get(s, {})) for s in cos_stages)
            same = f"{100 * v.transcript_agreement:.1f} %" if v.transcript_agreement is not None else "-"
            lines.append(f"| {v.name} | {cells} | {_cosine_cell(v.logit_cosine)} | {same} |")
    notes = [f"- {v.name}: {v.note}" for v in report.variants if v.note]
    if notes:
        lines += ["", *notes]
    gates = ", ".join(f"{k} {v}" for k, v in report.gates.items() if v is not None) or "none"
    verdict = "**passed**" if report.passed else "**FAILED** — " + "; ".join(report.failures)
    lines += ["", f"Gates ({gates}): {verdict}"]
    if report.plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in report.plots]]
    return "\n".join(lines) + "\n"


def write_plots(report: VariantsReport, reports: Path) -> list[Path]:
    """Latency bars per variant (stacked stages, p95 whisker) and UA / agreement per variant, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [v for v in report.variants if v.status == "ok"]
    names = [v.name for v in ran]
    paths = []
    stages = ["audio_encoder", "ctc_head", "ctc_decode", "tokenize", "text_encoder", "fusion_head"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(ran))
    for stage in stages:
        values = np.array([v.latency_ms.get(stage, {}).get("p50", 0.0) for v in ran])
        if values.any():
            ax.bar(names, values, bottom=bottom, label=stage)
            bottom += values
    e2e = np.array([v.latency_ms["end_to_end"]["p50"] for v in ran])
    p95 = np.array([v.latency_ms["end_to_end"]["p95"] for v in ran])
    ax.errorbar(names, e2e, yerr=[np.zeros_like(e2e), p95 - e2e], fmt="k.", capsize=4, label="end to end p50 (p95)")
    ax.set_ylabel("latency per clip, ms (batch 1)")
    ax.set_title(f"Latency per variant ({report.clips} clips, threads {report.threads or 'default'})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, reports / f"{REPORT_NAME}-latency.png"))
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.bar(names, [100 * v.metrics["ua"] for v in ran], color="tab:blue")
    left.set_ylabel("UA %")
    left.set_title("Unweighted accuracy")
    right.bar(names, [100 * (v.agreement if v.agreement is not None else 0.0) for v in ran], color="tab:green")
    right.set_ylim(min([90.0] + [100 * (v.agreement or 0) - 2 for v in ran]), 100.5)
    right.set_ylabel("% of clips")
    right.set_title("Label agreement with float")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    paths.append(_save(fig, reports / f"{REPORT_NAME}-accuracy.png"))
    plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def write_reports(bundle: Path, report: VariantsReport, plots: bool = True) -> None:
    """`reports/variants.json`, `.md` and the PNG plots, each written to a temp file and renamed."""
    reports = bundle / "reports"
    reports.mkdir(exist_ok=True)
    if plots:
        report.plots = [str(p) for p in write_plots(report, reports)]
    write_json_atomic(reports / f"{REPORT_NAME}.json", asdict(report))
    tmp = reports / f".{REPORT_NAME}.md.tmp"
    tmp.write_text(report.to_markdown(), encoding="utf-8")
    os.replace(tmp, reports / f"{REPORT_NAME}.md")


def manifest_precisions(manifest: BundleManifest) -> list[str]:
    return [p for p in ONNX_ORDER if p in manifest.precisions]
