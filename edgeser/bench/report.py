"""The benchmark report: JSON for programs, a Markdown table and PNG plots a person reads at a glance."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeser.bench.runners import PYTORCH
from edgeser.reports import markdown_table

REPORT_NAME = "bench"


@dataclass
class BenchReport:
    """Figures of one `edgeser bench` run; `results` holds one summary per row and setting (see `Cell`)."""

    bundle: str
    model: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    variants: list[dict[str, Any]]
    results: list[dict[str, Any]]
    cold_start: dict[str, dict[str, Any]] = field(default_factory=dict)
    accuracy: list[dict[str, Any]] = field(default_factory=list)  # from reports/variants.json, when present
    notes: list[str] = field(default_factory=list)
    headline: dict[str, Any] = field(
        default_factory=dict
    )  # the setting the summary table shows, its fastest row
    plots: list[str] = field(default_factory=list)
    passed: bool = True  # False when a row failed to load or run

    def to_markdown(self) -> str:
        return render_markdown(self)

    def cell(self, variant: str, seconds: float, batch: int, threads: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in self.results
                if r["variant"] == variant
                and r["seconds"] == seconds
                and r["batch"] == batch
                and r["threads"] == threads
            ),
            None,
        )


def headline_setting(settings: dict[str, Any]) -> tuple[float, int, int]:
    """The (clip length, batch, threads) the summary table shows: 4.5 s when measured, else the middle length."""
    lengths = list(settings["lengths_s"])
    seconds = 4.5 if 4.5 in lengths else lengths[len(lengths) // 2]
    return seconds, settings["batches"][0], settings["threads"][0]


def fastest(report: BenchReport, seconds: float, batch: int, threads: int) -> str | None:
    timed = [
        (r["p50_ms"], r["variant"])
        for r in report.results
        if "p50_ms" in r and r["seconds"] == seconds and r["batch"] == batch and r["threads"] == threads
    ]
    return min(timed)[1] if timed else None


def read_accuracy(bundle: Path) -> list[dict[str, Any]]:
    """Size, latency and accuracy per variant from `reports/variants.json` (written by `edgeser check`)."""
    path = bundle / "reports" / "variants.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = []
        for v in data.get("variants", []):
            if v.get("status", "ok") != "ok":
                continue
            rows.append(
                {
                    "variant": v["name"],
                    "size_mb": (v.get("size_bytes") or 0) / 1e6,
                    "p50_ms": v.get("latency_ms", {}).get("end_to_end", {}).get("p50"),
                    "ua": v.get("metrics", {}).get("ua"),
                    "agreement": v.get("agreement"),
                    "data": data.get("data"),
                    "clips": data.get("clips"),
                }
            )
        return rows
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return []


# ------------------------------------------------------------------------------------------ Markdown


def _ms(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def render_markdown(report: BenchReport) -> str:
    m, s = report.machine, report.settings
    seconds, batch, threads = report.headline["seconds"], report.headline["batch"], report.headline["threads"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    gpus = "; ".join(g.get("name", "") for g in m.get("gpus", [])) or "none"
    lines = [
        f"# Benchmark: {report.model} (`{report.bundle}`)",
        "",
        (
            f"Machine: {m.get('cpu')} ({m.get('logical_cores')} logical cores; INT8 class {m.get('cpu_class')}; "
            f"flags {', '.join(m.get('cpu_flags', [])) or 'none'}); GPU: {gpus}; load average before/after "
            f"{s.get('load_before')} / {s.get('load_after')}; {versions}."
        ),
        "",
        (
            f"Clips: real speech from {s['clip_source']} cut to {', '.join(f'{x:g}' for x in s['lengths_s'])} s; "
            f"batches {s['batches']}; threads {s['threads']}; {s['rounds']} interleaved rounds after "
            f"{s['warmup']} warm-up runs per setting; onnxruntime workers "
            f"{'spin during runs' if s.get('spin') else 'wait passively'}."
        ),
        "",
    ]
    lines += [f"## {seconds:g} s clip, batch {batch}, threads {threads}", ""]
    torch = report.cell(PYTORCH, seconds, batch, threads)
    header = [
        "variant",
        "size MB",
        "p50 ms",
        "p90",
        "p99",
        "RTF",
        "clips/s",
        "vs PyTorch",
        "feature cos",
        "cold start s",
        "peak MB",
        "stages p50 ms",
    ]
    rows = []
    for v in report.variants:
        r = report.cell(v["name"], seconds, batch, threads) or {}
        cold = report.cold_start.get(v["name"], {})
        speedup = (torch["p50_ms"] / r["p50_ms"]) if torch and "p50_ms" in torch and "p50_ms" in r else None
        stages = ", ".join(f"{k} {x:.1f}" for k, x in r.get("stages_p50_ms", {}).items())
        rows.append(
            [
                f"**{v['name']}**" if v["name"] == report.headline.get("fastest") else v["name"],
                f"{v['bytes'] / 1e6:.0f}" if v.get("bytes") else "—",
                _ms(r.get("p50_ms")),
                _ms(r.get("p90_ms")),
                _ms(r.get("p99_ms")),
                f"{r['rtf']:.3f}" if "rtf" in r else "—",
                f"{r['clips_per_s']:.2f}" if "clips_per_s" in r else "—",
                f"{speedup:.2f}x" if speedup else "—",
                f"{r['feature_cosine']:.4f}" if r.get("feature_cosine") is not None else "—",
                f"{cold['cold_start_s']:.2f}" if "cold_start_s" in cold else cold.get("error", "—")[:40],
                f"{cold['peak_rss_mb']:.0f}" if "peak_rss_mb" in cold else "—",
                stages or (r.get("error") or "not run"),
            ]
        )
    lines += markdown_table(header, rows)
    if report.headline.get("fastest"):
        lines += ["", f"Fastest: **{report.headline['fastest']}**."]
    lines += ["", "## p50 latency (ms) by clip length", ""]
    for b in s["batches"]:
        for t in s["threads"]:
            lines += [f"batch {b}, threads {t}:", ""]
            table = [
                [
                    v["name"],
                    *[_ms((report.cell(v["name"], x, b, t) or {}).get("p50_ms")) for x in s["lengths_s"]],
                ]
                for v in report.variants
            ]
            lines += [*markdown_table(["variant", *[f"{x:g} s" for x in s["lengths_s"]]], table), ""]
    if report.accuracy:
        lines += [
            (
                f"## Accuracy (from reports/variants.json: {report.accuracy[0].get('data')}, "
                f"{report.accuracy[0].get('clips')} clips)"
            ),
            "",
        ]
        lines += markdown_table(
            ["variant", "size MB", "p50 ms", "UA", "agreement with float"],
            [
                [
                    a["variant"],
                    f"{a['size_mb']:.0f}",
                    _ms(a["p50_ms"]),
                    f"{100 * a['ua']:.2f}" if a.get("ua") is not None else "—",
                    f"{100 * a['agreement']:.2f} %" if a.get("agreement") is not None else "—",
                ]
                for a in report.accuracy
            ],
        )
        lines.append("")
    notes = [f"- {v['name']}: {v['note']}" for v in report.variants if v.get("note")] + [
        f"- {n}" for n in report.notes
    ]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += [f"Command: `{s.get('command')}`", ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in report.plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots


def draw_plots(report: BenchReport, save: Any) -> None:
    """Latency against clip length per row, speed-up over PyTorch, and accuracy against size and latency."""
    import matplotlib.pyplot as plt

    s = report.settings
    batch, threads = report.headline["batch"], report.headline["threads"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in report.variants:
        points = [
            (x, c["p50_ms"])
            for x in s["lengths_s"]
            if (c := report.cell(v["name"], x, batch, threads)) and "p50_ms" in c
        ]
        if points:
            ax.plot(*zip(*points), marker="o", label=v["name"])
    ax.set(
        xlabel="clip length (s)",
        ylabel="p50 latency (ms)",
        xscale="log",
        yscale="log",
        title=f"{report.model}: latency, batch {batch}, {threads} threads",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "latency")
    speedups = {}
    for v in report.variants:
        values = []
        for x in s["lengths_s"]:
            torch, cell = report.cell(PYTORCH, x, batch, threads), report.cell(v["name"], x, batch, threads)
            values.append(
                torch["p50_ms"] / cell["p50_ms"]
                if torch and cell and "p50_ms" in torch and "p50_ms" in cell
                else float("nan")
            )
        if v["name"] != PYTORCH and not all(math.isnan(x) for x in values):
            speedups[v["name"]] = values
    if speedups:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        width = 0.8 / len(speedups)
        for index, (name, values) in enumerate(speedups.items()):
            ax.bar([i + index * width for i in range(len(values))], values, width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(s["lengths_s"]))], [f"{x:g} s" for x in s["lengths_s"]]
        )
        ax.set(ylabel="speed-up over PyTorch float (x)", title=f"{report.model}: speed-up over PyTorch")
        ax.legend(fontsize=8)
        save(fig, "speedup")
    usable = [a for a in report.accuracy if a.get("ua") is not None]
    if usable:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "size_mb", "size (MB)"), (axes[1], "p50_ms", "p50 latency (ms)")):
            for a in usable:
                if a.get(key) is not None:
                    ax.scatter(a[key], 100 * a["ua"])
                    ax.annotate(a["variant"], (a[key], 100 * a["ua"]), fontsize=8)
            ax.set(xlabel=label, ylabel="UA (%)")
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"{report.model}: accuracy against size and latency (edgeser check)")
        save(fig, "accuracy")
