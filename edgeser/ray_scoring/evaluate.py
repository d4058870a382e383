"""Evaluate a scored corpus (`edgeser check --ray`): UA/WA/F1 against the corpus labels, CER/WER, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeser.reports import markdown_table


@dataclass
class CorpusEvaluation:
    """Task metrics of one bundle over a whole corpus, from its per-clip result rows."""

    data: str
    results: str
    clips: int
    errors: int
    scored: int  # clips with a prediction and a reference label the bundle knows
    unknown_labels: dict[str, int]  # reference labels outside the bundle's, and their counts
    ua: float | None
    wa: float | None
    macro_f1: float | None
    confusion: list[list[int]]
    labels: list[str]
    cer: float | None
    wer: float | None
    clips_per_second: float
    workers: int
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    passed: bool = True
    error_examples: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.2f}"

        lines = [
            f"# Corpus evaluation: `{self.data}`",
            "",
            (
                f"{self.clips} clips ({self.errors} errors) scored on {self.workers} Ray worker(s) at "
                f"{self.clips_per_second:.1f} clips/s; rows in `{self.results}`."
            ),
            "",
            *markdown_table(
                ["UA %", "WA %", "macro F1 %", "CER %", "WER %", "clips scored"],
                [
                    [
                        pct(self.ua),
                        pct(self.wa),
                        pct(self.macro_f1),
                        pct(self.cer),
                        pct(self.wer),
                        str(self.scored),
                    ]
                ],
            ),
        ]
        if self.unknown_labels:
            lines += [
                "",
                "Left out (reference label not among the bundle's): "
                + ", ".join(f"{k} ({v})" for k, v in sorted(self.unknown_labels.items())),
            ]
        if self.confusion:
            lines += [
                "",
                "Confusion (rows: reference, columns: predicted):",
                "",
                *markdown_table(
                    ["", *self.labels],
                    [[label, *map(str, row)] for label, row in zip(self.labels, self.confusion)],
                ),
            ]
        if self.error_examples:
            lines += ["", "Errors (first few):", "", *[f"- {e}" for e in self.error_examples]]
        for name, gate in self.gates.items():
            lines.append(
                f"\nGate {name}: {gate['value']} vs {gate['bound']}: {'ok' if gate['ok'] else 'FAILED'}"
            )
        return "\n".join(lines) + "\n"


def evaluate_results(
    table: Any,
    labels: list[str],
    *,
    data: str,
    results: str,
    clips_per_second: float = 0.0,
    workers: int = 0,
    min_ua: float | None = None,
    max_errors: int | None = None,
) -> CorpusEvaluation:
    """Metrics of result rows (see `edgeser.ray_scoring.jobs.COLUMNS`) against their reference labels and transcripts."""
    from edgeser.metrics import cer, classification_report, wer

    rows = table.to_pylist()
    errors = [r for r in rows if r["error"] is not None]
    good = [r for r in rows if r["error"] is None]
    index = {label: i for i, label in enumerate(labels)}
    known = [r for r in good if r["reference_label"] in index]
    unknown: dict[str, int] = {}
    for row in good:
        if row["reference_label"] not in index:
            unknown[str(row["reference_label"])] = unknown.get(str(row["reference_label"]), 0) + 1
    report = (
        classification_report(
            [index[r["reference_label"]] for r in known], [index[r["label"]] for r in known], len(labels)
        )
        if known
        else None
    )
    texts = [r for r in good if r["reference_transcript"] and r["transcript"] is not None]
    evaluation = CorpusEvaluation(
        data=data,
        results=results,
        clips=len(rows),
        errors=len(errors),
        scored=len(known),
        unknown_labels=unknown,
        ua=report.ua if report else None,
        wa=report.wa if report else None,
        macro_f1=report.macro_f1 if report else None,
        confusion=report.confusion if report else [],
        labels=labels,
        cer=cer([r["reference_transcript"] for r in texts], [r["transcript"] for r in texts])
        if texts
        else None,
        wer=wer([r["reference_transcript"] for r in texts], [r["transcript"] for r in texts])
        if texts
        else None,
        clips_per_second=clips_per_second,
        workers=workers,
        error_examples=[r["error"] for r in errors[:5]],
    )
    if min_ua is not None:
        ok = evaluation.ua is not None and evaluation.ua >= min_ua
        evaluation.gates["min_ua"] = {"value": evaluation.ua, "bound": min_ua, "ok": ok}
    if max_errors is not None:
        evaluation.gates["max_errors"] = {
            "value": len(errors),
            "bound": max_errors,
            "ok": len(errors) <= max_errors,
        }
    evaluation.passed = all(g["ok"] for g in evaluation.gates.values())
    return evaluation


def evaluate_corpus(
    bundle: str | Path,
    spec: str,
    out: str | Path,
    options: Any = None,
    *,
    precision: str = "fp32",
    min_ua: float | None = None,
    max_errors: int | None = None,
) -> CorpusEvaluation:
    """Score the corpus on Ray (rows to `out`), then evaluate; the report goes beside `out` (`<stem>.json/.md`)."""
    from edgeser.ray_scoring.jobs import read_results, score_corpus
    from edgeser.reports import write_report

    summary = score_corpus(bundle, spec, out, options, precision=precision)
    table, labels = read_results(out)
    evaluation = evaluate_results(
        table,
        labels,
        data=spec,
        results=str(out),
        clips_per_second=summary.clips_per_second,
        workers=summary.workers,
        min_ua=min_ua,
        max_errors=max_errors,
    )
    target = Path(out)
    write_report(target.parent, target.stem, evaluation)
    return evaluation
