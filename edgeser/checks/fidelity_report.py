"""The variant check for people: a Markdown page and the plots it links (see `checks.fidelity`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.reports import markdown_table
from edgeser.stages import STAGE_ORDER, STEP_ORDER

FLOAT = "pytorch"


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(scale * value, spec)


def _latency_cell(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f} / {d['p95']:.2f} / {d['p99']:.2f}" if d else "-"


def _cosine_cell(d: dict[str, float]) -> str:
    return f"{d['mean']:.5f} / {d['min']:.5f}" if d else "-"


def _summary_row(v: Any) -> list[str]:
    if v.status != "ok":
        return [v.name, _fmt(v.size_bytes, ".1f", 1e-6), v.note] + [""] * 15
    e2e, m, d = v.latency_ms.get("end_to_end", {}), v.metrics, v.delta
    return [
        v.name, _fmt(v.size_bytes, ".1f", 1e-6), _fmt(e2e.get("p50"), ".1f"), _fmt(e2e.get("p95"), ".1f"),
        _fmt(e2e.get("p99"), ".1f"), _fmt(v.rtf.get("p50"), ".3f"),
        _fmt(m["ua"], ".2f", 100), _fmt(d.get("ua"), "+.2f"), _fmt(m["wa"], ".2f", 100), _fmt(d.get("wa"), "+.2f"),
        _fmt(m["macro_f1"], ".2f", 100), _fmt(d.get("macro_f1"), "+.2f"),
        _fmt(v.agreement, ".2f", 100), _fmt(v.agreement_fp32, ".2f", 100),
        _fmt(m.get("cer"), ".2f", 100), _fmt(d.get("cer"), "+.2f"), _fmt(m.get("wer"), ".2f", 100),
        _fmt(d.get("wer"), "+.2f"),
    ]  # fmt: skip


def render_markdown(report: Any) -> str:
    m = report.machine
    load = "/".join(f"{x:.1f}" for x in m.get("load_average", [])) or "?"
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    skipped = f"; skipped (labels the model lacks): {report.skipped_labels}" if report.skipped_labels else ""
    protocol = f", {report.protocol} protocol" if report.protocol else ""
    lines = [
        f"# Variants: {report.bundle}",
        "",
        (
            f"{report.clips} evaluation clips of `{report.data}` fold {report.fold} ({report.held_out}{protocol})"
            f"{skipped}. Float reference: {report.reference}. Batch 1, {report.warmup} warm-up runs, threads "
            f"{report.threads or 'default'}; {m.get('cpu', '?')} ({m.get('cpu_class', '?')}, "
            f"{m.get('logical_cores')} logical cores, load {load}), {versions}."
        ),
        "",
        *markdown_table(
            [
                "variant",
                "size MB",
                "e2e p50 ms",
                "p95",
                "p99",
                "RTF p50",
                "UA",
                "ΔUA",
                "WA",
                "ΔWA",
                "F1",
                "ΔF1",
                "agree float",
                "agree fp32",
                "CER",
                "ΔCER",
                "WER",
                "ΔWER",
            ],
            [_summary_row(v) for v in report.variants],
        ),
    ]
    stages = [s for s in STEP_ORDER if any(s in v.latency_ms for v in report.variants)]
    lines += [
        "",
        "Latency per stage (ms, p50 / p95 / p99):",
        "",
        *markdown_table(
            ["variant", *stages],
            [
                [
                    f"{v.name} ({v.latency_clips} clips)",
                    *[_latency_cell(v.latency_ms.get(s, {})) for s in stages],
                ]
                for v in report.variants
                if v.status == "ok"
            ],
        ),
    ]
    cos_stages = [s for s in STAGE_ORDER if any(s in v.stage_cosine for v in report.variants)]
    rows = []
    for v in report.variants:
        if v.status == "ok" and v.name != FLOAT:
            same = f"{100 * v.transcript_agreement:.1f} %" if v.transcript_agreement is not None else "-"
            rows.append(
                [
                    v.name,
                    *[_cosine_cell(v.stage_cosine.get(s, {})) for s in cos_stages],
                    _cosine_cell(v.logit_cosine),
                    same,
                ]
            )
    lines += [
        "",
        (
            "Cosine with onnxruntime fp32 (mean / min); each stage fed the fp32 upstream outputs; "
            "end to end on the logits:"
        ),
        "",
        *markdown_table(["variant", *cos_stages, "logits end to end", "transcripts = fp32"], rows),
    ]
    notes = [f"- {v.name}: {v.note}" for v in report.variants if v.note] + [f"- {n}" for n in report.notes]
    if notes:
        lines += ["", *notes]
    gates = ", ".join(f"{k} {v}" for k, v in report.gates.items() if v is not None) or "none"
    verdict = "**passed**" if report.passed else "**FAILED** — " + "; ".join(report.failures)
    lines += ["", f"Gates ({gates}): {verdict}"]
    if report.plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in report.plots]]
    return "\n".join(lines) + "\n"


def draw_plots(report: Any, save: Callable[[Any, str], Path]) -> None:
    """Four PNGs: latency per stage; size and real-time factor; accuracy and agreement; fidelity per stage."""
    import matplotlib.pyplot as plt

    ran = [v for v in report.variants if v.status == "ok"]
    names = [v.name for v in ran]
    x = np.arange(len(ran))

    fig, ax = plt.subplots(figsize=(7.5, 4))
    bottom = np.zeros(len(ran))
    for stage in STEP_ORDER:
        values = np.array([v.latency_ms.get(stage, {}).get("p50", 0.0) for v in ran])
        if values.any():
            ax.bar(names, values, bottom=bottom, label=stage)
            bottom += values
    e2e = np.array([v.latency_ms["end_to_end"]["p50"] for v in ran])
    p95 = np.array([v.latency_ms["end_to_end"]["p95"] for v in ran])
    p99 = np.array([v.latency_ms["end_to_end"]["p99"] for v in ran])
    ax.errorbar(
        names, e2e, yerr=[np.zeros_like(e2e), p95 - e2e], fmt="k.", capsize=4, label="end to end p50 (to p95)"
    )
    ax.plot(names, p99, "kx", label="p99")
    ax.set_ylabel("latency per clip, ms (batch 1)")
    ax.set_title(
        f"Latency per variant and stage ({report.clips} clips, threads {report.threads or 'default'})"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "latency")

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.5))
    left.bar(names, [1e-6 * (v.size_bytes or 0) for v in ran], color="tab:gray")
    left.set_ylabel("MB on disk")
    left.set_title("Size")
    right.bar(names, [v.rtf.get("p50", 0.0) for v in ran], color="tab:purple")
    right.set_ylabel("latency / audio duration (p50)")
    right.set_title("Real-time factor (lower is faster)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    save(fig, "size-rtf")

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.27
    for offset, key, label in ((-width, "ua", "UA"), (0.0, "wa", "WA"), (width, "macro_f1", "macro-F1")):
        left.bar(x + offset, [100 * v.metrics[key] for v in ran], width, label=label)
    left.set_xticks(x, names, rotation=30)
    left.set_ylabel("%")
    left.set_title("Accuracy on the evaluation split")
    left.legend(fontsize=7)
    right.bar(
        names, [100 * (v.agreement if v.agreement is not None else 0.0) for v in ran], color="tab:green"
    )
    right.set_ylim(min([90.0] + [100 * (v.agreement or 0) - 2 for v in ran]), 100.5)
    right.set_ylabel("% of clips")
    right.set_title("Label agreement with float")
    right.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    save(fig, "accuracy")

    compared = [v for v in ran if v.name != FLOAT and v.stage_cosine]
    has_asr = any("cer" in v.metrics for v in ran)
    fig, axes = plt.subplots(1, 2 if has_asr else 1, figsize=(9 if has_asr else 5.5, 3.5), squeeze=False)
    stages = [s for s in STAGE_ORDER if any(s in v.stage_cosine for v in compared)]
    for position, v in enumerate(compared):
        axes[0][0].bar(
            np.arange(len(stages)) + position * 0.8 / max(1, len(compared)),
            [1.0 - v.stage_cosine.get(s, {}).get("min", 1.0) for s in stages],
            0.8 / max(1, len(compared)),
            label=v.name,
        )
    axes[0][0].set_xticks(np.arange(len(stages)), stages, rotation=20)
    axes[0][0].set_yscale("symlog", linthresh=1e-6)
    axes[0][0].set_ylabel("1 - min cosine vs fp32")
    axes[0][0].set_title("Per-stage damage (each stage fed fp32 inputs)")
    axes[0][0].legend(fontsize=7)
    if has_asr:
        axes[0][1].bar(x - 0.2, [v.delta.get("cer", 0.0) for v in ran], 0.4, label="ΔCER")
        axes[0][1].bar(x + 0.2, [v.delta.get("wer", 0.0) for v in ran], 0.4, label="ΔWER")
        axes[0][1].set_xticks(x, names, rotation=30)
        axes[0][1].set_ylabel("points vs float")
        axes[0][1].set_title("Transcription error change")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    save(fig, "fidelity")
