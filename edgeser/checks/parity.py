"""`edgeser check parity`: the bundle's fp32 graphs (onnxruntime) against the PyTorch model on real clips."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeser.audio import load_audio
from edgeser.checks.compare import compare_stages
from edgeser.checks.reference import float_pipeline
from edgeser.data import load_corpus
from edgeser.data.records import Utterance
from edgeser.errors import DataError
from edgeser.measures import CosineStats, agreement
from edgeser.progress import STDERR, Progress
from edgeser.reports import REPORTS_DIR, write_report
from edgeser.runtime.pipeline import Pipeline

MIN_COSINE = 0.99999
MIN_AGREEMENT = 1.0


@dataclass
class ParityReport:
    bundle: str
    data: str
    clips: int
    stages: dict[str, dict[str, float]]
    label_agreement: float
    transcript_agreement: float | None
    gates: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [
            f"# Parity: {self.bundle}",
            "",
            f"{self.clips} clips from `{self.data}`; onnxruntime fp32 vs PyTorch, each stage fed identical inputs.",
            "",
            "| stage | max abs diff | min cosine | mean cosine |",
            "|---|---|---|---|",
        ]
        for name, stats in self.stages.items():
            lines.append(
                f"| {name} | {stats['max_abs_diff']:.3g} | {stats['min_cosine']:.7f} | {stats['mean_cosine']:.7f} |"
            )
        lines += [
            "",
            f"End to end (chained onnxruntime runtime vs PyTorch): label agreement {self.label_agreement:.2%}"
            + (
                f", transcript agreement {self.transcript_agreement:.2%}"
                if self.transcript_agreement is not None
                else ""
            ),
            "",
            f"Gates: per-stage min cosine >= {self.gates['min_cosine']}, label agreement >= {self.gates['min_agreement']:.0%}: "
            + ("**passed**" if self.passed else "**FAILED** — " + "; ".join(self.failures)),
        ]
        return "\n".join(lines) + "\n"


def spread(utterances: list[Utterance], limit: int | None) -> list[Utterance]:
    """An evenly spaced, deterministic subset (covers speakers and labels better than the first N)."""
    if not limit or limit >= len(utterances):
        return utterances
    picks = np.linspace(0, len(utterances) - 1, limit).round().astype(int)
    return [utterances[i] for i in picks]


def check_parity(
    bundle: Path,
    data_spec: str,
    *,
    limit: int | None = 200,
    checkpoint: Path | None = None,
    min_cosine: float = MIN_COSINE,
    min_agreement: float = MIN_AGREEMENT,
    progress: Progress = STDERR,
) -> ParityReport:
    """Compare each stage on identical inputs, then the chained runtime end to end; write reports/parity.*."""
    candidate = Pipeline.load(bundle, "fp32")
    reference = float_pipeline(bundle, checkpoint)
    graph = candidate.graph
    clips = spread(load_corpus(data_spec).utterances, limit)
    if not clips:
        raise DataError(f"{data_spec}: no utterances to compare on")
    stats = {stage: CosineStats() for stage in graph.stages}
    labels: tuple[list[int], list[int]] = ([], [])  # chained, expected
    texts: tuple[list[str | None], list[str | None]] = ([], [])
    with progress.bar(clips, "parity") as bar:
        for utt in bar:
            wave = load_audio(utt.path)
            expected = reference.run_stages([wave])
            chained = candidate.run_stages([wave])
            compare_stages(graph, candidate.runners, expected, stats, candidate_run=chained)
            for side, run in enumerate((chained, expected)):
                labels[side].append(int(np.argmax(run.logits[0])))
                texts[side].append(run.transcripts[0] if run.transcripts is not None else None)
    count = len(clips)
    report_stages = {
        name: {
            "max_abs_diff": s.max_abs_diff,
            "min_cosine": s.summary()["min"],
            "mean_cosine": s.summary()["mean"],
        }
        for name, s in stats.items()
    }
    label_agreement = agreement(*labels)
    failures = [
        f"{name} min cosine {s['min_cosine']:.7f} < {min_cosine}"
        for name, s in report_stages.items()
        if s["min_cosine"] < min_cosine
    ]
    if label_agreement < min_agreement:
        failures.append(f"label agreement {label_agreement:.2%} < {min_agreement:.0%}")
    report = ParityReport(
        bundle=str(bundle),
        data=data_spec,
        clips=count,
        stages=report_stages,
        label_agreement=label_agreement,
        transcript_agreement=agreement(*texts)
        if graph.decodes
        else None,  # both runs decode with the one graph
        gates={"min_cosine": min_cosine, "min_agreement": min_agreement},
        passed=not failures,
        failures=failures,
    )
    write_report(bundle / REPORTS_DIR, "parity", report)
    return report
