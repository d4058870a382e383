"""`edgeser demo`: the whole edge pipeline on the shipped cmgi default, closing with one table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from edgeser.cli.params import threads_option


@click.command("demo")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder holding ravdess/, emodb/ and tess/ (the full held-out evaluation) [the clips shipped "
    "in edgeser/shipped/demo/ravdess/].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("build/demo-cmgi"),
    show_default=True,
    help="Bundle folder the demo owns (replaced each run).",
)
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), help="Another cmgi checkpoint [the shipped default]."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Held-out clips the check runs every variant on (evenly spread).",
)
@threads_option("onnxruntime threads [2, or the logical cores if fewer].")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def demo_command(
    data: Path | None, out: Path, checkpoint: Path | None, limit: int, threads: int | None, as_json: bool
) -> None:
    """Export, calibrate, INT8, TensorRT readiness, check against float on held-out clips, predict a few."""
    from edgeser.cli.progress import CLICK
    from edgeser.demo import render, run_demo
    from edgeser.runtime.options import thread_count

    result = run_demo(
        out, data, checkpoint=checkpoint, limit=limit, threads=thread_count(threads, most=2), progress=CLICK
    )
    click.echo(json.dumps(asdict(result), indent=2, default=str) if as_json else render(result))


def register(main: click.Group) -> None:
    main.add_command(demo_command)
