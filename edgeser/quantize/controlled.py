"""Accuracy-controlled INT8 (`edgeser quantize BUNDLE --int8 --max-ua-drop X`).

Measures, on a calibration-side validation slice (never the evaluation split, never the calibration clips):

1. all stages quantised; if within the bound, done;
2. each stage quantised alone (its sensitivity); then the most sensitive stages go back to float, one at a
   time, until the configuration is within the bound;
3. inside each stage kept in float, each node group (a Transformer layer, a conv block, an attention module)
   quantised alone; groups are then added back from the least sensitive while the bound holds.

The bound is on a *worst-case* UA drop in points: the class-balanced rate of label flips against fp32 (per
class, the share of its clips whose label changed, averaged over classes, x 100). Whatever the flipped clips'
true labels, UA cannot drop by more than that, so the figure is label-free and never rewards a flip that happens
to fix a clip (DESIGN: a broken variant can gain UA while disagreeing with fp32 on many clips). It matters on the
calibration side in particular, where a model classifies most clips correctly and a plain UA difference hides
flips. A bound of 0 therefore means no label may change. The measured and the pessimistic (correct -> wrong only)
UA drops are reported beside it; `min_agreement` optionally bounds label agreement too.

The chosen configuration is written as the bundle's `int8` variant; `reports/quantization.{json,md}` say what
was kept in float and why (the measured drops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeser.audio import load_audio
from edgeser.bundle import validate_bundle
from edgeser.errors import DataError
from edgeser.files import staging_dir
from edgeser.measures import agreement, cosine
from edgeser.metrics import classification_report
from edgeser.progress import STDERR, Progress
from edgeser.quantize.graph import quantisable_groups, resolve_exclusions
from edgeser.quantize.variants import (
    Int8Options,
    StageReport,
    prepared_graph,
    quantize_int8,
    quantize_stage_static,
    quiet_ort_logging,
)
from edgeser.reports import REPORTS_DIR, write_report

DEFAULT_VALIDATION_CLIPS = 64
DEFAULT_MAX_EVALUATIONS = 80
# A configuration: per stage, None (float) or the node names kept in float inside the quantised stage.
Config = dict[str, frozenset[str] | None]


@dataclass
class Measurement:
    """One configuration measured on the validation slice."""

    what: str
    ua: float
    ua_drop: float  # measured, points (can be negative)
    pessimistic_drop: float  # points, >= 0: only fp32-correct clips the candidate gets wrong
    drop_bound: float  # points, >= pessimistic: class-balanced flip rate, the worst case whatever the labels
    agreement: float
    logit_cosine: float
    within: bool = False


@dataclass
class ControlledReport:
    bundle: str
    data: str
    fold: int
    held_out: str
    validation: dict[str, Any]
    bound: dict[str, float | None]
    fp32_ua: float
    measurements: list[Measurement] = field(default_factory=list)
    stage_sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    group_sensitivity: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    float_stages: dict[str, str] = field(default_factory=dict)  # stage -> why
    float_groups: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> group -> why
    final: Measurement | None = None
    quantized_stages: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0
    budget_exhausted: bool = False

    def to_markdown(self) -> str:
        return render_markdown(self)


class Evaluator:
    """Measures configurations on the validation clips against fp32: a candidate Pipeline per configuration,
    made with `with_runners` from the fp32 one (which never changes); stage graphs are built once and cached.

    `build_stage` makes the INT8 graph of a stage with given nodes kept float (quantize_stage_static by default).
    """

    def __init__(
        self,
        bundle: Path,
        cache: Any,
        options: Int8Options,
        workdir: Path,
        waves: list[np.ndarray],
        labels: list[int],
        num_classes: int,
        threads: int | None,
        build_stage: Callable[[str, Path, Path, frozenset[str]], StageReport] | None = None,
    ) -> None:
        from edgeser.runtime.pipeline import Pipeline

        self.bundle, self.cache, self.options, self.workdir = bundle, cache, options, workdir
        self.waves, self.labels, self.num_classes, self.threads = waves, labels, num_classes, threads
        self.manifest = validate_bundle(bundle, "fp32")
        self.fp32_paths = {s: bundle / e.path for s, e in self.manifest.precisions["fp32"].items()}
        self.fp32 = Pipeline.load(bundle, "fp32", threads=threads)
        self.reference = [self.fp32.run_stages([w]).logits[0] for w in waves]
        self.ref_predictions = [int(np.argmax(x)) for x in self.reference]
        self.fp32_ua = classification_report(labels, self.ref_predictions, num_classes).ua
        self.graphs: dict[tuple[str, frozenset[str]], tuple[Path, StageReport]] = {}
        self.evaluations = 0
        self.build_stage = build_stage or self._quantize_stage

    def _quantize_stage(self, stage: str, fp32: Path, out: Path, float_nodes: frozenset[str]) -> StageReport:
        with quiet_ort_logging():
            return quantize_stage_static(
                stage, fp32, out, self.cache, self.options, self.workdir, tuple(sorted(float_nodes))
            )

    def stage_graph(self, stage: str, float_nodes: frozenset[str]) -> tuple[Path, StageReport]:
        key = (stage, float_nodes)
        if key not in self.graphs:
            out = self.workdir / f"{stage}.{len(self.graphs)}.int8.onnx"
            self.graphs[key] = (out, self.build_stage(stage, self.fp32_paths[stage], out, float_nodes))
        return self.graphs[key]

    def measure(self, config: Config, what: str) -> Measurement:
        from edgeser.runtime.sessions import OrtRunner

        candidate = self.fp32.with_runners(
            {
                stage: OrtRunner.load(self.stage_graph(stage, float_nodes)[0], None, self.threads)
                for stage, float_nodes in config.items()
                if float_nodes is not None
            }
        )
        logits = [candidate.run_stages([w]).logits[0] for w in self.waves]
        self.evaluations += 1
        predictions = [int(np.argmax(x)) for x in logits]
        ua = classification_report(self.labels, predictions, self.num_classes).ua
        both = [
            p if (p == y and f == y) else (y + 1) % self.num_classes
            for p, f, y in zip(predictions, self.ref_predictions, self.labels)
        ]
        pessimistic = classification_report(self.labels, both, self.num_classes).ua
        flipped = np.array([p != f for p, f in zip(predictions, self.ref_predictions)])
        classes = np.array(self.labels)
        bound = float(np.mean([flipped[classes == c].mean() for c in np.unique(classes)]))
        cosines = [cosine(a, b) for a, b in zip(self.reference, logits)]
        return Measurement(
            what,
            ua,
            100 * (self.fp32_ua - ua),
            max(0.0, 100 * (self.fp32_ua - pessimistic)),
            100 * bound,
            agreement(predictions, self.ref_predictions),
            float(np.mean(cosines)),
        )


def sensitivity_key(m: Measurement) -> tuple[float, float, float]:
    return (m.drop_bound, m.pessimistic_drop, 1.0 - m.logit_cosine)


def quantize_controlled(
    bundle: Path,
    max_ua_drop: float,
    *,
    data_spec: str | None = None,
    fold_index: int | None = None,
    options: Int8Options | None = None,
    validation_clips: int = DEFAULT_VALIDATION_CLIPS,
    min_agreement: float | None = None,
    threads: int | None = None,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    build_stage: Callable[[str, Path, Path, frozenset[str]], StageReport] | None = None,
    progress: Progress = STDERR,
) -> ControlledReport:
    """The most quantised INT8 configuration within `max_ua_drop` (points, pessimistic) on calibration-side clips."""
    from edgeser.calibrate import read_calibration, validation_slice
    from edgeser.calibrate.cache import bundle_split
    from edgeser.data import load_corpus
    from edgeser.runtime.options import bounded_int, check_threads

    validation_clips = bounded_int("validation_clips", validation_clips)
    if threads is not None:
        threads = check_threads("threads", threads)
    options = options or Int8Options()
    cache = read_calibration(bundle)
    manifest = validate_bundle(bundle, "fp32")
    data_spec = data_spec or cache.provenance["data_spec"]
    corpus = load_corpus(data_spec)
    if fold_index is None and cache.provenance.get("corpus") == corpus.name:
        fold_index = int(cache.provenance["fold"])
    fold = bundle_split(bundle, manifest, corpus, fold_index).fold
    exclude = cache.ids if cache.provenance.get("corpus") == corpus.name else []
    known = {label: i for i, label in enumerate(manifest.labels)}
    slice_utts = [
        u for u in validation_slice(corpus, fold, exclude, validation_clips * 4) if u.label in known
    ][:validation_clips]
    if not slice_utts:
        raise DataError(
            f"{data_spec}: no calibration-side clips carry the bundle's labels ({', '.join(known)})"
        )
    waves = [load_audio(u.path) for u in slice_utts]
    labels = [known[u.label] for u in slice_utts]

    def within(m: Measurement) -> bool:
        agreement_ok = min_agreement is None or m.agreement >= min_agreement - 1e-12
        return m.drop_bound <= max_ua_drop + 1e-9 and agreement_ok

    with staging_dir(bundle, "controlled") as tmp:
        progress(f"accuracy-controlled INT8: {len(waves)} calibration-side validation clips")
        ev = Evaluator(bundle, cache, options, tmp, waves, labels, len(manifest.labels), threads, build_stage)
        report = ControlledReport(
            bundle=str(bundle),
            data=data_spec,
            fold=fold.index,
            held_out=fold.held_out,
            validation={
                "clips": len(waves),
                "ids": [u.id for u in slice_utts],
                "pool": "calibration pool minus the calibration clips (never the evaluation split)",
            },
            bound={"max_ua_drop": max_ua_drop, "min_agreement": min_agreement},
            fp32_ua=ev.fp32_ua,
            options=asdict(options),
        )

        def record(config: Config, what: str) -> Measurement:
            m = ev.measure(config, what)
            m.within = within(m)
            report.measurements.append(m)
            progress(
                f"  {what}: worst-case UA drop {m.drop_bound:.2f} pts, agreement {m.agreement:.2%}"
                f"{'  ok' if m.within else ''}"
            )
            return m

        stages = [s for s in manifest.stages if quantisable_count(ev, s) > 0]
        config: Config = {s: frozenset() for s in stages}
        current = record(config, "all stages int8")
        if not current.within:
            single = {s: record({s: frozenset()}, f"only {s} int8") for s in stages}
            report.stage_sensitivity = {s: _figures(m) for s, m in single.items()}
            for stage in sorted(stages, key=lambda s: sensitivity_key(single[s]), reverse=True):
                if current.within:
                    break
                config[stage] = None
                m = single[stage]
                report.float_stages[stage] = (
                    f"most sensitive remaining stage: int8 alone risks {m.drop_bound:.2f} UA points "
                    f"(worst case; pessimistic {m.pessimistic_drop:.2f}), agreement {m.agreement:.2%}"
                )
                if all(v is None for v in config.values()):
                    current = Measurement("all stages float", ev.fp32_ua, 0.0, 0.0, 0.0, 1.0, 1.0, True)
                else:
                    current = record(config, " + ".join(s for s, v in config.items() if v is None) + " float")
            current = refine_groups(ev, report, config, current, record, within, max_evaluations)
        report.final = current
        report.evaluations = ev.evaluations
        quantised = [s for s, v in config.items() if v is not None]
        report.quantized_stages = quantised
        float_nodes = {s: tuple(sorted(v)) for s, v in config.items() if v}
        final_options = Int8Options(
            **{**asdict(options), "stages": tuple(quantised), "float_nodes": float_nodes}
        )
    quantize_int8(bundle, final_options, progress=progress)
    write_reports(bundle, report)
    return report


def quantisable_count(ev: Evaluator, stage: str) -> int:
    with quiet_ort_logging():
        prepared, _ = prepared_graph(ev.fp32_paths[stage], stage, ev.workdir)
    model = onnx.load(str(prepared))
    excluded = resolve_exclusions(model, ev.options.exclude, ev.options.min_width).names
    return sum(len(v) for v in quantisable_groups(model, ev.options.op_types, excluded).values())


def refine_groups(
    ev: Evaluator,
    report: ControlledReport,
    config: Config,
    current: Measurement,
    record: Any,
    within: Any,
    max_evaluations: int,
) -> Measurement:
    """Inside each stage kept in float, quantise back the node groups that the bound allows (least sensitive first)."""
    for stage in [s for s, v in config.items() if v is None]:
        prepared, _ = prepared_graph(ev.fp32_paths[stage], stage, ev.workdir)
        model = onnx.load(str(prepared))
        excluded = resolve_exclusions(model, ev.options.exclude, ev.options.min_width).names
        groups = quantisable_groups(model, ev.options.op_types, excluded)
        everything = frozenset(n for names in groups.values() for n in names)
        measured: dict[str, Measurement] = {}
        for group, names in groups.items():
            if ev.evaluations >= max_evaluations:
                report.budget_exhausted = True
                break
            trial = {**config, stage: everything - frozenset(names)}
            measured[group] = record(trial, f"{stage}: only {group} int8")
        report.group_sensitivity[stage] = {g: _figures(m) for g, m in measured.items()}
        kept: dict[str, str] = {}
        for group in sorted(measured, key=lambda g: sensitivity_key(measured[g])):
            alone = measured[group]
            if not alone.within:
                kept[group] = (
                    f"int8 alone (rest of {stage} float) risks {alone.drop_bound:.2f} UA points "
                    f"(worst case), agreement {alone.agreement:.2%}"
                )
                continue
            configured = config[stage]
            float_now = configured if configured is not None else everything
            trial = {**config, stage: float_now - frozenset(groups[group])}
            if ev.evaluations >= max_evaluations:
                report.budget_exhausted = True
                kept[group] = "not tried: evaluation budget exhausted"
                continue
            m = record(trial, f"{stage}: + {group} int8")
            if m.within:
                config[stage] = trial[stage]
                current = m
            else:
                kept[group] = (
                    f"adding it to the configuration risks {m.drop_bound:.2f} UA points "
                    f"(worst case), agreement {m.agreement:.2%}"
                )
        for group in groups:
            if group not in measured:
                kept.setdefault(group, "not measured: evaluation budget exhausted")
        if config[stage] is not None and config[stage] == everything:
            config[stage] = None  # nothing of it came back: keep the float graph as is
        report.float_groups[stage] = kept
    return current


def _figures(m: Measurement) -> dict[str, float]:
    return {
        "worst_case_ua_drop": m.drop_bound,
        "pessimistic_ua_drop": m.pessimistic_drop,
        "ua_drop": m.ua_drop,
        "agreement": m.agreement,
        "logit_cosine": m.logit_cosine,
    }


def render_markdown(report: ControlledReport) -> str:
    bound = f"worst-case UA drop (class-balanced label-flip rate) <= {report.bound['max_ua_drop']:g} points"
    if report.bound.get("min_agreement") is not None:
        bound += f", agreement >= {report.bound['min_agreement']:.2%}"
    lines = [
        f"# Accuracy-controlled INT8: {report.bundle}",
        "",
        (
            f"Bound: {bound}, measured on {report.validation['clips']} calibration-side clips of `{report.data}` "
            f"(fold {report.fold}: {report.held_out} is the evaluation split and was not used; the calibration clips "
            f"were not used either). fp32 UA on this slice: {100 * report.fp32_ua:.2f}. "
            f"{report.evaluations} configurations measured."
        ),
        "",
    ]
    if report.final is not None:
        f = report.final
        lines += [
            (
                f"Result: int8 stages {', '.join(report.quantized_stages) or 'none'}; worst-case UA drop "
                f"{f.drop_bound:.2f} points (pessimistic {f.pessimistic_drop:.2f}, measured {f.ua_drop:+.2f}), "
                f"agreement {f.agreement:.2%}, logit cosine {f.logit_cosine:.5f}."
            ),
            "",
        ]
    if report.stage_sensitivity:
        lines += [
            "Stage sensitivity (that stage int8, the rest float):",
            "",
            "| stage | worst-case UA drop | pessimistic | measured | agreement | logit cosine |",
            "|---|---|---|---|---|---|",
        ]
        for stage, s in report.stage_sensitivity.items():
            lines.append(
                f"| {stage} | {s['worst_case_ua_drop']:.2f} | {s['pessimistic_ua_drop']:.2f} "
                f"| {s['ua_drop']:+.2f} | {s['agreement']:.2%} | {s['logit_cosine']:.5f} |"
            )
        lines.append("")
    if report.float_stages or report.float_groups:
        lines += ["Kept in float, and why:", ""]
        for stage, why in report.float_stages.items():
            lines.append(f"- stage `{stage}`: {why}")
            for group, reason in report.float_groups.get(stage, {}).items():
                lines.append(f"  - `{group}`: {reason}")
            back = [
                g
                for g in report.group_sensitivity.get(stage, {})
                if g not in report.float_groups.get(stage, {})
            ]
            if back:
                lines.append(f"  - quantised back: {', '.join(f'`{g}`' for g in back)}")
        lines.append("")
    else:
        lines += [
            "Nothing kept in float beyond the default exclusions: all stages int8 are within the bound.",
            "",
        ]
    lines += [
        "Every measurement (UA drops in points):",
        "",
        "| configuration | worst case | pessimistic | measured | agreement | logit cosine | within |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m.what} | {m.drop_bound:.2f} | {m.pessimistic_drop:.2f} | {m.ua_drop:+.2f} | {m.agreement:.2%} "
        f"| {m.logit_cosine:.5f} | {'yes' if m.within else 'no'} |"
        for m in report.measurements
    ]
    if report.budget_exhausted:
        lines += ["", "The evaluation budget ran out: some node groups were left in float untested."]
    return "\n".join(lines) + "\n"


def write_reports(bundle: Path, report: ControlledReport) -> None:
    write_report(bundle / REPORTS_DIR, "quantization", report)


__all__ = ["ControlledReport", "Measurement", "quantize_controlled"]
