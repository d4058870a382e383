"""The one report writer: `reports/NAME.json` (machines), `NAME.md` (people) and `NAME-*.png` plots.

Every file goes through a temporary name and a rename; plots are written first so the Markdown can link them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeser.files import write_bytes_atomic, write_json_atomic, write_text_atomic

REPORTS_DIR = "reports"


class Report(Protocol):
    """What a check returns: true figures as a dataclass, a Markdown rendering, and whether its gates held."""

    passed: bool

    def to_markdown(self) -> str: ...


# A plot maker: given the report and a function that saves one matplotlib figure under a short name, draw.
PlotMaker = Callable[[Any, Callable[[Any, str], Path]], None]


def as_dict(report: Any) -> dict[str, Any]:
    return asdict(report) if is_dataclass(report) and not isinstance(report, type) else dict(report)


def write_report(
    directory: Path, name: str, report: Any, plots: PlotMaker | None = None, *, markdown: str | None = None
) -> list[Path]:
    """Write `directory/NAME.json`, `NAME.md` and (with `plots`) `NAME-<plot>.png`; returns the plot paths.

    When the report has a `plots` list attribute it is set to the written PNG paths before the JSON and
    Markdown are rendered. `markdown` is the Markdown of a report without `to_markdown` (a benchmark's dict).
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if plots is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def save(figure: Any, plot: str) -> Path:
            import io

            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
            plt.close(figure)
            path = directory / f"{name}-{plot}.png"
            write_bytes_atomic(path, buffer.getvalue())
            written.append(path)
            return path

        plots(report, save)
    if hasattr(report, "plots"):
        report.plots = [str(p) for p in written]
    write_json_atomic(directory / f"{name}.json", as_dict(report))
    write_text_atomic(directory / f"{name}.md", report.to_markdown() if markdown is None else markdown)
    return written


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]
