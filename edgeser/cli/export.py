"""`edgeser export`: a checkpoint (or the zoo's shipped default, or random weights) to a bundle of stage graphs."""

from __future__ import annotations

from pathlib import Path

import click

from edgeser.modelling import MODEL_NAMES


@click.command("export")
@click.option("--model", "model_name", required=True, type=click.Choice(MODEL_NAMES), help="Zoo model.")
@click.option("--size", default="small", show_default=True, help="Recipe size: small, or paper.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Checkpoint folder from `edgeser train` [the zoo's shipped default for MODEL].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Bundle folder [build/MODEL or build/MODEL-SIZE; build/MODEL-SIZE-random with --random-weights].",
)
@click.option(
    "--random-weights", is_flag=True, help="Export freshly initialised weights (latency work only)."
)
@click.option(
    "--force", is_flag=True, help="Replace a bundle even if it holds calibration, variants or reports."
)
def export_command(
    model_name: str,
    size: str,
    checkpoint: Path | None,
    out_dir: Path | None,
    random_weights: bool,
    force: bool,
) -> None:
    """Export each stage as its own ONNX graph into a bundle with bundle.json and tokenizer.json."""
    from edgeser.cli.progress import CLICK
    from edgeser.export.exporter import export_bundle

    if out_dir is None:
        name = model_name if size == "small" else f"{model_name}-{size}"
        out_dir = Path("build") / (f"{model_name}-{size}-random" if random_weights else name)
    result = export_bundle(
        model_name,
        out_dir,
        size=size,
        checkpoint=checkpoint,
        random_weights=random_weights,
        force=force,
        progress=CLICK,
    )
    stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in result.stages.items())
    click.echo(f"wrote {result.bundle} ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s: {stages}")


def register(main: click.Group) -> None:
    main.add_command(export_command)
